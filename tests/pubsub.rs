//! Webhook subscriptions end to end: a real server, real receivers on
//! 127.0.0.1 answering with scripted statuses.

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::webhook::{
    Answer, Received, Receiver, subscribe, subscription, subscription_ids, subscriptions,
};
use common::{Stop, TestServer, assert_error, client, get_json, metric, poll_until, put, snapshot};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

/// `POST /pubsub/subscribe` with `body`: the status and the answer, for
/// the tests of what it refuses and of idempotence.
async fn try_subscribe(server: &TestServer, body: Value) -> (StatusCode, Value) {
    let r = client()
        .post(server.at("/pubsub/subscribe"))
        .json(&body)
        .send()
        .await
        .expect("subscribe");
    let status = r.status();
    (status, r.json().await.expect("json"))
}

/// An HMAC computed here, independently of the server's code.
fn expected_signature(key: &[u8], r: &Received) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    let signed = format!("{}.{}.", r.id(), r.header("webhook-timestamp"));
    mac.update(signed.as_bytes());
    mac.update(&r.raw);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn payload_headers_and_signatures_follow_the_spec() {
    let server = TestServer::start(&[]);
    let plain = Receiver::start(&[]).await;
    let whsec = Receiver::start(&[]).await;
    let (status, sub) = try_subscribe(
        &server,
        json!({"key": "demo_value", "callback_url": plain.url(), "secret": "s3cret"}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(
        sub["id"].as_str().is_some_and(|id| id.starts_with("sub_")),
        "{sub}"
    );
    assert_eq!(sub["key"], "demo_value");
    assert!(sub.get("secret").is_none(), "secrets are never shown");
    let whsec_secret = format!("whsec_{}", STANDARD.encode(b"binary\x00key"));
    let (status, _) = try_subscribe(
        &server,
        json!({"key": "demo_value", "callback": whsec.url(), "secret": whsec_secret}),
    )
    .await;
    assert_eq!(status, 201, "`callback` is accepted for callback_url");

    put(&server, "demo_value", r#"{"stage": 2}"#).await;
    let version = put(&server, "demo_value", r#"{"stage": 3}"#).await;
    let got = plain.wait_for(2).await;
    assert_eq!(got.len(), 2);
    let event = &got[1];
    assert_eq!(event.body["id"], format!("evt_{version}"));
    assert_eq!(event.body["key"], "demo_value");
    assert_eq!(event.body["event"], "update");
    assert_eq!(event.body["old_value"], json!({"stage": 2}));
    assert_eq!(event.body["new_value"], json!({"stage": 3}));
    assert_eq!(event.body["version"], version);
    assert!(
        event.body["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T'))
    );
    assert_eq!(
        got[0].body["old_value"],
        Value::Null,
        "a new key has old_value null"
    );
    assert_eq!(event.header("webhook-id"), format!("evt_{version}"));
    assert_eq!(event.header("content-type"), "application/json");
    let ts: u64 = event
        .header("webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!(ts > 1_600_000_000);
    assert_eq!(
        event.header("webhook-signature"),
        expected_signature(b"s3cret", event)
    );

    let got = whsec.wait_for(2).await;
    assert_eq!(
        got[1].header("webhook-signature"),
        expected_signature(b"binary\x00key", &got[1])
    );
}

/// The webhook counters of `/metrics`, to compare before and after.
async fn webhook_counters(server: &TestServer) -> [f64; 5] {
    let mut counters = [0.0; 5];
    for (n, name) in ["delivered", "retried", "failed", "gone", "dropped"]
        .iter()
        .enumerate()
    {
        counters[n] = metric(server, &format!("dododb_webhook_{name}_total")).await;
    }
    counters
}

/// How each webhook counter moved: `[delivered, retried, failed, gone,
/// dropped]`.
async fn moved(server: &TestServer, before: [f64; 5]) -> [f64; 5] {
    let after = webhook_counters(server).await;
    std::array::from_fn(|n| after[n] - before[n])
}

/// Subscribes `receiver` to the key `k` and writes `k` once: the
/// subscription's id, the webhook counters before the write, and its
/// version.
async fn subscribe_and_write(server: &TestServer, receiver: &Receiver) -> (String, [f64; 5], u64) {
    let id = subscribe(server, &json!({"key": "k", "callback_url": receiver.url()})).await;
    let before = webhook_counters(server).await;
    (id, before, put(server, "k", "1").await)
}

/// `--webhook-max-attempts 8` (the old flag): attempts doubling from half
/// a second, the same `webhook-id` on each, and none after the 2xx, watched
/// for longer than the next retry could be due (2 s, +20% jitter).
#[tokio::test]
async fn failures_are_retried_with_growing_gaps_and_none_after_the_2xx() {
    let server = TestServer::start(&["--webhook-max-attempts", "8"]);
    let retrying = Receiver::start(&[Answer::Status(500), Answer::Status(500)]).await;
    let (id, before, version) = subscribe_and_write(&server, &retrying).await;
    let got = retrying.wait_for(3).await;
    assert_eq!(got.len(), 3, "three attempts");
    assert!(
        got.iter().all(|r| r.id() == format!("evt_{version}")),
        "same webhook-id on every retry: {:?}",
        got.iter().map(Received::id).collect::<Vec<_>>()
    );
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(400) && gap2 >= Duration::from_millis(800),
        "0.5 s then 1 s, each -20% at most: {gap1:?}, {gap2:?}"
    );
    retrying
        .assert_quiet(3, Duration::from_secs(3), "no attempt after the 2xx")
        .await;
    let state = subscription(&server, &id).await;
    assert_eq!(state["status"], "active", "{state}");
    assert_eq!(state["cursor"], version, "{state}");
    assert_eq!(state["failed"], 0, "{state}");
    assert_eq!(moved(&server, before).await, [1.0, 2.0, 0.0, 0.0, 0.0]);
}

/// A 429 or 503 with `Retry-After` puts the next attempt off that long,
/// far beyond the 100 ms the schedule says.
#[tokio::test]
async fn retry_after_on_429_and_503_is_honoured() {
    let server = TestServer::start(&["--webhook-retry-schedule", "100ms,100ms,100ms,100ms"]);
    let receiver = Receiver::start(&[Answer::RetryAfter(429, 2), Answer::RetryAfter(503, 1)]).await;
    let (id, before, version) = subscribe_and_write(&server, &receiver).await;
    let got = receiver.wait_for(3).await;
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_secs(2),
        "429 with Retry-After: 2 was retried after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_secs(1),
        "503 with Retry-After: 1 was retried after {gap2:?}"
    );
    assert!(got.iter().all(|r| r.id() == format!("evt_{version}")));
    poll_until("the cursor passes the event", async || {
        (subscription(&server, &id).await["cursor"] == version).then_some(())
    })
    .await;
    assert_eq!(moved(&server, before).await, [1.0, 2.0, 0.0, 0.0, 0.0]);
}

/// With three attempts (`100ms,200ms`) and a receiver that always says
/// 500, the event is given up after the third: listed as failed, counted,
/// never attempted a fourth time; the key's next event still goes out.
#[tokio::test]
async fn an_event_is_given_up_after_the_last_attempt() {
    let server = TestServer::start(&["--webhook-retry-schedule", "100ms,200ms"]);
    let receiver = Receiver::start_on(0, &[], Answer::Status(500)).await;
    let (id, before, version) = subscribe_and_write(&server, &receiver).await;
    let state = poll_until("the event is given up", async || {
        let state = subscription(&server, &id).await;
        (state["failed"] == 1).then_some(state)
    })
    .await;
    assert_eq!(state["status"], "failing", "{state}");
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "{state}"
    );
    assert_eq!(receiver.got().len(), 3, "three attempts");
    // A fourth attempt would be due 200 ms (+20%) after the third.
    receiver
        .assert_quiet(3, Duration::from_secs(1), "no attempt after the last")
        .await;
    let failed = get_json(&server, &format!("/pubsub/subscriptions/{id}/failed")).await;
    assert_eq!(
        failed["events"],
        json!([{"revision": version, "key": "k", "attempts": 3, "last_error": "HTTP 500 Internal Server Error"}]),
        "{failed}"
    );
    assert_eq!(moved(&server, before).await, [0.0, 2.0, 1.0, 0.0, 0.0]);
    // The key is not stuck behind its failed event, which is not sent again.
    receiver.answer_from_now(Answer::Status(200));
    let next = put(&server, "k", "2").await;
    let got = receiver.wait_for(4).await;
    assert_eq!(got[3].version(), next);
    receiver
        .assert_quiet(4, Duration::from_secs(1), "the failed event stays failed")
        .await;
    assert_eq!(moved(&server, before).await, [1.0, 2.0, 1.0, 0.0, 0.0]);
}

/// An attempt that gets no answer within `--webhook-timeout-secs` counts as
/// failed and is retried with the same `webhook-id`.
#[tokio::test]
async fn a_timed_out_attempt_is_retried() {
    let server = TestServer::start(&[
        "--webhook-timeout-secs",
        "1",
        "--webhook-retry-schedule",
        "100ms,100ms",
    ]);
    let receiver = Receiver::start(&[Answer::Hang]).await;
    let (id, before, version) = subscribe_and_write(&server, &receiver).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[0].id(), got[1].id());
    assert_eq!(got[1].version(), version);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried after the 1 s timeout, not before: {gap:?}"
    );
    poll_until("the retry is acknowledged", async || {
        (subscription(&server, &id).await["cursor"] == version).then_some(())
    })
    .await;
    let state = subscription(&server, &id).await;
    assert_eq!(state["failed"], 0, "{state}");
    assert_eq!(state["status"], "active", "{state}");
    assert_eq!(moved(&server, before).await, [1.0, 1.0, 0.0, 0.0, 0.0]);
}

/// A receiver that answers 410 Gone loses its subscription: at once, for
/// every later change (a second subscriber on the same prefix shows when
/// they were sent), and after a `kill -9` and restart.
#[tokio::test]
async fn a_410_removes_the_subscription_for_good() {
    let mut server = TestServer::start(&[]);
    let gone = Receiver::start(&[Answer::Status(410)]).await;
    let control = Receiver::start(&[]).await;
    let gone_id = subscribe(&server, &json!({"prefix": "g", "callback_url": gone.url()})).await;
    let control_id = subscribe(
        &server,
        &json!({"prefix": "g", "callback_url": control.url()}),
    )
    .await;
    assert_ne!(gone_id, control_id);
    let before = webhook_counters(&server).await;
    put(&server, "g1", "1").await;
    poll_until("410 removes the subscription", async || {
        let listed = subscriptions(&server).await;
        (!listed.iter().any(|s| s["id"] == gone_id.as_str())).then_some(())
    })
    .await;
    let missing = client()
        .get(server.at(&format!("/pubsub/subscriptions/{gone_id}")))
        .send()
        .await
        .expect("status");
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(
        moved(&server, before).await[3],
        1.0,
        "webhook_gone counted it"
    );
    // Later changes go to the other subscriber only.
    put(&server, "g2", "2").await;
    put(&server, "g3", "3").await;
    control.wait_for(3).await;
    gone.assert_quiet(1, Duration::from_secs(1), "no delivery after the 410")
        .await;
    // The removal is durable.
    server.restart(Stop::Kill9, &[]);
    let ids = subscription_ids(&server).await;
    assert_eq!(ids, vec![control_id], "after the restart");
    put(&server, "g4", "4").await;
    let got = control.wait_for(4).await;
    assert_eq!(got[3].key(), "g4");
    gone.assert_quiet(1, Duration::from_secs(1), "no delivery after a restart")
        .await;
}

#[tokio::test]
async fn events_of_one_key_arrive_in_version_order() {
    let server = TestServer::start(&["--fsync", "never"]);
    let receiver = Receiver::start(&[]).await;
    let url = receiver.url();
    subscribe(&server, &json!({"key": "hot", "callback_url": url})).await;
    for i in 0..1000 {
        put(&server, "hot", &format!("{{\"i\":{i}}}")).await;
    }
    let got = receiver.wait_for(1000).await;
    assert_eq!(got.len(), 1000);
    let versions: Vec<u64> = got
        .iter()
        .map(|r| r.body["version"].as_u64().expect("v"))
        .collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "out of order");
    let values: Vec<u64> = got
        .iter()
        .map(|r| r.body["new_value"]["i"].as_u64().expect("i"))
        .collect();
    assert_eq!(values, (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_hanging_subscriber_does_not_delay_a_healthy_one() {
    let server = TestServer::start(&["--webhook-timeout-secs", "60"]);
    let hanging = Receiver::start_on(0, &[], Answer::Hang).await;
    let healthy = Receiver::start(&[]).await;
    let hanging_id = subscribe(
        &server,
        &json!({"prefix": "", "callback_url": hanging.url()}),
    )
    .await;
    subscribe(
        &server,
        &json!({"prefix": "", "callback_url": healthy.url()}),
    )
    .await;
    let mut last = 0;
    for i in 0..50 {
        last = put(&server, &format!("k{i}"), "1").await;
    }
    let got = healthy.wait_for(50).await;
    assert_eq!(got.len(), 50, "the healthy subscriber got everything");
    // The hanging one may have been sent every event (POSTs for different
    // keys are pipelined), but it answered none, so none counts as
    // delivered to it.
    let state = subscription(&server, &hanging_id).await;
    assert!(
        state["cursor"].as_u64().expect("cursor") < last,
        "the hanging one is stuck, as expected: {state}"
    );
}

#[tokio::test]
async fn delete_clear_and_expire_events_and_prefix_filtering() {
    let server = TestServer::start(&[]);
    let receiver = Receiver::start(&[]).await;
    let url = receiver.url();
    subscribe(&server, &json!({"prefix": "a:", "callback_url": url})).await;
    let http = client();
    put(&server, "a:1", "1").await;
    put(&server, "b:1", "1").await;
    assert_eq!(
        http.delete(server.at("/kv/a:1"))
            .send()
            .await
            .expect("del")
            .status(),
        200
    );
    put(&server, "a:2", "2").await;
    put(&server, "a:3", "3").await;
    let cleared: Value = http
        .post(server.at("/kv/clear?prefix=a:"))
        .send()
        .await
        .expect("clear")
        .json()
        .await
        .expect("json");
    assert_eq!(cleared["cleared"], 2);
    common::put_ttl(&server, "a:ttl", "\"soon\"", 1).await;
    let got = receiver.wait_for(8).await;
    // Order is guaranteed per key (not across keys): compare per key.
    let mut per_key: std::collections::BTreeMap<String, Vec<(String, Value, Value)>> =
        Default::default();
    for r in &got {
        per_key
            .entry(r.body["key"].as_str().expect("key").to_string())
            .or_default()
            .push((
                r.body["event"].as_str().expect("event").to_string(),
                r.body["old_value"].clone(),
                r.body["new_value"].clone(),
            ));
    }
    let ev = |kind: &str, old: Value, new: Value| (kind.to_string(), old, new);
    let expected: std::collections::BTreeMap<String, Vec<(String, Value, Value)>> = [
        (
            "a:1",
            vec![
                ev("update", Value::Null, json!(1)),
                ev("delete", json!(1), Value::Null),
            ],
        ),
        (
            "a:2",
            vec![
                ev("update", Value::Null, json!(2)),
                ev("delete", json!(2), Value::Null),
            ],
        ),
        (
            "a:3",
            vec![
                ev("update", Value::Null, json!(3)),
                ev("delete", json!(3), Value::Null),
            ],
        ),
        (
            "a:ttl",
            vec![
                ev("update", Value::Null, json!("soon")),
                ev("expire", json!("soon"), Value::Null),
            ],
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(
        per_key, expected,
        "b:1 is outside the prefix; clear and expiry emit events"
    );
}

#[tokio::test]
async fn subscribe_validation_idempotence_and_unsubscribe() {
    let server = TestServer::start(&[]);
    let http = client();
    for (body, code) in [
        (
            json!({"key": "k", "callback_url": "ftp://x/y"}),
            "invalid_request",
        ),
        (
            json!({"key": "k", "callback_url": "/relative"}),
            "invalid_request",
        ),
        (json!({"key": "k"}), "invalid_request"),
        (
            json!({"callback_url": "http://127.0.0.1:1/h"}),
            "invalid_request",
        ),
        (
            json!({"key": "k", "prefix": "p", "callback_url": "http://127.0.0.1:1/h"}),
            "invalid_request",
        ),
        (
            json!({"key": "k", "callback_url": "http://127.0.0.1:1/h", "extra": 1}),
            "invalid_request",
        ),
        // A field that is there is a string: null is no way to leave it out.
        (
            json!({"key": null, "prefix": "p", "callback_url": "http://127.0.0.1:1/h"}),
            "invalid_request",
        ),
        (
            json!({"key": "k", "callback_url": "http://127.0.0.1:1/h", "secret": null}),
            "invalid_request",
        ),
    ] {
        let r = http
            .post(server.at("/pubsub/subscribe"))
            .json(&body)
            .send()
            .await
            .expect("subscribe");
        assert_error(r, StatusCode::BAD_REQUEST, code).await;
    }
    let r = http
        .post(server.at("/pubsub/subscribe"))
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    assert!(
        subscriptions(&server).await.is_empty(),
        "refused subscriptions changed nothing"
    );

    let url = "http://127.0.0.1:1/hook";
    let (s1, first) = try_subscribe(&server, json!({"key": "k", "callback_url": url})).await;
    let (s2, again) = try_subscribe(&server, json!({"key": "k", "callback_url": url})).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 200));
    assert_eq!(first["id"], again["id"]);
    let (_, by_prefix) = try_subscribe(
        &server,
        json!({"prefix": "p:", "callback_url": url, "secret": "x"}),
    )
    .await;
    let list = subscriptions(&server).await;
    assert_eq!(list.len(), 2);
    assert!(
        !list.iter().any(|s| s.to_string().contains("\"secret\"")),
        "secrets never shown: {list:?}"
    );

    let unsub = |body: Value| {
        http.post(server.at("/pubsub/unsubscribe"))
            .json(&body)
            .send()
    };
    assert_eq!(
        unsub(json!({"id": first["id"]}))
            .await
            .expect("unsub")
            .status(),
        200
    );
    assert_eq!(
        unsub(json!({"id": first["id"]}))
            .await
            .expect("unsub")
            .status(),
        404
    );
    let r = unsub(json!({"prefix": "p:", "callback_url": url}))
        .await
        .expect("unsub");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"removed": true})
    );
    assert_eq!(
        unsub(json!({"id": by_prefix["id"]}))
            .await
            .expect("unsub")
            .status(),
        404
    );
}

#[tokio::test]
async fn subscriptions_survive_restart() {
    let mut server = TestServer::start(&[]);
    let receiver = Receiver::start(&[]).await;
    let url = receiver.url();
    let sub = subscribe(
        &server,
        &json!({"key": "k", "callback_url": url, "secret": "s"}),
    )
    .await;
    let removed = subscribe(&server, &json!({"key": "other", "callback_url": url})).await;
    let r = client()
        .post(server.at("/pubsub/unsubscribe"))
        .json(&json!({"id": removed}))
        .send()
        .await
        .expect("unsub");
    assert_eq!(r.status(), 200);
    server.restart(Stop::Kill9, &[]);
    let ids = subscription_ids(&server).await;
    assert_eq!(ids, vec![sub]);
    put(&server, "k", "1").await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("webhook-signature"),
        expected_signature(b"s", &got[0]),
        "the secret survived too"
    );
    // And through a snapshot.
    snapshot(&server).await;
    server.restart(Stop::Term, &[]);
    assert_eq!(subscriptions(&server).await.len(), 1);
}
