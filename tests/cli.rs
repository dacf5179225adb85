//! The client subcommands (`get`, `put`, `del`, `ls`, `count`, `watch`,
//! `subscribe`) end to end: the real binary against a real server, checking
//! exit codes and what reaches stdout (piped, so compact JSON).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use common::{Stop, TestServer, dododb_client, get, get_json, poll_until, put};

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(url: &str, args: &[&str]) -> Run {
    run_with_stdin(url, args, None)
}

fn run_with_stdin(url: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = dododb_client(url);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().expect("spawn dododb");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[track_caller]
fn ok(url: &str, args: &[&str]) -> String {
    let run = run(url, args);
    assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
    run.stdout
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[tokio::test]
async fn put_get_del_round_trip_in_compact_json() {
    let server = TestServer::start(&["--in-memory"]);
    let url = &server.url;
    let put = ok(
        url,
        &["put", "user:1", r#"{ "name": "Ada", "tags": [1, 2] }"#],
    );
    assert_eq!(put, "{\"key\":\"user:1\",\"version\":1,\"created\":true}\n");
    // Piped output is compact, one document a line.
    assert_eq!(
        ok(url, &["get", "user:1"]),
        "{\"name\":\"Ada\",\"tags\":[1,2]}\n"
    );
    // The server still holds the bytes as written.
    assert_eq!(
        get(&server, "user:1").await.as_deref(),
        Some(r#"{ "name": "Ada", "tags": [1, 2] }"#)
    );

    let replaced = json(&ok(url, &["put", "user:1", "2"]));
    assert_eq!(replaced["created"], false);
    assert_eq!(replaced["version"], 2);

    // A key that needs escaping travels as one path segment.
    let odd = "a b/c%d?";
    ok(url, &["put", odd, "[1]"]);
    assert_eq!(ok(url, &["get", odd]), "[1]\n");
    assert_eq!(get(&server, odd).await.as_deref(), Some("[1]"));

    let deleted = json(&ok(url, &["del", "user:1"]));
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["key"], "user:1");
    let gone = run(url, &["get", "user:1"]);
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert_eq!(gone.stdout, "");
    assert!(gone.stderr.contains("not_found"), "{gone:?}");
    assert_eq!(run(url, &["del", "user:1"]).code, Some(1));
}

#[tokio::test]
async fn put_takes_files_stdin_ttl_and_conditions() {
    let server = TestServer::start(&["--in-memory"]);
    let url = &server.url;
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("value.json");
    std::fs::write(&file, br#"{"from": "file"}"#).expect("write");
    ok(url, &["put", "f", &format!("@{}", file.display())]);
    assert_eq!(ok(url, &["get", "f"]), "{\"from\":\"file\"}\n");

    let piped = run_with_stdin(url, &["put", "s"], Some(r#"{"from": "stdin"}"#));
    assert_eq!(piped.code, Some(0), "{piped:?}");
    let dash = run_with_stdin(url, &["put", "d", "-"], Some("[true]"));
    assert_eq!(dash.code, Some(0), "{dash:?}");
    assert_eq!(ok(url, &["get", "s"]), "{\"from\":\"stdin\"}\n");
    assert_eq!(ok(url, &["get", "d"]), "[true]\n");

    ok(url, &["put", "t", "1", "--ttl", "300"]);
    let meta: serde_json::Value = get_json(&server, "/kv/t/meta").await;
    assert!(meta["expires_at"].is_string(), "{meta}");

    let version = json(&ok(url, &["put", "c", "1"]))["version"]
        .as_u64()
        .expect("version");
    let stale = run(
        url,
        &[
            "put",
            "c",
            "2",
            "--if-version",
            &(version + 100).to_string(),
        ],
    );
    assert_eq!(stale.code, Some(1), "{stale:?}");
    assert!(stale.stderr.contains("precondition_failed"), "{stale:?}");
    assert_eq!(ok(url, &["get", "c"]), "1\n");
    ok(
        url,
        &["put", "c", "3", "--if-version", &version.to_string()],
    );
    assert_eq!(ok(url, &["get", "c"]), "3\n");

    assert_eq!(run(url, &["put", "c", "4", "--if-absent"]).code, Some(1));
    ok(url, &["put", "new", "4", "--if-absent"]);

    let current = json(&ok(url, &["put", "c", "5"]))["version"]
        .as_u64()
        .expect("version");
    let del_stale = run(
        url,
        &["del", "c", "--if-version", &(current - 1).to_string()],
    );
    assert_eq!(del_stale.code, Some(1), "{del_stale:?}");
    ok(url, &["del", "c", "--if-version", &current.to_string()]);
}

#[test]
fn failures_exit_two() {
    let server = TestServer::start(&["--in-memory"]);
    let url = &server.url;
    let bad_json = run(url, &["put", "k", "{oops"]);
    assert_eq!(bad_json.code, Some(2), "{bad_json:?}");
    assert!(bad_json.stderr.contains("invalid_json"), "{bad_json:?}");
    let missing_file = run(url, &["put", "k", "@/no/such/file.json"]);
    assert_eq!(missing_file.code, Some(2), "{missing_file:?}");
    assert_eq!(
        run(url, &["get"]).code,
        Some(2),
        "a missing argument is a usage error"
    );
    assert_eq!(run(url, &["put", "k", "1", "--ttl", "0"]).code, Some(2));
    assert_eq!(
        run(url, &["get", "k", "--url", "ftp://example"]).code,
        Some(2)
    );

    // A port nobody listens on.
    let free = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", free.local_addr().expect("addr"));
    drop(free);
    let refused = run(&dead, &["get", "k"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert!(refused.stderr.contains("cannot reach"), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "one line: {refused:?}");
}

#[tokio::test]
async fn ls_pages_through_every_key_and_count_counts() {
    let server = TestServer::start(&["--in-memory"]);
    // More than one page of the server's default 1000.
    let mut expected: Vec<String> = (0..1100).map(|i| format!("k:{i:05}")).collect();
    for key in &expected {
        put(&server, key, "0").await;
    }
    for key in ["other:1", "other:2"] {
        put(&server, key, "1").await;
    }
    let url = &server.url;
    let listed: Vec<String> = ok(url, &["ls", "--prefix", "k:"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(listed, expected);
    expected.extend(["other:1".to_string(), "other:2".to_string()]);
    let all: Vec<String> = ok(url, &["ls"]).lines().map(String::from).collect();
    assert_eq!(all, expected);
    assert_eq!(ok(url, &["ls", "--prefix", "none:"]), "");

    assert_eq!(ok(url, &["count"]), "1102\n");
    assert_eq!(ok(url, &["count", "--prefix", "other:"]), "2\n");
}

#[tokio::test]
async fn subscribe_registers_a_webhook() {
    let server = TestServer::start(&["--in-memory"]);
    let url = &server.url;
    let subscribe = |args: &[&str]| json(&ok(url, &[&["subscribe"], args].concat()));
    let by_key = subscribe(&[
        "--key",
        "user:1",
        "--callback",
        "http://127.0.0.1:9/hook",
        "--secret",
        "s",
    ]);
    assert_eq!(by_key["key"], "user:1");
    assert_eq!(by_key["signed"], true);
    let id = by_key["id"].as_str().expect("id").to_string();
    let by_prefix = subscribe(&["--prefix", "user:", "--callback", "http://127.0.0.1:9/all"]);
    assert_eq!(by_prefix["prefix"], "user:");
    // The same target and URL again is the same subscription.
    let again = subscribe(&["--key", "user:1", "--callback", "http://127.0.0.1:9/hook"]);
    assert_eq!(again["id"], id.as_str());

    let listed: serde_json::Value = get_json(&server, "/pubsub/subscriptions").await;
    assert_eq!(
        listed["subscriptions"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    let bad_url = run(url, &["subscribe", "--key", "k", "--callback", "not a url"]);
    assert_eq!(bad_url.code, Some(2), "{bad_url:?}");
    assert!(bad_url.stderr.contains("invalid_request"), "{bad_url:?}");
    assert_eq!(
        run(url, &["subscribe", "--callback", "http://x/"]).code,
        Some(2)
    );
    assert_eq!(
        run(
            url,
            &[
                "subscribe",
                "--key",
                "k",
                "--prefix",
                "p",
                "--callback",
                "http://x/"
            ]
        )
        .code,
        Some(2)
    );
}

#[tokio::test]
async fn subs_lists_status_and_sub_recover_and_sub_enable_act() {
    // The callback refuses connections: with one attempt, events fail.
    let server = TestServer::start(&["--webhook-retry-schedule", ""]);
    let url = &server.url;
    let sub = json(&ok(
        url,
        &[
            "subscribe",
            "--key",
            "k",
            "--callback",
            "http://127.0.0.1:9/hook",
        ],
    ));
    let id = sub["id"].as_str().expect("id").to_string();
    ok(url, &["put", "k", "1"]);
    let listed = poll_until("`subs` shows the failed event", async || {
        let listed = json(&ok(url, &["subs"]));
        (listed["subscriptions"][0]["failed"] == 1).then_some(listed)
    })
    .await;
    let shown = &listed["subscriptions"][0];
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["status"], "failing");
    assert!(shown["cursor"].as_u64().is_some());
    assert_eq!(
        json(&ok(url, &["sub-recover", &id, "--since", "1"])),
        serde_json::json!({"queued": 1})
    );
    assert_eq!(json(&ok(url, &["sub-enable", &id]))["id"], id.as_str());
    let missing = run(url, &["sub-enable", "sub_nope"]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert_eq!(
        run(url, &["sub-recover", &id]).code,
        Some(2),
        "--since is required"
    );
}

/// A loopback HTTP server that answers its connections with canned
/// responses, in order, and reports each request's head. Connections
/// beyond the list are held open without an answer.
struct FakeServer {
    url: String,
    requests: Receiver<String>,
}

impl FakeServer {
    fn start(responses: Vec<String>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, requests) = mpsc::channel();
        std::thread::spawn(move || {
            let mut responses = responses.into_iter();
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                if tx.send(head).is_err() {
                    return;
                }
                match responses.next() {
                    // Dropping the stream closes the connection.
                    Some(response) => {
                        let _ = stream.write_all(response.as_bytes());
                    }
                    None => held.push(stream),
                }
            }
        });
        FakeServer { url, requests }
    }

    fn next_request(&self) -> String {
        self.requests
            .recv_timeout(Duration::from_secs(60))
            .expect("a request reached the fake server")
    }
}

#[test]
fn the_token_is_sent_as_a_bearer() {
    let body = r#"{"count":3}"#;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let fake = FakeServer::start(vec![answer.clone(), answer]);
    assert_eq!(ok(&fake.url, &["count", "--token", "s3cret"]), "3\n");
    let head = fake.next_request().to_ascii_lowercase();
    assert!(head.starts_with("get /kv/count "), "{head}");
    assert!(head.contains("authorization: bearer s3cret\r\n"), "{head}");

    let mut command = dododb_client(&fake.url);
    command.arg("count").env("DODODB_AUTH_TOKEN", "from-env");
    let out = command.output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let head = fake.next_request().to_ascii_lowercase();
    assert!(
        head.contains("authorization: bearer from-env\r\n"),
        "{head}"
    );
}

/// A running `dododb watch` with its output lines arriving on channels.
struct Watch {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Watch {
    fn start(url: &str, args: &[&str]) -> Watch {
        let mut child = dododb_client(url)
            .arg("watch")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watch");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Watch {
            child,
            stdout,
            stderr,
        }
    }

    /// The next event it printed.
    fn event(&self) -> serde_json::Value {
        let line = self
            .stdout
            .recv_timeout(Duration::from_secs(60))
            .expect("watch printed an event");
        json(&line)
    }

    /// Waits for a stderr line containing `needle`.
    fn said(&self, needle: &str) -> String {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("watch never said {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn watch_prints_each_change_of_its_prefix() {
    let server = TestServer::start(&["--in-memory"]);
    let url = &server.url;
    ok(url, &["put", "w:before", "0"]);
    let watch = Watch::start(url, &["--prefix", "w:"]);
    // From here on every change is replayed from that revision on, however
    // soon the stream itself connects.
    assert!(
        watch
            .said("watching changes after revision")
            .ends_with(" 1")
    );
    ok(url, &["put", "w:1", r#"{"n": 1}"#]);
    ok(url, &["put", "elsewhere", "2"]);
    ok(url, &["del", "w:1"]);

    let first = watch.event();
    assert_eq!(first["key"], "w:1");
    assert_eq!(first["event"], "update");
    assert_eq!(first["new_value"], serde_json::json!({"n": 1}));
    assert_eq!(first["version"], 2);
    let second = watch.event();
    assert_eq!(second["key"], "w:1");
    assert_eq!(second["event"], "delete");
    assert_eq!(second["version"], 4);
}

#[test]
fn watch_since_replays_from_a_revision() {
    let server = TestServer::start(&["--in-memory"]);
    let url = &server.url;
    for i in 1..=3 {
        ok(url, &["put", &format!("k{i}"), &i.to_string()]);
    }
    let watch = Watch::start(url, &["--since", "1"]);
    assert_eq!(watch.event()["key"], "k2");
    assert_eq!(watch.event()["key"], "k3");
}

#[test]
fn watch_resumes_after_the_server_restarts() {
    let mut server = TestServer::start(&[]);
    let (url, addr) = (server.url.clone(), server.addr().to_string());
    let watch = Watch::start(&url, &[]);
    watch.said("watching changes after revision 0");
    ok(&url, &["put", "a", "1"]);
    assert_eq!(watch.event()["version"], 1);

    // A clean stop closes the feed; the watch keeps trying to reconnect.
    server.stop(Stop::Term);
    assert!(watch.said("reconnecting").contains("since=1"));
    server.start_again_at(&addr, &[]);
    // Written at once, racing the reconnect: `since=1` replays it either way.
    ok(&url, &["put", "b", "2"]);
    ok(&url, &["put", "c", "3"]);
    let b = watch.event();
    assert_eq!(
        (b["key"].as_str(), b["version"].as_u64()),
        (Some("b"), Some(2)),
        "{b}"
    );
    let c = watch.event();
    assert_eq!(
        (c["key"].as_str(), c["version"].as_u64()),
        (Some("c"), Some(3)),
        "{c}"
    );
}

#[test]
fn watch_reconnects_with_the_last_id_it_saw() {
    let frame = |id: u64| {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
             : keepalive\n\nid: {id}\nevent: update\ndata: {{\"version\":\n\
             data: {id}}}\n\n"
        )
    };
    let fake = FakeServer::start(vec![frame(5), frame(6)]);
    let watch = Watch::start(&fake.url, &["--prefix", "p", "--since", "3"]);
    assert_eq!(watch.event(), serde_json::json!({"version": 5}));
    assert_eq!(watch.event(), serde_json::json!({"version": 6}));
    let first = fake.next_request();
    assert!(
        first.starts_with("GET /events?prefix=p&since=3 "),
        "{first}"
    );
    let second = fake.next_request();
    assert!(
        second.starts_with("GET /events?prefix=p&since=5 "),
        "{second}"
    );
    let third = fake.next_request();
    assert!(
        third.starts_with("GET /events?prefix=p&since=6 "),
        "{third}"
    );
}

#[test]
fn txn_reads_a_document_from_a_file_or_stdin_and_exits_one_on_failure() {
    let server = TestServer::start(&["--in-memory"]);
    let doc = r#"{"compare": [{"key": "lock", "exists": false}],
                  "success": [{"op": "put", "key": "lock", "value": {"owner": "me"}},
                              {"op": "put", "key": "big", "value": 123456789012345678901234567890}],
                  "failure": [{"op": "get", "key": "lock"}]}"#;
    let first = run_with_stdin(&server.url, &["txn"], Some(doc));
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(json(&first.stdout)["succeeded"], true);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), doc).expect("write");
    let again = run(&server.url, &["txn", file.path().to_str().expect("utf-8")]);
    assert_eq!(again.code, Some(1), "the compare fails now: {again:?}");
    assert!(again.stdout.contains("\"succeeded\":false"), "{again:?}");
    assert!(again.stdout.contains("{\"owner\":\"me\"}"), "{again:?}");
    let bad = run_with_stdin(
        &server.url,
        &["txn"],
        Some(r#"{"success": [{"op": "nope"}]}"#),
    );
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(bad.stderr.contains("success[0]"), "{bad:?}");
    let got = ok(&server.url, &["mget", "lock", "missing", "big"]);
    assert_eq!(
        got.trim(),
        r#"{"lock":{"owner":"me"},"big":123456789012345678901234567890}"#
    );
    let set = ok(&server.url, &["mset", "a", "1", "b", "[true]"]);
    assert_eq!(json(&set)["succeeded"], true);
    assert_eq!(
        ok(&server.url, &["mget", "a", "b"]).trim(),
        r#"{"a":1,"b":[true]}"#
    );
    let odd = run(&server.url, &["mset", "a", "1", "b"]);
    assert_eq!(odd.code, Some(2), "{odd:?}");
}
