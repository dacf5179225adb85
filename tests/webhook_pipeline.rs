//! Pipelined webhook POSTs (SPEC §5): the delivery pool sends the events
//! of different keys to a plain `http://` receiver several at a time on
//! one keep-alive connection. Real servers and a real receiver on
//! 127.0.0.1 (a plain TCP loop that sees how requests arrive) that closes
//! connections in the middle of a pipeline, with or without saying
//! `Connection: close`, answers 500 to some requests, or does not read
//! pipelined requests at all: every acknowledged change still arrives, each
//! key's versions first arrive in order, and no event ends `failed`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::webhook::{subscribe, subscription};
use common::{TestServer, metric, poll_until, txn_succeeds};
use serde_json::{Value, json};

/// Keys written per round, in one transaction (so that their events are
/// due at once and go out pipelined).
const KEYS: usize = 120;
const ROUNDS: usize = 4;

/// How the receiver treats each connection.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answers the `n`th request of a connection with `Connection: close`
    /// and closes it, dropping whatever else was sent on it.
    CloseAfter(usize),
    /// Reads the `n`th request of a connection and closes it without an
    /// answer, dropping whatever else was sent on it.
    DropAt(usize),
    /// Answers 500 to the first request of every `n`th event (by first
    /// arrival), 200 otherwise.
    FailEvery(usize),
    /// Serves the first request of each read and drops the rest of what
    /// that read got: a receiver that does not support pipelining.
    OneRequestPerRead,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    id: String,
    key: String,
    version: u64,
    /// Answered 2xx.
    acknowledged: bool,
}

#[derive(Default)]
struct Seen {
    got: Mutex<Vec<Got>>,
    /// Requests that arrived behind another one in the same read.
    pipelined: AtomicUsize,
    /// Requests read (or sent) that the receiver never answered.
    unanswered: AtomicUsize,
}

/// What the receiver makes of the start of its buffer.
enum Parsed {
    /// A whole request: its length, `webhook-id` and body.
    Request(usize, String, Vec<u8>),
    /// Not all of it yet.
    Partial,
    /// Not a webhook POST (the rest of a request it dropped).
    Garbage,
}

fn parse_request(buf: &[u8]) -> Parsed {
    if !(buf.starts_with(b"POST ") || b"POST ".starts_with(buf)) {
        return Parsed::Garbage;
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let end = end + 4;
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Garbage;
    };
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (n, value) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let (Some(Ok(length)), Some(id)) = (
        header("content-length").map(|l| l.parse::<usize>()),
        header("webhook-id"),
    ) else {
        return Parsed::Garbage;
    };
    if buf.len() < end + length {
        return Parsed::Partial;
    }
    Parsed::Request(end + length, id, buf[end..end + length].to_vec())
}

/// Counts the whole requests in `buf` (what a closing receiver drops).
fn count_requests(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while let Parsed::Request(used, _, _) = parse_request(buf) {
        buf = &buf[used..];
        n += 1;
    }
    n
}

fn serve(mut stream: TcpStream, mode: Mode, seen: &Seen, failed_once: &Mutex<HashSet<String>>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut served = 0usize;
    loop {
        let (used, id, body) = match parse_request(&buf) {
            Parsed::Request(used, id, body) => (used, id, body),
            Parsed::Garbage => return,
            Parsed::Partial => {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
        };
        buf.drain(..used);
        served += 1;
        if !buf.is_empty() {
            seen.pipelined.fetch_add(1, Ordering::Relaxed);
        }
        let event: Value = serde_json::from_slice(&body).expect("payload is JSON");
        let version = event["version"].as_u64().expect("version");
        if let Mode::DropAt(n) = mode
            && served == n
        {
            seen.unanswered
                .fetch_add(1 + count_requests(&buf), Ordering::Relaxed);
            return;
        }
        let fail = match mode {
            Mode::FailEvery(n) => {
                version.is_multiple_of(n as u64)
                    && failed_once.lock().expect("lock").insert(id.clone())
            }
            _ => false,
        };
        seen.got.lock().expect("lock").push(Got {
            id,
            key: event["key"].as_str().expect("key").to_string(),
            version,
            acknowledged: !fail,
        });
        let closing = matches!(mode, Mode::CloseAfter(n) if served == n);
        let answer: &[u8] = match (fail, closing) {
            (true, _) => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nbad\n",
            (false, true) => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
            }
            (false, false) => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
        };
        if stream.write_all(answer).is_err() {
            return;
        }
        if closing {
            seen.unanswered
                .fetch_add(count_requests(&buf), Ordering::Relaxed);
            return;
        }
        if matches!(mode, Mode::OneRequestPerRead) {
            seen.unanswered
                .fetch_add(count_requests(&buf), Ordering::Relaxed);
            buf.clear();
        }
    }
}

/// A receiver on 127.0.0.1; returns its URL and what it sees.
fn receiver(mode: Mode) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen = Arc::new(Seen::default());
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (seen, failed_once) = (Arc::clone(&shared), Arc::clone(&failed_once));
            std::thread::spawn(move || serve(stream, mode, &seen, &failed_once));
        }
    });
    (url, seen)
}

/// Writes `ROUNDS` versions of keys `p0`..`p{KEYS}`, each round one
/// transaction; returns each key's acknowledged versions, in order.
async fn write_rounds(server: &TestServer) -> BTreeMap<String, Vec<u64>> {
    let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let ops: Vec<Value> = (0..KEYS)
            .map(|i| json!({"op": "put", "key": format!("p{i}"), "value": {"round": round}}))
            .collect();
        let answer = txn_succeeds(server, ops).await;
        for (i, result) in answer["results"]
            .as_array()
            .expect("results")
            .iter()
            .enumerate()
        {
            let version = result["version"].as_u64().expect("a version");
            acked.entry(format!("p{i}")).or_default().push(version);
        }
    }
    acked
}

/// Subscribes a receiver in `mode`, writes, and checks that every
/// acknowledged change was acknowledged by the receiver, that each key's
/// versions first arrived in order, and that none ended `failed`.
async fn deliver_all(mode: Mode, args: &[&str]) -> (Arc<Seen>, TestServer) {
    let server = TestServer::start(args);
    let (url, seen) = receiver(mode);
    let id = subscribe(&server, &json!({"prefix": "p", "callback_url": url})).await;
    let acked = write_rounds(&server).await;
    let want: HashSet<String> = acked
        .values()
        .flatten()
        .map(|v| format!("evt_{v}"))
        .collect();
    poll_until(
        &format!("{mode:?}: every change acknowledged"),
        async || {
            let got = seen.got.lock().expect("lock");
            let have: HashSet<&str> = got
                .iter()
                .filter(|g| g.acknowledged)
                .map(|g| g.id.as_str())
                .collect();
            want.iter()
                .all(|id| have.contains(id.as_str()))
                .then_some(())
        },
    )
    .await;
    let got = seen.got.lock().expect("lock").clone();
    let mut first: HashSet<&str> = HashSet::new();
    let mut arrived: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for g in &got {
        assert_eq!(g.id, format!("evt_{}", g.version));
        if first.insert(&g.id) {
            arrived.entry(&g.key).or_default().push(g.version);
        }
    }
    for (key, versions) in &acked {
        assert_eq!(
            arrived.get(key.as_str()),
            Some(versions),
            "{mode:?}: the versions of {key} first arrived in this order"
        );
    }
    assert_eq!(
        first.len(),
        want.len(),
        "{mode:?}: only the changes written"
    );
    poll_until(&format!("{mode:?}: nothing pending"), async || {
        let s = subscription(&server, &id).await;
        (s["pending"] == 0).then_some(())
    })
    .await;
    assert_eq!(subscription(&server, &id).await["failed"], 0, "{mode:?}");
    assert_eq!(metric(&server, "dododb_webhook_failed_total").await, 0.0);
    (seen, server)
}

/// A receiver that closes each connection after a few requests, saying
/// `Connection: close` on its last answer or closing without answering the
/// request it read last, drops what was pipelined behind: those requests
/// go out again on another connection and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_closes_mid_pipeline_loses_nothing() {
    for mode in [Mode::CloseAfter(5), Mode::DropAt(4)] {
        let (seen, _server) = deliver_all(mode, &[]).await;
        assert!(
            seen.pipelined.load(Ordering::Relaxed) > 0,
            "{mode:?}: requests arrived pipelined"
        );
        assert!(
            seen.unanswered.load(Ordering::Relaxed) > 0,
            "{mode:?}: the receiver closed connections with requests unanswered"
        );
    }
}

/// 500s in the middle of a pipeline are matched to their own requests:
/// those events are retried (and arrive in order per key), the others are
/// acknowledged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_matched_to_pipelined_requests_in_order() {
    let schedule = ["20ms"; 12].join(",");
    let (seen, server) =
        deliver_all(Mode::FailEvery(7), &["--webhook-retry-schedule", &schedule]).await;
    assert!(seen.pipelined.load(Ordering::Relaxed) > 0, "pipelined");
    let got = seen.got.lock().expect("lock").clone();
    let failed: HashSet<&str> = got
        .iter()
        .filter(|g| !g.acknowledged)
        .map(|g| g.id.as_str())
        .collect();
    assert!(!failed.is_empty(), "some requests were answered 500");
    for g in &got {
        // A 500 went to the events whose version is a multiple of 7 only.
        assert!(g.acknowledged || g.version.is_multiple_of(7), "{g:?}");
    }
    // Each event answered 500 was charged one retry (and others may have
    // been charged while the subscription backed off).
    let retried = metric(&server, "dododb_webhook_retried_total").await;
    assert!(retried >= failed.len() as f64, "{retried} retries");
}

/// A receiver that reads one request per read and drops what was
/// pipelined behind it stalls the pipeline: after one timeout the task
/// sends one request per connection at a time, and everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_without_pipelining_still_gets_everything() {
    let (seen, server) =
        deliver_all(Mode::OneRequestPerRead, &["--webhook-timeout-secs", "1"]).await;
    assert!(
        seen.unanswered.load(Ordering::Relaxed) > 0,
        "pipelined requests were dropped"
    );
    assert!(
        server
            .log()
            .contains("the receiver stopped answering pipelined requests"),
        "the fallback is logged"
    );
}
