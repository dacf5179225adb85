//! `POST /system/import`, `dododb export | import` and `dododb restore`
//! through the real binary: awkward values round-trip byte for byte, a bad
//! line anywhere is refused naming it with nothing written, `replace`
//! clears first, expired entries are left out, and `restore` builds a data
//! directory a server then starts on.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::{
    Stop, TestServer, assert_error, client, dododb_client, get_json, kv, put, put_ttl, sse_changes,
    stats,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Every entry as `key -> (value bytes, expires_at)`, read with GET and
/// `/meta` (so what a client sees, byte for byte).
async fn contents(server: &TestServer) -> BTreeMap<String, (Vec<u8>, Value)> {
    let http = server.http();
    let page: Value = get_json(server, "/kv?limit=10000").await;
    let mut out = BTreeMap::new();
    for key in page["keys"].as_array().expect("keys") {
        let key = key.as_str().expect("key");
        let value = http
            .get(server.at(&kv(key)))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("get");
        let meta: Value = get_json(server, &format!("{}/meta", kv(key))).await;
        out.insert(
            key.to_string(),
            (value.to_vec(), meta["expires_at"].clone()),
        );
    }
    out
}

/// `POST /system/import` of `body`.
async fn post_import(server: &TestServer, body: String) -> reqwest::Response {
    server
        .http()
        .post(server.at("/system/import"))
        .body(body)
        .send()
        .await
        .expect("import")
}

/// `GET /system/export`: the whole body.
async fn export(server: &TestServer) -> Vec<u8> {
    let response = server
        .http()
        .get(server.at("/system/export"))
        .send()
        .await
        .expect("export");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("export").to_vec()
}

/// Runs the client with `args`; returns (code, stdout, stderr).
fn run(url: &str, args: &[&str]) -> (Option<i32>, Vec<u8>, String) {
    let out = dododb_client(url)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run dododb");
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const AWKWARD: [(&str, &str); 8] = [
    ("plain", "{\"a\":1}"),
    ("padded", "  {\"b\": [1, 2]}\n\t"),
    ("inner newline", "{\"x\":\n  1}"),
    ("huge", "123456789012345678901234567890123456789e-5"),
    ("neg big", "-98765432109876543210987654321"),
    ("ünïcødé/🦤 key%20", "\"ünïcødé 🦤 \\u00e9\""),
    ("a/b c?d#e&f=g", "[null, true, false, \"\\n\"]"),
    ("empty string", "\"\""),
];

#[tokio::test]
async fn export_then_import_round_trips_awkward_values_byte_for_byte() {
    let source = TestServer::start(&["--fsync", "never"]);
    for (key, body) in AWKWARD {
        put(&source, key, body).await;
    }
    put_ttl(&source, "with ttl", "{\"t\": 1}", 3600).await;
    let (code, export, stderr) = run(&source.url, &["export"]);
    assert_eq!(code, Some(0), "{stderr}");
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), &export).expect("write");

    let target = TestServer::start(&["--fsync", "always"]);
    put(&target, "already there", "1").await;
    let before = stats(&target).await["revision"].as_u64().expect("revision");
    let path = file.path().to_str().expect("utf-8 path");
    let (code, answer, stderr) = run(&target.url, &["import", path]);
    assert_eq!(code, Some(0), "{stderr}");
    let answer: Value = serde_json::from_slice(&answer).expect("json");
    assert_eq!(answer["imported"], AWKWARD.len() + 1);
    assert_eq!(answer["revision"], before + AWKWARD.len() as u64 + 1);

    let mut expected = contents(&source).await;
    for (key, body) in AWKWARD {
        assert_eq!(expected[key].0, body.as_bytes(), "{key}");
    }
    let got = contents(&target).await;
    assert_eq!(got["already there"].0, b"1", "merge keeps other keys");
    expected.insert("already there".into(), (b"1".to_vec(), Value::Null));
    assert_eq!(got, expected, "values and absolute expiry round-trip");

    // And back out: the entries of the second export equal the first's.
    let (_, again, _) = run(&target.url, &["export"]);
    let entries = |data: &[u8]| -> BTreeMap<String, Value> {
        String::from_utf8_lossy(data)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("line"))
            .filter(|l| l.get("key").is_some())
            .map(|mut l| {
                let key = l["key"].as_str().expect("key").to_string();
                l.as_object_mut().expect("object").remove("version");
                (key, l)
            })
            .collect()
    };
    let mut first = entries(&export);
    first.insert(
        "already there".into(),
        json!({"key": "already there", "expires_at_ms": 0, "value": 1}),
    );
    assert_eq!(entries(&again), first);
}

#[tokio::test]
async fn a_bad_line_anywhere_is_named_and_nothing_is_written() {
    let server = TestServer::start(&["--fsync", "never", "--max-value-bytes", "1000"]);
    put(&server, "keep", "\"me\"").await;
    let before = stats(&server).await;
    let good =
        |i: usize| format!("{{\"key\":\"k{i}\",\"version\":1,\"expires_at_ms\":0,\"value\":{i}}}");
    let mut lines: Vec<String> = (0..5000).map(good).collect();
    let check = async |body: String, line: usize, mentions: &str| {
        let response = post_import(&server, body).await;
        let doc = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        let message = doc["error"]["message"].as_str().expect("message");
        assert!(message.starts_with(&format!("line {line}: ")), "{message}");
        assert!(message.contains(mentions), "{message}");
    };
    lines[4321] = "{\"key\": \"k\", \"value\": {oops}".into();
    check(lines.join("\n"), 4322, "not JSON").await;
    lines[4321] = good(4321);
    lines[17] = format!("{{\"key\":\"big\",\"value\":\"{}\"}}", "x".repeat(2000));
    check(lines.join("\n"), 18, "larger than").await;
    lines[17] = "{\"key\":\"\",\"value\":1}".into();
    check(lines.join("\n"), 18, "empty").await;
    lines[17] = "{\"key\":\"clear\",\"value\":1}".into();
    check(lines.join("\n"), 18, "reserved").await;
    lines[17] = "{\"surprise\":true}".into();
    check(lines.join("\n"), 18, "neither an entry").await;
    lines[17] = good(17);

    // A real export, damaged in a value, cut short, or with a wrong count.
    let source = TestServer::start(&["--in-memory"]);
    for i in 0..50 {
        put(&source, &format!("s{i}"), &format!("{{\"n\": {i}}}")).await;
    }
    let export = String::from_utf8(export(&source).await).expect("UTF-8");
    let n_lines = export.lines().count();
    check(
        export.replacen("{\"n\": 7}", "{\"n\": 8}", 1),
        n_lines,
        "checksum",
    )
    .await;
    let cut: Vec<&str> = export.lines().take(30).collect();
    check(cut.join("\n"), 30, "cut short").await;
    let mut dropped: Vec<&str> = export.lines().collect();
    dropped.remove(10);
    check(dropped.join("\n"), n_lines - 1, "entries").await;

    let after = stats(&server).await;
    assert_eq!(after["revision"], before["revision"], "nothing was written");
    assert_eq!(after["keys"], 1);
    let leftovers: Vec<_> = std::fs::read_dir(&server.dir)
        .expect("data dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "spool files are removed: {leftovers:?}"
    );
}

#[tokio::test]
async fn replace_clears_first_and_expired_entries_are_left_out() {
    let server = TestServer::start(&["--fsync", "never"]);
    put(&server, "old", "1").await;
    let far = 4_102_444_800_000u64; // 2100-01-01
    let body = [
        json!({"dododb_snapshot": 1, "wal_segment": 0, "revision": 9, "created_at": "x"}),
        json!({"meta": {"subscribe": {}}}),
        json!({"key": "fresh", "version": 3, "expires_at_ms": 0, "value": {"a": 1}}),
        json!({"key": "later", "version": 4, "expires_at_ms": far, "value": 2}),
        json!({"key": "gone", "version": 5, "expires_at_ms": 1000, "value": 3}),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    let crc = crc32c::crc32c(body.as_bytes());
    let body = format!(
        "{body}{}\n",
        json!({"end": true, "revision": 9, "entries": 3, "crc32c": crc})
    );
    let bad_mode = server
        .http()
        .post(server.at("/system/import?mode=wipe"))
        .body(body.clone())
        .send()
        .await
        .expect("import");
    assert_error(bad_mode, StatusCode::BAD_REQUEST, "invalid_request").await;
    let response = server
        .http()
        .post(server.at("/system/import?mode=replace"))
        .body(body)
        .send()
        .await
        .expect("import");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["imported"], 2);
    assert_eq!(answer["expired"], 1);
    assert_eq!(answer["skipped_subscriptions"], 1);
    let got = contents(&server).await;
    assert_eq!(got.keys().collect::<Vec<_>>(), ["fresh", "later"]);
    assert_eq!(got["later"].1, "2100-01-01T00:00:00Z");
}

#[tokio::test]
async fn restore_builds_a_data_dir_offline_and_refuses_a_non_empty_one() {
    let source = TestServer::start(&["--in-memory"]);
    for (key, body) in AWKWARD {
        put(&source, key, body).await;
    }
    let export = export(&source).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("backup.jsonl");
    std::fs::write(&file, &export).expect("write");
    let dir = tmp.path().join("restored");
    let restore = |extra: &[&str]| {
        let mut command = dododb_client("http://127.0.0.1:9");
        command
            .arg("restore")
            .arg("--data-dir")
            .arg(&dir)
            .arg(&file)
            .args(extra);
        command.output().expect("run restore")
    };
    let first = restore(&[]);
    assert!(first.status.success(), "{first:?}");
    let again = restore(&[]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let mut server = TestServer::start_in(&dir, &[]);
    let got = contents(&server).await;
    assert_eq!(got.len(), AWKWARD.len());
    for (key, body) in AWKWARD {
        assert_eq!(got[key].0, body.as_bytes(), "{key}");
    }
    put(&server, "extra", "1").await;
    server.stop(Stop::Kill9);

    let forced = restore(&["--force"]);
    assert!(forced.status.success(), "{forced:?}");
    server.start_again(&[]);
    let got = contents(&server).await;
    assert_eq!(got.len(), AWKWARD.len(), "--force replaced what was there");
    assert!(!got.contains_key("extra"));
}

/// An import whose body stops short, because the client went away or ran
/// out of `--request-timeout-secs`, applies nothing, even as plain lines
/// (which have no trailer that would notice the cut).
#[tokio::test]
async fn an_import_whose_body_is_cut_short_or_too_slow_applies_nothing() {
    use std::io::Write;
    let server = TestServer::start(&["--fsync", "never", "--request-timeout-secs", "1"]);
    let lines: String = (0..200)
        .map(|i| format!("{{\"key\":\"cut{i}\",\"value\":{i}}}\n"))
        .collect();
    let head = format!(
        "POST /system/import HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        lines.len() + 1000
    );

    // The client stops sending, then closes its side: the body ends early.
    let mut cut = common::tcp::connect(&server, std::time::Duration::from_secs(20));
    cut.write_all(head.as_bytes()).expect("write");
    cut.write_all(lines.as_bytes()).expect("write");
    cut.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let answer = common::tcp::read_head(&mut cut);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // The client keeps the connection but never finishes the body.
    let mut slow = common::tcp::connect(&server, std::time::Duration::from_secs(20));
    slow.write_all(head.as_bytes()).expect("write");
    slow.write_all(lines.as_bytes()).expect("write");
    let answer = common::tcp::read_head(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");

    // Both answers came after the import's checker gave up, so nothing can
    // still be on its way in.
    let after = stats(&server).await;
    assert_eq!(after["keys"], 0, "{after}");
    assert_eq!(after["revision"], 0, "{after}");
}

/// An import larger than one of its batches (each is one log record, like
/// a transaction): every entry takes its own revision in the export's
/// order and reaches the live feed as its own event (old values included,
/// a key repeated in the export twice; a reader cut off by the burst
/// resumes from its last event), and after `kill -9` every
/// acknowledged entry is there with its version.
#[tokio::test]
async fn a_large_import_gives_each_entry_its_own_revision_and_event() {
    const N: usize = 10_000;
    let mut server = TestServer::start(&["--fsync", "always"]);
    put(&server, "big/00002", "\"old\"").await;
    let since = stats(&server).await["revision"].as_u64().expect("revision");
    let feed = client()
        .get(server.at(&format!("/events?prefix=big/&since={since}")))
        .send()
        .await
        .expect("feed");
    let mut lines: Vec<(String, String)> = (0..N)
        .map(|i| (format!("big/{i:05}"), format!("{{\"n\":{i}}}")))
        .collect();
    lines[6_000] = ("big/00001".into(), "\"again\"".into());
    let body: String = lines
        .iter()
        .map(|(key, value)| format!("{{\"key\":\"{key}\",\"value\":{value}}}\n"))
        .collect();
    let reply = post_import(&server, body).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let answer: Value = reply.json().await.expect("json");
    assert_eq!(answer["imported"], N);
    assert_eq!(answer["revision"], since + N as u64);

    let within = std::time::Duration::from_secs(60);
    let events = sse_changes(&server, feed, "prefix=big/", since, N, within).await;
    for (i, (event, (key, value))) in events.iter().zip(&lines).enumerate() {
        let new: Value = serde_json::from_str(value).expect("value");
        assert_eq!(event["version"], since + 1 + i as u64, "{event}");
        assert_eq!(event["key"], *key, "{event}");
        assert_eq!(event["event"], "update", "{event}");
        assert_eq!(event["new_value"], new, "{event}");
        let old = match i {
            2 => json!("old"),
            6_000 => json!({"n": 1}),
            _ => Value::Null,
        };
        assert_eq!(event["old_value"], old, "{event}");
    }

    server.restart(Stop::Kill9, &["--fsync", "always"]);
    let after = stats(&server).await;
    assert_eq!(after["revision"], since + N as u64, "{after}");
    // One line repeated a key: one key fewer than lines.
    assert_eq!(after["keys"], N - 1, "{after}");
    let repeated = get_json(&server, &format!("{}/meta", kv("big/00001"))).await;
    assert_eq!(repeated["version"], since + 6_001, "{repeated}");
    let listed = get_json(&server, "/kv?prefix=big/&limit=3").await;
    assert_eq!(
        listed["keys"],
        json!(["big/00000", "big/00001", "big/00002"]),
        "{listed}"
    );
}

/// The body of an import of `n` entries `cut/<i>` (`{"n":<i>}`), with the
/// entry at `again` writing `cut/00001` a second time.
fn cut_export(n: usize, again: usize) -> (Vec<String>, String) {
    let keys: Vec<String> = (0..n)
        .map(|i| match i {
            _ if i == again => "cut/00001".to_string(),
            _ => format!("cut/{i:05}"),
        })
        .collect();
    let body = keys
        .iter()
        .enumerate()
        .map(|(i, key)| format!("{{\"key\":\"{key}\",\"value\":{{\"n\":{i}}}}}\n"))
        .collect();
    (keys, body)
}

/// Checks that exactly the first `whole` lines of a `cut_export` are
/// there, each at its own revision after `since`, and the rest none
/// (looking at every 511th line, none of them the repeated key).
async fn only_the_first(server: &TestServer, keys: &[String], since: u64, whole: usize) {
    let after = stats(server).await;
    assert_eq!(after["revision"], since + whole as u64, "{after}");
    for (i, key) in keys.iter().enumerate().step_by(511) {
        let meta = server
            .http()
            .get(server.at(&format!("{}/meta", kv(key))))
            .send()
            .await
            .expect("meta");
        if i < whole {
            let meta: Value = meta.json().await.expect("meta");
            assert_eq!(meta["version"], since + 1 + i as u64, "{key}: {meta}");
        } else {
            assert_eq!(meta.status(), StatusCode::NOT_FOUND, "{key} (line {i})");
        }
    }
}

/// An import cut off in the log after a crash leaves whole batches, in
/// order: here the last batch's record is torn by `kill -9` (its tail is
/// cut from the file), so replay leaves out all of that batch and keeps
/// the two before it, whose events read back from the log are the ones
/// sent live, with the values they replaced.
#[tokio::test]
async fn a_torn_import_batch_is_left_out_whole_and_the_rest_reads_back() {
    // Three batches of 4096 (the import's batch size).
    const N: usize = 3 * 4096;
    let mut server = TestServer::start(&["--fsync", "always"]);
    put(&server, "cut/00005", "\"old\"").await;
    let since = stats(&server).await["revision"].as_u64().expect("revision");
    let (keys, body) = cut_export(N, 6_000);
    let reply = post_import(&server, body).await;
    assert_eq!(reply.status(), StatusCode::OK);

    server.stop(Stop::Kill9);
    let last = common::files::segments(&server.dir)
        .pop()
        .expect("a segment");
    let len = std::fs::metadata(&last).expect("segment").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open");
    file.set_len(len - 7).expect("cut");
    drop(file);
    server.start_again(&["--fsync", "always"]);
    only_the_first(&server, &keys, since, 2 * 4096).await;

    // Read back from the log (the restarted server's memory has none).
    let feed = client()
        .get(server.at(&format!("/events?prefix=cut/&since={since}")))
        .send()
        .await
        .expect("feed");
    let within = std::time::Duration::from_secs(60);
    let events = sse_changes(&server, feed, "prefix=cut/", since, 2 * 4096, within).await;
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["version"], since + 1 + i as u64, "{event}");
        assert_eq!(event["key"], keys[i], "{event}");
        assert_eq!(event["new_value"], json!({"n": i}), "{event}");
        let old = match i {
            5 => json!("old"),
            6_000 => json!({"n": 1}),
            _ => Value::Null,
        };
        assert_eq!(event["old_value"], old, "{event}");
    }
}

/// A batch the log refuses (a full disk) is neither applied nor replayed:
/// the import fails, and what it leaves, before and after `kill -9`, is
/// whole batches from the start of the export.
#[tokio::test]
async fn an_import_the_log_refuses_midway_leaves_whole_batches() {
    const N: usize = 3 * 4096;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    // Room for about two of the three batches (each about 240 KB).
    let env = [("DODODB_TEST_WAL_SPACE_BYTES", "560000")];
    let mut server =
        TestServer::try_start_with_env(&dir, &["--fsync", "always"], &env).expect("started");
    let since = stats(&server).await["revision"].as_u64().expect("revision");
    let (keys, body) = cut_export(N, N);
    let reply = post_import(&server, body).await;
    assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
    let keys_now = stats(&server).await["keys"].as_u64().expect("keys") as usize;
    eprintln!("{keys_now} of {N} entries written before the log refused");
    assert_eq!(keys_now % 4096, 0, "whole batches: {keys_now}");
    assert!(keys_now < N, "{keys_now}");

    server.stop(Stop::Kill9);
    server.start_again(&["--fsync", "always"]);
    let revision = stats(&server).await["revision"].as_u64().expect("revision");
    let whole = (revision - since) as usize;
    assert_eq!(whole, keys_now, "the same batches after the restart");
    only_the_first(&server, &keys, since, whole).await;
}
