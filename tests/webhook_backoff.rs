//! The back-off of a failing webhook receiver is the subscription's, not
//! each key's (SPEC §5): real servers and real receivers on 127.0.0.1 that
//! count every request they get. A receiver that fails gets one probe per
//! back-off step however many keys have events due, its events still end
//! `failed` on the schedule, the first 2xx ends the back-off, and other
//! subscriptions do not wait.

mod common;

use std::time::Instant;

use common::webhook::{Answer, Receiver, subscribe, subscription};
use common::{TestServer, client, metric, poll_until};
use serde_json::json;

/// Attempts a subscription may have in flight when its receiver starts
/// failing (the server's limit of attempts in flight per subscription).
const MAX_IN_FLIGHT: usize = 64;

const KEYS: usize = 400;

/// Writes one value to each of `KEYS` keys `{prefix}{i}` with 8 writers.
async fn write_keys(server: &TestServer, prefix: &str) {
    let mut writers = Vec::new();
    for w in 0..8 {
        let (url, prefix) = (server.url.clone(), prefix.to_string());
        writers.push(tokio::spawn(async move {
            let http = client();
            for i in (w..KEYS).step_by(8) {
                let r = http
                    .put(format!("{url}/kv/{prefix}{i}"))
                    .body("1")
                    .send()
                    .await
                    .expect("PUT");
                assert!(r.status().is_success(), "PUT: {}", r.status());
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
}

/// A receiver that answers 500 to events of 400 keys on a `300ms` × 3
/// schedule: every event ends `failed` after its 4 attempts, but the
/// receiver sees one request per back-off step (plus the attempts that
/// were already in flight when the first failure came back), not one per
/// key and step (1,600 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_one_probe_per_step_however_many_keys() {
    let server = TestServer::start(&["--webhook-retry-schedule", "300ms,300ms,300ms"]);
    let failing = Receiver::start_on(0, &[], Answer::Status(500)).await;
    let id = subscribe(
        &server,
        &json!({"prefix": "b", "callback_url": failing.url()}),
    )
    .await;
    let started = Instant::now();
    write_keys(&server, "b").await;
    let s = poll_until("every event failed", async || {
        let s = subscription(&server, &id).await;
        (s["failed"] == KEYS).then_some(s)
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(s["status"], "failing");
    let requests = failing.got().len();
    // One probe per step; a step lasts at least 240 ms (300 ms − 20 %
    // jitter); so at most this many steps fit in the time it took.
    let steps = usize::try_from(elapsed.as_millis() / 240).expect("steps") + 1;
    assert!(
        requests <= MAX_IN_FLIGHT + steps,
        "{requests} requests for {KEYS} keys in {elapsed:?}: more than one per back-off step"
    );
    assert!(
        requests >= 4,
        "each step sends a probe: only {requests} requests"
    );
    // Every event was charged its 4 attempts; the failed ones were not
    // sent each time.
    let failed = metric(&server, "dododb_webhook_failed_total").await;
    assert_eq!(failed, KEYS as f64);

    // The receiver heals: the next probe gets a 2xx, the back-off ends and
    // new events of many keys go out at once.
    failing.answer_from_now(Answer::Status(200));
    let before = failing.got().len();
    write_keys(&server, "b").await;
    let got = failing.wait_for(before + KEYS).await;
    let acked: std::collections::HashSet<&str> = got[before..]
        .iter()
        .map(common::webhook::Received::id)
        .collect();
    assert_eq!(acked.len(), KEYS, "each new event delivered");
    poll_until("active again", async || {
        let s = subscription(&server, &id).await;
        (s["status"] == "active").then_some(())
    })
    .await;
}

/// On a `1h` schedule, a receiver that fails gets only the attempts that
/// were in flight when its first failure came back, while a healthy
/// subscription to the same keys gets every event: per-key back-off would
/// have sent each of the 400 keys once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_holds_back_neither_writers_nor_other_subscriptions() {
    let server = TestServer::start(&["--webhook-retry-schedule", "1h,1h"]);
    let failing = Receiver::start_on(0, &[], Answer::Status(500)).await;
    let healthy = Receiver::start(&[]).await;
    let dead = subscribe(
        &server,
        &json!({"prefix": "h", "callback_url": failing.url()}),
    )
    .await;
    subscribe(
        &server,
        &json!({"prefix": "h", "callback_url": healthy.url()}),
    )
    .await;
    write_keys(&server, "h").await;
    healthy.wait_for(KEYS).await;
    poll_until("the failing subscription read every event", async || {
        let retried = metric(&server, "dododb_webhook_retried_total").await;
        let s = subscription(&server, &dead).await;
        (s["status"] == "failing" && retried >= 1.0 && failing.got().len() == retried as usize)
            .then_some(())
    })
    .await;
    let requests = failing.got().len();
    assert!(
        requests <= MAX_IN_FLIGHT,
        "{requests} requests to a failing receiver for {KEYS} keys within its first back-off step"
    );
    assert_eq!(subscription(&server, &dead).await["failed"], 0);
}
