//! The WAL under injected faults (the `DODODB_TEST_WAL_*` hooks, see
//! `src/wal/faults.rs`) and damaged files: a failed fsync or write or a
//! full disk while a group-commit batch of several writers is in flight,
//! damage before the last segment, a missing segment, a zero-filled tail.

mod common;

use std::path::Path;

use common::files::{name, segments};
use common::ledger::dump;
use common::{Stop, TestServer, assert_error, client, stats};
use reqwest::StatusCode;

/// PUTs `keys` at once, so that they wait in one group-commit batch;
/// returns each status.
async fn put_together(server: &TestServer, keys: &[String], value: &str) -> Vec<u16> {
    let http = client();
    let puts = keys.iter().map(|key| {
        http.put(server.at(&format!("/kv/{key}")))
            .body(value.to_string())
            .send()
    });
    let mut statuses = Vec::new();
    for answer in futures_util::future::join_all(puts).await {
        let answer = answer.expect("put");
        let status = answer.status().as_u16();
        if status == 503 {
            assert_error(answer, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        }
        statuses.push(status);
    }
    statuses
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Starts a server with `faults`, commits one batch of `n` writers, then
/// has the next batch of `n` fail; checks that every writer of it got 503,
/// none was applied, and after a restart (faults gone) none was replayed.
async fn a_failing_batch(faults: &[(&str, &str)], n: usize, value: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let n_text = n.to_string();
    let mut env = vec![("DODODB_TEST_WAL_BATCH_MIN", n_text.as_str())];
    env.extend_from_slice(faults);
    let mut server = TestServer::try_start_with_env(&dir, &[], &env).expect("start");
    let good = keys("good", n);
    assert!(
        put_together(&server, &good, value)
            .await
            .iter()
            .all(|&s| s == 201)
    );
    let wal = &stats(&server).await["wal"];
    assert_eq!(wal["batches"], 1, "the {n} writers shared one batch: {wal}");
    assert_eq!(wal["appends"], n as u64);
    let bad = keys("bad", n);
    assert_eq!(put_together(&server, &bad, value).await, vec![503; n]);
    let http = client();
    for key in &bad {
        let got = http
            .get(server.at(&format!("/kv/{key}")))
            .send()
            .await
            .expect("get");
        assert_eq!(got.status(), 404, "{key} was refused, so not applied");
    }
    let wal = &stats(&server).await["wal"];
    assert!(wal["poisoned"].is_string(), "{wal}");
    assert_eq!(
        put_together(&server, &keys("later", 1), value).await,
        vec![503],
        "writes stay refused until restart"
    );
    server.restart(Stop::Kill9, &[]);
    let entries = dump(&server).await;
    let mut present: Vec<&String> = entries.keys().collect();
    present.sort();
    let mut expected: Vec<&String> = good.iter().collect();
    expected.sort();
    assert_eq!(present, expected, "only the acknowledged batch came back");
    assert!(
        !server.log().contains("torn"),
        "the refused batch left nothing in the log: {}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_fails_every_writer_of_the_batch() {
    a_failing_batch(&[("DODODB_TEST_WAL_FAIL_SYNC", "2")], 5, "{\"v\":1}").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_write_fails_every_writer_of_the_batch() {
    a_failing_batch(&[("DODODB_TEST_WAL_FAIL_WRITE", "2")], 4, "{\"v\":2}").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_in_the_middle_of_a_batch_fails_all_of_it() {
    // Every record here is 12 + 33 + 5 (key) + 100 (value) = 150 bytes; the
    // disk takes the first batch of 4 and 230 bytes of the second.
    let value = format!("\"{}\"", "v".repeat(98));
    let space = (4 * 150 + 230).to_string();
    a_failing_batch(
        &[("DODODB_TEST_WAL_SPACE_BYTES", space.as_str())],
        4,
        &value,
    )
    .await;
}

/// Runs the server `runs` times on `dir`, each time writing `per_run` keys
/// and then `kill -9`: every start opens a new segment, so this leaves
/// `runs` segments with records. Returns each segment's record end offsets.
async fn segments_with_records(dir: &Path, runs: usize, per_run: usize) -> Vec<Vec<u64>> {
    let args = ["--fsync", "always", "--snapshot-interval", "0"];
    let mut server = TestServer::start_in(dir, &args);
    let mut ends = Vec::new();
    for run in 0..runs {
        if run > 0 {
            server.start_again(&args);
        }
        let segment = segments(dir).pop().expect("a segment");
        let mut offsets = Vec::new();
        for i in 0..per_run {
            let status = put_together(&server, &[format!("r{run}-{i}")], "{\"x\":1}").await;
            assert_eq!(status, vec![201]);
            offsets.push(std::fs::metadata(&segment).expect("meta").len());
        }
        server.stop(Stop::Kill9);
        ends.push(offsets);
    }
    ends
}

#[tokio::test]
async fn damage_in_a_segment_before_the_last_refuses_start_with_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let ends = segments_with_records(&dir, 2, 3).await;
    let first = segments(&dir)[0].clone();
    let pristine = std::fs::read(&first).expect("read");

    // A flipped bit in the second record of the first segment.
    let mut flipped = pristine.clone();
    flipped[ends[0][0] as usize + 20] ^= 0x08;
    // The first segment cut in the middle of its last record: a torn tail,
    // but not at the end of the log, since the next segment has records.
    let cut = &pristine[..ends[0][2] as usize - 5];
    for (what, bytes, offset) in [
        ("a flipped bit", &flipped[..], ends[0][0]),
        ("a cut record", cut, ends[0][1]),
    ] {
        std::fs::write(&first, bytes).expect("write");
        let failure = TestServer::try_start_in(&dir, &[])
            .err()
            .unwrap_or_else(|| panic!("{what}: start must be refused"));
        assert_ne!(failure.code, Some(0));
        assert!(
            failure.stderr.contains(name(&first))
                && failure.stderr.contains(&format!("offset {offset}")),
            "{what}: the error names {} and offset {offset}: {}",
            name(&first),
            failure.stderr
        );
        assert_eq!(
            std::fs::read(&first).expect("read"),
            bytes,
            "{what}: nothing was cut"
        );
    }
}

#[tokio::test]
async fn a_missing_segment_refuses_start_with_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let ends = segments_with_records(&dir, 3, 2).await;
    let all = segments(&dir);
    std::fs::remove_file(&all[1]).expect("remove the middle segment");
    let failure = TestServer::try_start_in(&dir, &[])
        .err()
        .expect("start must be refused");
    assert_ne!(failure.code, Some(0));
    assert!(
        failure.stderr.contains(name(&all[1]))
            && failure.stderr.contains(name(&all[0]))
            && failure.stderr.contains(&format!("offset {}", ends[0][1])),
        "names the missing file and where the log stops: {}",
        failure.stderr
    );
}

#[tokio::test]
async fn a_zero_filled_or_garbage_tail_is_cut_then_writes_and_restarts_go_on() {
    // Space the file system allocated but never wrote (zeroes), and bytes
    // of an append that never completed (garbage: no valid record).
    let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.u8(1..)).collect();
    for (what, tail) in [("zeroes", vec![0; 4096]), ("garbage", garbage)] {
        cut_then_write_and_restart_twice(what, &tail).await;
    }
}

async fn cut_then_write_and_restart_twice(what: &str, tail: &[u8]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let ends = segments_with_records(&dir, 1, 3).await;
    let last = segments(&dir).pop().expect("segment");
    let mut bytes = std::fs::read(&last).expect("read");
    bytes.extend_from_slice(tail);
    std::fs::write(&last, &bytes).expect("write");

    let mut server = TestServer::start_in(&dir, &[]);
    assert!(server.log().contains("torn"), "{what}: the cut is logged");
    assert_eq!(
        std::fs::metadata(&last).expect("meta").len(),
        ends[0][2],
        "{what}: cut back to the last record"
    );
    assert_eq!(
        put_together(&server, &keys("after", 2), "[1]").await,
        vec![201; 2]
    );
    for restart in 0..2 {
        server.restart(Stop::Kill9, &[]);
        let entries = dump(&server).await;
        let mut present: Vec<&str> = entries.keys().map(String::as_str).collect();
        present.sort_unstable();
        assert_eq!(
            present,
            vec!["after0", "after1", "r0-0", "r0-1", "r0-2"],
            "{what}, restart {restart}"
        );
        assert!(
            !server.log().contains("torn"),
            "{what}, restart {restart}: nothing left to cut: {}",
            server.log()
        );
    }
}
