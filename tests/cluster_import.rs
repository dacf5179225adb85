//! `POST /system/import` on a cluster member (SPEC §7, §10), with real
//! members on 127.0.0.1: a follower redirects it to the leader, the leader
//! checks the whole export and then writes it through the Raft log in
//! batches, and every member ends with the same data; a leader `kill -9`ed
//! in the middle leaves whole batches, and importing again finishes it.

mod common;

use std::time::Duration;

use common::cluster::{TestCluster, eventually, exported_entries, http, http_waiting, location};
use serde_json::{Value, json};

const FAST: [&str; 4] = ["--raft-heartbeat-ms", "100", "--raft-election-ms", "500"];

/// An export of `n` entries under `prefix` (each about 100 bytes, so the
/// leader cuts it into several batches), plus one that expired long ago.
fn export(prefix: &str, n: usize) -> String {
    let mut body = String::new();
    for i in 0..n {
        let line = json!({"key": format!("{prefix}{i}"), "version": 1, "expires_at_ms": 0,
            "value": {"i": i, "pad": "p".repeat(60)}});
        body.push_str(&line.to_string());
        body.push('\n');
    }
    let expired = json!({"key": format!("{prefix}expired"), "version": 1,
        "expires_at_ms": 1000, "value": 0});
    body.push_str(&expired.to_string());
    body.push('\n');
    body
}

/// `POST /system/import`, waiting as long as a loaded machine needs (a
/// hang guard only).
fn import(url: &str, query: &str, body: String) -> reqwest::blocking::Response {
    http_waiting(120)
        .post(format!("{url}/system/import{query}"))
        .body(body)
        .send()
        .expect("POST /system/import")
}

#[test]
fn import_on_a_member_goes_through_the_leader_to_every_member() {
    let cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let leader_url = cluster.nodes[leader].url();
    let follower = (leader + 1) % 3;
    let n = 20_000;

    // A follower redirects before reading anything, like other writes.
    let redirected = import(&cluster.nodes[follower].url(), "", export("imp-", n));
    assert_eq!(redirected.status(), 307);
    assert_eq!(
        location(&redirected),
        Some(format!("{leader_url}/system/import").as_str())
    );

    // A bad line anywhere: 400 naming it, and nothing is written.
    let mut bad = export("imp-", 100);
    bad.push_str("{\"key\": \"x\", \"value\": }\n");
    let refused = import(&leader_url, "", bad);
    assert_eq!(refused.status(), 400);
    let envelope: Value = refused.json().expect("envelope");
    assert!(
        envelope["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 102")),
        "{envelope}"
    );
    let put = http()
        .put(format!("{leader_url}/kv/before"))
        .json(&json!("kept"))
        .send()
        .expect("PUT");
    assert_eq!(put.status(), 201);

    let done = import(&leader_url, "", export("imp-", n));
    let status = done.status();
    let done: Value = done.json().expect("JSON");
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["imported"].as_u64(), Some(n as u64), "{done}");
    assert_eq!(done["expired"].as_u64(), Some(1), "{done}");
    let revision = done["revision"].as_u64().expect("revision");
    assert!(revision > n as u64, "{done}");

    // Every member holds the same data once it applied what the leader did.
    let committed = cluster.nodes[leader].applied().expect("status");
    for node in &cluster.nodes {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while node.applied().is_none_or(|a| a < committed) {
            if std::time::Instant::now() > deadline {
                for n in &cluster.nodes {
                    eprintln!("node {}: {:?}", n.id, n.status());
                    let log = n.log();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    eprintln!("{}", tail.join("\n"));
                }
                panic!("node {} did not apply {committed}", node.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let on_leader = exported_entries(&leader_url);
    assert_eq!(on_leader.len(), n + 1);
    for node in &cluster.nodes {
        assert!(
            exported_entries(&node.url()) == on_leader,
            "node {} differs from the leader",
            node.id
        );
    }
    let read = http()
        .get(cluster.nodes[follower].at("/kv/imp-7"))
        .send()
        .expect("GET");
    assert_eq!(read.status(), 200);
    assert_eq!(read.json::<Value>().expect("JSON")["i"], 7);

    // ?mode=replace clears every key first, on every member.
    let replaced = import(&leader_url, "?mode=replace", export("new-", 10));
    assert_eq!(replaced.status(), 200);
    let replaced: Value = replaced.json().expect("JSON");
    assert_eq!(replaced["imported"].as_u64(), Some(10), "{replaced}");
    let committed = cluster.nodes[leader].applied().expect("status");
    for node in &cluster.nodes {
        node.wait_applied(committed, Duration::from_secs(30));
        let keys = exported_entries(&node.url());
        assert_eq!(keys.len(), 10, "node {}", node.id);
        assert!(keys.iter().all(|l| l.starts_with("{\"key\":\"new-")));
    }
}

/// Entries under `prefix` on the member at `url`, read from its own copy.
fn stale_count(url: &str, prefix: &str) -> Option<u64> {
    let response = http()
        .get(format!("{url}/kv/count?prefix={prefix}&consistency=stale"))
        .send()
        .ok()?;
    response.json::<Value>().ok()?["count"].as_u64()
}

#[test]
fn a_leader_killed_mid_import_leaves_whole_batches_and_a_second_import_finishes() {
    let mut cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let leader_url = cluster.nodes[leader].url();
    let n = 20_000;
    let body = export("imp-", n);
    let importer = {
        let (url, body) = (leader_url.clone(), body.clone());
        std::thread::spawn(move || {
            http_waiting(120)
                .post(format!("{url}/system/import"))
                .body(body)
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    // Some batches are in, not all: then the leader dies.
    let during = eventually(Duration::from_secs(90), "the import under way", || {
        stale_count(&leader_url, "imp-").filter(|c| *c > 0)
    });
    cluster.nodes[leader].kill9();
    let answer = importer.join().expect("importer");
    eprintln!("killed with {during} of {n} entries on the leader; the import got {answer:?}");
    if during < n as u64 {
        assert!(answer.as_ref().map_or(true, |s| *s != 200), "{answer:?}");
    }

    // Every survivor holds whole batches only: the same count on both
    // once they agree on a leader and applied what it committed.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = cluster.leader_among(&survivors, Duration::from_secs(60));
    let new_url = cluster.nodes[new].url();
    let committed = cluster.nodes[new].applied().expect("status");
    for &i in &survivors {
        cluster.nodes[i].wait_applied(committed, Duration::from_secs(60));
    }
    let counts: Vec<Option<u64>> = survivors
        .iter()
        .map(|&i| stale_count(&cluster.nodes[i].url(), "imp-"))
        .collect();
    assert_eq!(counts[0], counts[1]);
    // Each entry here is under 128 bytes, so every batch is the leader's
    // 512 entries: whole batches only.
    let kept = counts[0].expect("a count");
    assert_eq!(kept % 512, 0, "{kept} entries: a batch was cut");

    // The same export again on the new leader finishes the job, and the
    // old leader, back, ends with the same data.
    let again = import(&new_url, "", body);
    let status = again.status();
    let again: Value = again.json().expect("JSON");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["imported"].as_u64(), Some(n as u64), "{again}");
    cluster.nodes[leader].restart();
    let committed = cluster.nodes[new].applied().expect("status");
    for node in &cluster.nodes {
        node.wait_applied(committed, Duration::from_secs(90));
    }
    let on_leader = exported_entries(&new_url);
    assert_eq!(on_leader.len(), n);
    for node in &cluster.nodes {
        assert!(
            exported_entries(&node.url()) == on_leader,
            "node {} differs from the leader",
            node.id
        );
    }
}
