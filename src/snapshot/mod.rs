//! Snapshots: the whole map streamed shard by shard into a JSON-lines file
//! (temp name, fsync, rename, directory fsync), retention of old
//! snapshots and of the WAL segments they cover, and loading at start-up.
//!
//! This module writes and reads snapshot files only; it asks the WAL to
//! rotate through the caller and never applies anything itself.

mod encode;
mod load;

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use encode::{FORMAT_VERSION, Written, encode};
pub use load::{
    ExportLine, Loaded, SnapshotEntry, load, load_bytes, load_parallel, parse_line,
    plain_import_entry,
};

use crate::store::Store;
use crate::wal::segment;

/// Why a snapshot could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// The file is incomplete or fails its checksum.
    #[error("snapshot {file} is damaged: {reason}")]
    Damaged {
        /// The snapshot file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

impl SnapshotError {
    fn io(path: &Path, e: std::io::Error) -> SnapshotError {
        SnapshotError::Io(format!("{}: {e}", path.display()))
    }
}

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";

/// The path of the snapshot that covers the WAL before `segment`.
pub fn path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{segment:020}{SUFFIX}"))
}

fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .parse()
        .ok()
}

/// The WAL segment numbers of all snapshots in `dir`, newest first.
///
/// # Errors
///
/// The directory cannot be read.
pub fn list(dir: &Path) -> Result<Vec<u64>, SnapshotError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| SnapshotError::io(dir, e))? {
        let entry = entry.map_err(|e| SnapshotError::io(dir, e))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_name) {
            found.push(n);
        }
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

/// Removes temporary files left by a snapshot that crashed mid-way.
///
/// # Errors
///
/// The directory cannot be read or a file cannot be removed.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| SnapshotError::io(dir, e))? {
        let entry = entry.map_err(|e| SnapshotError::io(dir, e))?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(TEMP_SUFFIX))
        {
            std::fs::remove_file(entry.path()).map_err(|e| SnapshotError::io(&entry.path(), e))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// The steps of [`write()`], named for crash-injection tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The temporary file is written and synced, not yet renamed.
    TempSynced = 1,
    /// The file is renamed, the directory not yet synced.
    Renamed = 2,
    /// The rename is durable; old files are not yet removed.
    DirSynced = 3,
    /// Old snapshots and covered WAL segments are removed.
    Pruned = 4,
}

/// Writes a snapshot of `store` covering the WAL before `wal_segment` into
/// `dir` (temp file, fsync, rename, directory fsync), then keeps only the
/// newest `retain` snapshots. `at_step` is called after each [`Step`]
/// (tests abort there). The WAL segments the kept snapshots no longer need
/// are the caller's to drop ([`oldest_kept`]): log retention decides.
///
/// # Errors
///
/// [`SnapshotError::Io`]; the previous snapshot and WAL stay usable.
pub fn write(
    dir: &Path,
    store: &Store,
    metas: &[Bytes],
    wal_segment: u64,
    retain: usize,
    now_ms: u64,
    at_step: &dyn Fn(Step),
) -> Result<(Written, PathBuf), SnapshotError> {
    let final_path = path(dir, wal_segment);
    let temp_path = final_path.with_extension(format!("json{TEMP_SUFFIX}"));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| SnapshotError::io(&p, e)
    };
    let file = File::create(&temp_path).map_err(io(&temp_path))?;
    let written = encode(
        store,
        metas,
        wal_segment,
        now_ms,
        BufWriter::with_capacity(1 << 20, &file),
    )
    .map_err(io(&temp_path));
    let written = match written.and_then(|w| file.sync_all().map(|()| w).map_err(io(&temp_path))) {
        Ok(written) => written,
        Err(e) => {
            let _ = std::fs::remove_file(&temp_path);
            return Err(e);
        }
    };
    drop(file);
    at_step(Step::TempSynced);
    std::fs::rename(&temp_path, &final_path).map_err(io(&final_path))?;
    at_step(Step::Renamed);
    segment::sync_dir(dir).map_err(io(dir))?;
    at_step(Step::DirSynced);
    prune(dir, retain)?;
    at_step(Step::Pruned);
    Ok((written, final_path))
}

/// The WAL segment of the oldest snapshot kept (the first segment the
/// snapshots still need), if there is a snapshot.
///
/// # Errors
///
/// The directory cannot be read.
pub fn oldest_kept(dir: &Path, retain: usize) -> Result<Option<u64>, SnapshotError> {
    let snapshots = list(dir)?;
    Ok(snapshots
        .get(retain.max(1).min(snapshots.len()).wrapping_sub(1))
        .copied())
}

/// Keeps the newest `retain` snapshots; removes the rest.
fn prune(dir: &Path, retain: usize) -> Result<(), SnapshotError> {
    let snapshots = list(dir)?;
    for &old in snapshots.iter().skip(retain.max(1)) {
        let p = path(dir, old);
        std::fs::remove_file(&p).map_err(|e| SnapshotError::io(&p, e))?;
    }
    segment::sync_dir(dir).map_err(|e| SnapshotError::io(dir, e))
}
