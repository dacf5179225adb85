//! The write-ahead log: checksummed records in numbered segment files, a
//! group-commit writer thread, replay at start-up and offline repair.
//! The byte layout is drawn in `docs/durability.md`.
//!
//! This module knows files and bytes, never HTTP or the map's internals:
//! the database hands it records and a [`writer::BatchSink`] to apply them.

mod faults;
pub mod reader;
pub mod record;
mod replay;
pub mod segment;
pub mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use reader::{LogReader, ReadEnd};
pub use record::Record;
pub use replay::{ReplayReport, repair, replay};
pub use writer::{BatchSink, WalWriter};

/// Why the log could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// An earlier write or sync failed; writes are refused until restart.
    #[error("the write-ahead log refuses writes after an earlier failure: {0}")]
    Poisoned(String),
    /// The log is shutting down.
    #[error("the write-ahead log is closed")]
    Closed,
    /// A record before the end of the log is damaged.
    #[error(
        "WAL file {file} is damaged at offset {offset} ({reason}); run `dododb repair --data-dir <dir>` to truncate it there"
    )]
    Corrupt {
        /// The damaged segment file.
        file: String,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Segments are missing between two that exist.
    #[error(
        "WAL file {file} is missing: the log stops at offset {offset} of {previous} and goes on in a later segment; refusing to start"
    )]
    Gap {
        /// The first missing segment file.
        file: String,
        /// The segment before it.
        previous: String,
        /// Where the segment before it ends.
        offset: u64,
    },
}

impl WalError {
    fn io(path: &Path, e: std::io::Error) -> WalError {
        WalError::Io(format!("{}: {e}", path.display()))
    }
}

/// Counters of the log, read by `/system/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Records appended since start.
    pub appends: AtomicU64,
    /// Batches written (one write each).
    pub batches: AtomicU64,
    /// Bytes appended since start.
    pub bytes: AtomicU64,
    /// Bytes in the current segment (since the last snapshot's rotation).
    pub bytes_since_rotation: AtomicU64,
    /// fdatasync calls.
    pub fsyncs: AtomicU64,
    /// Total time spent in fdatasync, in microseconds.
    pub fsync_micros: AtomicU64,
    /// The segment being appended to.
    pub segment: AtomicU64,
}

impl WalStats {
    fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}
