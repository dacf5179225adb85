//! Fault injection for tests: the log's writes and syncs go through here,
//! so tests can make the disk fill up, a write fail or an fsync fail at a
//! chosen moment. Read once from the environment when the log starts; not
//! settings, and unset in production:
//!
//! - `DODODB_TEST_WAL_SPACE_BYTES=N`: the disk holds only N more bytes; a
//!   batch that does not fit is written in part, then fails with `ENOSPC`.
//! - `DODODB_TEST_WAL_FAIL_WRITE=N`: the Nth batch write fails with `EIO`,
//!   writing nothing.
//! - `DODODB_TEST_WAL_FAIL_SYNC=N`: the Nth fdatasync of the log fails with
//!   `EIO` (after its data was written).
//! - `DODODB_TEST_WAL_BATCH_MIN=K`: under `--fsync always` the writer
//!   thread commits only once K records are queued, so a test knows how
//!   many waiting writers the next batch carries.
//! - `DODODB_TEST_WAL_STALL_MS=N`: a transaction writing a key that starts
//!   with `stall` waits N ms between taking its revisions and reaching the
//!   log's queue. A single change takes its revision under the queue lock
//!   (the log is in revision order), but a transaction takes its revisions
//!   under its keys' locks first: writes of other keys then take later
//!   revisions and reach the log, and the live feed, before it.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The injected faults and their counters.
#[derive(Debug)]
pub struct Faults {
    /// Bytes the disk still takes; `u64::MAX`: no limit.
    space_left: AtomicU64,
    fail_write: Option<u64>,
    fail_sync: Option<u64>,
    /// Records the writer thread waits for before it commits.
    pub batch_min: usize,
    /// How long a transaction writing a `stall…` key waits before it is
    /// queued.
    pub stall: Option<Duration>,
    writes: AtomicU64,
    syncs: AtomicU64,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

impl Faults {
    /// No faults.
    fn none() -> Faults {
        Faults {
            space_left: AtomicU64::new(u64::MAX),
            fail_write: None,
            fail_sync: None,
            batch_min: 0,
            stall: None,
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        }
    }

    /// The faults the environment asks for.
    pub fn from_env() -> Faults {
        Faults {
            space_left: AtomicU64::new(
                env_number("DODODB_TEST_WAL_SPACE_BYTES").unwrap_or(u64::MAX),
            ),
            fail_write: env_number("DODODB_TEST_WAL_FAIL_WRITE"),
            fail_sync: env_number("DODODB_TEST_WAL_FAIL_SYNC"),
            batch_min: env_number("DODODB_TEST_WAL_BATCH_MIN")
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0),
            stall: env_number("DODODB_TEST_WAL_STALL_MS").map(Duration::from_millis),
            ..Faults::none()
        }
    }

    /// The same faults, for unit tests.
    #[cfg(test)]
    pub fn with(space: Option<u64>, fail_write: Option<u64>, fail_sync: Option<u64>) -> Faults {
        Faults {
            space_left: AtomicU64::new(space.unwrap_or(u64::MAX)),
            fail_write,
            fail_sync,
            ..Faults::none()
        }
    }

    /// Writes `buf` at the end of `file`, failing as asked.
    pub fn append(&self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_write == Some(n) {
            return Err(io::Error::other(
                "input/output error (DODODB_TEST_WAL_FAIL_WRITE)",
            ));
        }
        let left = self.space_left.load(Ordering::Relaxed);
        if left == u64::MAX {
            return file.write_all(buf);
        }
        let fits = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        file.write_all(&buf[..fits])?;
        self.space_left.store(left - fits as u64, Ordering::Relaxed);
        if fits < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "no space left on device (DODODB_TEST_WAL_SPACE_BYTES)",
            ));
        }
        Ok(())
    }

    /// fdatasync of `file`, failing as asked.
    pub fn sync(&self, file: &File) -> io::Result<()> {
        let n = self.syncs.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_sync == Some(n) {
            return Err(io::Error::other(
                "input/output error (DODODB_TEST_WAL_FAIL_SYNC)",
            ));
        }
        file.sync_data()
    }
}
