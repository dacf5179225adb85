//! Durability against real crashes: `kill -9` of a real server process,
//! torn and damaged WAL files, crashes injected into the snapshot
//! procedure, snapshot retention, and restarts.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::files::{name, segments, snapshots};
use common::ledger::{self, Ledger, MustKeep, dump};
use common::{Stop, TestServer, client, get_json, put, put_ttl, snapshot, stats};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_writes_loses_no_acknowledged_write() {
    // `scripts/crash-loop N` runs the same loop for N cycles, with a new
    // seed for the kill moments each run (printed, so a failure replays).
    let (seed, cycles) = common::crash_loop_settings(20);
    crash_loop("always", cycles, seed).await;
}

/// Under `never` the writers commit their own batches (no writer thread);
/// a killed process still leaves every acknowledged write in the page cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_fsync_never_loses_no_acknowledged_write() {
    crash_loop("never", 8, 0x9E37_79B9_7F4A_7C15).await;
}

/// `cycles` rounds of: start, check against the ledger, 8 writers that
/// overwrite and delete their keys, `kill -9` at a random moment. A killed
/// process leaves the page cache behind, so under every policy each
/// acknowledged write must survive (`MustKeep::All`).
async fn crash_loop(fsync: &str, cycles: usize, seed: u64) {
    let args = ["--fsync", fsync];
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut acked = 0;
    let mut server = TestServer::start(&args);
    for cycle in 0..=cycles {
        let seen = ledger::verify(&server, &ledger, MustKeep::All).await;
        if cycle > 0 {
            assert!(seen.acked > 0, "cycle {cycle} acknowledged no write");
        }
        acked += seen.acked;
        if cycle == cycles {
            break;
        }
        let writers = ledger::start_writers(&server.url, cycle, rng.u64(..), &ledger);
        ledger::wait_for_acks(&ledger).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        server.stop(Stop::Kill9);
        for w in writers {
            w.await.expect("writer");
        }
        server.start_again(&args);
    }
    eprintln!(
        "{cycles} kill -9 cycles (--fsync {fsync}), {acked} acknowledged writes (overwrites and deletes) all present"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Writes `n` keys through a server and kills it, leaving them in the WAL
/// only; returns the segment holding them and each record's end offset.
async fn wal_with_keys(dir: &Path, n: usize) -> (PathBuf, Vec<u64>) {
    let mut server = TestServer::start_in(dir, &["--fsync", "always", "--snapshot-interval", "0"]);
    let segment = segments(dir).pop().expect("a segment");
    let mut ends = Vec::new();
    for i in 0..n {
        put(&server, &format!("k{i}"), &json!({"i": i}).to_string()).await;
        ends.push(std::fs::metadata(&segment).expect("meta").len());
    }
    server.stop(Stop::Kill9);
    (segment, ends)
}

#[tokio::test]
async fn a_torn_last_record_is_cut_at_every_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let original = tmp.path().join("original");
    let (segment, ends) = wal_with_keys(&original, 3).await;
    let name = segment.file_name().expect("name").to_owned();
    let (start, end) = (ends[1], ends[2]);
    for cut in start..end {
        let dir = tmp.path().join(format!("cut-{cut}"));
        copy_dir(&original, &dir);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(&name))
            .expect("open");
        file.set_len(cut).expect("truncate");
        drop(file);
        let server = TestServer::start_in(&dir, &[]);
        let entries = dump(&server).await;
        assert_eq!(
            entries.get("k0").map(|e| &e.1),
            Some(&json!({"i": 0})),
            "cut at {cut}"
        );
        assert_eq!(
            entries.get("k1").map(|e| &e.1),
            Some(&json!({"i": 1})),
            "cut at {cut}"
        );
        assert!(
            !entries.contains_key("k2"),
            "a torn record was applied (cut at {cut})"
        );
        if cut > start {
            assert!(
                server.log().contains("torn record"),
                "no warning for cut at {cut}"
            );
        }
        drop(server);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}

/// Starts a server on `dir` and asserts that it refuses, with an error
/// that names `segment` and says `says`.
fn assert_start_refused(dir: &Path, segment: &Path, says: &str) {
    let failure = TestServer::try_start_in(dir, &[])
        .err()
        .expect("start must be refused");
    assert_ne!(failure.code, Some(0));
    let name = name(segment);
    assert!(
        failure.stderr.contains(name),
        "error names the file: {}",
        failure.stderr
    );
    assert!(
        failure.stderr.contains(says),
        "error says {says:?}: {}",
        failure.stderr
    );
}

/// Fourteen non-zero bytes that hold no WAL record: what a crash can leave
/// where a file system extended the file with stale blocks.
const GARBAGE: [u8; 14] = [
    0xde, 0xad, 0xbe, 0xef, 0x13, 0x37, 0xc0, 0xff, 0xee, 0x42, 0x99, 0x5a, 0xa5, 0x01,
];

#[tokio::test]
async fn garbage_after_the_last_record_is_cut_as_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (segment, ends) = wal_with_keys(&dir, 3).await;
    let mut bytes = std::fs::read(&segment).expect("read");
    assert_eq!(bytes.len() as u64, ends[2]);
    bytes.extend_from_slice(&GARBAGE);
    std::fs::write(&segment, &bytes).expect("write");

    let server = TestServer::start_in(&dir, &[]);
    let entries = dump(&server).await;
    for i in 0..3 {
        assert_eq!(
            entries.get(&format!("k{i}")).map(|e| &e.1),
            Some(&json!({"i": i}))
        );
    }
    assert!(
        server.log().contains("torn record"),
        "no warning: {}",
        server.log()
    );
    let len = std::fs::metadata(&segment).expect("meta").len();
    assert_eq!(len, ends[2], "the garbage is cut off the segment");
}

#[tokio::test]
async fn garbage_followed_by_a_valid_record_stops_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (segment, ends) = wal_with_keys(&dir, 3).await;
    // Between the first and the second record.
    let mut bytes = std::fs::read(&segment).expect("read");
    let at = ends[0] as usize;
    bytes.splice(at..at, GARBAGE);
    std::fs::write(&segment, &bytes).expect("write");

    assert_start_refused(
        &dir,
        &segment,
        &format!(
            "damaged at offset {at} (record length fails its checksum; a valid record follows at offset {})",
            at + GARBAGE.len()
        ),
    );
    assert_eq!(
        std::fs::read(&segment).expect("read"),
        bytes,
        "a refused start changes nothing"
    );
}

#[tokio::test]
async fn a_flipped_bit_before_the_end_stops_start_until_repair() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (segment, ends) = wal_with_keys(&dir, 5).await;
    // Flip one bit in the payload of the third record.
    let mut bytes = std::fs::read(&segment).expect("read");
    let target = (ends[1] + 20) as usize;
    bytes[target] ^= 0x10;
    std::fs::write(&segment, &bytes).expect("write");

    assert_start_refused(&dir, &segment, &format!("offset {}", ends[1]));

    let repair = std::process::Command::new(env!("CARGO_BIN_EXE_dododb"))
        .args(["repair", "--data-dir"])
        .arg(&dir)
        .output()
        .expect("repair");
    let said = String::from_utf8_lossy(&repair.stdout);
    assert!(repair.status.success(), "repair failed: {said}");
    assert!(
        said.contains("keeping 2 records"),
        "repair says what it keeps: {said}"
    );

    let server = TestServer::start_in(&dir, &[]);
    let entries = dump(&server).await;
    let mut keys: Vec<&str> = entries.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, vec!["k0", "k1"]);
}

#[tokio::test]
async fn a_crash_at_each_snapshot_step_loses_nothing() {
    for step in 1..=4 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let step_text = step.to_string();
        let env = [("DODODB_TEST_CRASH_AT_SNAPSHOT_STEP", step_text.as_str())];
        let mut server = TestServer::try_start_with_env(&dir, &[], &env).expect("start");
        for i in 0..50 {
            put(
                &server,
                &format!("k{i}"),
                &json!({"i": i, "step": step}).to_string(),
            )
            .await;
        }
        let aborted = client().post(server.at("/system/snapshot")).send().await;
        assert!(
            aborted.is_err() || !aborted.as_ref().is_ok_and(|r| r.status().is_success()),
            "step {step}: the hook must abort"
        );
        server.restart(Stop::Kill9, &[]);
        let entries = dump(&server).await;
        for i in 0..50 {
            assert_eq!(
                entries.get(&format!("k{i}")).map(|e| &e.1),
                Some(&json!({"i": i, "step": step})),
                "step {step}"
            );
        }
        let leftovers = std::fs::read_dir(&dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .count();
        assert_eq!(
            leftovers, 0,
            "temporary snapshot files are removed at start-up"
        );
        // The next snapshot works and a restart after it still has everything.
        snapshot(&server).await;
        server.restart(Stop::Kill9, &[]);
        assert_eq!(dump(&server).await.len(), 50, "step {step}");
    }
}

/// Each of 4 writers overwrites its own preloaded keys and creates new
/// ones while a snapshot walks the map; the last value each writer had
/// acknowledged for each key must be there after a `kill -9`.
#[derive(Default)]
struct UnderSnapshot {
    /// key -> (value, version) of the last acknowledged write.
    last: HashMap<String, (Value, u64)>,
    /// When each write was sent and acknowledged.
    spans: Vec<(Instant, Instant)>,
    longest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_writes_loses_nothing() {
    const PRELOAD: usize = 2_500;
    let mut server = TestServer::start(&["--fsync", "never"]);
    let http = client();
    let mut preload = Vec::new();
    for w in 0..4 {
        let http = http.clone();
        let url = server.url.clone();
        preload.push(tokio::spawn(async move {
            for i in 0..PRELOAD {
                let r = http
                    .put(format!("{url}/kv/pre-{w}-{i}"))
                    .body(format!("{{\"i\":{i}}}"))
                    .send()
                    .await
                    .expect("put");
                assert!(r.status().is_success());
            }
        }));
    }
    for p in preload {
        p.await.expect("preload");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(UnderSnapshot::default()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, stop, seen) =
            (http.clone(), server.url.clone(), stop.clone(), seen.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Every other write overwrites a preloaded key the
                // snapshot may be walking; the others create new keys.
                let (key, value) = if i % 2 == 0 {
                    (format!("pre-{w}-{}", (i / 2) % PRELOAD), json!({"live": i}))
                } else {
                    (format!("live-{w}-{i}"), json!([1, 2, 3]))
                };
                let sent = Instant::now();
                let r = http
                    .put(format!("{url}/kv/{key}"))
                    .body(value.to_string())
                    .send()
                    .await
                    .expect("put");
                let acked = Instant::now();
                assert!(r.status().is_success());
                let version = r.json::<Value>().await.expect("json")["version"]
                    .as_u64()
                    .expect("version");
                let mut seen = seen.lock().expect("lock");
                seen.last.insert(key, (value, version));
                seen.spans.push((sent, acked));
                seen.longest = seen.longest.max(acked - sent);
                i += 1;
            }
        }));
    }
    // Every writer is running before the snapshot starts.
    common::poll_until("each writer's first acknowledgement", async || {
        (seen.lock().expect("lock").spans.len() >= 8).then_some(())
    })
    .await;
    // A snapshot with writes sent after it started and acknowledged before
    // it finished; a snapshot so quick that none fit is taken again.
    let mut overlapping = 0;
    let mut info = Value::Null;
    for _ in 0..20 {
        let started = Instant::now();
        let snap = http
            .post(server.at("/system/snapshot"))
            .send()
            .await
            .expect("snapshot");
        let finished = Instant::now();
        assert_eq!(snap.status(), 200);
        info = snap.json().await.expect("json");
        overlapping = seen
            .lock()
            .expect("lock")
            .spans
            .iter()
            .filter(|(sent, acked)| *sent > started && *acked < finished)
            .count();
        if overlapping > 0 {
            break;
        }
    }
    assert!(
        overlapping > 0,
        "no write was both sent and acknowledged while one of 20 snapshots ran"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(info["keys"].as_u64().expect("keys") >= 10_000);
    server.restart(Stop::Kill9, &[]);
    let entries = dump(&server).await;
    let seen = seen.lock().expect("lock");
    for (key, (value, version)) in &seen.last {
        assert_eq!(
            entries.get(key),
            Some(&(*version, value.clone())),
            "{key}: the last acknowledged write"
        );
    }
    let created = seen.last.keys().filter(|k| k.starts_with("live-")).count();
    assert_eq!(entries.len(), 4 * PRELOAD + created);
    eprintln!(
        "snapshot of {} keys under 4 writers: {} writes in all, {overlapping} sent and acknowledged during it, longest PUT {:?}",
        info["keys"],
        seen.spans.len(),
        seen.longest
    );
}

#[tokio::test]
async fn deletes_ttls_and_revisions_survive_restart() {
    let mut server = TestServer::start(&[]);
    let http = client();
    put(&server, "keep", "1").await;
    put(&server, "gone", "2").await;
    let del = http
        .delete(server.at("/kv/gone"))
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 200);
    put_ttl(&server, "short", "3", 1).await;
    let long_version = put_ttl(&server, "long", "4", 3600).await;
    let revision = stats(&server).await["revision"].as_u64().expect("revision");
    assert_eq!(revision, 5);
    server.stop(Stop::Kill9);
    // Stay down past the short TTL.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    server.start_again(&[]);
    let get = |key: &str| http.get(server.at(&format!("/kv/{key}"))).send();
    assert_eq!(
        get("keep").await.expect("get").text().await.expect("body"),
        "1"
    );
    assert_eq!(get("gone").await.expect("get").status(), 404);
    assert_eq!(
        get("short").await.expect("get").status(),
        404,
        "expired while down stays gone"
    );
    let meta: Value = get_json(&server, "/kv/long/meta").await;
    assert_eq!(meta["version"], long_version);
    assert!(
        meta["expires_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{meta}"
    );
    assert!(
        put(&server, "next", "5").await > revision,
        "revisions keep growing"
    );
}

#[tokio::test]
async fn sigterm_exits_cleanly_with_a_final_snapshot() {
    let mut server = TestServer::start(&[]);
    put(&server, "a", &json!({"x": 1}).to_string()).await;
    server.stop(Stop::Term);
    assert!(
        !snapshots(&server.dir).is_empty(),
        "a final snapshot was written"
    );
    server.start_again(&[]);
    assert_eq!(
        dump(&server).await.get("a").map(|e| &e.1),
        Some(&json!({"x": 1}))
    );
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let mut server = TestServer::start(&["--snapshot-retain", "2"]);
    put(&server, "a", "1").await;
    snapshot(&server).await;
    put(&server, "b", "2").await;
    let second = snapshot(&server).await;
    put(&server, "c", "3").await;
    server.stop(Stop::Kill9);
    let newest = PathBuf::from(second["file"].as_str().expect("file"));
    let mut bytes = std::fs::read(&newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&newest, bytes).expect("write");
    server.start_again(&[]);
    let entries = dump(&server).await;
    for (key, value) in [("a", 1), ("b", 2), ("c", 3)] {
        assert_eq!(entries.get(key).map(|e| &e.1), Some(&json!(value)), "{key}");
    }
    assert!(server.log().contains("damaged"), "the damage is logged");
}

/// The number in a `wal-<n>.log` or `snapshot-<n>.json` name.
fn number(path: &Path) -> u64 {
    let name = name(path);
    name.trim_start_matches(|c: char| !c.is_ascii_digit())
        .split('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {name}"))
}

/// Five snapshots with `--snapshot-retain 2`: after each, exactly the
/// newest two (at most) are on disk and, with no log kept for the feed
/// beyond them (`--event-retention-bytes 1`), no WAL segment older than
/// the oldest of them is; the older of the two still restores everything
/// once the newer is damaged (so no segment it needs was pruned).
#[tokio::test]
async fn snapshots_beyond_retain_are_pruned_with_the_segments_they_covered() {
    let args = [
        "--snapshot-retain",
        "2",
        "--snapshot-interval",
        "0",
        "--event-retention-bytes",
        "1",
    ];
    let mut server = TestServer::start(&args);
    let mut written = Vec::new();
    for round in 1..=5u64 {
        put(&server, &format!("k{round}"), &round.to_string()).await;
        let answer = snapshot(&server).await;
        written.push(PathBuf::from(answer["file"].as_str().expect("file")));
        let kept = snapshots(&server.dir);
        let newest: Vec<PathBuf> = written.iter().rev().take(2).rev().cloned().collect();
        assert_eq!(kept, newest, "after snapshot {round}");
        let oldest_kept = number(&kept[0]);
        let wal = segments(&server.dir);
        assert!(
            wal.iter().all(|s| number(s) >= oldest_kept),
            "after snapshot {round}: a segment older than snapshot {oldest_kept} is left: {wal:?}"
        );
        assert!(
            wal.iter()
                .any(|s| number(s) == number(&kept[kept.len() - 1])),
            "after snapshot {round}: the newest snapshot's segment is there: {wal:?}"
        );
    }
    for gone in &written[..3] {
        assert!(!gone.exists(), "{} was pruned", gone.display());
    }
    // A write after the last snapshot, then a crash and a damaged newest
    // snapshot: the older kept one and the segments after it hold it all.
    put(&server, "k6", "6").await;
    server.stop(Stop::Kill9);
    let newest = &written[4];
    let mut bytes = std::fs::read(newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(newest, bytes).expect("write");
    server.start_again(&args);
    assert!(server.log().contains("damaged"), "{}", server.log());
    let entries = dump(&server).await;
    for round in 1..=6u64 {
        assert_eq!(
            entries.get(&format!("k{round}")).map(|e| &e.1),
            Some(&json!(round)),
            "k{round}"
        );
    }
}
