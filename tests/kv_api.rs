//! The key–value API over real HTTP against the real binary (SPEC §2, §3,
//! §4, §7): every route's statuses and exact bodies, the error envelope,
//! versions, byte-exact values, key encoding, a cursor walk under
//! concurrent writes, TTLs and conditional writes.
//!
//! Tests wait for background work (expiry) by polling with a deadline,
//! never by sleeping a fixed time, and assert no durations.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Reply, TestServer, client, enc, kv, poll_until, put, stats};
use futures_util::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw connection may wait for an answer before a test fails.
const DEADLINE: Duration = Duration::from_secs(15);

/// What a reader sees of one key: used to check that a refused request
/// changed nothing.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: StatusCode,
    etag: Option<String>,
    body: Vec<u8>,
    meta: Value,
}

/// A running server and the requests these tests make of it.
struct Api {
    server: TestServer,
}

impl Api {
    fn start(args: &[&str]) -> Api {
        Api {
            server: TestServer::start(args),
        }
    }

    /// Sends `method path` with `headers` and an optional body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Reply {
        let mut request = self
            .server
            .http()
            .request(method.clone(), self.server.at(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        Reply::read(response).await
    }

    /// `PUT /kv/{key}` with `body`.
    async fn put(&self, key: &str, body: &str) -> Reply {
        self.put_at(&kv(key), &[], body).await
    }

    /// `PUT path` (with its query string) with headers and `body`.
    async fn put_at(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.call(Method::PUT, path, headers, Some(body.as_bytes().to_vec()))
            .await
    }

    /// `PUT /kv/{key}` that must succeed; returns the new version.
    async fn put_ok(&self, key: &str, body: &str) -> u64 {
        put(&self.server, key, body).await
    }

    /// `GET /kv/{key}`.
    async fn get(&self, key: &str) -> Reply {
        self.call(Method::GET, &kv(key), &[], None).await
    }

    /// `DELETE /kv/{key}`.
    async fn delete(&self, key: &str) -> Reply {
        self.call(Method::DELETE, &kv(key), &[], None).await
    }

    /// `GET path` answered with JSON: `(status, body)`.
    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let reply = self.call(Method::GET, path, &[], None).await;
        (reply.status, reply.json())
    }

    /// `GET /kv/{key}/meta` that must succeed.
    async fn meta(&self, key: &str) -> Value {
        let (status, meta) = self.get_json(&format!("{}/meta", kv(key))).await;
        assert_eq!(status, StatusCode::OK, "meta of {key:?}: {meta}");
        meta
    }

    /// `GET /kv/count[?prefix=p]`.
    async fn count(&self, prefix: Option<&str>) -> u64 {
        let path = match prefix {
            Some(p) => format!("/kv/count?prefix={}", enc(p)),
            None => "/kv/count".to_string(),
        };
        let (status, body) = self.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body["count"].as_u64().expect("count")
    }

    /// Every key under `prefix`, walking the listing with cursors.
    async fn list_all(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/kv?prefix={}&limit=7", enc(prefix));
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get_json(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {page}");
            keys.extend(strings(&page["keys"]));
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return keys,
            }
        }
    }

    /// The server's last revision.
    async fn revision(&self) -> u64 {
        stats(&self.server).await["revision"]
            .as_u64()
            .expect("revision in stats")
    }

    /// Everything a reader can see of `key`.
    async fn seen(&self, key: &str) -> Seen {
        let reply = self.get(key).await;
        let meta = self
            .call(Method::GET, &format!("{}/meta", kv(key)), &[], None)
            .await
            .json();
        Seen {
            status: reply.status,
            etag: reply.header("etag").map(str::to_string),
            body: reply.body,
            meta,
        }
    }
}

fn strings(array: &Value) -> Vec<String> {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array}"))
        .iter()
        .map(|k| k.as_str().expect("a string").to_string())
        .collect()
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit u64")
}

/// Parses the RFC 3339 UTC form the server writes
/// (`2025-01-01T12:00:00Z` or `2025-01-01T12:00:00.123Z`) into unix ms.
fn rfc3339_ms(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let well_formed = (text.len() == 20 || (text.len() == 24 && bytes[19] == b'.'))
        && text.ends_with('Z')
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
        && bytes[13] == b':'
        && bytes[16] == b':';
    assert!(well_formed, "not RFC 3339 UTC: {text:?}");
    let num = |range: std::ops::Range<usize>| -> i64 {
        text[range]
            .parse()
            .unwrap_or_else(|_| panic!("not RFC 3339 UTC: {text:?}"))
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    let millis = if text.len() == 24 { num(20..23) } else { 0 };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + millis;
    u64::try_from(ms).expect("after 1970")
}

/// A JSON string document of exactly `n` bytes.
fn doc_of_len(n: usize) -> String {
    format!("\"{}\"", "x".repeat(n - 2))
}

// ---------------------------------------------------------------- routes

#[tokio::test]
async fn put_creates_with_201_then_replaces_with_200() {
    let api = Api::start(&[]);
    let first = api.put("greeting", r#"{"hello":"world"}"#).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text());
    let v1 = first.json()["version"].as_u64().expect("version");
    assert_eq!(
        first.json(),
        json!({"key": "greeting", "version": v1, "created": true})
    );
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.etag_version(), v1);

    let second = api.put("greeting", r#"{"hello":"again"}"#).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    let v2 = second.json()["version"].as_u64().expect("version");
    assert!(v2 > v1, "a replace takes a newer version: {v1} then {v2}");
    assert_eq!(
        second.json(),
        json!({"key": "greeting", "version": v2, "created": false})
    );
    assert_eq!(second.etag_version(), v2);
    assert_eq!(api.get("greeting").await.body, br#"{"hello":"again"}"#);
}

#[tokio::test]
async fn get_returns_the_stored_bytes_with_content_type_and_etag() {
    let api = Api::start(&[]);
    let body = "{ \"b\" : 2, \"a\" : [1, 2.50, \"x\"] }";
    let version = api.put_ok("doc", body).await;
    let reply = api.get("doc").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, body.as_bytes());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.header("etag"),
        Some(format!("\"{version}\"").as_str())
    );
}

#[tokio::test]
async fn head_answers_200_or_404_without_a_body() {
    let api = Api::start(&[]);
    let body = r#"{"some":"value"}"#;
    let version = api.put_ok("here", body).await;

    let found = api.call(Method::HEAD, &kv("here"), &[], None).await;
    assert_eq!(found.status, StatusCode::OK);
    assert!(
        found.body.is_empty(),
        "HEAD has no body: {:?}",
        found.text()
    );
    assert_eq!(found.etag_version(), version);
    assert_eq!(
        found.header("content-length"),
        Some(body.len().to_string().as_str()),
        "HEAD announces the length GET would send"
    );

    let missing = api.call(Method::HEAD, &kv("absent"), &[], None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.is_empty(), "HEAD has no body");
}

#[tokio::test]
async fn exists_reports_presence() {
    let api = Api::start(&[]);
    api.put_ok("present", "1").await;
    assert_eq!(
        api.get_json("/kv/present/exists").await,
        (StatusCode::OK, json!({"key": "present", "exists": true}))
    );
    assert_eq!(
        api.get_json("/kv/absent/exists").await,
        (StatusCode::OK, json!({"key": "absent", "exists": false}))
    );
}

#[tokio::test]
async fn meta_reports_version_size_and_expiry() {
    let api = Api::start(&[]);
    let body = r#"{"size":"counts bytes: é"}"#;
    let version = api.put_ok("plain", body).await;
    assert_eq!(
        api.meta("plain").await,
        json!({"key": "plain", "version": version, "size": body.len(), "expires_at": null})
    );

    let before = now_ms();
    let reply = api.put_at("/kv/timed?ttl=60", &[], "[]").await;
    let after = now_ms();
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let version = reply.json()["version"].as_u64().expect("version");
    let meta = api.meta("timed").await;
    let expires_at = meta["expires_at"].as_str().expect("expires_at is a string");
    assert_eq!(
        meta,
        json!({"key": "timed", "version": version, "size": 2, "expires_at": expires_at})
    );
    let at = rfc3339_ms(expires_at);
    // One second of slack each way for the clock's ms rounding.
    assert!(
        at + 1000 >= before + 60_000 && at <= after + 60_000 + 1000,
        "expires_at {expires_at} is 60 s after the write (written between {before} and {after} ms)"
    );

    let (status, _) = api.get_json("/kv/absent/meta").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_answers_200_with_a_version_then_404() {
    let api = Api::start(&[]);
    let put_version = api.put_ok("doomed", "true").await;
    let reply = api.delete("doomed").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let version = reply.json()["version"].as_u64().expect("version");
    assert!(version > put_version, "a delete takes a new revision");
    assert_eq!(
        reply.json(),
        json!({"key": "doomed", "deleted": true, "version": version})
    );
    assert_eq!(api.get("doomed").await.status, StatusCode::NOT_FOUND);
    api.delete("doomed")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    api.delete("never-was")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn count_counts_all_keys_or_those_under_a_prefix() {
    let api = Api::start(&[]);
    assert_eq!(
        api.get_json("/kv/count").await,
        (StatusCode::OK, json!({"count": 0}))
    );
    for key in ["user/1", "user/2", "user/3", "users", "order/1"] {
        api.put_ok(key, "{}").await;
    }
    assert_eq!(
        api.get_json("/kv/count").await,
        (StatusCode::OK, json!({"count": 5}))
    );
    assert_eq!(api.count(Some("user/")).await, 3);
    assert_eq!(api.count(Some("user")).await, 4);
    assert_eq!(api.count(Some("order/")).await, 1);
    assert_eq!(api.count(Some("nothing")).await, 0);
    assert_eq!(api.count(Some("")).await, 5);
    api.delete("user/2").await;
    assert_eq!(api.count(Some("user/")).await, 2);
    assert_eq!(api.count(None).await, 4);
}

#[tokio::test]
async fn clear_removes_all_keys_or_those_under_a_prefix() {
    let api = Api::start(&[]);
    for key in ["tmp/a", "tmp/b", "tmp/c", "keep/a", "keep/b"] {
        api.put_ok(key, "1").await;
    }
    let api = &api;
    let clear = async |path: &str| {
        let reply = api.call(Method::POST, path, &[], None).await;
        (reply.status, reply.json())
    };
    assert_eq!(
        clear("/kv/clear?prefix=tmp%2F").await,
        (StatusCode::OK, json!({"cleared": 3}))
    );
    assert_eq!(api.count(None).await, 2);
    assert_eq!(api.get("tmp/a").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.get("keep/a").await.status, StatusCode::OK);
    assert_eq!(
        clear("/kv/clear?prefix=tmp%2F").await,
        (StatusCode::OK, json!({"cleared": 0}))
    );
    assert_eq!(
        clear("/kv/clear").await,
        (StatusCode::OK, json!({"cleared": 2}))
    );
    assert_eq!(api.count(None).await, 0);
    assert_eq!(api.list_all("").await, Vec::<String>::new());
    assert_eq!(
        clear("/kv/clear").await,
        (StatusCode::OK, json!({"cleared": 0}))
    );
}

#[tokio::test]
async fn listing_pages_through_keys_in_byte_order() {
    let api = Api::start(&[]);
    // Byte order: upper case before lower case, "a10" before "a2", and
    // multi-byte UTF-8 after ASCII.
    let mut keys = vec!["a1", "a2", "a10", "a3", "B", "b1", "é"];
    for key in &keys {
        api.put_ok(key, "0").await;
    }
    keys.sort_unstable();
    assert_eq!(keys, ["B", "a1", "a10", "a2", "a3", "b1", "é"]);

    assert_eq!(
        api.get_json("/kv").await,
        (StatusCode::OK, json!({"keys": keys, "next_cursor": null}))
    );
    assert_eq!(
        api.get_json("/kv?prefix=a").await,
        (
            StatusCode::OK,
            json!({"keys": ["a1", "a10", "a2", "a3"], "next_cursor": null})
        )
    );
    assert_eq!(
        api.get_json("/kv?prefix=zzz").await,
        (StatusCode::OK, json!({"keys": [], "next_cursor": null}))
    );
    // Exactly `limit` keys left: no further page.
    assert_eq!(
        api.get_json("/kv?limit=7").await,
        (StatusCode::OK, json!({"keys": keys, "next_cursor": null}))
    );

    // Pages of 3: the cursor picks up right after the previous page.
    let mut seen = Vec::new();
    let mut path = "/kv?limit=3".to_string();
    let mut pages = 0;
    loop {
        let (status, page) = api.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = strings(&page["keys"]);
        assert!(got.len() <= 3, "{page}");
        seen.extend(got);
        pages += 1;
        match &page["next_cursor"] {
            Value::String(cursor) => path = format!("/kv?limit=3&cursor={cursor}"),
            Value::Null => break,
            other => panic!("next_cursor is a string or null: {other}"),
        }
    }
    assert_eq!(seen, keys);
    assert_eq!(pages, 3);

    // Prefix, limit and cursor together.
    let (_, first) = api.get_json("/kv?prefix=a&limit=2").await;
    assert_eq!(strings(&first["keys"]), ["a1", "a10"]);
    let cursor = first["next_cursor"].as_str().expect("a cursor");
    let (_, second) = api
        .get_json(&format!("/kv?prefix=a&limit=2&cursor={cursor}"))
        .await;
    assert_eq!(second, json!({"keys": ["a2", "a3"], "next_cursor": null}));

    for ok in ["/kv?limit=1", "/kv?limit=10000"] {
        assert_eq!(api.get_json(ok).await.0, StatusCode::OK, "{ok}");
    }
}

/// A cursor is a position in byte order, base64url-encoded: also one that
/// is no key's bytes starts the page at the first key that sorts after it.
#[tokio::test]
async fn any_base64url_cursor_is_a_position() {
    let api = Api::start(&[]);
    for key in ["a", "a\u{80}", "a\u{7ff}", "ab", "b"] {
        api.put_ok(key, "1").await;
    }
    let page_of = |cursor: &[u8], values: bool| {
        use base64::Engine;
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor);
        let api = &api;
        async move {
            api.get_json(&format!("/kv?limit=2&cursor={cursor}&values={values}"))
                .await
        }
    };
    let page = |cursor: &'static [u8]| page_of(cursor, false);
    // After "a" and a lone continuation byte: "a\u{80}" (C2 80) is first.
    let (status, body) = page(b"a\x80").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"keys": ["a\u{80}", "a\u{7ff}"], "next_cursor": "Yd-_"})
    );
    // Past every "a…" key.
    let (_, body) = page(b"a\xff").await;
    assert_eq!(body, json!({"keys": ["b"], "next_cursor": null}));
    let (status, body) = page_of(b"a\xff", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"][0]["key"], "b", "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
    // Past every key there can be.
    let (_, body) = page(b"\xff").await;
    assert_eq!(body, json!({"keys": [], "next_cursor": null}));
    // The cursor of a key's own bytes starts after that key ("ab" sorts
    // before "a\u{80}": 0x62 < 0xC2).
    let (_, body) = page(b"a").await;
    assert_eq!(
        body,
        json!({"keys": ["ab", "a\u{80}"], "next_cursor": "YcKA"})
    );
}

#[tokio::test]
async fn listing_rejects_bad_limits_cursors_and_parameters() {
    let api = Api::start(&[]);
    api.put_ok("k", "1").await;
    for path in [
        "/kv?limit=0",
        "/kv?limit=10001",
        "/kv?limit=-1",
        "/kv?limit=abc",
        "/kv?limit=",
        "/kv?limit=1.5",
        "/kv?cursor=!!!",
        "/kv?cursor=a%20b", // a space is not base64url
        "/kv?cursor=a",     // no whole byte
        "/kv?cursor=_x",    // bits past the last byte
        "/kv?cursor=YQ==",  // padded
        "/kv?bogus=1",
        "/kv?prefix=k&bogus=1",
        "/kv/count?bogus=1",
        // A server that runs alone reads linearizably and stale at once,
        // but still refuses what is neither.
        "/kv?consistency=sometimes",
        "/kv/count?consistency=",
        "/kv/k?consistency=AAA",
        "/kv/k/exists?consistency=Stale",
        "/kv/k/meta?consistency=1",
        "/kv/k?prefix=k&consistency=x",
    ] {
        let reply = api.call(Method::GET, path, &[], None).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    for path in [
        "/kv?consistency=stale",
        "/kv/count?consistency=linearizable",
        "/kv/k?consistency=stale",
        "/kv/k/exists?consistency=linearizable",
    ] {
        let reply = api.call(Method::GET, path, &[], None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
    let reply = api
        .call(Method::HEAD, "/kv/k?consistency=x", &[], None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = api.call(Method::POST, "/kv/clear?bogus=1", &[], None).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(api.count(None).await, 1, "a refused clear cleared nothing");
}

#[tokio::test]
async fn system_alive_and_version() {
    let api = Api::start(&[]);
    assert_eq!(
        api.get_json("/system/alive").await,
        (StatusCode::OK, json!({"alive": true}))
    );
    assert_eq!(
        api.get_json("/system/version").await,
        (
            StatusCode::OK,
            json!({"version": env!("CARGO_PKG_VERSION")})
        )
    );
    let reply = api.call(Method::GET, "/system/alive", &[], None).await;
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let custom = Api::start(&["--server-version", "7.7.7-test+build.5"]);
    assert_eq!(
        custom.get_json("/system/version").await,
        (StatusCode::OK, json!({"version": "7.7.7-test+build.5"}))
    );
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn bad_bodies_are_invalid_json_and_change_nothing() {
    let api = Api::start(&[]);
    api.put_ok("doc", r#"{"v":1}"#).await;
    let before = api.seen("doc").await;
    let revision = api.revision().await;
    let bad: [&[u8]; 16] = [
        b"",
        b" ",
        b"{",
        b"}",
        b"{\"a\":}",
        b"[1,]",
        b"{} {}",
        b"1 2",
        b"nul",
        b"01",
        b"'x'",
        b"{a:1}",
        b"\"unterminated",
        b"\"\xff\"",
        b"\x00",
        b"<xml/>",
    ];
    for body in bad {
        for key in ["doc", "fresh"] {
            let reply = api
                .call(Method::PUT, &kv(key), &[], Some(body.to_vec()))
                .await;
            reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
        }
    }
    // A body-less PUT (no Content-Length at all) is an empty document too.
    let reply = api.call(Method::PUT, &kv("doc"), &[], None).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");

    assert_eq!(api.seen("doc").await, before);
    assert_eq!(api.get("fresh").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.count(None).await, 1);
    assert_eq!(api.revision().await, revision, "no revision was taken");
}

#[tokio::test]
async fn bad_keys_are_invalid_key() {
    let api = Api::start(&["--max-key-bytes", "8"]);
    api.put_ok("12345678", "1").await;
    api.put_ok("éééé", "1").await; // 8 bytes
    let revision = api.revision().await;

    let too_long = ["123456789", "ééééé" /* 10 bytes, 5 chars */];
    let mut paths: Vec<String> = too_long.iter().map(|k| kv(k)).collect();
    // Not UTF-8 after percent-decoding: a lone 0xFF, a truncated é.
    paths.extend(["/kv/%FF".to_string(), "/kv/a%C3".to_string()]);
    for path in &paths {
        for method in [Method::PUT, Method::GET, Method::DELETE] {
            let body = (method == Method::PUT).then(|| b"1".to_vec());
            let reply = api.call(method.clone(), path, &[], body).await;
            reply.assert_error(StatusCode::BAD_REQUEST, "invalid_key");
        }
        for suffix in ["/exists", "/meta"] {
            let reply = api
                .call(Method::GET, &format!("{path}{suffix}"), &[], None)
                .await;
            reply.assert_error(StatusCode::BAD_REQUEST, "invalid_key");
        }
    }
    assert_eq!(api.count(None).await, 2);
    assert_eq!(api.revision().await, revision, "no revision was taken");
}

#[tokio::test]
async fn bad_parameters_and_headers_are_invalid_request_and_change_nothing() {
    let api = Api::start(&[]);
    api.put_ok("k", r#"{"v":1}"#).await;
    let before = api.seen("k").await;
    let revision = api.revision().await;

    for query in [
        "ttl=0",
        "ttl=abc",
        "ttl=-1",
        "ttl=1.5",
        "ttl=",
        "ttl=1s",
        "ttl=18446744073709551616", // past u64
        "bogus=1",
        "ttl=5&bogus=1",
    ] {
        let reply = api.put_at(&format!("/kv/k?{query}"), &[], "2").await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
        let reply = api.put_at(&format!("/kv/new?{query}"), &[], "2").await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    let bad_headers: [&[(&str, &str)]; 10] = [
        &[("if-match", "abc")],
        &[("if-match", "\"x\"")],
        &[("if-match", "\"-1\"")],
        &[("if-match", "1")],
        &[("if-match", "")],
        &[("if-match", "*, \"1\"")],
        &[("if-match", "w/\"1\"")],
        &[("if-none-match", "\"1\"")],
        &[("if-match", "abc"), ("if-none-match", "*")],
        &[("if-match", "*"), ("if-none-match", "\"1\"")],
    ];
    for headers in bad_headers {
        let reply = api.put_at("/kv/k", headers, "2").await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    for headers in [
        &[("if-match", "abc")][..],
        &[("if-match", "")][..],
        &[("if-none-match", "*")][..], // only PUT takes If-None-Match
    ] {
        let reply = api.call(Method::DELETE, "/kv/k", headers, None).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_request");
    }

    assert_eq!(api.seen("k").await, before);
    assert_eq!(api.get("new").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.revision().await, revision, "no revision was taken");
}

#[tokio::test]
async fn missing_keys_and_unknown_routes_are_not_found() {
    let api = Api::start(&[]);
    api.get("missing")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let reply = api.call(Method::GET, "/kv/missing/meta", &[], None).await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/nope"),
        (Method::GET, "/kv/a/b"),
        (Method::GET, "/kv/a/b/c"),
        (Method::PUT, "/kv/a/b"),
        (Method::GET, "/system/nope"),
        (Method::GET, "/kvx"),
    ] {
        let reply = api.call(method.clone(), path, &[], None).await;
        reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(api.count(None).await, 0);
}

#[tokio::test]
async fn wrong_methods_are_405_with_an_allow_header() {
    let api = Api::start(&[]);
    api.put_ok("x", r#"{"v":1}"#).await;
    let before = api.seen("x").await;
    let revision = api.revision().await;
    for (method, path, allowed) in [
        (
            Method::PATCH,
            "/kv/x",
            &["GET", "HEAD", "PUT", "DELETE"][..],
        ),
        (Method::POST, "/kv/x", &["GET", "HEAD", "PUT", "DELETE"]),
        (Method::PUT, "/kv/count", &["GET"]),
        (Method::DELETE, "/kv/count", &["GET"]),
        (Method::GET, "/kv/clear", &["POST"]),
        (Method::PUT, "/kv/clear", &["POST"]),
        (Method::POST, "/kv", &["GET"]),
        (Method::DELETE, "/kv/x/meta", &["GET"]),
        (Method::PUT, "/kv/x/exists", &["GET"]),
        (Method::POST, "/system/alive", &["GET"]),
    ] {
        let body = Some(br#"{"v":2}"#.to_vec());
        let reply = api.call(method.clone(), path, &[], body).await;
        reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = reply
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow header"));
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for m in allowed {
            assert!(
                listed.contains(m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
        assert!(
            !listed.contains(&method.as_str()),
            "{method} {path}: Allow {allow:?}"
        );
    }
    assert_eq!(api.seen("x").await, before);
    assert_eq!(api.count(None).await, 1);
    assert_eq!(api.revision().await, revision);
}

#[tokio::test]
async fn bodies_over_the_limit_are_payload_too_large() {
    let api = Api::start(&["--max-value-bytes", "100"]);
    let reply = api.put("edge", &doc_of_len(100)).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "exactly the limit is fine"
    );
    let before = api.seen("edge").await;
    let revision = api.revision().await;

    // The server may drop a connection whose body it refused unread (see
    // `a_413_that_leaves_the_body_unread_says_connection_close`), so each
    // oversized request goes on a connection of its own.
    for n in [101, 200] {
        for key in ["edge", "fresh"] {
            let response = client()
                .put(api.server.at(&kv(key)))
                .body(doc_of_len(n))
                .send()
                .await
                .expect("oversized put");
            let reply = Reply::read(response).await;
            reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
        }
    }
    // Without a Content-Length (chunked), the limit holds all the same.
    let big = doc_of_len(200).into_bytes();
    let (under, over) = big.split_at(90);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(under.to_vec()), Ok(over.to_vec())];
    let response = client()
        .put(api.server.at("/kv/edge"))
        .body(reqwest::Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .expect("chunked put");
    let reply = Reply::read(response).await;
    reply.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    assert_eq!(api.seen("edge").await, before);
    assert_eq!(api.get("fresh").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.revision().await, revision, "no revision was taken");
}

#[tokio::test]
async fn a_413_that_leaves_the_body_unread_keeps_the_connection_or_says_close() {
    // The server answers 413 as soon as the body passes the limit. If the
    // rest of the body has not arrived by then, it must read and discard it
    // when it comes, or say `Connection: close`; otherwise a keep-alive
    // client sends its next request into a closed connection (reqwest:
    // "error sending request ... IncompleteMessage"). `tests/keep_alive.rs`
    // holds every early answer to the first of the two.
    let api = Api::start(&["--max-value-bytes", "100"]);
    let addr = api.server.url.trim_start_matches("http://").to_string();
    let body = doc_of_len(200);
    let mut tcp = TcpStream::connect(&addr).await.expect("connect");
    let head = format!("PUT /kv/edge HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 200\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(&body.as_bytes()[..150])
        .await
        .expect("write part of the body");

    let answer = read_until(&mut tcp, b"\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    if answer.contains("\r\nconnection: close\r\n") {
        return;
    }
    // No `close` announced: the connection must then still serve.
    let rest = format!(
        "{}GET /system/alive HTTP/1.1\r\nhost: {addr}\r\n\r\n",
        &body[150..]
    );
    let sent = tcp.write_all(rest.as_bytes()).await;
    let next = match sent {
        Ok(()) => read_until(&mut tcp, br#"{"alive":true}"#).await,
        Err(e) => format!("[write failed: {e}]").into_bytes(),
    };
    let next = if next.is_empty() {
        "[the server closed the connection]".to_string()
    } else {
        String::from_utf8_lossy(&next).into_owned()
    };
    assert!(
        next.ends_with(r#"{"alive":true}"#),
        "after a 413 without `Connection: close` the connection must stay usable; \
         got {next:?} after the 413 {answer:?}"
    );
}

/// Reads from `tcp` until the bytes read contain `end`, the peer closes,
/// or an error (all of which the caller checks in what it gets back).
async fn read_until(tcp: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + DEADLINE;
    while !got.windows(end.len()).any(|w| w == end) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                got.extend_from_slice(format!(" [read failed: {e}]").as_bytes());
                break;
            }
            Err(_) => panic!(
                "no answer within {DEADLINE:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    got
}

// ---------------------------------------------------------------- versions

#[tokio::test]
async fn every_change_takes_the_next_revision() {
    let api = Api::start(&[]);
    let a1 = api.put_ok("a", "1").await;
    let b1 = api.put_ok("b", "1").await;
    assert_eq!(b1, a1 + 1, "versions grow across keys");
    let a2 = api.put_ok("a", "2").await;
    assert_eq!(a2, b1 + 1);

    let deleted = api.delete("b").await.json()["version"]
        .as_u64()
        .expect("version");
    assert_eq!(deleted, a2 + 1, "a delete takes a revision");
    let b2 = api.put("b", "2").await;
    assert_eq!(b2.status, StatusCode::CREATED);
    let b2 = b2.json()["version"].as_u64().expect("version");
    assert_eq!(b2, deleted + 1);

    // Refused writes take none.
    let stale = format!("\"{a1}\"");
    let reply = api.put_at("/kv/a", &[("if-match", &stale)], "3").await;
    reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    api.put("a", "{")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    api.delete("nope")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let c1 = api.put_ok("c", "1").await;
    assert_eq!(c1, b2 + 1);

    // A key's version is the revision of its last change.
    for (key, version) in [("a", a2), ("b", b2), ("c", c1)] {
        assert_eq!(api.meta(key).await["version"], json!(version), "{key}");
        assert_eq!(api.get(key).await.etag_version(), version, "{key}");
    }
    assert_eq!(api.revision().await, c1);

    // A clear takes one revision per key it removes.
    let cleared = api.call(Method::POST, "/kv/clear", &[], None).await.json();
    assert_eq!(cleared, json!({"cleared": 3}));
    assert_eq!(api.revision().await, c1 + 3);
    assert_eq!(api.put_ok("a", "4").await, c1 + 4);
}

#[tokio::test]
async fn concurrent_writes_take_distinct_consecutive_revisions() {
    let api = Api::start(&[]);
    let base = api.revision().await;
    let versions: Vec<u64> = stream::iter(0..64)
        .map(|i| {
            let api = &api;
            async move { api.put_ok(&format!("k{}", i % 16), &i.to_string()).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    let expected: Vec<u64> = (base + 1..=base + 64).collect();
    assert_eq!(sorted, expected, "64 writes took revisions {base}+1..=+64");
    for i in 0..16 {
        let meta = api.meta(&format!("k{i}")).await;
        let version = meta["version"].as_u64().expect("version");
        assert!(
            versions.contains(&version),
            "k{i}'s version {version} is one a write returned"
        );
    }
}

// ---------------------------------------------------------------- values

#[tokio::test]
async fn values_round_trip_byte_for_byte() {
    let api = Api::start(&[]);
    let docs = [
        "{}",
        "[]",
        "  {\"spaced\" :\t[ 1 ,  2 ] ,\n  \"out\" : { }  }  \n",
        "\r\n[1]\r\n",
        r#"{"z":1,"a":2,"m":{"y":true,"b":false}}"#,
        r#"{"dup":1,"dup":2}"#,
        r#""\u00e9\ud83e\udda4 escaped \"quote\" \\ \/ \n""#,
        r#"{"raw":"héllo 🦤 ключ 鳥"}"#,
        "1.0e10",
        "-0",
        "-1.5E-7",
        "1E+2",
        "0.10",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615",
        "true",
        "false",
        "null",
        "\"string\"",
        "\"\"",
    ];
    for (i, doc) in docs.iter().enumerate() {
        let key = format!("doc-{i}");
        let reply = api.put(&key, doc).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{doc:?}: {}",
            reply.text()
        );
        let got = api.get(&key).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.text(), *doc, "byte-exact round trip");
        assert_eq!(got.header("content-type"), Some("application/json"));
        assert_eq!(api.meta(&key).await["size"], json!(doc.len()));
    }
}

#[tokio::test]
async fn numbers_beyond_64_bits_are_valid_json() {
    // JSON's grammar puts no bound on numbers, and the store keeps bytes,
    // not parsed numbers: a value like 2^64 must be stored as written, as
    // a decimal of the same size already is. (serde_json, JavaScript and
    // Python all read these.)
    let api = Api::start(&[]);
    for (i, doc) in [
        "123456789012345678901234567890.5",
        "18446744073709551616",
        "-9223372036854775809",
        "123456789012345678901234567890",
        r#"{"id":340282366920938463463374607431768211456}"#,
    ]
    .iter()
    .enumerate()
    {
        let key = format!("n{i}");
        let reply = api.put(&key, doc).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{doc}: {}", reply.text());
        assert_eq!(api.get(&key).await.text(), *doc);
    }
}

#[tokio::test]
async fn nesting_up_to_128_levels_is_accepted_and_129_refused() {
    let api = Api::start(&[]);
    let arrays = |n: usize| "[".repeat(n) + &"]".repeat(n);
    let objects = |n: usize| "{\"a\":".repeat(n - 1) + "{}" + &"}".repeat(n - 1);
    let mixed = |n: usize| "[{\"a\":".repeat(n / 2) + "1" + &"}]".repeat(n / 2);
    for (name, doc) in [
        ("arrays", arrays(128)),
        ("objects", objects(128)),
        ("mixed", mixed(128)),
    ] {
        let reply = api.put(name, &doc).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{name}: {}",
            reply.text()
        );
        assert_eq!(api.get(name).await.text(), doc, "{name}");
    }
    for (name, doc) in [
        ("arrays", arrays(129)),
        ("objects", objects(129)),
        ("mixed", mixed(130)),
        ("fresh", arrays(129)),
        ("deeper", arrays(5000)),
    ] {
        let reply = api.put(name, &doc).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_json");
    }
    assert_eq!(api.get("arrays").await.text(), arrays(128), "unchanged");
    assert_eq!(api.get("fresh").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_half_megabyte_array_round_trips() {
    let api = Api::start(&[]);
    let items: Vec<String> = (0..12_000)
        .map(|i| format!("{{\"i\":{i},\"name\":\"item-{i:05}\",\"ok\":true}}"))
        .collect();
    let doc = format!("[{}]", items.join(", "));
    assert!(
        (450_000..1_000_000).contains(&doc.len()),
        "about 500 KB: {}",
        doc.len()
    );
    let reply = api.put("big", &doc).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let got = api.get("big").await;
    assert_eq!(got.body.len(), doc.len());
    assert!(got.body == doc.as_bytes(), "the big array is byte-exact");
    assert_eq!(api.meta("big").await["size"], json!(doc.len()));
}

// ---------------------------------------------------------------- keys

#[tokio::test]
async fn keys_needing_percent_encoding_work_everywhere() {
    let api = Api::start(&[]);
    let keys = [
        "a/b",
        "a/b?c#d%e f",
        "with space",
        "100%",
        "%41",
        "what?",
        "tag#1",
        "ключ",
        "🦤 dodo",
        "a+b",
        "exists",
        "meta",
        "x/meta",
    ];
    for (i, key) in keys.iter().enumerate() {
        let body = format!("{{\"i\":{i}}}");
        let reply = api.put(key, &body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{key:?}: {}",
            reply.text()
        );
        assert_eq!(
            reply.json()["key"],
            json!(key),
            "the key comes back decoded"
        );
        assert_eq!(api.get(key).await.text(), body, "{key:?}");
        assert_eq!(
            api.get_json(&format!("{}/exists", kv(key))).await,
            (StatusCode::OK, json!({"key": key, "exists": true}))
        );
        assert_eq!(api.meta(key).await["key"], json!(key));
    }
    // "%41" is a key of its own, not "A"; "+" in a path is not a space.
    assert_eq!(api.get("A").await.status, StatusCode::NOT_FOUND);
    let plus = api.call(Method::GET, "/kv/a+b", &[], None).await;
    assert_eq!(plus.text(), r#"{"i":9}"#);

    let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    sorted.sort_unstable();
    assert_eq!(
        api.list_all("").await,
        sorted,
        "listing returns decoded keys"
    );
    assert_eq!(api.list_all("a/").await, ["a/b", "a/b?c#d%e f"]);
    assert_eq!(api.count(Some("a/")).await, 2);
    let cleared = api
        .call(
            Method::POST,
            &format!("/kv/clear?prefix={}", enc("a/b?")),
            &[],
            None,
        )
        .await;
    assert_eq!(cleared.json(), json!({"cleared": 1}));

    for key in keys.iter().filter(|k| **k != "a/b?c#d%e f") {
        let reply = api.delete(key).await;
        assert_eq!(reply.status, StatusCode::OK, "{key:?}");
        assert_eq!(reply.json()["key"], json!(key));
    }
    assert_eq!(api.count(None).await, 0);
}

#[tokio::test]
async fn reserved_names_belong_to_their_routes() {
    let api = Api::start(&[]);
    api.put_ok("counter", "1").await;
    api.put_ok("COUNT", "1").await;
    assert_eq!(
        api.get_json("/kv/count").await,
        (StatusCode::OK, json!({"count": 2}))
    );
    let revision = api.revision().await;

    let reply = api.put_at("/kv/count", &[], "1").await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let reply = api.put_at("/kv/clear", &[], "1").await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    // Spelled with escapes they reach the key routes, which refuse them.
    for path in [
        "/kv/%63ount",
        "/kv/%63lear",
        "/kv/coun%74",
        "/kv/%63%6C%65%61%72",
    ] {
        let reply = api.put_at(path, &[], "1").await;
        reply.assert_error(StatusCode::BAD_REQUEST, "invalid_key");
        for method in [Method::GET, Method::DELETE] {
            let reply = api.call(method, path, &[], None).await;
            reply.assert_error(StatusCode::BAD_REQUEST, "invalid_key");
        }
    }
    assert_eq!(api.count(None).await, 2);
    assert_eq!(api.revision().await, revision);
}

// ---------------------------------------------------------------- listing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_walk_sees_every_stable_key_once_while_others_churn() {
    const STABLE: usize = 2_000;
    let api = Api::start(&[]);
    // "key-00042-a" are the stable keys; churn keys "key-00042-b-<n>" sort
    // between "key-00042-a" and "key-00043-a", inside every page.
    let stable: Vec<String> = (0..STABLE).map(|i| format!("key-{i:05}-a")).collect();
    let written = stream::iter(stable.iter().cloned())
        .map(|key| {
            let api = &api;
            async move { api.put_ok(&key, r#"{"stable":true}"#).await }
        })
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(written, STABLE);
    // Keys outside the walked prefix on both sides.
    api.put_ok("aaa", "0").await;
    api.put_ok("zzz", "0").await;

    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let churn = {
        let http = api.server.http().clone();
        let url = api.server.url.clone();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            // Seeded, so failures replay.
            let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
            let mut live: VecDeque<String> = VecDeque::new();
            let mut ops = 0u64;
            while !stop.load(Ordering::Acquire) {
                let slot = rng.usize(0..STABLE);
                let key = format!("key-{slot:05}-b-{ops}");
                let status = http
                    .put(format!("{url}/kv/{key}"))
                    .body("\"churn\"")
                    .send()
                    .await
                    .expect("churn put")
                    .status();
                assert_eq!(status, StatusCode::CREATED, "churn put {key}");
                live.push_back(key);
                if live.len() > 40 {
                    let old = live.pop_front().expect("a live churn key");
                    let status = http
                        .delete(format!("{url}/kv/{old}"))
                        .send()
                        .await
                        .expect("churn delete")
                        .status();
                    assert_eq!(status, StatusCode::OK, "churn delete {old}");
                }
                ops += 1;
                progress_tx.send_replace(ops);
            }
            ops
        })
    };

    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages: u64 = 0;
    loop {
        // Let the churn writer change the key space before every page.
        let target = *progress.borrow() + 3;
        progress
            .wait_for(|ops| *ops >= target)
            .await
            .expect("churn writer alive");
        let mut path = "/kv?prefix=key-&limit=100".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = api.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        let keys = strings(&page["keys"]);
        assert!(keys.len() <= 100, "a page holds at most `limit` keys");
        seen.extend(keys);
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    stop.store(true, Ordering::Release);
    let ops = churn.await.expect("churn writer");
    assert!(ops >= 3 * pages, "the churn ran during the walk: {ops} ops");

    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the walk is in strictly ascending order overall"
    );
    assert!(
        seen.iter().all(|k| k.starts_with("key-")),
        "only the prefix"
    );
    let stable_seen: Vec<&String> = seen.iter().filter(|k| k.ends_with("-a")).collect();
    assert_eq!(stable_seen.len(), STABLE, "every stable key exactly once");
    assert!(
        stable_seen.iter().zip(&stable).all(|(a, b)| *a == b),
        "the stable keys seen are exactly the stable keys"
    );
    assert!(pages >= (STABLE / 100) as u64, "{pages} pages");
}

// ---------------------------------------------------------------- TTL

#[tokio::test]
async fn an_expired_key_is_invisible_and_then_reaped() {
    let api = Api::start(&["--cleanup-interval-ms", "50"]);
    api.put_ok("stays", "1").await;
    api.put_ok("later", "1").await;
    let reply = api
        .put_at("/kv/brief?ttl=1", &[], r#"{"short":"lived"}"#)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let last_write = api.revision().await;

    poll_until("the TTL-1 key is gone", async || {
        (api.get("brief").await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let head = api.call(Method::HEAD, "/kv/brief", &[], None).await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.get_json("/kv/brief/exists").await,
        (StatusCode::OK, json!({"key": "brief", "exists": false}))
    );
    let meta = api.call(Method::GET, "/kv/brief/meta", &[], None).await;
    meta.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(api.count(None).await, 2, "not counted");
    assert_eq!(api.count(Some("brief")).await, 0, "not counted by prefix");
    assert_eq!(api.list_all("").await, ["later", "stays"], "not listed");

    // The expiry loop removes it, and its removal takes one revision.
    poll_until("the expiry loop reaped the key", async || {
        (stats(&api.server).await["expired_keys"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    assert_eq!(stats(&api.server).await["expired_keys"], json!(1));
    assert_eq!(api.revision().await, last_write + 1);
    api.delete("brief")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    // The name is free again.
    let reply = api
        .put_at("/kv/brief", &[("if-none-match", "*")], "2")
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["version"], json!(last_write + 2));
}

#[tokio::test]
async fn a_put_without_ttl_clears_an_earlier_expiry() {
    let api = Api::start(&["--cleanup-interval-ms", "50"]);
    let reply = api.put_at("/kv/kept?ttl=1", &[], "1").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = api.put_at("/kv/extended?ttl=1", &[], "1").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let reply = api.put("kept", r#""no ttl now""#).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = api.put_at("/kv/extended?ttl=3600", &[], "2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(api.meta("kept").await["expires_at"], Value::Null);
    let extended = api.meta("extended").await;
    let at = rfc3339_ms(extended["expires_at"].as_str().expect("an expiry"));
    assert!(
        at > now_ms() + 3_000_000,
        "the new TTL replaced the old one"
    );

    // A sentinel written after them expires after their first expiry had
    // passed; once the loop reaped it, it has run past that moment too.
    let reply = api.put_at("/kv/sentinel?ttl=1", &[], "0").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    poll_until("the sentinel expired and was reaped", async || {
        (stats(&api.server).await["expired_keys"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    assert_eq!(api.get("sentinel").await.status, StatusCode::NOT_FOUND);

    assert_eq!(api.get("kept").await.text(), r#""no ttl now""#);
    assert_eq!(api.get("extended").await.text(), "2");
    assert_eq!(api.count(None).await, 2);
    assert_eq!(stats(&api.server).await["expired_keys"], json!(1));
}

#[tokio::test]
async fn retention_expires_keys_without_their_own_ttl() {
    let api = Api::start(&["--retention-secs", "1", "--cleanup-interval-ms", "50"]);
    let reply = api.put_at("/kv/own-ttl?ttl=3600", &[], "1").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let own = api.meta("own-ttl").await;
    let at = rfc3339_ms(own["expires_at"].as_str().expect("an expiry"));
    assert!(at > now_ms() + 3_000_000, "its own TTL beats retention");

    let before = now_ms();
    api.put_ok("retained", "1").await;
    let after = now_ms();
    let meta = api.call(Method::GET, "/kv/retained/meta", &[], None).await;
    // On a very slow machine the key may already be gone; otherwise its
    // meta must show the retention expiry.
    if meta.status == StatusCode::OK {
        let text = meta.json()["expires_at"].clone();
        let at = rfc3339_ms(text.as_str().expect("retention sets expires_at"));
        // One second of slack each way for the clock's ms rounding.
        assert!(
            at + 1000 >= before + 1000 && at <= after + 1000 + 1000,
            "expires_at {text} is 1 s after the write (between {before} and {after} ms)"
        );
    } else {
        meta.assert_error(StatusCode::NOT_FOUND, "not_found");
    }

    poll_until("the retained key expired", async || {
        (api.get("retained").await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert_eq!(api.count(None).await, 1);
    assert_eq!(api.list_all("").await, ["own-ttl"]);
    poll_until("the expiry loop reaped it", async || {
        (stats(&api.server).await["expired_keys"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    assert_eq!(api.get("own-ttl").await.status, StatusCode::OK);
}

// ---------------------------------------------------------------- preconditions

#[tokio::test]
async fn if_none_match_star_creates_only_absent_keys() {
    let api = Api::start(&[]);
    let reply = api.put_at("/kv/once", &[("if-none-match", "*")], "1").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(reply.json()["created"], json!(true));
    let before = api.seen("once").await;
    let reply = api.put_at("/kv/once", &[("if-none-match", "*")], "2").await;
    reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    assert_eq!(api.seen("once").await, before);
}

/// `method path` (a PUT with a body) with `headers` is `412`.
async fn assert_precondition_fails(
    api: &Api,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) {
    let body = (method == Method::PUT).then(|| b"3".to_vec());
    let reply = api.call(method, path, headers, body).await;
    reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
}

/// PUT and DELETE of `path` under `If-Match: if_match` are both `412`.
async fn assert_write_refused(api: &Api, path: &str, if_match: &str) {
    for method in [Method::PUT, Method::DELETE] {
        assert_precondition_fails(api, method, path, &[("if-match", if_match)]).await;
    }
}

#[tokio::test]
async fn if_match_applies_only_at_the_right_version() {
    let api = Api::start(&[]);
    let v1 = api.put_ok("doc", "1").await;
    let tag = |v: u64| format!("\"{v}\"");

    let reply = api.put_at("/kv/doc", &[("if-match", &tag(v1))], "2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let v2 = reply.json()["version"].as_u64().expect("version");
    assert_eq!(
        reply.json(),
        json!({"key": "doc", "version": v2, "created": false})
    );

    let before = api.seen("doc").await;
    let revision = api.revision().await;
    for stale in [tag(v1), tag(v2 + 1), tag(0)] {
        assert_write_refused(&api, "/kv/doc", &stale).await;
    }
    // If-Match on an absent key never applies.
    for condition in [tag(v2), "*".to_string()] {
        let headers = [("if-match", condition.as_str())];
        assert_precondition_fails(&api, Method::PUT, "/kv/absent", &headers).await;
    }
    assert_eq!(api.seen("doc").await, before, "nothing changed");
    assert_eq!(api.get("absent").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.revision().await, revision, "no revision was taken");

    let reply = api.put_at("/kv/doc", &[("if-match", "*")], "4").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "If-Match: * on an existing key"
    );
    let v3 = reply.json()["version"].as_u64().expect("version");

    let reply = api
        .call(Method::DELETE, "/kv/doc", &[("if-match", &tag(v3))], None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["deleted"], json!(true));
    assert_eq!(api.get("doc").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn if_match_takes_lists_and_weak_tags() {
    let api = Api::start(&[]);
    let v1 = api.put_ok("doc", "1").await;

    // A list applies when any of its versions is the key's.
    let listed = format!("\"{}\", \"{v1}\"", v1 + 10);
    let reply = api.put_at("/kv/doc", &[("if-match", &listed)], "2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let v2 = reply.json()["version"].as_u64().expect("version");

    // A weak tag matches like a strong one.
    let weak = format!("W/\"{v2}\"");
    let reply = api.put_at("/kv/doc", &[("if-match", &weak)], "3").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let v3 = reply.json()["version"].as_u64().expect("version");

    // A list without the key's version, weak or not, changes nothing.
    let before = api.seen("doc").await;
    let revision = api.revision().await;
    let stale = format!("\"{v1}\", W/\"{v2}\", \"{}\"", v3 + 1);
    assert_write_refused(&api, "/kv/doc", &stale).await;
    assert_eq!(api.seen("doc").await, before, "nothing changed");
    assert_eq!(api.revision().await, revision, "no revision was taken");

    // Two field lines are one list (RFC 9110 §5.3).
    let mut request = api.server.http().delete(api.server.at("/kv/doc"));
    request = request.header("if-match", format!("\"{v1}\""));
    request = request.header("if-match", format!("W/\"{v3}\""));
    let reply = Reply::read(request.send().await.expect("DELETE")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(api.get("doc").await.status, StatusCode::NOT_FOUND);
}

/// RFC 9110 §13.2.2: `If-Match` is evaluated first, then `If-None-Match`.
/// The first needs the key to exist and `If-None-Match: *` needs it
/// absent, so together they fail whether the key exists or not.
#[tokio::test]
async fn if_match_with_if_none_match_is_412_whatever_the_state() {
    let api = Api::start(&[]);
    let v1 = api.put_ok("doc", "1").await;
    let before = api.seen("doc").await;
    let revision = api.revision().await;
    let current = format!("\"{v1}\"");
    for if_match in ["*", current.as_str()] {
        for path in ["/kv/doc", "/kv/absent"] {
            let headers = [("if-match", if_match), ("if-none-match", "*")];
            assert_precondition_fails(&api, Method::PUT, path, &headers).await;
        }
    }
    assert_eq!(api.seen("doc").await, before, "nothing changed");
    assert_eq!(api.get("absent").await.status, StatusCode::NOT_FOUND);
    assert_eq!(api.revision().await, revision, "no revision was taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_16_racing_conditional_writers_exactly_one_wins() {
    const WRITERS: usize = 16;
    const ROUNDS: usize = 6;
    let api = Api::start(&[]);

    /// Runs the writers at once, each `PUT /kv/contested` with
    /// `header: value` and a body naming the round and the writer;
    /// returns each writer's number and reply.
    async fn race(api: &Api, round: usize, header: &str, value: &str) -> Vec<(usize, Reply)> {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let http = api.server.http().clone();
                let url = api.server.at("/kv/contested");
                let (header, value) = (header.to_string(), value.to_string());
                tokio::spawn(async move {
                    let response = http
                        .put(url)
                        .header(header, value)
                        .body(format!("{{\"round\":{round},\"writer\":{w}}}"))
                        .send()
                        .await
                        .expect("conditional put");
                    (w, Reply::read(response).await)
                })
            })
            .collect();
        let mut replies = Vec::new();
        for task in tasks {
            replies.push(task.await.expect("writer task"));
        }
        replies
    }

    /// Checks that exactly one writer got `won` and every other a 412;
    /// returns the winner and its new version.
    fn one_winner(replies: &[(usize, Reply)], won: StatusCode) -> (usize, u64) {
        let winners: Vec<&(usize, Reply)> =
            replies.iter().filter(|(_, r)| r.status == won).collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one winner: {:?}",
            replies.iter().map(|(_, r)| r.status).collect::<Vec<_>>()
        );
        for (_, reply) in replies.iter().filter(|(_, r)| r.status != won) {
            reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
        }
        let (writer, reply) = winners[0];
        (*writer, reply.json()["version"].as_u64().expect("version"))
    }

    // Round 0: everyone tries to create the key.
    let before = api.revision().await;
    let replies = race(&api, 0, "if-none-match", "*").await;
    let (writer, mut version) = one_winner(&replies, StatusCode::CREATED);
    assert_eq!(version, before + 1, "the losers took no revision");
    assert_eq!(
        api.get("contested").await.text(),
        format!("{{\"round\":0,\"writer\":{writer}}}")
    );

    for round in 1..=ROUNDS {
        let current = api.get("contested").await.etag_version();
        assert_eq!(current, version);
        let replies = race(&api, round, "if-match", &format!("\"{current}\"")).await;
        let (writer, won) = one_winner(&replies, StatusCode::OK);
        assert_eq!(
            won,
            current + 1,
            "round {round}: the losers took no revision"
        );
        let got = api.get("contested").await;
        assert_eq!(
            got.text(),
            format!("{{\"round\":{round},\"writer\":{writer}}}")
        );
        assert_eq!(got.etag_version(), won);
        version = won;
    }
    assert_eq!(api.meta("contested").await["version"], json!(version));
    assert_eq!(version, before + 1 + ROUNDS as u64);
    assert_eq!(api.revision().await, version);
}
