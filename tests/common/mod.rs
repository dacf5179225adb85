//! The one way tests start a real `dododb` server: the real binary, bound
//! to 127.0.0.1:0, with its own temporary data directory.

#![allow(dead_code)]

pub mod chaos;
pub mod cluster;
pub mod ledger;
pub mod linearizable;
pub mod partition;
pub mod powerfail;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running server process.
pub struct TestServer {
    /// Base URL, like `http://127.0.0.1:41234`.
    pub url: String,
    /// The data directory (kept after the server stops, for restarts).
    pub dir: PathBuf,
    child: Child,
    log: PathBuf,
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

    /// A server on `dir` listening on `listen` (for a restart on the port
    /// an earlier server had).
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

    /// The `host:port` it listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// Kills the process with SIGKILL (`kill -9`) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Keeps the temporary directory alive beyond this server (for restarts).
    pub fn take_tmp(&mut self) -> Option<tempfile::TempDir> {
        self._tmp.take()
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

/// A client with no proxy and sane timeouts.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Percent-encodes a key for use as one path segment.
pub fn enc(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
