//! What a server left in its data directory: WAL segments and snapshots,
//! listed oldest first, for tests that damage, cut or count them.

use std::path::{Path, PathBuf};

/// The files in `dir` whose names start with `prefix` and end with
/// `suffix`, sorted by name (the number in the name, zero-padded: oldest
/// first).
fn named(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found
}

/// The WAL segment files (`wal-<n>.log`) in `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    named(dir, "wal-", ".log")
}

/// The snapshot files (`snapshot-<n>.json`, not temporary ones) in `dir`,
/// oldest first.
pub fn snapshots(dir: &Path) -> Vec<PathBuf> {
    named(dir, "snapshot-", ".json")
}

/// The file name of `path`.
pub fn name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).expect("name")
}
