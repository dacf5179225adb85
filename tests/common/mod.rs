//! The one way tests start a real `dododb` server: the real binary, bound
//! to 127.0.0.1:0, with its own temporary data directory, stopped with
//! `kill -9` or SIGTERM and restarted on the same directory. The helpers
//! every test file shares live beside it: `http` (the one client, `put`,
//! the envelope check), `poll` (`poll_until`), `tcp` (raw connections),
//! `files` (data-dir listings), `ledger` (the crash ledger), `powerfail`
//! (the power-cut mount), and `cluster`, `partition`, `chaos` and
//! `linearizable` for the replicated tests.

#![allow(dead_code)]

pub mod chaos;
pub mod cluster;
pub mod files;
pub mod http;
pub mod ledger;
pub mod linearizable;
pub mod partition;
pub mod poll;
pub mod powerfail;
pub mod tcp;
pub mod webhook;

// Each test file uses some of these.
#[allow(unused_imports)]
pub use http::{
    Reply, assert_error, client, enc, get, get_json, kv, metric, put, put_ttl, snapshot,
    sse_changes, sse_events, stats, txn_succeeds,
};
#[allow(unused_imports)]
pub use poll::poll_until;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How a test stops a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL (`kill -9`): a crash; nothing runs on the way out.
    Kill9,
    /// SIGTERM: a graceful shutdown, which must exit with code 0.
    Term,
}

/// A running server process.
pub struct TestServer {
    /// Base URL, like `http://127.0.0.1:41234`.
    pub url: String,
    /// The data directory (kept after the server stops, for restarts).
    pub dir: PathBuf,
    child: Child,
    log: PathBuf,
    /// A pooled client for this server's requests (see [`TestServer::http`]).
    http: reqwest::Client,
    _tmp: Option<tempfile::TempDir>,
}

/// Why a server did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl TestServer {
    /// A server on a fresh temporary data directory.
    pub fn start(args: &[&str]) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let mut server = TestServer::start_in(&dir, args);
        server._tmp = Some(tmp);
        server
    }

    /// A server on `dir` (which may hold an earlier server's data).
    pub fn start_in(dir: &Path, args: &[&str]) -> TestServer {
        match TestServer::try_start_in(dir, args) {
            Ok(server) => server,
            Err(failure) => panic!("server did not start: {failure:?}"),
        }
    }

    /// Starts a server on `dir`, or reports why it did not come up.
    pub fn try_start_in(dir: &Path, args: &[&str]) -> Result<TestServer, StartFailure> {
        TestServer::try_start_with_env(dir, args, &[])
    }

    /// Starts a server on `dir` with extra environment variables.
    pub fn try_start_with_env(
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestServer, StartFailure> {
        TestServer::try_start_full(dir, "127.0.0.1:0", args, env)
    }

    /// A server on `dir` listening on `listen` (a given address: cluster
    /// members on their own loopback IPs).
    pub fn start_at(dir: &Path, listen: &str, args: &[&str]) -> TestServer {
        match TestServer::try_start_full(dir, listen, args, &[]) {
            Ok(server) => server,
            Err(failure) => panic!("server did not start on {listen}: {failure:?}"),
        }
    }

    fn try_start_full(
        dir: &Path,
        listen: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<TestServer, StartFailure> {
        let log = dir.with_extension(format!("log.{}", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_dododb"))
            .arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn dododb");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        // The first stdout line, or the pipe closing because it exited.
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let url = line
                    .strip_prefix("dododb listening on ")
                    .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
                    .to_string();
                Ok(TestServer {
                    url,
                    dir: dir.to_path_buf(),
                    child,
                    log,
                    http: client(),
                    _tmp: None,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(StartFailure {
                    code: status.and_then(|s| s.code()),
                    stderr: std::fs::read_to_string(&log).unwrap_or_default(),
                })
            }
        }
    }

    /// A client kept with this server, so that a test's requests share
    /// pooled connections (a fresh [`client()`] opens new ones).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The `host:port` it listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Kills the process with SIGKILL (`kill -9`) and waits for it.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// Stops the server as `how` says; with [`Stop::Term`] asserts that it
    /// exited cleanly (code 0).
    pub fn stop(&mut self, how: Stop) {
        match how {
            Stop::Kill9 => self.kill9(),
            Stop::Term => assert_eq!(self.terminate(), Some(0), "a clean exit: {}", self.log()),
        }
    }

    /// Starts a new server on this one's data directory (after [`stop`],
    /// and after the test changed files there), on a new port; the
    /// temporary directory stays with it.
    ///
    /// [`stop`]: TestServer::stop
    pub fn start_again(&mut self, args: &[&str]) {
        self.start_again_at("127.0.0.1:0", args);
    }

    /// [`start_again`], listening on `listen` (for a restart on the port
    /// the stopped server had, which clients keep calling).
    ///
    /// [`start_again`]: TestServer::start_again
    pub fn start_again_at(&mut self, listen: &str, args: &[&str]) {
        assert!(
            self.child.try_wait().ok().flatten().is_some(),
            "start_again while the server still runs"
        );
        let new = TestServer::start_at(&self.dir, listen, args);
        let tmp = self._tmp.take();
        *self = new;
        self._tmp = tmp;
    }

    /// Stops the server as `how` says and starts it again on the same data
    /// directory with `args`.
    pub fn restart(&mut self, how: Stop, args: &[&str]) {
        self.stop(how);
        self.start_again(args);
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `dododb` binary set up as a client of `url`: no token from the
/// environment, no history file, stdin closed unless the test pipes it.
pub fn dododb_client(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dododb"));
    command
        .env("DODODB_URL", url)
        .env_remove("DODODB_AUTH_TOKEN")
        .env(
            "DODODB_HISTORY",
            std::env::temp_dir().join("dododb-test-history"),
        )
        .stdin(Stdio::null());
    command
}

/// The seed and cycle count of a `kill -9` loop: `DODODB_CRASH_SEED` and
/// `DODODB_CRASH_CYCLES` (set by `scripts/crash-loop`), else a fixed seed
/// and `default_cycles`.
pub fn crash_loop_settings(default_cycles: usize) -> (u64, usize) {
    let seed = std::env::var("DODODB_CRASH_SEED")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n != 0)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let cycles = std::env::var("DODODB_CRASH_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default_cycles);
    (seed, cycles)
}
