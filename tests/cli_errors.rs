//! Start-up failures are one clear line on stderr and a non-zero exit.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dododb"))
        .args(args)
        .output()
        .expect("run dododb");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, stderr) = run(args);
    assert!(code.is_some_and(|c| c != 0), "{args:?} exited {code:?}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("dododb:"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].contains(needle), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(lines[0]),
        "the error is the last line: {stderr}"
    );
}

#[test]
fn a_bad_flag_is_one_line() {
    assert_one_line_error(&["--bogus"], "--bogus");
    assert_one_line_error(&["--fsync", "sometimes"], "sometimes");
    assert_one_line_error(&["--max-key-bytes", "0"], "max-key-bytes");
}

#[test]
fn a_port_in_use_is_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    assert_one_line_error(
        &["--listen", &addr, "--data-dir", dir.to_str().expect("utf8")],
        &addr,
    );
}

#[test]
fn an_unusable_data_dir_is_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a dir").expect("write");
    assert_one_line_error(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            file.to_str().expect("utf8"),
        ],
        "a-file",
    );
}

#[test]
fn raft_timing_that_cannot_work_is_one_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("d");
    let dir = dir.to_str().expect("utf8");
    let member = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir,
        "--node-id",
        "1",
    ];
    let mut args = member.to_vec();
    args.extend(["--raft-heartbeat-ms", "200", "--raft-election-ms", "200"]);
    assert_one_line_error(&args, "--raft-election-ms (200 ms) must be more than");
    let mut args = member.to_vec();
    args.extend(["--raft-heartbeat-ms", "0"]);
    assert_one_line_error(&args, "raft-heartbeat-ms");
    // Timing flags only make sense on a member.
    assert_one_line_error(
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir,
            "--raft-election-ms",
            "300",
        ],
        "required arguments were not provided",
    );
}

#[test]
fn help_and_version_exit_zero() {
    assert_eq!(run(&["--version"]).0, Some(0));
    assert_eq!(run(&["--help"]).0, Some(0));
}
