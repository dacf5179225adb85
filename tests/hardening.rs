//! Hardening against bad clients, overload and faults, on a real server:
//! the bearer token, request and header timeouts, load shedding, URI and
//! header limits, the body limit, CORS, gzip, the config file, a disk that
//! fills up, and many idle connections. Raw TCP where a well-behaved HTTP
//! client cannot misbehave on purpose.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::tcp::{self, read_head};
use common::{Reply, Stop, TestServer, assert_error, client, get_json, put};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const TOKEN: &str = "t0ken-that-must-never-be-logged";

/// A connection with a generous read timeout, so a server bug fails the
/// test instead of hanging it.
fn connect(server: &TestServer) -> TcpStream {
    tcp::connect(server, Duration::from_secs(30))
}

/// Sends `request` on a fresh connection and returns everything the server
/// sent until it closed (every request here says `Connection: close`).
fn raw(server: &TestServer, request: &[u8]) -> String {
    let mut tcp = connect(server);
    tcp.write_all(request).expect("write");
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).expect("read until close");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET target` with `extra` header lines, on a fresh connection.
fn get(server: &TestServer, target: &str, extra: &str) -> String {
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    raw(server, request.as_bytes())
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Asserts that a raw answer (head and body in one string) is the SPEC's
/// error envelope with `status` and `code`.
#[track_caller]
fn assert_raw_error(answer: &str, status: StatusCode, code: &str) {
    Reply::parse(answer.as_bytes()).assert_error(status, code);
}

/// Routes a client may call without the token: the health check and the
/// console's files (they hold no data). Every other route of
/// `http::ROUTES`, and every path or method that is no route, is 401.
const OPEN: [(&str, &str); 3] = [
    ("GET", "/system/alive"),
    ("GET", "/ui"),
    ("GET", "/ui/{asset}"),
];

/// A concrete URL path for a route template: `{asset}` becomes a file the
/// console has, any other parameter a plain segment.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{asset}" => "main.js",
            s if s.starts_with('{') => "a",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn without_the_token_every_route_but_alive_is_401() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Debug logging shows every rejected request: the token must not be
    // in any of it.
    let mut server = TestServer::try_start_with_env(
        &tmp.path().join("data"),
        &["--auth-token", TOKEN],
        &[("RUST_LOG", "debug")],
    )
    .expect("start");
    let http = client();
    let routed: Vec<(Method, &str)> = dododb::http::ROUTES
        .iter()
        .map(|r| (r.method().clone(), r.path()))
        .collect();
    for (method, path) in OPEN {
        assert!(
            routed.iter().any(|(m, p)| m == method && *p == path),
            "{method} {path} is a route"
        );
    }
    let mut refused: Vec<(Method, String)> = routed
        .iter()
        .filter(|(m, p)| !OPEN.contains(&(m.as_str(), *p)))
        .map(|(m, p)| (m.clone(), concrete(p)))
        .collect();
    assert!(refused.len() >= 20, "{refused:?}");
    // Neither a path nor a method that is no route gets past the token.
    refused.push((Method::GET, "/no/such/route".to_string()));
    refused.push((Method::POST, "/system/alive".to_string()));
    refused.push((Method::PUT, "/ui/main.js".to_string()));
    for (method, path) in refused {
        for auth in [None, Some("Bearer wrong"), Some("Basic dDBrZW4=")] {
            let mut request = http.request(method.clone(), server.at(&path)).body("1");
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), 401, "{method} {path} {auth:?}");
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{method} {path} {auth:?}"
            );
            if method != Method::HEAD {
                assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
            }
        }
    }
    for (method, path) in OPEN {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let response = http
            .request(method.clone(), server.at(&concrete(path)))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "{method} {path} needs no token");
    }
    let alive = http
        .get(server.at("/system/alive"))
        .send()
        .await
        .expect("alive");
    assert_eq!(alive.status(), 200);

    let bearer = format!("Bearer {TOKEN}");
    let put = http
        .put(server.at("/kv/a"))
        .header("authorization", &bearer)
        .body("{\"ok\":true}")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201);
    let got = http
        .get(server.at("/kv/a"))
        .header("authorization", &bearer)
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.expect("body"), "{\"ok\":true}");

    server.stop(Stop::Term);
    let log = server.log();
    assert!(
        log.contains("unauthorized"),
        "the rejections were logged: {log}"
    );
    assert!(!log.contains(TOKEN), "the token is in the log: {log}");
}

#[tokio::test]
async fn the_token_can_come_from_the_environment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = TestServer::try_start_with_env(
        &tmp.path().join("data"),
        &[],
        &[("DODODB_AUTH_TOKEN", TOKEN)],
    )
    .expect("start");
    let http = client();
    let bare = http.get(server.at("/kv")).send().await.expect("list");
    assert_eq!(bare.status(), 401);
    let with = http
        .get(server.at("/kv"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list");
    assert_eq!(with.status(), 200);
}

#[tokio::test]
async fn a_request_that_runs_too_long_gets_503_but_streams_do_not() {
    let server = TestServer::start(&["--request-timeout-secs", "1"]);
    // A body that never finishes arriving keeps the handler waiting.
    let mut slow = connect(&server);
    slow.write_all(b"PUT /kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        .expect("write");
    let head = read_head(&mut slow);
    assert_eq!(status_of(&head), 503, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );

    // The live feed outlives the timeout: an event written after it still
    // arrives on a stream opened before it.
    let http = client();
    let mut events = http.get(server.at("/events")).send().await.expect("events");
    assert_eq!(events.status(), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let put = http
        .put(server.at("/kv/late"))
        .body("1")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201);
    let mut seen = String::new();
    while !seen.contains("\"late\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("an event in time")
            .expect("stream")
            .expect("the stream is still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("unavailable"), "{seen}");
    let absent = http.get(server.at("/kv/slow")).send().await.expect("get");
    assert_eq!(absent.status(), 404, "the timed-out write never happened");
}

#[tokio::test]
async fn requests_beyond_the_limit_are_shed_at_once() {
    let server = TestServer::start(&["--max-concurrent-requests", "1"]);
    let http = client();
    // The held request takes its slot once the server has read its head;
    // until then a probe may still get through, and a probe that holds the
    // slot at that moment gets the held request itself shed. Then the slot
    // stays free, so the held request is sent again.
    let mut held_and_shed = None;
    for _attempt in 0..20 {
        let mut held = connect(&server);
        held.write_all(b"PUT /kv/held HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n[")
            .expect("write");
        let mut shed = None;
        for _ in 0..50 {
            let response = http.get(server.at("/kv/other")).send().await.expect("get");
            if response.status() == 503 {
                shed = Some(response);
                break;
            }
            assert_eq!(response.status(), 404);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(shed) = shed {
            held_and_shed = Some((held, shed));
            break;
        }
        // Not shed in half a second: the held request must have been
        // refused itself.
        held.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let head = read_head(&mut held);
        assert_eq!(status_of(&head), 503, "{head}");
    }
    let (mut slow, shed) = held_and_shed.expect("a request was shed while the slot was taken");
    assert_error(shed, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;

    slow.write_all(b"1]").expect("finish the body");
    let head = read_head(&mut slow);
    assert_eq!(status_of(&head), 201, "{head}");
    let after = http.get(server.at("/kv/held")).send().await.expect("get");
    assert_eq!(after.status(), 200, "the slot is free again");
}

#[tokio::test]
async fn long_uris_and_large_headers_are_refused() {
    let server = TestServer::start(&[]);
    let answer = get(&server, &format!("/kv/{}", "a".repeat(9000)), "");
    assert_raw_error(&answer, StatusCode::URI_TOO_LONG, "uri_too_long");

    let big = format!("X-Big: {}\r\n", "b".repeat(20_000));
    let answer = get(&server, "/kv/a", &big);
    assert_raw_error(
        &answer,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );

    // Past what the HTTP layer buffers at all: refused before routing.
    let huge = format!("X-Big: {}\r\n", "b".repeat(70_000));
    let answer = get(&server, "/kv/a", &huge);
    assert_eq!(status_of(&answer), 431, "{answer}");

    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let answer = get(&server, "/kv/a", &many);
    assert_eq!(status_of(&answer), 431, "{answer}");

    let fine = get(&server, "/kv/a", "");
    assert_eq!(status_of(&fine), 404, "{fine}");
}

#[tokio::test]
async fn an_oversized_body_is_refused_without_being_read() {
    let server = TestServer::start(&["--max-value-bytes", "1000"]);
    // The head announces 100 MB and not one byte of it is sent: the answer
    // comes anyway, so the server did not wait to buffer it.
    for path in ["/kv/big", "/pubsub/subscribe"] {
        let method = if path == "/kv/big" { "PUT" } else { "POST" };
        let mut tcp = connect(&server);
        tcp.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
                .as_bytes(),
        )
        .expect("write");
        let head = read_head(&mut tcp);
        assert_eq!(status_of(&head), 413, "{path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    // A chunked body has no length to check up front: it is cut off once
    // it passes the limit. The whole request goes out in one write, so the
    // server has read all of it when it answers and closes (unread bytes
    // would make the close a reset that can eat the answer; a streaming
    // client can also hit that race, which is why this is raw TCP).
    let mut request =
        String::from("PUT /kv/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..20 {
        request.push_str(&format!("64\r\n{}\r\n", " ".repeat(100)));
    }
    request.push_str("0\r\n\r\n");
    let answer = raw(&server, request.as_bytes());
    assert_raw_error(&answer, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    let server = TestServer::start(&["--header-read-timeout-secs", "1"]);
    let mut slow = tcp::connect(&server, tcp::SHORT_OF_THE_DEFAULT_HEADER_TIMEOUT);
    slow.write_all(b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("write");
    let mut answer = Vec::new();
    // Ends with the server closing after the 1 s asked for; the read
    // timeout, far below the server's default, fails it otherwise.
    let read = slow.read_to_end(&mut answer);
    assert!(read.is_ok(), "the server closed the connection: {read:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("200 OK"), "{text}");
    // The server itself is fine.
    let alive = client()
        .get(server.at("/system/alive"))
        .send()
        .await
        .expect("alive");
    assert_eq!(alive.status(), 200);
}

#[tokio::test]
async fn cors_headers_only_when_asked_for() {
    let origin = "https://app.example.com";
    let server = TestServer::start(&["--cors-origin", origin, "--auth-token", TOKEN]);
    let http = client();
    let preflight = http
        .request(reqwest::Method::OPTIONS, server.at("/kv/a"))
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization, if-match")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(
        headers
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(origin.as_bytes())
    );
    let methods = headers
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(methods.contains("PUT"), "{methods}");
    let allowed = headers
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");

    let get = http
        .get(server.at("/kv/a"))
        .header("origin", origin)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), 404);
    assert_eq!(
        get.headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(origin.as_bytes())
    );

    let plain = TestServer::start(&[]);
    let get = http
        .get(plain.at("/kv/a"))
        .header("origin", origin)
        .send()
        .await
        .expect("get");
    assert!(get.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn large_lists_and_exports_are_gzipped_when_asked() {
    let server = TestServer::start(&[]);
    let http = client();
    for i in 0..100 {
        let body = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(100));
        put(&server, &format!("key-number-{i:04}"), &body).await;
    }
    for path in ["/kv", "/system/export"] {
        let zipped = http
            .get(server.at(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("get");
        assert_eq!(zipped.status(), 200);
        assert_eq!(
            zipped
                .headers()
                .get("content-encoding")
                .map(|v| v.as_bytes()),
            Some(&b"gzip"[..]),
            "{path}"
        );
        let body = zipped.bytes().await.expect("body");
        assert_eq!(&body[..2], &[0x1f, 0x8b], "{path}: a gzip stream");

        let plain = http.get(server.at(path)).send().await.expect("get");
        assert!(plain.headers().get("content-encoding").is_none(), "{path}");
        let text = plain.text().await.expect("text");
        assert!(text.contains("key-number-0099"), "{path}");
    }
    // Single values are served as stored, whatever the client accepts.
    let one = http
        .get(server.at("/kv/key-number-0001"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert!(one.headers().get("content-encoding").is_none());
    // And a small list is not worth compressing.
    let small = http
        .get(server.at("/kv?limit=1"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("get");
    assert!(small.headers().get("content-encoding").is_none());
}

async fn version_of(server: &TestServer) -> String {
    let doc: Value = get_json(server, "/system/version").await;
    doc["version"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn flags_beat_env_which_beats_the_config_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("dododb.toml");
    std::fs::write(
        &file,
        "server_version = \"from-file\"\nmax_key_bytes = 4\nfsync = \"never\"\n",
    )
    .expect("write");
    let file = file.to_str().expect("utf-8 path");
    let dir = tmp.path().join("data");

    let from_file = TestServer::try_start_with_env(&dir, &["--config", file], &[]).expect("start");
    assert_eq!(version_of(&from_file).await, "from-file");
    let long_key = client()
        .put(from_file.at("/kv/abcdef"))
        .body("1")
        .send()
        .await
        .expect("put");
    assert_eq!(long_key.status(), 400, "max_key_bytes came from the file");
    drop(from_file);

    let env = [
        ("DODODB_CONFIG", file),
        ("DODODB_SERVER_VERSION", "from-env"),
    ];
    let from_env = TestServer::try_start_with_env(&dir, &[], &env).expect("start");
    assert_eq!(version_of(&from_env).await, "from-env");
    drop(from_env);

    let from_flag = TestServer::try_start_with_env(&dir, &["--server-version", "from-flag"], &env)
        .expect("start");
    assert_eq!(version_of(&from_flag).await, "from-flag");
}

#[test]
fn a_bad_config_file_is_a_one_line_error_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (text, key) in [
        ("snapshot_intervall = 5\n", "snapshot_intervall"),
        ("webhook_max_attempts = -1\n", "webhook_max_attempts"),
        ("listen = \"nowhere\"\n", "listen"),
    ] {
        let file = tmp.path().join("bad.toml");
        std::fs::write(&file, text).expect("write");
        let failure = match TestServer::try_start_in(
            &tmp.path().join("data"),
            &["--config", file.to_str().expect("utf-8")],
        ) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(failure) => failure,
        };
        assert_eq!(failure.code, Some(2), "{text:?}: {failure:?}");
        let lines: Vec<&str> = failure.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}: {lines:?}");
        assert!(lines[0].contains(&format!("`{key}`")), "{lines:?}");
    }
}

#[tokio::test]
async fn when_the_disk_fills_up_writes_get_503_and_nothing_acknowledged_is_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let mut server =
        TestServer::try_start_with_env(&dir, &[], &[("DODODB_TEST_WAL_SPACE_BYTES", "4000")])
            .expect("start");
    let http = client();
    let value = format!("{{\"pad\":\"{}\"}}", "p".repeat(100));
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let key = format!("k{i}");
        let response = http
            .put(server.at(&format!("/kv/{key}")))
            .body(value.clone())
            .send()
            .await
            .expect("put");
        if response.status() == 503 {
            assert_error(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
            refused = Some(key);
            break;
        }
        assert_eq!(response.status(), 201);
        acked.push(key);
    }
    let refused = refused.expect("the disk filled up");
    assert!(!acked.is_empty());
    // Reads go on; the refused write is not there; writes stay refused.
    for key in &acked {
        let got = http
            .get(server.at(&format!("/kv/{key}")))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 200, "{key}");
    }
    let missing = http
        .get(server.at(&format!("/kv/{refused}")))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    let again = http
        .put(server.at("/kv/after"))
        .body("1")
        .send()
        .await
        .expect("put");
    assert_eq!(again.status(), 503);
    let delete = http
        .delete(server.at(&format!("/kv/{}", acked[0])))
        .send()
        .await
        .expect("delete");
    assert_eq!(delete.status(), 503);
    // Space is back: after a restart everything acknowledged is there, the
    // refused write is not, and the log needed no repair.
    server.restart(Stop::Kill9, &[]);
    for key in &acked {
        let got = http
            .get(server.at(&format!("/kv/{key}")))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 200, "{key} survived");
    }
    for key in [refused.as_str(), "after"] {
        let got = http
            .get(server.at(&format!("/kv/{key}")))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 404, "{key} was refused and stays absent");
    }
    let log = server.log();
    assert!(log.contains("DodoDB serving"), "{log}");
    assert!(
        !log.contains("torn"),
        "the refused write left a tail: {log}"
    );
    let put = http
        .put(server.at("/kv/after"))
        .body("1")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201, "writes resume");
}

#[tokio::test]
async fn hundreds_of_idle_connections_do_not_stop_service_or_shutdown() {
    let mut server = TestServer::start(&[]);
    let idle: Vec<TcpStream> = (0..500).map(|_| connect(&server)).collect();
    let http = client();
    for i in 0..50 {
        let put = http
            .put(server.at(&format!("/kv/busy-{i}")))
            .body("{}")
            .send()
            .await
            .expect("put");
        assert_eq!(put.status(), 201);
    }
    let count: Value = get_json(&server, "/kv/count").await;
    assert_eq!(count["count"], 50);
    // Idle connections do not hold up a graceful shutdown.
    server.stop(Stop::Term);
    drop(idle);
}

/// Found by the key_and_value fuzz target: simd-json took `1\0` and
/// `18446773440737097955Z16` for numbers, the value was stored, and the
/// next snapshot could not be read back, so the server refused to start.
#[tokio::test]
async fn values_simd_json_was_lax_about_are_refused_and_restarts_stay_possible() {
    let mut server = TestServer::start(&[]);
    let http = client();
    for body in [
        &b"1\0"[..],
        b"184467440737\0\0\0\x001616",
        b"[1\0]",
        b"18446773440737097955Z16",
    ] {
        let put = http
            .put(server.at("/kv/n"))
            .body(body.to_vec())
            .send()
            .await
            .expect("put");
        assert_error(put, StatusCode::BAD_REQUEST, "invalid_json").await;
    }
    let put = http
        .put(server.at("/kv/ok"))
        .body("1")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 201);
    // A clean stop writes a final snapshot, which the next start reads.
    server.restart(Stop::Term, &[]);
    let got = http.get(server.at("/kv/ok")).send().await.expect("get");
    assert_eq!(got.status(), 200);
}
