//! Replication (SPEC §10) with real members on 127.0.0.1: a three-node
//! group replicates and redirects, loses no acknowledged write when its
//! leader is `kill -9`ed under concurrent writers, catches a member up by
//! snapshot, and changes its membership.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{
    TestCluster, eventually, exported_entries, http, location, read as read_retrying,
    redirect_target,
};
use serde_json::{Value, json};

/// The default timing, spelled out: heartbeats every 100 ms, elections
/// after 500–1000 ms of silence.
const FAST: [&str; 4] = ["--raft-heartbeat-ms", "100", "--raft-election-ms", "500"];

fn put(url: &str, body: &Value) -> reqwest::blocking::Response {
    http().put(url).json(body).send().expect("PUT")
}

#[test]
fn three_members_replicate_redirect_and_read_consistently() {
    let cluster = TestCluster::start(3, &FAST);
    let init = cluster.init();
    assert_eq!(init.status(), 200);
    let status: Value = init.json().expect("status JSON");
    assert_eq!(status["members"].as_object().map(|m| m.len()), Some(3));
    let leader = cluster.leader();
    let leader_node = &cluster.nodes[leader];

    let written = put(&leader_node.at("/kv/greeting"), &json!({"hello": "raft"}));
    assert_eq!(written.status(), 201);
    let version = written.json::<Value>().expect("JSON")["version"].clone();

    for (i, node) in cluster.nodes.iter().enumerate() {
        // Linearizable (the default): the acknowledged write is visible at
        // once, on followers too.
        let read = read_retrying(&node.at("/kv/greeting"));
        assert_eq!(read.status(), 200, "node {}: {:?}", node.id, read.text());
        let revision = read
            .headers()
            .get("dododb-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        assert!(
            revision.is_some_and(|r| Some(r) >= version.as_u64()),
            "node {}: {revision:?}",
            node.id
        );
        assert_eq!(
            read.json::<Value>().expect("JSON"),
            json!({"hello": "raft"})
        );
        // Stale: the local copy, with its revision.
        let stale = http()
            .get(node.at("/kv/greeting?consistency=stale"))
            .send()
            .expect("GET stale");
        assert!(stale.headers().contains_key("dododb-revision"));
        assert_eq!(stale.status(), 200, "node {}", node.id);
        if i != leader {
            let redirected = put(&node.at("/kv/other?ttl=60"), &json!(1));
            assert_eq!(redirected.status(), 307, "node {}", node.id);
            assert_eq!(
                location(&redirected),
                Some(leader_node.at("/kv/other?ttl=60").as_str())
            );
            let body: Value = redirected.json().expect("envelope");
            assert_eq!(body["error"]["code"], "not_leader");
            let deleted = http()
                .delete(node.at("/kv/greeting"))
                .send()
                .expect("DELETE");
            assert_eq!(deleted.status(), 307);
        }
    }
    let bad = http()
        .get(cluster.nodes[0].at("/kv/greeting?consistency=sometimes"))
        .send()
        .expect("GET");
    assert_eq!(bad.status(), 400);

    // Conditional writes are decided by the log, on every member alike.
    let stale_tag = http()
        .put(leader_node.at("/kv/greeting"))
        .header("If-Match", "\"999\"")
        .json(&json!(2))
        .send()
        .expect("PUT If-Match");
    assert_eq!(stale_tag.status(), 412);
    let absent = http()
        .delete(leader_node.at("/kv/never"))
        .send()
        .expect("DELETE");
    assert_eq!(absent.status(), 404);
}

#[test]
fn concurrent_linearizable_reads_on_the_leader_all_answer() {
    // Each read confirms leadership with a heartbeat round; under load a
    // round can miss its deadline, which must not turn into a 503.
    let cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.nodes[cluster.leader()].url();
    assert_eq!(put(&format!("{leader}/kv/k"), &json!(1)).status(), 201);
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let leader = leader.clone();
            std::thread::spawn(move || {
                let client = http();
                (0..20)
                    .map(|_| {
                        client
                            .get(format!("{leader}/kv/k"))
                            .send()
                            .expect("GET")
                            .status()
                            .as_u16()
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for reader in readers {
        let statuses = reader.join().expect("reader");
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
}

#[test]
fn concurrent_linearizable_reads_see_every_write_acknowledged_before_them() {
    // Many reads at once share read-index rounds; each must still see the
    // last write acknowledged before it was sent, on the leader and on the
    // followers (which ask the leader for the index). A 503 (no quorum
    // confirmed in time on a loaded machine) is an allowed answer and is
    // asked again; a 200 with an older value is the failure.
    let cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let leader = urls[cluster.leader()].clone();
    assert_eq!(
        put(&format!("{leader}/kv/counter"), &json!(0)).status(),
        201
    );
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
        std::thread::spawn(move || {
            let client = http();
            let mut target = format!("{leader}/kv/counter");
            for n in 1..=150u64 {
                let answer = client.put(&target).json(&json!(n)).send().expect("PUT");
                match answer.status().as_u16() {
                    200 => acked.store(n, Ordering::SeqCst),
                    // Unknown outcome; later values are larger anyway.
                    503 => {}
                    307 => {
                        let location = answer.headers()["location"].to_str().expect("ascii");
                        target = location.to_string();
                    }
                    other => panic!("write {n}: {other}"),
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..48)
        .map(|i| {
            let url = format!("{}/kv/counter", urls[i % urls.len()]);
            let (acked, done) = (Arc::clone(&acked), Arc::clone(&done));
            std::thread::spawn(move || {
                let client = http();
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut answered = 0u64;
                while !done.load(Ordering::SeqCst) || answered < 5 {
                    assert!(
                        Instant::now() < deadline,
                        "{url}: {answered} reads answered in 120 s"
                    );
                    let floor = acked.load(Ordering::SeqCst);
                    let answer = client.get(&url).send().expect("GET");
                    if answer.status() == 503 {
                        continue;
                    }
                    assert_eq!(answer.status(), 200, "{url}");
                    assert!(answer.headers().contains_key("dododb-revision"));
                    let seen = answer
                        .json::<Value>()
                        .expect("JSON")
                        .as_u64()
                        .expect("a number");
                    assert!(
                        seen >= floor,
                        "{url} answered {seen} after write {floor} was acknowledged"
                    );
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    writer.join().expect("writer");
    assert!(
        acked.load(Ordering::SeqCst) > 0,
        "no write was acknowledged"
    );
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(reads >= 48 * 5, "{reads} reads");
}

#[test]
fn concurrent_writes_on_the_leader_each_get_their_own_answer() {
    // Concurrent writes share log entries on the leader; each must still
    // be decided on its own (one create of the same key wins, the others
    // fail their condition) and be answered with its own version. A 503
    // (no leader for a moment on a loaded machine) leaves that write's
    // outcome unknown, so it is left out of the checks.
    let cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.nodes[cluster.leader()].url();
    let writers = 48;
    let start = Arc::new(std::sync::Barrier::new(writers));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (leader, start) = (leader.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                let client = http();
                start.wait();
                let race = client
                    .put(format!("{leader}/kv/only"))
                    .header("If-None-Match", "*")
                    .json(&json!({"writer": w}))
                    .send()
                    .expect("PUT If-None-Match");
                let race_status = race.status().as_u16();
                let race_version = race
                    .json::<Value>()
                    .ok()
                    .and_then(|v| v["version"].as_u64());
                let mut acked = Vec::new();
                for n in 0..10 {
                    let key = format!("w{w}-{n}");
                    let answer = client
                        .put(format!("{leader}/kv/{key}"))
                        .json(&json!([w, n]))
                        .send()
                        .expect("PUT");
                    match answer.status().as_u16() {
                        201 => {
                            let body: Value = answer.json().expect("JSON");
                            acked.push((
                                key,
                                body["version"].as_u64().expect("version"),
                                json!([w, n]),
                            ));
                        }
                        503 => {}
                        other => panic!("PUT {key}: {other}"),
                    }
                }
                ((w, race_status, race_version), acked)
            })
        })
        .collect();
    let mut races = Vec::new();
    let mut acked = Vec::new();
    for handle in handles {
        let (race, mine) = handle.join().expect("writer");
        races.push(race);
        acked.extend(mine);
    }
    let won: Vec<_> = races.iter().filter(|r| r.1 == 201).collect();
    assert!(won.len() <= 1, "more than one create won: {races:?}");
    assert!(
        races.iter().all(|r| matches!(r.1, 201 | 412 | 503)),
        "{races:?}"
    );
    let only = read_retrying(&format!("{leader}/kv/only"));
    match won.first() {
        Some((w, _, version)) => {
            let etag = only.headers().get("etag").and_then(|v| v.to_str().ok());
            assert_eq!(etag.map(String::from), version.map(|v| format!("\"{v}\"")));
            assert_eq!(only.json::<Value>().expect("JSON"), json!({"writer": w}));
        }
        None => assert!(
            races.iter().any(|r| r.1 == 503),
            "no create won and none failed: {races:?}"
        ),
    }
    let mut versions: Vec<u64> = acked.iter().map(|(_, v, _)| *v).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), acked.len(), "two writes got one version");
    assert!(
        acked.len() >= writers,
        "only {} writes acknowledged",
        acked.len()
    );
    // Each member's own copy, once it applied what the leader committed.
    let committed = cluster.nodes[cluster.leader()]
        .status()
        .and_then(|s| s["committed"].as_u64())
        .expect("committed");
    for node in &cluster.nodes {
        node.wait_applied(committed, Duration::from_secs(30));
        for (key, version, value) in &acked {
            let read = read_retrying(&node.at(&format!("/kv/{key}?consistency=stale")));
            assert_eq!(read.status(), 200, "{key} on node {}", node.id);
            let etag = read.headers().get("etag").and_then(|v| v.to_str().ok());
            assert_eq!(
                etag,
                Some(format!("\"{version}\"").as_str()),
                "{key} on node {}",
                node.id
            );
            assert_eq!(&read.json::<Value>().expect("JSON"), value);
        }
    }
}

#[test]
fn a_transaction_is_one_entry_decided_on_the_leader() {
    let cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let leader_node = &cluster.nodes[leader];
    let txn = |url: &str, body: &Value| {
        http()
            .post(format!("{url}/txn"))
            .json(body)
            .send()
            .expect("POST /txn")
    };
    let put_both = json!({
        "compare": [{"key": "a", "exists": false}],
        "success": [
            {"op": "put", "key": "a", "value": {"n": 1}},
            {"op": "put", "key": "b", "value": [1, 2]},
            {"op": "get", "key": "a"}
        ],
        "failure": [{"op": "get", "key": "a"}]
    });
    let follower = (leader + 1) % 3;
    let redirected = txn(&cluster.nodes[follower].url(), &put_both);
    assert_eq!(redirected.status(), 307);
    assert_eq!(location(&redirected), Some(leader_node.at("/txn").as_str()));

    let done = txn(&leader_node.url(), &put_both);
    assert_eq!(done.status(), 200);
    let done: Value = done.json().expect("JSON");
    assert_eq!(done["succeeded"], true, "{done}");
    let a_version = done["results"][0]["version"].as_u64().expect("version");
    assert_eq!(done["results"][1]["version"].as_u64(), Some(a_version + 1));
    assert_eq!(done["results"][2]["value"], json!({"n": 1}));
    assert_eq!(done["revision"].as_u64(), Some(a_version + 1));

    // The same transaction again: the compare fails on every member alike.
    let again = txn(&leader_node.url(), &put_both);
    assert_eq!(again.status(), 200);
    let again: Value = again.json().expect("JSON");
    assert_eq!(again["succeeded"], false);
    assert_eq!(again["results"][0]["version"].as_u64(), Some(a_version));

    for node in &cluster.nodes {
        for (key, value, version) in [
            ("a", json!({"n": 1}), a_version),
            ("b", json!([1, 2]), a_version + 1),
        ] {
            let read = read_retrying(&node.at(&format!("/kv/{key}")));
            assert_eq!(read.status(), 200, "{key} on node {}", node.id);
            let etag = read.headers().get("etag").and_then(|v| v.to_str().ok());
            assert_eq!(etag, Some(format!("\"{version}\"").as_str()));
            assert_eq!(read.json::<Value>().expect("JSON"), value);
        }
    }

    // A bad transaction is refused before anything is proposed.
    let twice = json!({"success": [
        {"op": "put", "key": "c", "value": 1},
        {"op": "delete", "key": "c"}
    ]});
    let refused = txn(&leader_node.url(), &twice);
    assert_eq!(refused.status(), 400);
    let absent = read_retrying(&leader_node.at("/kv/c"));
    assert_eq!(absent.status(), 404);
}

/// Writes `w<writer>-<n>` keys to whoever leads, following redirects and
/// retrying through failures; records every acknowledged write.
fn writer(
    urls: Vec<String>,
    writer: usize,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let client = http();
    let mut target = 0;
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) {
        let key = format!("w{writer}-{n}");
        let url = format!("{}/kv/{key}", urls[target % urls.len()]);
        let answer = client
            .put(&url)
            .timeout(Duration::from_secs(3))
            .json(&json!({"writer": writer, "n": n}))
            .send();
        match answer {
            Ok(r) if r.status().is_success() => {
                let version = r.json::<Value>().ok().and_then(|v| v["version"].as_u64());
                acked
                    .lock()
                    .expect("lock")
                    .insert(key, version.expect("a version"));
                count.fetch_add(1, Ordering::AcqRel);
                n += 1;
            }
            Ok(r) if r.status() == 307 => {
                target = redirect_target(&r, &urls).unwrap_or(target + 1);
            }
            // No leader yet, a dead node or a lost answer: try the next
            // node; the key is retried, and it counts only once answered.
            _ => target += 1,
        }
    }
}

#[test]
fn killing_the_leader_under_writers_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let old = cluster.leader();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (urls, acked, count, stop) = (
                urls.clone(),
                Arc::clone(&acked),
                Arc::clone(&count),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || writer(urls, w, acked, count, stop))
        })
        .collect();
    eventually(Duration::from_secs(60), "100 acknowledged writes", || {
        (count.load(Ordering::Acquire) >= 100).then_some(())
    });

    cluster.nodes[old].kill9();
    let killed_at = Instant::now();
    let before = count.load(Ordering::Acquire);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = cluster.leader_among(&survivors, Duration::from_secs(20));
    assert_ne!(new, old);
    eventually(
        Duration::from_secs(20),
        "a write acknowledged by the new leader",
        || (count.load(Ordering::Acquire) > before).then_some(()),
    );
    eprintln!(
        "failover: node {} leads and writes are acknowledged {} ms after kill -9 of node {}",
        new + 1,
        killed_at.elapsed().as_millis(),
        old + 1
    );
    eventually(
        Duration::from_secs(60),
        "100 more acknowledged writes",
        || (count.load(Ordering::Acquire) >= before + 100).then_some(()),
    );
    stop.store(true, Ordering::Release);
    for w in writers {
        w.join().expect("writer");
    }

    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 200);
    let check = |node: &common::cluster::Node, consistency: &str| {
        for (key, version) in &acked {
            let read = read_retrying(&node.at(&format!("/kv/{key}{consistency}")));
            assert_eq!(read.status(), 200, "{key} on node {}", node.id);
            let etag = read.headers().get("etag").and_then(|v| v.to_str().ok());
            // A later retry of the same key may have replaced it; never an
            // older version than the acknowledged one.
            let seen: u64 = etag
                .map(|t| t.trim_matches('"'))
                .and_then(|t| t.parse().ok())
                .expect("ETag");
            assert!(seen >= *version, "{key} on node {}", node.id);
        }
    };
    for &i in &survivors {
        check(&cluster.nodes[i], "");
    }
    // The old leader comes back, catches up and has every write too.
    cluster.nodes[old].restart();
    let leader_status = cluster.nodes[new].status().expect("leader status");
    let committed = leader_status["committed"].as_u64().expect("committed");
    eventually(
        Duration::from_secs(30),
        "the old leader catching up",
        || {
            let status = cluster.nodes[old].status()?;
            (status["applied"].as_u64()? >= committed && status["role"] == "follower").then_some(())
        },
    );
    check(&cluster.nodes[old], "?consistency=stale");
    check(&cluster.nodes[old], "");
}

#[test]
fn a_member_that_was_down_catches_up_by_snapshot() {
    // 1000 writes in the suite; DODODB_CATCHUP_WRITES=100000 for the long
    // form (snapshots every fifth of the writes either way).
    let writes: usize = std::env::var("DODODB_CATCHUP_WRITES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let every = (writes / 5).to_string();
    let mut args = FAST.to_vec();
    args.extend(["--raft-snapshot-logs", every.as_str()]);
    let mut cluster = TestCluster::start(3, &args);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let down = (leader + 1) % 3;
    cluster.nodes[down].kill9();
    let leader_url = cluster.nodes[leader].url();
    let client = http();
    // Eight writers, so group commit batches them.
    let loaders: Vec<_> = (0..8)
        .map(|w| {
            let leader_url = leader_url.clone();
            std::thread::spawn(move || {
                let client = http();
                for i in (w..writes).step_by(8) {
                    let r = client
                        .put(format!("{leader_url}/kv/k{i}"))
                        .json(&json!({"i": i, "pad": "x".repeat(i % 50)}))
                        .send()
                        .expect("PUT");
                    assert!(r.status().is_success(), "{i}: {}", r.status());
                }
            })
        })
        .collect();
    for loader in loaders {
        loader.join().expect("loader");
    }
    client
        .delete(format!("{leader_url}/kv/k7"))
        .send()
        .expect("DELETE");
    let leader_status = cluster.nodes[leader].status().expect("status");
    let committed = leader_status["committed"].as_u64().expect("committed");

    cluster.nodes[down].restart();
    let restarted = Instant::now();
    cluster.nodes[down].wait_applied(committed, Duration::from_secs(120));
    eprintln!(
        "catch-up: {writes} writes while down, applied up to the leader's commit {} ms after restart",
        restarted.elapsed().as_millis()
    );
    assert!(
        cluster.nodes[down]
            .log()
            .contains("installed a snapshot from the leader"),
        "{}",
        cluster.nodes[down].log()
    );
    let on_leader = exported_entries(&cluster.nodes[leader].url());
    let on_member = exported_entries(&cluster.nodes[down].url());
    assert_eq!(on_leader.len(), writes - 1);
    assert!(
        on_leader == on_member,
        "the member's data differs from the leader's"
    );
}

#[test]
fn a_learner_is_added_promoted_and_a_member_removed() {
    let mut cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let leader_url = cluster.nodes[leader].url();
    for i in 0..20 {
        assert!(
            put(&format!("{leader_url}/kv/before{i}"), &json!(i))
                .status()
                .is_success()
        );
    }
    let learner_url = cluster.add_node(&FAST).url();
    let added = http()
        .post(format!("{leader_url}/cluster/learners"))
        .json(&json!({"id": 4, "url": learner_url}))
        .send()
        .expect("POST learners");
    assert_eq!(added.status(), 200, "{:?}", added.text());
    let learner = &cluster.nodes[3];
    let status = eventually(Duration::from_secs(10), "the learner seeing itself", || {
        learner.status().filter(|s| s["members"]["4"].is_object())
    });
    assert_eq!(status["role"], "learner");
    assert_eq!(status["members"]["4"]["voter"], false);
    let read = http()
        .get(learner.at("/kv/before19?consistency=stale"))
        .send()
        .expect("GET");
    assert_eq!(read.status(), 200);

    // Bad requests change nothing.
    for body in [
        json!({"voters": []}),
        json!({"voters": [1, 9]}),
        json!({"voter": [1]}),
    ] {
        let refused = http()
            .post(format!("{leader_url}/cluster/members"))
            .json(&body)
            .send()
            .expect("POST members");
        assert_eq!(refused.status(), 400, "{body}");
    }

    // Promote 4, drop whichever of 1..3 is not the leader and not kept.
    let removed = (0..3).find(|&i| i != leader).expect("a follower");
    let voters: Vec<u64> = (1..=4).filter(|&id| id != removed as u64 + 1).collect();
    let changed = http()
        .post(format!("{leader_url}/cluster/members"))
        .json(&json!({ "voters": voters }))
        .send()
        .expect("POST members");
    assert_eq!(changed.status(), 200, "{:?}", changed.text());
    let status: Value = changed.json().expect("JSON");
    let members = status["members"].as_object().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    assert!(!members.contains_key(&(removed + 1).to_string()));
    assert_eq!(status["members"]["4"]["voter"], true);

    // The group still commits writes, and the new voter has them.
    assert!(
        put(&format!("{leader_url}/kv/after"), &json!(1))
            .status()
            .is_success()
    );
    let read = read_retrying(&cluster.nodes[3].at("/kv/after"));
    assert_eq!(read.status(), 200);
}

#[test]
fn a_single_server_has_no_cluster_routes() {
    let server = common::TestServer::start(&[]);
    let status = http()
        .get(server.at("/cluster/status"))
        .send()
        .expect("GET");
    assert_eq!(status.status(), 404);
    let read = http().get(server.at("/kv/a")).send().expect("GET");
    assert!(!read.headers().contains_key("dododb-revision"));
}
