//! Durability against real crashes: `kill -9` of a real server process,
//! torn and damaged WAL files, crashes injected into the snapshot
//! procedure, and restarts.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ledger::{self, Ledger, MustKeep, dump};
use common::{TestServer, client};
use serde_json::{Value, json};

async fn put(server: &TestServer, key: &str, body: &Value) -> reqwest::StatusCode {
    client()
        .put(server.at(&format!("/kv/{key}")))
        .body(body.to_string())
        .send()
        .await
        .expect("put")
        .status()
}

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
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut acked = 0;
    for cycle in 0..=cycles {
        let mut server = TestServer::start_in(&dir, &["--fsync", fsync]);
        let seen = ledger::verify(&server, &ledger, MustKeep::All).await;
        if cycle > 0 {
            assert!(seen.acked > 0, "cycle {cycle} acknowledged no write");
        }
        acked += seen.acked;
        if cycle == cycles {
            break;
        }
        let writers = ledger::start_writers(&server.url, cycle, rng.u64(..), &ledger);
        ledger::wait_for_acks(&ledger, &server).await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..200))).await;
        server.kill9();
        for w in writers {
            w.await.expect("writer");
        }
    }
    eprintln!(
        "{cycles} kill -9 cycles (--fsync {fsync}), {acked} acknowledged writes (overwrites and deletes) all present"
    );
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-"))
        })
        .collect();
    found.sort();
    found
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
        assert!(
            put(&server, &format!("k{i}"), &json!({"i": i}))
                .await
                .is_success()
        );
        ends.push(std::fs::metadata(&segment).expect("meta").len());
    }
    server.kill9();
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
    let name = segment.file_name().and_then(|n| n.to_str()).expect("name");
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
        let server = TestServer::try_start_with_env(&dir, &[], &env).expect("start");
        for i in 0..50 {
            assert!(
                put(&server, &format!("k{i}"), &json!({"i": i, "step": step}))
                    .await
                    .is_success()
            );
        }
        let snapshot = client().post(server.at("/system/snapshot")).send().await;
        assert!(
            snapshot.is_err() || !snapshot.as_ref().is_ok_and(|r| r.status().is_success()),
            "step {step}: the hook must abort"
        );
        drop(server);

        let server = TestServer::start_in(&dir, &[]);
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
        let answer = client()
            .post(server.at("/system/snapshot"))
            .send()
            .await
            .expect("snapshot");
        assert_eq!(answer.status(), 200);
        drop(server);
        let server = TestServer::start_in(&dir, &[]);
        assert_eq!(dump(&server).await.len(), 50, "step {step}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_writes_loses_nothing() {
    let mut server = TestServer::start(&["--fsync", "never"]);
    let _tmp = server.take_tmp();
    let http = client();
    let mut preload = Vec::new();
    for w in 0..4 {
        let http = http.clone();
        let url = server.url.clone();
        preload.push(tokio::spawn(async move {
            for i in 0..2_500 {
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
    let acked = Arc::new(Mutex::new(Vec::new()));
    let longest = Arc::new(Mutex::new(Duration::ZERO));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (http, url, stop, acked, longest) = (
            http.clone(),
            server.url.clone(),
            stop.clone(),
            acked.clone(),
            longest.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("live-{w}-{i}");
                let started = Instant::now();
                let r = http
                    .put(format!("{url}/kv/{key}"))
                    .body("[1,2,3]")
                    .send()
                    .await
                    .expect("put");
                let took = started.elapsed();
                assert!(r.status().is_success());
                let mut l = longest.lock().expect("lock");
                *l = (*l).max(took);
                acked.lock().expect("lock").push(key);
                i += 1;
            }
        }));
    }
    let snap = http
        .post(server.at("/system/snapshot"))
        .send()
        .await
        .expect("snapshot");
    assert_eq!(snap.status(), 200);
    let info: Value = snap.json().await.expect("json");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(info["keys"].as_u64().expect("keys") >= 10_000);
    server.kill9();
    let server = TestServer::start_in(&server.dir.clone(), &[]);
    let entries = dump(&server).await;
    let acked = acked.lock().expect("lock");
    for key in acked.iter() {
        assert!(entries.contains_key(key), "{key} lost");
    }
    assert_eq!(entries.len(), 10_000 + acked.len());
    eprintln!(
        "snapshot of {} keys under 4 writers: {} writes during it, longest PUT {:?}",
        info["keys"],
        acked.len(),
        longest.lock().expect("lock")
    );
}

#[tokio::test]
async fn deletes_ttls_and_revisions_survive_restart() {
    let mut server = TestServer::start(&[]);
    let tmp = server.take_tmp();
    let http = client();
    assert!(put(&server, "keep", &json!(1)).await.is_success());
    assert!(put(&server, "gone", &json!(2)).await.is_success());
    let del = http
        .delete(server.at("/kv/gone"))
        .send()
        .await
        .expect("delete");
    assert_eq!(del.status(), 200);
    let short = http
        .put(server.at("/kv/short?ttl=1"))
        .body("3")
        .send()
        .await
        .expect("put");
    assert_eq!(short.status(), 201);
    let long = http
        .put(server.at("/kv/long?ttl=3600"))
        .body("4")
        .send()
        .await
        .expect("put");
    let long_version: Value = long.json().await.expect("json");
    let stats: Value = http
        .get(server.at("/system/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    let revision = stats["revision"].as_u64().expect("revision");
    assert_eq!(revision, 5);
    server.kill9();
    // Stay down past the short TTL.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let server = TestServer::start_in(&server.dir.clone(), &[]);
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
    let meta: Value = http
        .get(server.at("/kv/long/meta"))
        .send()
        .await
        .expect("meta")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["version"], long_version["version"]);
    assert!(
        meta["expires_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{meta}"
    );
    let next: Value = http
        .put(server.at("/kv/next"))
        .body("5")
        .send()
        .await
        .expect("put")
        .json()
        .await
        .expect("json");
    assert!(
        next["version"].as_u64().expect("version") > revision,
        "revisions keep growing"
    );
    drop(tmp);
}

#[tokio::test]
async fn sigterm_exits_cleanly_with_a_final_snapshot() {
    let mut server = TestServer::start(&[]);
    let _tmp = server.take_tmp();
    assert!(put(&server, "a", &json!({"x": 1})).await.is_success());
    assert_eq!(server.terminate(), Some(0));
    let snapshots = std::fs::read_dir(&server.dir)
        .expect("dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        })
        .count();
    assert!(snapshots >= 1, "a final snapshot was written");
    let server = TestServer::start_in(&server.dir.clone(), &[]);
    assert_eq!(
        dump(&server).await.get("a").map(|e| &e.1),
        Some(&json!({"x": 1}))
    );
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_previous_one() {
    let mut server = TestServer::start(&["--snapshot-retain", "2"]);
    let _tmp = server.take_tmp();
    let http = client();
    assert!(put(&server, "a", &json!(1)).await.is_success());
    assert_eq!(
        http.post(server.at("/system/snapshot"))
            .send()
            .await
            .expect("snap")
            .status(),
        200
    );
    assert!(put(&server, "b", &json!(2)).await.is_success());
    let second: Value = http
        .post(server.at("/system/snapshot"))
        .send()
        .await
        .expect("snap")
        .json()
        .await
        .expect("json");
    assert!(put(&server, "c", &json!(3)).await.is_success());
    server.kill9();
    let newest = PathBuf::from(second["file"].as_str().expect("file"));
    let mut bytes = std::fs::read(&newest).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&newest, bytes).expect("write");
    let server = TestServer::start_in(&server.dir.clone(), &[]);
    let entries = dump(&server).await;
    for (key, value) in [("a", 1), ("b", 2), ("c", 3)] {
        assert_eq!(entries.get(key).map(|e| &e.1), Some(&json!(value)), "{key}");
    }
    assert!(server.log().contains("damaged"), "the damage is logged");
}
