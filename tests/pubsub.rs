//! Webhook subscriptions end to end: a real server, real receivers on
//! 127.0.0.1 answering with scripted statuses.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{Stop, TestServer, assert_error, client, poll_until, put};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
    at: Instant,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer, in order; 200 once they run out.
    script: Arc<Mutex<VecDeque<u16>>>,
    /// Never answer (a hanging subscriber).
    hang: bool,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, raw: Bytes) -> StatusCode {
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    r.got.lock().expect("lock").push(Received {
        headers,
        body,
        raw,
        at: Instant::now(),
    });
    if r.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let status = r.script.lock().expect("lock").pop_front().unwrap_or(200);
    StatusCode::from_u16(status).expect("status")
}

impl Receiver {
    async fn start(script: &[u16], hang: bool) -> (Receiver, String) {
        let receiver = Receiver {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            hang,
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until `n` requests arrived; returns them.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        poll_until(&format!("{n} deliveries"), async || {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn subscribe(server: &TestServer, body: Value) -> (StatusCode, Value) {
    let r = client()
        .post(server.at("/pubsub/subscribe"))
        .json(&body)
        .send()
        .await
        .expect("subscribe");
    let status = r.status();
    (status, r.json().await.expect("json"))
}

/// `GET /pubsub/subscriptions`: the listed subscriptions.
async fn subscriptions(server: &TestServer) -> Vec<Value> {
    let r = client()
        .get(server.at("/pubsub/subscriptions"))
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.expect("json");
    list["subscriptions"].as_array().expect("array").clone()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// An HMAC computed here, independently of the server's code.
fn expected_signature(key: &[u8], r: &Received) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    let signed = format!(
        "{}.{}.",
        header(r, "webhook-id"),
        header(r, "webhook-timestamp")
    );
    mac.update(signed.as_bytes());
    mac.update(&r.raw);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn payload_headers_and_signatures_follow_the_spec() {
    let server = TestServer::start(&[]);
    let (plain, plain_url) = Receiver::start(&[], false).await;
    let (whsec, whsec_url) = Receiver::start(&[], false).await;
    let (status, sub) = subscribe(
        &server,
        json!({"key": "demo_value", "callback_url": plain_url, "secret": "s3cret"}),
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
    let (status, _) = subscribe(
        &server,
        json!({"key": "demo_value", "callback": whsec_url, "secret": whsec_secret}),
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
    assert_eq!(header(event, "webhook-id"), format!("evt_{version}"));
    assert_eq!(header(event, "content-type"), "application/json");
    let ts: u64 = header(event, "webhook-timestamp")
        .parse()
        .expect("unix seconds");
    assert!(ts > 1_600_000_000);
    assert_eq!(
        header(event, "webhook-signature"),
        expected_signature(b"s3cret", event)
    );

    let got = whsec.wait_for(2).await;
    assert_eq!(
        header(&got[1], "webhook-signature"),
        expected_signature(b"binary\x00key", &got[1])
    );
}

#[tokio::test]
async fn failures_are_retried_with_growing_gaps_and_410_removes() {
    // The old flag: attempts doubling from half a second.
    let server = TestServer::start(&["--webhook-max-attempts", "8"]);
    let (retrying, url) = Receiver::start(&[500, 500, 200], false).await;
    subscribe(&server, json!({"key": "k", "callback_url": url})).await;
    put(&server, "k", "1").await;
    let got = retrying.wait_for(3).await;
    assert_eq!(got.len(), 3, "three attempts");
    let ids: Vec<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "same webhook-id on every retry: {ids:?}"
    );
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(
        gap1 >= Duration::from_millis(350) && gap2 > gap1,
        "gaps grow: {gap1:?}, {gap2:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(retrying.got().len(), 3, "no attempt after the 2xx");

    let (_gone, gone_url) = Receiver::start(&[410], false).await;
    subscribe(&server, json!({"prefix": "", "callback_url": gone_url})).await;
    put(&server, "x", "1").await;
    poll_until("410 removes the subscription", async || {
        let list = subscriptions(&server).await;
        (!list.iter().any(|s| s["callback_url"] == gone_url.as_str())).then_some(())
    })
    .await;
}

#[tokio::test]
async fn events_of_one_key_arrive_in_version_order() {
    let server = TestServer::start(&["--fsync", "never"]);
    let (receiver, url) = Receiver::start(&[], false).await;
    subscribe(&server, json!({"key": "hot", "callback_url": url})).await;
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
    let (hanging, hang_url) = Receiver::start(&[], true).await;
    let (healthy, ok_url) = Receiver::start(&[], false).await;
    subscribe(&server, json!({"prefix": "", "callback_url": hang_url})).await;
    subscribe(&server, json!({"prefix": "", "callback_url": ok_url})).await;
    for i in 0..50 {
        put(&server, &format!("k{i}"), "1").await;
    }
    let got = healthy.wait_for(50).await;
    assert_eq!(got.len(), 50, "the healthy subscriber got everything");
    assert!(
        hanging.got().len() < 50,
        "the hanging one is stuck, as expected"
    );
}

#[tokio::test]
async fn delete_clear_and_expire_events_and_prefix_filtering() {
    let server = TestServer::start(&[]);
    let (receiver, url) = Receiver::start(&[], false).await;
    subscribe(&server, json!({"prefix": "a:", "callback_url": url})).await;
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
    let (s1, first) = subscribe(&server, json!({"key": "k", "callback_url": url})).await;
    let (s2, again) = subscribe(&server, json!({"key": "k", "callback_url": url})).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (201, 200));
    assert_eq!(first["id"], again["id"]);
    let (_, by_prefix) = subscribe(
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
    let (receiver, url) = Receiver::start(&[], false).await;
    let (_, sub) = subscribe(
        &server,
        json!({"key": "k", "callback_url": url, "secret": "s"}),
    )
    .await;
    let (_, removed) = subscribe(&server, json!({"key": "other", "callback_url": url})).await;
    let r = client()
        .post(server.at("/pubsub/unsubscribe"))
        .json(&json!({"id": removed["id"]}))
        .send()
        .await
        .expect("unsub");
    assert_eq!(r.status(), 200);
    server.restart(Stop::Kill9, &[]);
    let ids: Vec<Value> = subscriptions(&server)
        .await
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, vec![sub["id"].clone()]);
    put(&server, "k", "1").await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        header(&got[0], "webhook-signature"),
        expected_signature(b"s", &got[0]),
        "the secret survived too"
    );
    // And through a snapshot.
    assert_eq!(
        client()
            .post(server.at("/system/snapshot"))
            .send()
            .await
            .expect("snap")
            .status(),
        200
    );
    server.restart(Stop::Term, &[]);
    assert_eq!(subscriptions(&server).await.len(), 1);
}
