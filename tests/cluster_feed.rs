//! The live feed on a cluster member reaches back beyond its ring: a
//! follower keeps the changes it applies on disk (`<data-dir>/events/`),
//! so `/events?since=` older than the ring replays every change once, in
//! revision order, and then goes live, also after a `kill -9` and restart.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::cluster::{TestCluster, eventually, http, http_waiting};
use serde_json::json;

/// Changes written; ten times the ring the members keep.
const CHANGES: u64 = 1_000;

/// Four writers put `CHANGES` keys through the leader at `url`, some as
/// transactions of several puts.
fn write_changes(url: &str) {
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let url = url.to_string();
            std::thread::spawn(move || {
                let client = http();
                let mut i = w;
                while i < CHANGES {
                    if i % 40 == w {
                        // A transaction of 4 puts: revisions taken together.
                        let success: Vec<_> = (0..4)
                            .map(|j| json!({"op": "put", "key": format!("t{i}-{j}"), "value": j}))
                            .collect();
                        let answer = client
                            .post(format!("{url}/txn"))
                            .json(&json!({"compare": [], "success": success, "failure": []}))
                            .send()
                            .expect("POST /txn");
                        assert_eq!(answer.status(), 200, "txn");
                        i += 16;
                    } else {
                        let answer = client
                            .put(format!("{url}/kv/k{i}"))
                            .json(&json!({"i": i}))
                            .send()
                            .expect("PUT");
                        assert!(answer.status().is_success(), "put: {}", answer.status());
                        i += 4;
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
}

/// The revision the member at `url` has applied (a stale read's header).
fn applied(url: &str) -> Option<u64> {
    let answer = http()
        .get(format!("{url}/kv/probe?consistency=stale"))
        .send()
        .ok()?;
    answer
        .headers()
        .get("dododb-revision")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads `/events?since=1` on `url` until every revision up to `newest`
/// came, then has `live` written and waits for it: returns every id seen,
/// failing on a reset.
fn replay_then_live(url: &str, newest: u64, live: impl FnOnce()) -> Vec<u64> {
    let response = http_waiting(50)
        .get(format!("{url}/events?since=1"))
        .send()
        .expect("GET /events");
    assert_eq!(response.status(), 200);
    let mut lines = BufReader::new(response).lines();
    let mut ids = Vec::new();
    let mut live = Some(live);
    while ids.last().is_none_or(|&last| last <= newest) {
        let line = lines.next().expect("the feed goes on").expect("a line");
        assert!(!line.starts_with("event: reset"), "no reset, after {ids:?}");
        if let Some(id) = line.strip_prefix("id: ") {
            ids.push(id.parse().expect("a numeric id"));
        }
        if ids.last() == Some(&newest)
            && let Some(live) = live.take()
        {
            live();
        }
    }
    ids
}

#[test]
fn a_follower_replays_beyond_its_ring_from_disk_then_goes_live_also_after_kill_9() {
    let args = [
        "--raft-heartbeat-ms",
        "100",
        "--raft-election-ms",
        "500",
        "--feed-retained-events",
        "100",
    ];
    let mut cluster = TestCluster::start(3, &args);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let leader_url = cluster.nodes[leader].url();
    let follower = (leader + 1) % 3;
    let probe = http()
        .put(format!("{leader_url}/kv/probe"))
        .json(&json!(0))
        .send()
        .expect("PUT");
    assert!(probe.status().is_success());
    write_changes(&leader_url);
    let newest = applied(&leader_url).expect("the leader's revision");
    assert!(newest >= CHANGES, "{newest} revisions");

    let put_live = |key: &str| {
        let answer = http()
            .put(format!("{leader_url}/kv/{key}"))
            .json(&json!("live"))
            .send()
            .expect("PUT");
        assert!(answer.status().is_success());
    };
    let follower_url = cluster.nodes[follower].url();
    let ids = replay_then_live(&follower_url, newest, || put_live("live1"));
    let expected: Vec<u64> = (2..=newest + 1).collect();
    assert_eq!(
        ids, expected,
        "every change after 1 once, in order, then live"
    );

    cluster.nodes[follower].kill9();
    cluster.nodes[follower].restart();
    let newest = newest + 1;
    eventually(Duration::from_secs(30), "the follower catching up", || {
        applied(&follower_url).filter(|&r| r >= newest)
    });
    let ids = replay_then_live(&follower_url, newest, || put_live("live2"));
    let expected: Vec<u64> = (2..=newest + 1).collect();
    assert_eq!(ids, expected, "after the restart too");
}
