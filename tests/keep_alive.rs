//! HTTP/1.1 keep-alive after early answers (SPEC §3): when the server
//! answers before it has read the request body (401, 404, 405, 413), it
//! reads and discards the rest (bounded) and keeps the connection, or says
//! `Connection: close` in that answer and lingers, reading the rest, so
//! the client still reads it. Raw TCP for the exact sequences, and a
//! pooled real client for what users run.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, tcp};
use reqwest::Method;

const TOKEN: &str = "keep-alive-token";

/// A server bug fails the test instead of hanging it.
fn connect(server: &TestServer) -> TcpStream {
    tcp::connect(server, Duration::from_secs(30))
}

/// One response: status, lower-cased head, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn says_close(&self) -> bool {
        self.head.contains("\r\nconnection: close\r\n")
    }
}

/// Reads one response with a `Content-Length` body from `tcp`; `None` if
/// the connection closed (or reset) before a whole one arrived.
fn read_answer(tcp: &mut TcpStream) -> Option<Answer> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(Some(0), |n| n.trim().parse().ok())?;
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Sends `method path` with `extra` header lines and a body of `body_len`
/// bytes in two steps: the head alone, then, once the answer to it has
/// arrived, the body with a second request right behind it. Waiting for
/// the answer is the strongest form of "the body comes later": the server
/// answered before a byte of the body was there. Returns both answers.
fn early_answer_then_next(
    server: &TestServer,
    method: &str,
    path: &str,
    extra: &str,
    body_len: usize,
) -> (Answer, Option<Answer>) {
    let mut tcp = connect(server);
    let head =
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {body_len}\r\n{extra}\r\n");
    tcp.write_all(head.as_bytes()).expect("write head");
    let first = read_answer(&mut tcp).expect("an answer before the body was sent");
    let mut rest = vec![b' '; body_len];
    rest.extend_from_slice(b"GET /system/alive HTTP/1.1\r\nhost: x\r\n\r\n");
    // A write into a closed connection may fail: then there is no second
    // answer either, which the caller checks.
    let second = match tcp.write_all(&rest) {
        Ok(()) => read_answer(&mut tcp),
        Err(_) => None,
    };
    (first, second)
}

/// The early answer keeps the connection: the body is read and discarded
/// and the next request on the same socket is served.
fn assert_kept(
    server: &TestServer,
    (method, path, extra): (&str, &str, &str),
    body_len: usize,
    status: u16,
) {
    let (first, second) = early_answer_then_next(server, method, path, extra, body_len);
    assert_eq!(first.status, status, "{method} {path}: {first:?}");
    assert!(
        !first.says_close(),
        "{method} {path}: a small body can be read and discarded: {first:?}"
    );
    let second = second.unwrap_or_else(|| {
        panic!("{method} {path}: the connection closed after {first:?} without saying so")
    });
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.body, r#"{"alive":true}"#);
}

#[test]
fn early_answers_keep_the_connection_usable() {
    let server = TestServer::start(&["--in-memory", "--max-value-bytes", "10000"]);
    assert_kept(&server, ("POST", "/nowhere", ""), 5000, 404);
    assert_kept(&server, ("POST", "/kv/x", ""), 5000, 405);
    assert_kept(&server, ("PUT", "/kv/x", ""), 20000, 413);
    let locked = TestServer::start(&["--in-memory", "--auth-token", TOKEN]);
    assert_kept(&locked, ("PUT", "/kv/x", ""), 5000, 401);
    let bearer = format!("authorization: Bearer {TOKEN}\r\n");
    assert_kept(&locked, ("POST", "/nowhere", &bearer), 5000, 404);
}

/// A remainder too large to read, or one the client waits to send until
/// it is asked (`Expect: 100-continue`), is not read: the answer says
/// `Connection: close` and the server closes.
#[test]
fn an_unread_body_the_server_will_not_read_closes_the_connection_and_says_so() {
    // Within the default --max-value-bytes (1 MiB), beyond what is read.
    let server = TestServer::start(&["--in-memory"]);
    let large = 1024 * 1024;
    for (method, path, extra, body_len, status) in [
        ("POST", "/nowhere", "", large, 404),
        ("POST", "/kv/x", "", large, 405),
        ("PUT", "/kv/x", "", 64 * large, 413),
        ("POST", "/nowhere", "expect: 100-continue\r\n", 2000, 404),
        ("PUT", "/kv/x", "expect: 100-continue\r\n", 2 * large, 413),
    ] {
        let mut tcp = connect(&server);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {body_len}\r\n{extra}\r\n"
        );
        tcp.write_all(head.as_bytes()).expect("write head");
        let answer = read_answer(&mut tcp).expect("an answer");
        assert_eq!(answer.status, status, "{method} {path}: {answer:?}");
        assert!(answer.says_close(), "{method} {path} {extra:?}: {answer:?}");
        let mut after = Vec::new();
        // Ends with the server closing; the 30 s read timeout would fail it.
        let closed = tcp.read_to_end(&mut after);
        assert!(closed.is_ok(), "{method} {path}: {closed:?}");
        assert!(after.is_empty(), "nothing after a closing answer");
    }
}

/// A client that sends its whole body without waiting, as most do, still
/// reads the early answer: the server half-closes after it and reads and
/// discards the rest, instead of closing over unread bytes, which would
/// reset the connection and lose the answer (a broken pipe for the client).
#[test]
fn a_client_still_sending_a_body_the_server_will_not_read_gets_the_answer() {
    let server = TestServer::start(&["--in-memory"]);
    let body_len = 16 * 1024 * 1024;
    let mut tcp = connect(&server);
    let head = format!("PUT /kv/x HTTP/1.1\r\nhost: x\r\ncontent-length: {body_len}\r\n\r\n");
    tcp.write_all(head.as_bytes()).expect("write head");
    let body = vec![b'1'; body_len];
    let sent = tcp.write_all(&body);
    assert!(sent.is_ok(), "the server reset the connection: {sent:?}");
    let answer = read_answer(&mut tcp).expect("an answer");
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.says_close(), "{answer:?}");
    let mut after = Vec::new();
    let closed = tcp.read_to_end(&mut after);
    assert!(closed.is_ok(), "{closed:?}");
    assert!(after.is_empty(), "nothing after a closing answer");
}

/// A client that stops sending in the middle of a body the server did not
/// want is cut off after `--header-read-timeout-secs`, like one that stops
/// in the middle of its head.
#[test]
fn a_client_that_never_sends_the_rest_is_disconnected() {
    let server = TestServer::start(&["--in-memory", "--header-read-timeout-secs", "1"]);
    let mut tcp = tcp::connect(&server, tcp::SHORT_OF_THE_DEFAULT_HEADER_TIMEOUT);
    tcp.write_all(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nhalf")
        .expect("write");
    let answer = read_answer(&mut tcp).expect("an answer");
    assert_eq!(answer.status, 404, "{answer:?}");
    let mut after = Vec::new();
    let closed = tcp.read_to_end(&mut after);
    assert!(
        closed.is_ok(),
        "the server closed the connection: {closed:?}"
    );
}

/// What users run: one pooled client, many concurrent requests, early
/// answers with bodies among them. Not one may fail to get its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_client_sees_no_connection_errors() {
    const TASKS: usize = 8;
    const ROUNDS: usize = 40;
    let server = Arc::new(TestServer::start(&[
        "--in-memory",
        "--auth-token",
        TOKEN,
        "--max-value-bytes",
        "200000",
    ]));
    let http = server.http().clone();
    // Larger than a first read of the connection, so the server answers
    // before the body has arrived; within what the server reads and
    // discards, so it keeps the connection.
    let big = format!("\"{}\"", "x".repeat(150_000));
    let too_big = format!("\"{}\"", "x".repeat(250_000));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (http, server, errors) = (http.clone(), server.clone(), errors.clone());
        let (big, too_big) = (big.clone(), too_big.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let key = format!("/kv/k{task}-{round}");
                // (method, path, with the token, body, expected status)
                let mix = [
                    (Method::PUT, key.as_str(), true, "{\"n\":1}", 201),
                    (Method::GET, &key, true, "", 200),
                    (Method::PUT, &key, false, &big, 401),
                    (Method::POST, "/nowhere", true, &big, 404),
                    (Method::POST, &key, true, &big, 405),
                    (Method::PUT, &key, true, &too_big, 413),
                    (Method::DELETE, &key, true, "", 200),
                ];
                for (method, path, authorized, body, status) in mix {
                    let mut request = http.request(method.clone(), server.at(path));
                    if authorized {
                        request = request.bearer_auth(TOKEN);
                    }
                    if !body.is_empty() {
                        request = request.body(body.to_string());
                    }
                    match request.send().await {
                        Ok(response) => {
                            assert_eq!(response.status().as_u16(), status, "{method} {path}");
                            response.bytes().await.expect("answer body");
                        }
                        Err(e) => {
                            eprintln!("{method} {path}: expected {status}, got {e:?}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "requests that failed on a pooled connection"
    );
}
