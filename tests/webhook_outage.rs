//! Issue 16's test 2 (SPEC §5): a receiver answers 500 through an outage
//! while events keep coming; every event ends `failed` on the retry
//! schedule, then `recover` sends them all once it heals. Real server, real
//! receiver on 127.0.0.1.
//!
//! The suite runs a short outage on a short schedule; `scripts/webhook-outage`
//! runs the scale (`DODODB_OUTAGE_SECS=180`,
//! `DODODB_OUTAGE_SCHEDULE=1s,2s,4s`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::webhook::{Answer, Receiver, recover, subscribe, subscription};
use common::{TestServer, client, poll_until};
use serde_json::{Value, json};

/// Keys written per round.
const KEYS_PER_ROUND: usize = 25;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Writes one value to each of `KEYS_PER_ROUND` keys; returns the
/// acknowledged revisions.
async fn write_round(server: &TestServer, round: usize) -> Vec<u64> {
    let http = client();
    let mut versions = Vec::new();
    for k in 0..KEYS_PER_ROUND {
        let r = http
            .put(server.at(&format!("/kv/o{k}")))
            .body(format!("{{\"round\":{round}}}"))
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "PUT: {}", r.status());
        let v: Value = r.json().await.expect("json");
        versions.push(v["version"].as_u64().expect("version"));
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_ends_failed_then_recover_sends_every_event() {
    let outage = Duration::from_secs_f64(
        setting("DODODB_OUTAGE_SECS", "2")
            .parse()
            .expect("DODODB_OUTAGE_SECS"),
    );
    let schedule = setting("DODODB_OUTAGE_SCHEDULE", "100ms,200ms,400ms");
    let attempts = schedule.split(',').count() + 1;
    let receiver = Receiver::start_on(0, &[], Answer::Status(500)).await;
    let server = TestServer::start(&["--webhook-retry-schedule", &schedule]);
    let id = subscribe(
        &server,
        &json!({"prefix": "o", "callback_url": receiver.url()}),
    )
    .await;

    // Through the outage: a round of writes, then wait until its events
    // have failed, again and again.
    let started = Instant::now();
    let mut versions = Vec::new();
    let mut round = 0;
    while round < 2 || started.elapsed() < outage {
        versions.extend(write_round(&server, round).await);
        round += 1;
        let n = versions.len();
        let s = poll_until("the round's events to fail", async || {
            let s = subscription(&server, &id).await;
            (s["failed"] == n).then_some(s)
        })
        .await;
        assert_eq!(s["status"], "failing");
        assert_eq!(s["pending"], 0, "nothing left but failed events");
    }
    let outage_took = started.elapsed();
    let during = receiver.got().len();

    // Every event is listed as failed after all its attempts.
    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/pubsub/subscriptions/{id}/failed?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = common::get_json(&server, &path).await;
        for e in page["events"].as_array().expect("events") {
            assert_eq!(e["attempts"], attempts);
            assert_eq!(e["last_error"], "HTTP 500 Internal Server Error");
            listed.push(e["revision"].as_u64().expect("revision"));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    versions.sort_unstable();
    assert_eq!(listed, versions);

    // The receiver heals; recover from the start sends every event again.
    receiver.answer_from_now(Answer::Status(200));
    let queued = recover(&server, &id, json!({"since": 0}).to_string()).await;
    assert_eq!(queued, json!({"queued": versions.len()}));
    let healed = poll_until("every recovered event delivered", async || {
        let s = subscription(&server, &id).await;
        (s["failed"] == 0).then_some(s)
    })
    .await;
    assert_eq!(healed["status"], "active");
    let got = receiver.got();
    let delivered: HashSet<u64> = got[during..].iter().map(|r| r.version()).collect();
    assert_eq!(delivered, versions.iter().copied().collect());
    // Per key, the recovered versions went out in order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for r in &got[during..] {
        let previous = last.insert(r.key().to_string(), r.version());
        assert!(
            previous.is_none_or(|p| p < r.version()),
            "{} out of order",
            r.key()
        );
    }
    eprintln!(
        "outage of {outage_took:?} on {schedule}: {} events failed after {attempts} attempts each \
         ({during} requests reached the receiver during the outage), then all {} recovered",
        versions.len(),
        delivered.len()
    );
}
