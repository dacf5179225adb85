//! A follower that installs a snapshot from its leader serves stale reads
//! from the whole old state or the whole new one, never a mix (SPEC §10),
//! with real members on 127.0.0.1 and a real `kill -9`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::cluster::{TestCluster, eventually, http, location};
use serde_json::{Value, json};

/// A follower down for a few hundred writes needs a snapshot install.
const ARGS: [&str; 6] = common::cluster::SNAPSHOT_EVERY_100;

/// Keys that always change together, in one transaction.
const PAIRS: usize = 16;

/// Keys besides the pairs, so that loading the snapshot takes a while.
const FILL: usize = 20_000;

/// Puts per fill transaction: small entries, so that no append call to a
/// follower outlasts a heartbeat on a loaded machine.
const FILL_BATCH: usize = 100;

/// Longest wait for any one step; only a hang guard, never a timing assert.
const STEP: Duration = Duration::from_secs(90);

/// Sends a write to `path` until it is acknowledged: trying the members
/// at `urls` in turn while there is no leader (`503`, an election on a
/// loaded machine) or a member does not answer, following a `307`.
fn write(method: reqwest::Method, urls: &[String], path: &str, body: &Value) {
    let mut at = 0;
    let mut url = format!("{}{path}", urls[0]);
    eventually(STEP, "the write acknowledged", || {
        let response = http().request(method.clone(), &url).json(body).send();
        let status = response.as_ref().map_or(0, |r| r.status().as_u16());
        match (status, response) {
            (200 | 201, _) => return Some(()),
            (307, Ok(r)) => {
                if let Some(to) = location(&r) {
                    url = to.to_string();
                    return None;
                }
            }
            (0 | 503, _) => {}
            (other, Ok(r)) => panic!("{url}: {other} {}", r.text().unwrap_or_default()),
            (_, Err(_)) => {}
        }
        at = (at + 1) % urls.len();
        url = format!("{}{path}", urls[at]);
        None
    });
}

fn txn(urls: &[String], ops: Vec<Value>) {
    write(
        reqwest::Method::POST,
        urls,
        "/txn",
        &json!({ "success": ops }),
    );
}

/// Sets every pair key to `gen` in one transaction.
fn set_pairs(urls: &[String], generation: u64) {
    let ops = (0..PAIRS)
        .map(|i| json!({"op": "put", "key": format!("pair-{i:02}"), "value": {"gen": generation}}))
        .collect();
    txn(urls, ops);
}

/// The generation in a stale read of one key, with its version and the
/// revision the answer says it reflects; `None` while the member is down
/// (or, when `may_lack`, while it does not hold the key yet).
fn stale_gen(url: &str, key: &str, may_lack: bool) -> Option<(u64, u64, u64)> {
    let response = http()
        .get(format!("{url}/kv/{key}?consistency=stale"))
        .send()
        .ok()?;
    if may_lack && response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200, "stale GET {key}");
    let header = |name: &str| -> u64 {
        let value = response
            .headers()
            .get(name)
            .expect(name)
            .to_str()
            .expect("ASCII");
        value.trim_matches('"').parse().expect("a number")
    };
    let version = header("etag");
    let revision = header("dododb-revision");
    let value: Value = response.json().expect("JSON");
    Some((value["gen"].as_u64().expect("gen"), version, revision))
}

/// The generations of every pair key in one stale page with values.
fn stale_page(url: &str) -> Option<Vec<u64>> {
    let response = http()
        .get(format!(
            "{url}/kv?prefix=pair-&values=true&consistency=stale"
        ))
        .send()
        .ok()?;
    assert_eq!(response.status(), 200, "stale page");
    let page: Value = response.json().expect("JSON");
    let items = page["items"].as_array().expect("items");
    Some(
        items
            .iter()
            .map(|i| i["value"]["gen"].as_u64().expect("gen"))
            .collect(),
    )
}

#[test]
fn stale_reads_during_a_snapshot_install_see_the_old_state_or_the_new() {
    let mut cluster = TestCluster::start(3, &ARGS);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let all: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    // Enough keys that loading and installing the snapshot takes a while.
    for batch in 0..FILL / FILL_BATCH {
        let ops = (0..FILL_BATCH)
            .map(|i| json!({"op": "put", "key": format!("fill-{batch}-{i}"), "value": {"i": i}}))
            .collect();
        txn(&all, ops);
    }
    set_pairs(&all, 1);
    let down = (leader + 1) % 3;
    let down_url = cluster.nodes[down].url();
    eventually(STEP, "the follower at generation 1", || {
        stale_gen(&down_url, &format!("pair-{:02}", PAIRS - 1), true).filter(|(g, ..)| *g == 1)
    });
    cluster.nodes[down].kill9();
    let live: Vec<String> = (0..3)
        .filter(|&i| i != down)
        .map(|i| cluster.nodes[i].url())
        .collect();

    // The pairs move to generation 2 together, then enough entries follow
    // that the leader's log no longer reaches back to the follower's.
    set_pairs(&live, 2);
    for i in 0..400 {
        write(
            reqwest::Method::PUT,
            &live,
            &format!("/kv/after-{i}"),
            &json!(i),
        );
    }

    cluster.nodes[down].restart();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new([(); 2].map(|()| AtomicUsize::new(0)));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (url, stop, reads) = (down_url.clone(), Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if r == 0 {
                        let Some(gens) = stale_page(&url) else {
                            continue;
                        };
                        assert_eq!(gens.len(), PAIRS, "{gens:?}");
                        assert!(gens.iter().all(|g| *g == gens[0]), "a mixed page: {gens:?}");
                        reads[usize::from(gens[0] == 2)].fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // One key, then its partner: never the new one first
                    // and the old one after.
                    let (first, second) = if r == 1 {
                        (0, PAIRS - 1)
                    } else {
                        (PAIRS - 1, 0)
                    };
                    let Some((a, version, revision)) =
                        stale_gen(&url, &format!("pair-{first:02}"), false)
                    else {
                        continue;
                    };
                    assert!(
                        version <= revision,
                        "version {version} past revision {revision}"
                    );
                    let Some((b, ..)) = stale_gen(&url, &format!("pair-{second:02}"), false) else {
                        continue;
                    };
                    assert!(b >= a, "read generation {a} and then {b}");
                    reads[usize::from(a == 2)].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A reader that stopped saw a mix: its panic is the failure, below.
    let stopped = || readers.iter().any(|r| r.is_finished());
    eventually(STEP, "the snapshot installed", || {
        (stopped()
            || cluster.nodes[down]
                .log()
                .contains("installed a snapshot from the leader"))
        .then_some(())
    });
    eventually(STEP, "reads of the new state", || {
        (stopped() || reads[1].load(Ordering::Relaxed) > 10).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("a reader saw a mixed state");
    }
    assert!(
        cluster.nodes[down]
            .log()
            .contains("installed a snapshot from the leader")
    );
    eprintln!(
        "stale reads on the follower: {} of the old state, {} of the new",
        reads[0].load(Ordering::Relaxed),
        reads[1].load(Ordering::Relaxed)
    );
    let count = |url: &str| -> Option<Value> {
        let response = http()
            .get(format!("{url}/kv/count?prefix=fill-&consistency=stale"))
            .send()
            .ok()?;
        response.json().ok()
    };
    eventually(STEP, "the same count on both", || {
        let on_leader = count(&live[0])?;
        (on_leader["count"].as_u64() == Some(FILL as u64) && count(&down_url)? == on_leader)
            .then_some(())
    });
}
