//! `POST /txn` and `GET /kv?values=true` through the real server: compares,
//! branches, one revision per write, bad input changing nothing, readers
//! never seeing part of a transaction, the live feed carrying each write,
//! and a transaction surviving `kill -9` whole or not at all.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::files::segments;
use common::ledger::revision;
use common::{
    Stop, TestServer, assert_error, client, enc, get, get_json, poll_until, put, put_ttl,
    sse_events,
};
use serde_json::{Value, json};

async fn txn(server: &TestServer, body: &Value) -> (u16, Value) {
    txn_text(server, &body.to_string()).await
}

async fn txn_text(server: &TestServer, body: &str) -> (u16, Value) {
    let response = client()
        .post(server.at("/txn"))
        .body(body.to_string())
        .send()
        .await
        .expect("POST /txn");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, doc)
}

#[tokio::test]
async fn success_runs_when_compares_hold_and_each_write_takes_its_own_revision() {
    for mode in [&["--fsync", "always"][..], &["--in-memory"][..]] {
        let server = TestServer::start(mode);
        let v_old = put(&server, "old", "{\"gone\": true}").await;
        let (status, doc) = txn(
            &server,
            &json!({
                "compare": [{"key": "a", "version": 0}, {"key": "old", "exists": true}],
                "success": [
                    {"op": "put", "key": "a", "value": {"x": 1}},
                    {"op": "put", "key": "b/c d", "value": [1, 2], "ttl": 60},
                    {"op": "delete", "key": "old"},
                    {"op": "delete", "key": "never-was"},
                    {"op": "get", "key": "a"},
                    {"op": "get", "key": "nope"}
                ],
                "failure": [{"op": "get", "key": "a"}]
            }),
        )
        .await;
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["succeeded"], true);
        let r = &doc["results"];
        let v1 = r[0]["version"].as_u64().expect("v1");
        assert_eq!(r[0]["created"], true);
        assert_eq!(r[1]["version"], v1 + 1);
        assert_eq!(r[2], json!({"deleted": true, "version": v1 + 2}));
        assert_eq!(r[3], json!({"deleted": false, "version": null}));
        assert_eq!(
            r[4],
            json!({"found": true, "value": {"x": 1}, "version": v1})
        );
        assert_eq!(
            r[5],
            json!({"found": false, "value": null, "version": null})
        );
        assert_eq!(doc["revision"], v1 + 2);
        assert!(v1 > v_old);
        assert_eq!(get(&server, "a").await.as_deref(), Some("{\"x\":1}"));
        assert_eq!(get(&server, "b/c d").await.as_deref(), Some("[1,2]"));
        assert_eq!(get(&server, "old").await, None);
        let meta: Value = get_json(&server, &format!("/kv/{}/meta", enc("b/c d"))).await;
        assert!(meta["expires_at"].is_string(), "{meta}");

        // The same compare fails now: failure runs, nothing is written.
        let before = revision(&server).await;
        let (status, doc) = txn(
            &server,
            &json!({
                "compare": [{"key": "a", "version": 0}],
                "success": [{"op": "put", "key": "a", "value": 2}],
                "failure": [{"op": "get", "key": "a"}]
            }),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(doc["succeeded"], false);
        assert_eq!(doc["results"][0]["value"], json!({"x": 1}));
        assert_eq!(revision(&server).await, before);
    }
}

#[tokio::test]
async fn compares_by_version_existence_and_json_value() {
    let server = TestServer::start(&["--fsync", "never"]);
    let v = put(
        &server,
        "doc",
        "{\"a\": 1, \"b\": [1.0, 123456789012345678901234567890]}",
    )
    .await;
    let check = |compare: Value, expected: bool| {
        let server = &server;
        async move {
            let (status, doc) = txn(
                server,
                &json!({"compare": [compare.clone()], "success": [{"op": "get", "key": "doc"}]}),
            )
            .await;
            assert_eq!(status, 200, "{doc}");
            assert_eq!(doc["succeeded"], expected, "{compare}");
        }
    };
    check(json!({"key": "doc", "version": v}), true).await;
    check(json!({"key": "doc", "version": v + 1}), false).await;
    check(json!({"key": "doc", "version": 0}), false).await;
    check(json!({"key": "absent", "version": 0}), true).await;
    check(json!({"key": "doc", "exists": true}), true).await;
    check(json!({"key": "absent", "exists": false}), true).await;
    check(json!({"key": "absent", "exists": true}), false).await;
    // Member order, whitespace and number spelling do not matter.
    let (status, doc) = txn_text(
        &server,
        r#"{"compare": [{"key": "doc", "value": {"b":[1,1.2345678901234567890123456789e29],"a":1.00}}],
            "success": [{"op": "get", "key": "doc"}]}"#,
    )
    .await;
    assert_eq!((status, &doc["succeeded"]), (200, &json!(true)), "{doc}");
    let (_, doc) = txn_text(
        &server,
        r#"{"compare": [{"key": "doc", "value": {"b":[1,123456789012345678901234567891],"a":1}}],
            "success": [{"op": "get", "key": "doc"}]}"#,
    )
    .await;
    assert_eq!(
        doc["succeeded"], false,
        "a big number differs in its last digit"
    );
    check(json!({"key": "absent", "value": null}), false).await;
    // A version and a TTL are whole numbers however written (JSON Schema's
    // integer): 3.0 and 3e0 are 3.
    let (status, doc) = txn_text(
        &server,
        &format!(
            r#"{{"compare": [{{"key": "doc", "version": {v}.0}}, {{"key": "absent", "version": 0e0}}],
                "success": [{{"op": "put", "key": "t", "value": 1, "ttl": 6e1}}]}}"#
        ),
    )
    .await;
    assert_eq!((status, &doc["succeeded"]), (200, &json!(true)), "{doc}");
    let meta: Value = client()
        .get(server.at("/kv/t/meta"))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert!(meta["expires_at"].is_string(), "{meta}");
}

#[tokio::test]
async fn bad_transactions_are_refused_naming_the_operation_and_change_nothing() {
    let server = TestServer::start(&[
        "--max-txn-ops",
        "3",
        "--max-txn-bytes",
        "2000",
        "--max-value-bytes",
        "100",
        "--fsync",
        "never",
    ]);
    put(&server, "k", "1").await;
    let before = revision(&server).await;
    let put = |key: &str| json!({"op": "put", "key": key, "value": 5});
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            json!({"success": [put("a"), put("b"), put("a")]}).to_string(),
            400,
            "invalid_request",
            "success[2]",
        ),
        (
            json!({"success": [put("a"), {"op": "frob", "key": "b"}]}).to_string(),
            400,
            "invalid_request",
            "success[1]",
        ),
        (
            json!({"failure": [put("a"), {"op": "put", "key": "b", "value": 1, "extra": 1}]})
                .to_string(),
            400,
            "invalid_request",
            "failure[1]",
        ),
        (
            json!({"compare": [{"key": "k", "version": "one"}], "success": [put("a")]}).to_string(),
            400,
            "invalid_request",
            "compare[0]",
        ),
        (
            json!({"success": [put("a"), put("b")], "failure": [put("c"), put("d")]}).to_string(),
            400,
            "invalid_request",
            "--max-txn-ops",
        ),
        (
            json!({"success": [put("a"), {"op": "put", "key": "", "value": 1}]}).to_string(),
            400,
            "invalid_key",
            "success[1]",
        ),
        (
            json!({"success": [put("a"), {"op": "put", "key": "big", "value": "x".repeat(200)}]})
                .to_string(),
            413,
            "payload_too_large",
            "success[1]",
        ),
        (
            json!({"success": [{"op": "put", "key": "a", "value": "x".repeat(3000)}]}).to_string(),
            413,
            "payload_too_large",
            "--max-txn-bytes",
        ),
        ("{\"success\": [".to_string(), 400, "invalid_json", ""),
    ];
    for (body, status, code, mentions) in cases {
        let (got, doc) = txn_text(&server, &body).await;
        assert_eq!(got, status, "{body}: {doc}");
        assert_eq!(doc["error"]["code"], code, "{body}: {doc}");
        let message = doc["error"]["message"].as_str().expect("message");
        assert!(message.contains(mentions), "{body}: {message}");
    }
    assert_eq!(revision(&server).await, before, "nothing ran");
    for key in ["a", "b", "c", "d", "big"] {
        assert_eq!(get(&server, key).await, None, "{key}");
    }
}

/// A writer moves a counter through two keys with one transaction each
/// time; readers that read both keys in one transaction or one listing
/// page must always see them equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_part_of_a_transaction() {
    let server = Arc::new(TestServer::start(&["--fsync", "never"]));
    let init = json!({"success": [
        {"op": "put", "key": "pair/a", "value": 0},
        {"op": "put", "key": "pair/b", "value": 0}
    ]});
    assert_eq!(txn(&server, &init).await.0, 200);
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..4 {
        let server = Arc::clone(&server);
        let done = Arc::clone(&done);
        readers.push(tokio::spawn(async move {
            let http = client();
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) {
                let (a, b) = if r % 2 == 0 {
                    let body = json!({"success": [
                        {"op": "get", "key": "pair/a"}, {"op": "get", "key": "pair/b"}
                    ]});
                    let doc: Value = http
                        .post(server.at("/txn"))
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("txn")
                        .json()
                        .await
                        .expect("json");
                    (
                        doc["results"][0]["value"].clone(),
                        doc["results"][1]["value"].clone(),
                    )
                } else {
                    let doc: Value = get_json(&server, "/kv?values=true&prefix=pair/").await;
                    (
                        doc["items"][0]["value"].clone(),
                        doc["items"][1]["value"].clone(),
                    )
                };
                assert_eq!(a, b, "reader {r} saw part of a transaction");
                reads += 1;
            }
            reads
        }));
    }
    let http = client();
    for n in 1..=400 {
        let body = json!({"success": [
            {"op": "put", "key": "pair/a", "value": n},
            {"op": "put", "key": "pair/b", "value": n}
        ]});
        let status = http
            .post(server.at("/txn"))
            .body(body.to_string())
            .send()
            .await
            .expect("txn")
            .status();
        assert_eq!(status, 200);
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        let reads = reader.await.expect("reader");
        assert!(reads > 0);
    }
    assert_eq!(get(&server, "pair/a").await.as_deref(), Some("400"));
}

#[tokio::test]
async fn the_live_feed_carries_each_write_with_its_own_revision() {
    let server = TestServer::start(&["--fsync", "never"]);
    put(&server, "t/x", "1").await;
    let since = revision(&server).await;
    let (_, doc) = txn(
        &server,
        &json!({"success": [
            {"op": "put", "key": "t/a", "value": "A"},
            {"op": "delete", "key": "t/x"},
            {"op": "put", "key": "t/b", "value": "B"}
        ]}),
    )
    .await;
    let first = doc["results"][0]["version"].as_u64().expect("version");
    let mut response = client()
        .get(server.at(&format!("/events?prefix=t/&since={since}")))
        .send()
        .await
        .expect("feed");
    let events = sse_events(&mut response, 3, Duration::from_secs(20)).await;
    let seen: Vec<(u64, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["version"].as_u64().expect("version"),
                e["key"].as_str().expect("key"),
                e["event"].as_str().expect("event"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (first, "t/a", "update"),
            (first + 1, "t/x", "delete"),
            (first + 2, "t/b", "update")
        ]
    );
}

#[tokio::test]
async fn listing_with_values_embeds_the_stored_bytes() {
    let server = TestServer::start(&["--fsync", "never"]);
    let docs = [
        ("v/1", " {\"b\": 2,  \"a\": 1} \n"),
        ("v/2", "123456789012345678901234567890"),
        ("v/3", "\"ünïcødé 🦤\""),
    ];
    for (key, body) in docs {
        put(&server, key, body).await;
    }
    put_ttl(&server, "v/4", "null", 600).await;
    let text = client()
        .get(server.at("/kv?values=true&prefix=v/&limit=2"))
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("body");
    for (_, body) in &docs[..2] {
        assert!(text.contains(&format!("\"value\":{body},")), "{text}");
    }
    let page: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(page["items"][0]["key"], "v/1");
    assert_eq!(page["items"][0]["expires_at"], Value::Null);
    assert!(page["items"][0]["version"].is_u64());
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let page: Value = get_json(
        &server,
        &format!("/kv?values=true&prefix=v/&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(page["items"][0]["value"], json!("ünïcødé 🦤"));
    assert_eq!(page["items"][1]["key"], "v/4");
    assert!(page["items"][1]["expires_at"].is_string());
    assert_eq!(page["next_cursor"], Value::Null);
    let bad = client()
        .get(server.at("/kv?values=yes"))
        .send()
        .await
        .expect("list");
    assert_error(bad, reqwest::StatusCode::BAD_REQUEST, "invalid_request").await;
}

/// A transaction is one WAL record: cutting the log inside the last one
/// loses all of its writes and none of the earlier transaction's.
#[tokio::test]
async fn a_torn_transaction_record_is_lost_whole() {
    let args = ["--fsync", "always", "--snapshot-interval", "0"];
    let mut server = TestServer::start(&args);
    let batch = |tag: &str| {
        let ops: Vec<Value> = (0..50)
            .map(|i| json!({"op": "put", "key": format!("{tag}/{i}"), "value": {"tag": tag, "pad": "x".repeat(100)}}))
            .collect();
        json!({"success": ops})
    };
    assert_eq!(txn(&server, &batch("first")).await.0, 200);
    assert_eq!(txn(&server, &batch("second")).await.0, 200);
    server.stop(Stop::Kill9);
    let segments = segments(&server.dir);
    let last = segments.last().expect("a WAL segment");
    let len = std::fs::metadata(last).expect("meta").len();
    // The second record is over 50 × 100 bytes: cut 1000 bytes into it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open")
        .set_len(len - 1000)
        .expect("truncate");
    server.start_again(&args);
    for i in 0..50 {
        assert!(
            get(&server, &format!("first/{i}")).await.is_some(),
            "first/{i}"
        );
        assert_eq!(
            get(&server, &format!("second/{i}")).await,
            None,
            "second/{i}"
        );
    }
}

/// `kill -9` while transactions are in flight: after restart every
/// transaction's 20 keys hold the same counter, at least the last
/// acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_each_transaction_whole() {
    let args = ["--fsync", "always"];
    let mut server = TestServer::start(&args);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let url = server.url.clone();
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let http = client();
            for n in 1u64.. {
                let ops: Vec<Value> = (0..20)
                    .map(|i| json!({"op": "put", "key": format!("k{i}"), "value": n}))
                    .collect();
                match http
                    .post(format!("{url}/txn"))
                    .body(json!({"success": ops}).to_string())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => acked.store(n, Ordering::Release),
                    _ => return,
                }
            }
        })
    };
    poll_until("30 acknowledged transactions", async || {
        (acked.load(Ordering::Acquire) >= 30).then_some(())
    })
    .await;
    server.stop(Stop::Kill9);
    let _ = writer.await;
    let last_acked = acked.load(Ordering::Acquire);
    server.start_again(&args);
    let (_, doc) = txn(
        &server,
        &json!({"success": (0..20).map(|i| json!({"op": "get", "key": format!("k{i}")})).collect::<Vec<_>>()}),
    )
    .await;
    let values: Vec<u64> = doc["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["value"].as_u64().expect("every key present"))
        .collect();
    assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
    assert!(values[0] >= last_acked, "{} < {last_acked}", values[0]);
}
