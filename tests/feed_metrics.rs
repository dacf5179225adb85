//! The live feed and observability end to end, on a real server: SSE and
//! WebSocket clients, `since` resumes across the replay/live seam under
//! concurrent writes, resets, slow clients being cut off, `/metrics` parsed
//! as Prometheus text, and `/system/stats` after known traffic.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    Stop, TestServer, assert_error, client, poll_until, put, snapshot, stats, txn_succeeds,
};
use futures_util::{SinkExt, Stream, StreamExt};
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{
    MetricsExposition, OpenMetricsType, OpenMetricsValue, PrometheusType, PrometheusValue,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for any one step; only a hang guard, never a timing assert.
const STEP: Duration = Duration::from_secs(60);

/// One SSE frame.
#[derive(Debug, Clone)]
struct Frame {
    id: Option<u64>,
    event: String,
    data: String,
}

impl Frame {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("frame data is JSON")
    }
}

/// A minimal SSE reader over a streaming response body.
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Sse {
    async fn open(server: &TestServer, query: &str) -> Sse {
        let response = client()
            .get(server.at(&format!("/events{query}")))
            .send()
            .await
            .expect("GET /events");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream",
            "content type"
        );
        Sse {
            body: Box::pin(response.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next frame with an event (comments are skipped); `None` when the
    /// server ends the stream.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                let mut frame = Frame {
                    id: None,
                    event: String::new(),
                    data: String::new(),
                };
                let mut data_lines = Vec::new();
                for line in text.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        frame.id = Some(id.parse().expect("numeric id"));
                    } else if let Some(event) = line.strip_prefix("event: ") {
                        frame.event = event.to_string();
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        data_lines.push(data);
                    } else {
                        assert!(
                            line.is_empty() || line.starts_with(':'),
                            "unexpected SSE line {line:?}"
                        );
                    }
                }
                frame.data = data_lines.join("\n");
                if frame.event.is_empty() && frame.data.is_empty() {
                    continue;
                }
                return Some(frame);
            }
            let chunk = tokio::time::timeout(STEP, self.body.next())
                .await
                .expect("an SSE frame within the step limit");
            match chunk {
                Some(Ok(bytes)) => self.buf.extend_from_slice(&bytes),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next frame, which must be a change; returns its id.
    async fn next_id(&mut self) -> u64 {
        let frame = self.next().await.expect("stream still open");
        frame
            .id
            .unwrap_or_else(|| panic!("expected a change, got {frame:?}"))
    }
}

async fn delete(server: &TestServer, key: &str) -> u64 {
    let response = server
        .http()
        .delete(server.at(&format!("/kv/{key}")))
        .send()
        .await
        .expect("DELETE");
    assert!(response.status().is_success(), "DELETE {key}");
    response.json::<Value>().await.expect("DELETE answer")["version"]
        .as_u64()
        .expect("version")
}

/// 1,000 changes of `value` as 4 concurrent transactions of 250 puts:
/// enough to overrun a client that does not read its feed, in a handful
/// of requests. (1,000 single PUTs took long enough on a loaded machine
/// that the WebSocket's 30 s send timeout dropped the stalled socket
/// before its 4,096-event queue overflowed: no 1008, never cut off.)
async fn write_burst(server: &Arc<TestServer>, value: &str) {
    let value: Value = serde_json::from_str(value).expect("a JSON value");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let server = Arc::clone(server);
            let ops: Vec<Value> = (0..250)
                .map(|i| json!({"op": "put", "key": format!("w{w}-{i}"), "value": value}))
                .collect();
            tokio::spawn(async move {
                txn_succeeds(&server, ops).await;
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("every transaction succeeds");
    }
}

fn ws_url(server: &TestServer, query: &str) -> String {
    format!("{}/ws{query}", server.url.replacen("http://", "ws://", 1))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(server: &TestServer, query: &str) -> Ws {
    let (ws, response) = tokio_tungstenite::connect_async(ws_url(server, query))
        .await
        .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message as JSON; pings and pongs are skipped.
async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(STEP, ws.next())
            .await
            .expect("a message within the step limit")
            .expect("socket open")
            .expect("socket error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON message"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

fn check_payload(doc: &Value, version: u64, key: &str, event: &str) {
    assert_eq!(doc["id"], format!("evt_{version}"), "{doc}");
    assert_eq!(doc["version"], version, "{doc}");
    assert_eq!(doc["key"], key, "{doc}");
    assert_eq!(doc["event"], event, "{doc}");
    let timestamp = doc["timestamp"].as_str().expect("timestamp");
    assert!(
        timestamp.ends_with('Z') && timestamp.len() >= 20,
        "RFC 3339 UTC: {timestamp}"
    );
    assert!(humantime::parse_rfc3339(timestamp).is_ok(), "{timestamp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_ordered_changes_with_versions_as_ids() {
    let server = TestServer::start(&["--fsync", "never"]);
    let mut sse = Sse::open(&server, "?prefix=user:").await;
    let v1 = put(&server, "user:1", "{\"name\":\n  \"Ada\"}").await;
    let other = put(&server, "other:1", "1").await;
    let v2 = put(&server, "user:2", "[1, 2]").await;
    let v3 = put(&server, "user:1", "{\"name\": \"Grace\"}").await;
    let v4 = delete(&server, "user:2").await;
    assert!(v1 < other && other < v2 && v2 < v3 && v3 < v4);

    let expected = [
        (v1, "user:1", "update", Value::Null, json!({"name": "Ada"})),
        (v2, "user:2", "update", Value::Null, json!([1, 2])),
        (
            v3,
            "user:1",
            "update",
            json!({"name": "Ada"}),
            json!({"name": "Grace"}),
        ),
        (v4, "user:2", "delete", json!([1, 2]), Value::Null),
    ];
    for (version, key, event, old, new) in expected {
        let frame = sse.next().await.expect("a frame");
        assert_eq!(frame.id, Some(version), "{frame:?}");
        assert_eq!(frame.event, event);
        let doc = frame.json();
        check_payload(&doc, version, key, event);
        assert_eq!(doc["old_value"], old);
        assert_eq!(doc["new_value"], new);
    }

    // Without a prefix, every change; from `since`, the retained ones after it.
    let mut all = Sse::open(&server, &format!("?since={v1}")).await;
    for version in [other, v2, v3, v4] {
        assert_eq!(all.next_id().await, version);
    }

    // Bad parameters get the error envelope.
    for query in ["?since=abc", "?since=-1", "?topic=x"] {
        let response = client()
            .get(server.at(&format!("/events{query}")))
            .send()
            .await
            .expect("GET");
        assert_error(
            response,
            reqwest::StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
    }
    let response = client()
        .get(server.at("/events"))
        .header("last-event-id", "nope")
        .send()
        .await
        .expect("GET");
    assert_error(
        response,
        reqwest::StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_from_last_event_id() {
    let server = TestServer::start(&["--in-memory"]);
    for i in 0..5 {
        put(&server, &format!("k{i}"), "1").await;
    }
    let response = client()
        .get(server.at("/events"))
        .header("last-event-id", "3")
        .send()
        .await
        .expect("GET");
    let mut sse = Sse {
        body: Box::pin(response.bytes_stream()),
        buf: Vec::new(),
    };
    assert_eq!(sse.next_id().await, 4);
    assert_eq!(sse.next_id().await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_streams_the_same_payloads() {
    let server = TestServer::start(&["--fsync", "never"]);
    let mut ws = ws_connect(&server, "?prefix=a").await;
    let v1 = put(&server, "a1", "{\"n\": 1}").await;
    put(&server, "b1", "2").await;
    let v3 = put(&server, "a2", "3").await;
    let v4 = delete(&server, "a1").await;
    let first = ws_next(&mut ws).await;
    check_payload(&first, v1, "a1", "update");
    assert_eq!(first["new_value"], json!({"n": 1}));
    check_payload(&ws_next(&mut ws).await, v3, "a2", "update");
    let deleted = ws_next(&mut ws).await;
    check_payload(&deleted, v4, "a1", "delete");
    assert_eq!(deleted["old_value"], json!({"n": 1}));

    // Replay over WebSocket, and the same bytes as over SSE.
    let mut replay = ws_connect(&server, "?since=0").await;
    let mut sse = Sse::open(&server, "?since=0").await;
    for version in 1..=v4 {
        let over_ws = ws_next(&mut replay).await;
        let over_sse = sse.next().await.expect("frame");
        assert_eq!(over_ws["version"], version);
        assert_eq!(over_sse.id, Some(version));
        assert_eq!(over_ws, over_sse.json());
    }
    replay.close(None).await.expect("close");

    // A plain GET is not a handshake.
    let response = client().get(server.at("/ws")).send().await.expect("GET");
    assert_error(
        response,
        reqwest::StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_the_seam_sees_every_revision_once() {
    let server = Arc::new(TestServer::start(&["--fsync", "never"]));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                for i in 0..150 {
                    put(&server, &format!("w{w}-{}", i % 7), &i.to_string()).await;
                }
            })
        })
        .collect();
    let reader = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            // Reconnect after a few changes each time, resuming after the
            // last id seen, while the writers go on.
            let mut seen: Vec<u64> = Vec::new();
            let mut reconnects = 0;
            let lengths = [1, 7, 40, 3, 120, 15];
            loop {
                let since = seen.last().copied().unwrap_or(0);
                let mut sse = Sse::open(&server, &format!("?since={since}")).await;
                for _ in 0..lengths[reconnects % lengths.len()] {
                    let frame = sse.next().await.expect("frame");
                    let doc = frame.json();
                    seen.push(frame.id.expect("id"));
                    if doc["key"] == "end" {
                        return (seen, reconnects);
                    }
                }
                reconnects += 1;
            }
        })
    };
    for writer in writers {
        writer.await.expect("writer");
    }
    let last = put(&server, "end", "true").await;
    let (seen, reconnects) = tokio::time::timeout(STEP * 5, reader)
        .await
        .expect("reader finished")
        .expect("reader");
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    // Every change takes a revision, so with no prefix they are contiguous.
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_older_than_retained_starts_with_a_reset() {
    let server = TestServer::start(&["--in-memory", "--feed-retained-events", "5"]);
    for i in 1..=20 {
        assert_eq!(put(&server, &format!("k{i}"), "1").await, i);
    }
    // 16..=20 are retained: resuming after 15 needs no reset.
    let mut sse = Sse::open(&server, "?since=15").await;
    for version in 16..=20 {
        assert_eq!(sse.next_id().await, version);
    }

    let mut sse = Sse::open(&server, "?since=2").await;
    let mut ws = ws_connect(&server, "?since=2").await;
    let reset = sse.next().await.expect("reset frame");
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.id, None);
    let doc = reset.json();
    assert_eq!(doc["reason"], "not_retained");
    assert_eq!(doc["oldest_retained"], 16);
    let over_ws = ws_next(&mut ws).await;
    assert_eq!(over_ws["event"], "reset");
    assert_eq!(over_ws["reason"], "not_retained");
    // Then live.
    put(&server, "k21", "1").await;
    assert_eq!(sse.next_id().await, 21);
    assert_eq!(ws_next(&mut ws).await["version"], 21);

    // A revision this server never made is a reset too.
    let mut ahead = Sse::open(&server, "?since=1000").await;
    let reset = ahead.next().await.expect("reset frame");
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["reason"], "ahead");

    let stats = stats(&server).await;
    assert_eq!(stats["feed"]["retained"], 5);
    assert_eq!(stats["feed"]["oldest_retained"], 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_while_a_fast_one_keeps_up() {
    let server = Arc::new(TestServer::start(&["--in-memory"]));
    // Opened but never read until the end.
    let slow = client()
        .get(server.at("/events"))
        .send()
        .await
        .expect("slow client");
    assert_eq!(slow.status(), 200);
    let mut fast = Sse::open(&server, "").await;
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let frame = fast.next().await.expect("the fast client stays connected");
            assert_eq!(frame.event, "update", "{frame:?}");
            seen.push(frame.id.expect("id"));
            if frame.data.contains("\"key\":\"end\"") {
                return seen;
            }
        }
    });

    let value = format!("\"{}\"", "x".repeat(1024));
    let cut_off = Arc::new(AtomicBool::new(false));
    let mut rounds = 0;
    while !cut_off.load(Ordering::Acquire) {
        rounds += 1;
        assert!(rounds <= 40, "the slow client was never cut off");
        write_burst(&server, &value).await;
        let s = stats(&server).await;
        cut_off.store(s["feed"]["cut_off"] == 1, Ordering::Release);
    }
    let s = stats(&server).await;
    assert_eq!(s["feed"]["clients"], 1, "only the fast client is left: {s}");
    let last = put(&server, "end", "true").await;
    let seen = tokio::time::timeout(STEP, fast_reader)
        .await
        .expect("fast reader done")
        .expect("fast reader");
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());

    // The slow client gets what was already on its way, in order, then a
    // reset saying why, then the end of the stream.
    let mut slow = Sse {
        body: Box::pin(slow.bytes_stream()),
        buf: Vec::new(),
    };
    let mut got = Vec::new();
    let reset = loop {
        let frame = slow.next().await.expect("a reset before the end");
        match frame.id {
            Some(id) => got.push(id),
            None => break frame,
        }
    };
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["reason"], "lagged");
    assert!(
        slow.next().await.is_none(),
        "the stream ends after the reset"
    );
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    assert!((got.len() as u64) < last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_websocket_client_is_closed() {
    let server = Arc::new(TestServer::start(&["--in-memory"]));
    let mut slow = ws_connect(&server, "").await;
    let value = format!("\"{}\"", "y".repeat(1024));
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 40, "the slow client was never cut off");
        write_burst(&server, &value).await;
        if stats(&server).await["feed"]["cut_off"] == 1 {
            break;
        }
    }
    let mut last = 0;
    let close = loop {
        let message = tokio::time::timeout(STEP, slow.next())
            .await
            .expect("a message within the step limit")
            .expect("socket open")
            .expect("socket error");
        match message {
            Message::Text(text) => {
                let doc: Value = serde_json::from_str(&text).expect("JSON");
                if doc["event"] == "reset" {
                    assert_eq!(doc["reason"], "lagged");
                } else {
                    let version = doc["version"].as_u64().expect("version");
                    assert_eq!(version, last + 1, "in order");
                    last = version;
                }
            }
            Message::Close(frame) => break frame.expect("a close frame"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.starts_with("lagged"), "{}", close.reason);
}

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Scrapes `/metrics` asking for OpenMetrics, as Prometheus does, and
/// parses it with a strict OpenMetrics parser.
async fn scrape(http: &reqwest::Client, server: &TestServer) -> Exposition {
    let response = http
        .get(server.at("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ASCII")
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    parse_openmetrics(&text).unwrap_or_else(|e| panic!("not OpenMetrics text ({e:?}):\n{text}"))
}

/// The value of the series of family `name` whose labels include `labels`
/// (a histogram's count); 0 when there is none yet.
fn metric(scrape: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(family) = scrape.families.get(name) else {
        return 0.0;
    };
    let found: Vec<f64> = family
        .iter_samples()
        .filter(|sample| {
            let set = sample.get_labelset().expect("labels");
            labels
                .iter()
                .all(|(k, v)| set.iter().any(|(n, value)| n == k && value == v))
        })
        .map(|sample| match &sample.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(v) | OpenMetricsValue::Unknown(v) => v.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.expect("histogram count") as f64,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    found.first().copied().unwrap_or(0.0)
}

/// Without an `Accept` that asks for OpenMetrics, `/metrics` is Prometheus
/// text 0.0.4: a strict parser of that format reads it, with the same
/// families and values as the OpenMetrics answer.
#[tokio::test]
async fn metrics_are_prometheus_text_unless_openmetrics_is_asked_for() {
    let http = client();
    let server = TestServer::start(&["--in-memory"]);
    for i in 0..3 {
        put(&server, &format!("k{i}"), "1").await;
    }
    for accept in [None, Some("*/*"), Some("text/plain")] {
        let mut request = http.get(server.at("/metrics"));
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.expect("GET /metrics");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        let text = response.text().await.expect("body");
        assert!(!text.contains("# EOF"), "{text}");
        let parsed = parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e:?}):\n{text}"));
        let keys = parsed.families.get("dododb_keys").expect("dododb_keys");
        let values: Vec<f64> = keys
            .iter_samples()
            .map(|sample| match &sample.value {
                PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => v.as_f64(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(values, [3.0]);
        let requests = parsed
            .families
            .get("dododb_http_requests_total")
            .expect("counters are named after their samples");
        assert!(matches!(requests.family_type, PrometheusType::Counter));
    }
    // The same families as OpenMetrics, where counters drop `_total`.
    let openmetrics = scrape(&http, &server).await;
    assert_eq!(metric(&openmetrics, "dododb_keys", &[]), 3.0);
    assert!(openmetrics.families.contains_key("dododb_http_requests"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let http = client();
    let server = TestServer::start(&["--fsync", "always"]);
    let put_labels = [("route", "/kv/{key}"), ("method", "PUT"), ("status", "2xx")];
    let get_labels = [("route", "/kv/{key}"), ("method", "GET"), ("status", "2xx")];
    let missing_labels = [("route", "/kv/{key}"), ("method", "GET"), ("status", "4xx")];
    let unmatched = [("route", "unmatched"), ("status", "4xx")];

    let before = scrape(&http, &server).await;
    assert_eq!(metric(&before, "dododb_keys", &[]), 0.0);

    for i in 0..3 {
        put(&server, &format!("m{i}"), "{\"n\": 1}").await;
    }
    for _ in 0..2 {
        let response = client().get(server.at("/kv/m0")).send().await.expect("GET");
        assert_eq!(response.status(), 200);
    }
    let response = client()
        .get(server.at("/kv/nope"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
    let response = client()
        .get(server.at("/no/such/route"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
    let _feed = Sse::open(&server, "").await;

    let after = scrape(&http, &server).await;
    for (name, kind) in [
        ("dododb_http_requests", OpenMetricsType::Counter),
        (
            "dododb_http_request_duration_seconds",
            OpenMetricsType::Histogram,
        ),
        ("dododb_keys", OpenMetricsType::Gauge),
        ("dododb_revision", OpenMetricsType::Gauge),
        ("dododb_wal_appends", OpenMetricsType::Counter),
        ("dododb_wal_fsyncs", OpenMetricsType::Counter),
        ("dododb_wal_bytes", OpenMetricsType::Counter),
        ("dododb_wal_fsync_seconds", OpenMetricsType::Counter),
        ("dododb_snapshots", OpenMetricsType::Counter),
        ("dododb_snapshot_seconds", OpenMetricsType::Counter),
        ("dododb_expired_keys", OpenMetricsType::Counter),
        ("dododb_feed_clients", OpenMetricsType::Gauge),
        ("dododb_webhook_delivered", OpenMetricsType::Counter),
        ("dododb_webhook_retried", OpenMetricsType::Counter),
        ("dododb_webhook_failed", OpenMetricsType::Counter),
        ("dododb_webhook_dropped", OpenMetricsType::Counter),
        ("dododb_webhook_queue_depth", OpenMetricsType::Gauge),
        (
            "dododb_webhook_delivery_latency_seconds",
            OpenMetricsType::Counter,
        ),
    ] {
        let family = after
            .families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(family.family_type, kind, "{name}");
    }
    let moved = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(moved("dododb_http_requests", &put_labels), 3.0);
    assert_eq!(moved("dododb_http_requests", &get_labels), 2.0);
    assert_eq!(moved("dododb_http_requests", &missing_labels), 1.0);
    assert_eq!(moved("dododb_http_requests", &unmatched), 1.0);
    assert_eq!(
        moved("dododb_http_request_duration_seconds", &put_labels),
        3.0
    );
    assert_eq!(
        moved("dododb_http_request_duration_seconds", &get_labels),
        2.0
    );
    assert_eq!(metric(&after, "dododb_keys", &[]), 3.0);
    assert_eq!(metric(&after, "dododb_revision", &[]), 3.0);
    assert_eq!(moved("dododb_wal_appends", &[]), 3.0);
    assert!(moved("dododb_wal_fsyncs", &[]) >= 1.0);
    assert!(moved("dododb_wal_bytes", &[]) > 0.0);
    assert_eq!(metric(&after, "dododb_feed_clients", &[]), 1.0);
    assert_eq!(moved("dododb_feed_events", &[]), 3.0);
    // Raw paths never become labels.
    let requests = &after.families["dododb_http_requests"];
    for sample in requests.iter_samples() {
        let set = sample.get_labelset().expect("labels");
        assert!(
            set.iter().all(|(_, value)| !value.contains("m0")),
            "a raw path leaked into a label"
        );
    }

    snapshot(&server).await;
    let snapped = scrape(&http, &server).await;
    assert_eq!(metric(&snapped, "dododb_snapshots", &[]), 1.0);
    assert_eq!(metric(&snapped, "dododb_last_snapshot_keys", &[]), 3.0);
    assert!(metric(&snapped, "dododb_last_snapshot_bytes", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_right_after_known_traffic() {
    let server = TestServer::start(&["--fsync", "always"]);
    let _feed = Sse::open(&server, "?prefix=s").await;
    let mut ws = ws_connect(&server, "").await;
    for i in 0..4 {
        put(&server, &format!("s{i}"), "1").await;
    }
    put(&server, "s0", "2").await;
    delete(&server, "s1").await;
    // The WebSocket client has seen all six, so the feed has too.
    for version in 1..=6 {
        assert_eq!(ws_next(&mut ws).await["version"], version);
    }
    let s = stats(&server).await;
    assert_eq!(s["keys"], 3, "{s}");
    assert_eq!(s["revision"], 6);
    assert_eq!(s["wal"]["appends"], 6);
    assert_eq!(s["feed"]["clients"], 2);
    assert_eq!(s["feed"]["subscriptions"], 2);
    assert_eq!(s["feed"]["events"], 6);
    assert_eq!(s["feed"]["retained"], 6);
    assert_eq!(s["feed"]["oldest_retained"], 1);
    assert_eq!(s["feed"]["cut_off"], 0);

    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    // The server notices the close on its next read; wait for it by
    // watching the count.
    poll_until("the closed WebSocket leaves the client count", async || {
        (stats(&server).await["feed"]["clients"] == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_feeds_do_not_hold_up_a_graceful_shutdown() {
    let mut server = TestServer::start(&["--fsync", "always"]);
    let mut sse = Sse::open(&server, "").await;
    let mut ws = ws_connect(&server, "").await;
    put(&server, "a", "1").await;
    assert_eq!(sse.next_id().await, 1);
    assert_eq!(ws_next(&mut ws).await["version"], 1);
    server.stop(Stop::Term);
    assert!(sse.next().await.is_none(), "the SSE stream ends");
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    if let Some(frame) = close {
        assert_eq!(u16::from(frame.code), 1001);
    }
    let _ = ws.send(Message::Close(None)).await;
}

/// A change that took its revision but reaches the log later than the
/// feed's gap timeout (1 s), while changes with later revisions commit:
/// the feed must wait for it, not skip it. `DODODB_TEST_WAL_STALL_MS`
/// holds a transaction writing a `stall…` key for that long between taking
/// its revision and reaching the WAL, as a slow disk would hold its commit.
/// The transaction holds its key's shard lock (and one async worker) while
/// it waits, so the server gets spare workers: a later write that happens
/// to share that shard waits, the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_slower_than_the_gap_timeout_is_still_streamed_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::try_start_with_env(
        &tmp.path().join("data"),
        &[],
        &[
            ("DODODB_TEST_WAL_STALL_MS", "4000"),
            ("TOKIO_WORKER_THREADS", "8"),
        ],
    )
    .expect("start");
    let http = client();
    let mut sse = Sse::open(&server, "").await;
    let stalled = {
        let http = http.clone();
        let url = server.at("/txn");
        let body = json!({"success": [{"op": "put", "key": "stall-1", "value": "late"}]});
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    // Once the stalled change holds revision 1, later writes take 2, 3, ...
    poll_until("the stalled write takes a revision", async || {
        (stats(&server).await["revision"] == 1).then_some(())
    })
    .await;
    let puts: Vec<_> = (0..8)
        .map(|i| {
            let http = http.clone();
            let url = server.at(&format!("/kv/other-{i}"));
            tokio::spawn(async move { http.put(url).body("1").send().await })
        })
        .collect();
    // The first later write to be answered, the moment it is answered.
    let (first, _, rest) = futures_util::future::select_all(puts).await;
    assert!(
        !stalled.is_finished(),
        "a later write committed only after the stalled one"
    );
    assert_eq!(first.expect("task").expect("put").status(), 201);
    for put in rest {
        assert_eq!(put.await.expect("task").expect("put").status(), 201);
    }
    let stalled = stalled.await.expect("task").expect("txn");
    assert_eq!(stalled.status(), 200);
    let stalled: Value = stalled.json().await.expect("json");
    assert_eq!(
        stalled["revision"], 1,
        "the stalled write took the first revision: {stalled}"
    );
    // The feed holds the later changes back until the stalled one commits,
    // then streams all of them in version order.
    for want in 1..=9 {
        assert_eq!(sse.next_id().await, want);
    }
    assert!(
        !server.log().contains("going on without them"),
        "no revision was given up on: {}",
        server.log()
    );
}
