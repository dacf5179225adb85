//! Webhooks on a cluster (SPEC §10): the leader delivers, every member
//! holds the subscription's durable cursor (logged through Raft), and when
//! the leader is `kill -9`ed the new one resumes from that cursor: every
//! acknowledged write reaches the receiver at least once, and for each key
//! the versions first arrive in order. The receiver is a real HTTP server
//! on 127.0.0.1 (a plain TCP loop, keep-alive).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{TestCluster, eventually, http, read as read_retrying};
use serde_json::{Value, json};

const FAST: [&str; 4] = ["--raft-heartbeat-ms", "100", "--raft-election-ms", "500"];

/// (key, version) of every delivery, in arrival order.
type Deliveries = Arc<Mutex<Vec<(String, u64)>>>;

/// Answers one connection's requests with 200, recording each payload.
fn serve(stream: TcpStream, got: &Deliveries) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let event: Value = serde_json::from_slice(&body).expect("payload is JSON");
        got.lock().expect("lock").push((
            event["key"].as_str().expect("key").to_string(),
            event["version"].as_u64().expect("version"),
        ));
        if out
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// A receiver on 127.0.0.1; returns its URL and what it got.
fn receiver() -> (String, Deliveries) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got: Deliveries = Arc::default();
    let shared = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let got = Arc::clone(&shared);
            std::thread::spawn(move || serve(stream, &got));
        }
    });
    (url, got)
}

/// Writes `rounds` versions of keys `w-0`..`w-4` through `leader`; returns
/// each acknowledged (key, version).
fn write(leader: &str, rounds: usize, tag: &str) -> Vec<(String, u64)> {
    let client = http();
    let mut acked = Vec::new();
    for n in 0..rounds {
        for k in 0..5 {
            let key = format!("w-{k}");
            let r = client
                .put(format!("{leader}/kv/{key}"))
                .json(&json!({"tag": tag, "n": n}))
                .send()
                .expect("PUT");
            assert!(r.status().is_success(), "PUT {key}: {}", r.status());
            let version = r.json::<Value>().expect("JSON")["version"]
                .as_u64()
                .expect("version");
            acked.push((key, version));
        }
    }
    acked
}

#[test]
fn a_new_leader_resumes_webhook_delivery_from_the_replicated_cursor() {
    let mut cluster = TestCluster::start(3, &FAST);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let (url, got) = receiver();
    let body = json!({"prefix": "w-", "callback_url": url});

    let follower = (leader + 1) % 3;
    let redirected = http()
        .post(cluster.nodes[follower].at("/pubsub/subscribe"))
        .json(&body)
        .send()
        .expect("subscribe");
    assert_eq!(redirected.status(), 307);
    let created = http()
        .post(cluster.nodes[leader].at("/pubsub/subscribe"))
        .json(&body)
        .send()
        .expect("subscribe");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();

    let mut acked = write(&cluster.nodes[leader].url(), 20, "first");
    let last = acked.last().expect("writes").1;
    // Delivered, and the cursor that says so is on every member.
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(30),
            "the cursor replicated to every member",
            || {
                let status: Value = http()
                    .get(node.at(&format!("/pubsub/subscriptions/{id}")))
                    .send()
                    .ok()?
                    .json()
                    .ok()?;
                (status["cursor"].as_u64()? >= last).then_some(())
            },
        );
    }

    // More writes, and the leader dies while it may still be delivering.
    acked.extend(write(&cluster.nodes[leader].url(), 20, "second"));
    cluster.nodes[leader].kill9();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = cluster.leader_among(&survivors, Duration::from_secs(30));
    acked.extend(write(&cluster.nodes[new].url(), 20, "third"));

    let wanted: BTreeSet<(String, u64)> = acked.iter().cloned().collect();
    eventually(
        Duration::from_secs(60),
        "every acknowledged write delivered",
        || {
            let got: BTreeSet<(String, u64)> = got.lock().expect("lock").iter().cloned().collect();
            wanted.is_subset(&got).then_some(())
        },
    );
    // Per key, each version first arrives after the ones before it.
    let got = got.lock().expect("lock").clone();
    let mut first_seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (key, version) in &got {
        if seen.insert((key.as_str(), *version)) {
            first_seen.entry(key).or_default().push(*version);
        }
    }
    for (key, versions) in &first_seen {
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{key}: versions first arrived as {versions:?}"
        );
    }
    // The first 100 were delivered and their cursor replicated before the
    // kill: the new leader starts after them, not from the beginning.
    let first: BTreeSet<(String, u64)> = acked[..100].iter().cloned().collect();
    let again = got.iter().filter(|d| first.contains(*d)).count() - first.len();
    assert_eq!(again, 0, "the new leader sent the first writes again");
    eprintln!(
        "webhooks across a kill -9 of the leader: {} acknowledged writes, {} deliveries ({} sent again)",
        acked.len(),
        got.len(),
        got.len() - seen.len()
    );
    // The stale subscription state on a follower still answers.
    let read = read_retrying(&cluster.nodes[new].at(&format!("/pubsub/subscriptions/{id}")));
    assert_eq!(read.status(), 200);
}
