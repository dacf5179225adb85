//! The one HTTP client of the tests and what every test file asks of a
//! server through it: a PUT that must succeed, `/system/stats`, a fully
//! read reply, and the check that an answer is the SPEC's error envelope.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::TestServer;

/// How long one read (the answer's head, or the next piece of a body) may
/// stall before the request fails: a hang guard, never a timing assert.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The one client: no proxy, and a timeout per read rather than for the
/// whole request, so the same client serves plain requests and the live
/// feed's endless streams. Each call builds a new client with a pool of
/// its own, so a request from a fresh `client()` opens a new connection.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(READ_TIMEOUT)
        .build()
        .expect("client")
}

/// Percent-encodes a key for use as one path segment.
pub fn enc(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path of a key: `/kv/` and the key percent-encoded.
pub fn kv(key: &str) -> String {
    format!("/kv/{}", enc(key))
}

/// `PUT /kv/{key}` with `body` (on the server's pooled client), which must succeed (200 or 201); returns
/// the new version.
pub async fn put(server: &TestServer, key: &str, body: &str) -> u64 {
    put_at(server, &kv(key), key, body).await
}

/// `PUT /kv/{key}?ttl={ttl_secs}` with `body`, which must succeed; returns
/// the new version.
pub async fn put_ttl(server: &TestServer, key: &str, body: &str, ttl_secs: u64) -> u64 {
    put_at(server, &format!("{}?ttl={ttl_secs}", kv(key)), key, body).await
}

async fn put_at(server: &TestServer, path: &str, key: &str, body: &str) -> u64 {
    let reply = Reply::read(
        server
            .http()
            .put(server.at(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key:?}: {e:?}")),
    )
    .await;
    assert!(
        reply.status == StatusCode::CREATED || reply.status == StatusCode::OK,
        "PUT {key:?}: {} {}",
        reply.status,
        reply.text()
    );
    reply.json()["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("PUT {key:?} answered no version: {}", reply.text()))
}

/// `GET /kv/{key}`: the stored bytes as text, or `None` on 404; any other
/// status fails the test.
pub async fn get(server: &TestServer, key: &str) -> Option<String> {
    let reply = Reply::read(
        server
            .http()
            .get(server.at(&kv(key)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {key:?}: {e:?}")),
    )
    .await;
    match reply.status {
        StatusCode::NOT_FOUND => None,
        StatusCode::OK => Some(reply.text()),
        other => panic!("GET {key:?}: {other} {}", reply.text()),
    }
}

/// `GET path`, which must answer 200 with JSON; returns the document.
pub async fn get_json(server: &TestServer, path: &str) -> Value {
    let reply = Reply::read(
        server
            .http()
            .get(server.at(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e:?}")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text());
    reply.json()
}

/// `GET /system/stats`, which must answer 200 with JSON.
pub async fn stats(server: &TestServer) -> Value {
    get_json(server, "/system/stats").await
}

/// `POST /system/snapshot`, which must succeed; returns its answer.
pub async fn snapshot(server: &TestServer) -> Value {
    let answer = client()
        .post(server.at("/system/snapshot"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("json")
}

/// `POST /txn` with `ops` as its `success` branch, which must answer 200
/// and succeed; returns the answer.
pub async fn txn_succeeds(server: &TestServer, ops: Vec<Value>) -> Value {
    let response = client()
        .post(server.at("/txn"))
        .json(&serde_json::json!({ "success": ops }))
        .send()
        .await
        .expect("POST /txn");
    assert_eq!(response.status(), 200, "POST /txn");
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["succeeded"], true, "{answer}");
    answer
}

/// The value of the unlabelled series `name` in `/metrics` (a counter's
/// `…_total`), or 0 when it is not there yet.
pub async fn metric(server: &TestServer, name: &str) -> f64 {
    let response = server
        .http()
        .get(server.at("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("metrics");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// One answer of the server, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// Reads a whole response.
    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("reply body").to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Parses a whole answer read off a raw connection: status line,
    /// headers, blank line, body (as sent; no chunked decoding).
    pub fn parse(raw: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(raw);
        let (head, _) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let body = raw[head.len() + 4..].to_vec();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.append(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).expect("name"),
                value.trim().parse().expect("value"),
            );
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of a {} reply is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// The version in the `ETag` header (`"<version>"`).
    pub fn etag_version(&self) -> u64 {
        let tag = self.header("etag").expect("an ETag header");
        tag.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("ETag is not a quoted version: {tag:?}"))
    }

    /// Asserts that this is the SPEC's error envelope with `status`:
    /// JSON, exactly `{"error": {"code": code, "message": "<non-empty>"}}`.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{status} {code}"
        );
        let doc = self.json();
        let outer = doc.as_object().expect("envelope is an object");
        assert_eq!(outer.len(), 1, "only an `error` field: {doc}");
        let error = doc["error"].as_object().expect("`error` is an object");
        assert_eq!(error.len(), 2, "only `code` and `message`: {doc}");
        assert_eq!(error["code"], json!(code), "{doc}");
        let message = error["message"].as_str().expect("message is a string");
        assert!(!message.is_empty(), "message says something: {doc}");
    }
}

/// Reads `response` and asserts that it is the SPEC's error envelope with
/// `status` and `code` (see [`Reply::assert_error`]); returns the envelope.
pub async fn assert_error(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let reply = Reply::read(response).await;
    reply.assert_error(status, code);
    reply.json()
}

/// Reads `n` events from an open `/events` (SSE) response, waiting up to
/// `within` for them; returns their JSON payloads in the order they came.
pub async fn sse_events(
    response: &mut reqwest::Response,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    let mut text = String::new();
    while text.matches("data: ").count() < n {
        assert!(std::time::Instant::now() < deadline, "feed so far: {text}");
        let chunk = tokio::time::timeout(within, response.chunk())
            .await
            .expect("a chunk in time")
            .expect("chunk")
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("payload"))
        .collect()
}

/// Reads `n` changes from `/events?{query}` (opened as `response`, from
/// `since`), waiting up to `within` for them. A burst of changes (an
/// import's batch) may cut a client off for falling behind (a `lagged`
/// reset, SPEC §6); it then resumes with `since=` the last change it read,
/// as any client does, and reads on. Returns the changes in the order they
/// came; any other reset fails the test.
pub async fn sse_changes(
    server: &TestServer,
    mut response: reqwest::Response,
    query: &str,
    since: u64,
    n: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    let mut changes: Vec<Value> = Vec::new();
    let mut text = String::new();
    let mut lagged = false;
    while changes.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} changes so far",
            changes.len()
        );
        let chunk = tokio::time::timeout(within, response.chunk())
            .await
            .expect("a chunk in time")
            .expect("chunk");
        let Some(chunk) = chunk else {
            assert!(lagged, "the stream ended after {} changes", changes.len());
            let last = changes
                .last()
                .map_or(since, |c| c["version"].as_u64().expect("version"));
            response = client()
                .get(server.at(&format!("/events?{query}&since={last}")))
                .send()
                .await
                .expect("feed");
            (text, lagged) = (String::new(), false);
            continue;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        let Some(end) = text.rfind('\n') else {
            continue;
        };
        for line in text[..end].lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let doc: Value = serde_json::from_str(data).expect("payload");
            if doc["event"] == "reset" {
                assert_eq!(doc["reason"], "lagged", "{doc}");
                lagged = true;
            } else {
                changes.push(doc);
            }
        }
        text.drain(..=end);
    }
    changes
}
