//! Start-up: lock the data directory, remove leftovers, load the newest
//! valid snapshot and replay the WAL after it.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use super::DbError;
use crate::snapshot;
use crate::store::Store;
use crate::wal::{self, Record, segment};

/// What recovery rebuilt.
pub(super) struct Recovered {
    pub store: Store,
    pub metas: Vec<Record>,
    /// The segment the new writer starts.
    pub next_segment: u64,
}

/// Takes an exclusive lock on `dir/LOCK` so two servers never share a
/// data directory. The lock lives as long as the returned file.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, DbError> {
    create_durably(dir)
        .map_err(|e| DbError::Storage(format!("cannot create data dir {}: {e}", dir.display())))?;
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| DbError::Storage(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        DbError::Storage(format!(
            "data dir {} is in use by another DodoDB process",
            dir.display()
        ))
    })?;
    Ok(file)
}

/// Creates `dir` and any missing parents, and makes each name durable: a
/// data dir whose own name was never synced vanishes in a power cut with
/// every acknowledged write in it. The parent is synced even when `dir`
/// exists, in case an earlier run crashed between `mkdir` and that sync.
fn create_durably(dir: &Path) -> std::io::Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if !dir.is_dir() {
        if let Some(parent) = parent {
            create_durably(parent)?;
        }
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    segment::sync_dir(parent.unwrap_or(Path::new(".")))
}

pub(super) fn recover(dir: &Path) -> Result<Recovered, DbError> {
    let started = Instant::now();
    let storage = |e: &dyn std::fmt::Display| DbError::Storage(e.to_string());
    for leftover in snapshot::remove_leftovers(dir).map_err(|e| storage(&e))? {
        tracing::warn!(file = %leftover.display(), "removed a temporary file left by an interrupted snapshot");
    }
    let spools = super::import::remove_leftovers(dir)
        .map_err(|e| DbError::Storage(format!("{}: {e}", dir.display())))?;
    for leftover in spools {
        tracing::warn!(file = %leftover.display(), "removed the spool file of an interrupted import");
    }
    let segments = segment::list(dir).map_err(|e| storage(&e))?;
    let snapshots = snapshot::list(dir).map_err(|e| storage(&e))?;
    let oldest_segment = segments.first().copied();

    let mut store = Store::new();
    let mut metas: Vec<Record> = Vec::new();
    let mut loaded_from = None;
    let mut first_damage: Option<snapshot::SnapshotError> = None;
    for &n in &snapshots {
        let path = snapshot::path(dir, n);
        let attempt = Store::new();
        // The trailer's revision covers every version in a snapshot we
        // wrote; the newest version seen is the floor all the same.
        let newest = AtomicU64::new(0);
        let loaded = snapshot::load_parallel(
            &path,
            |entries| attempt.reserve(usize::try_from(entries).unwrap_or(usize::MAX)),
            |e| {
                attempt.replay_entry(&e.key, &e.value, e.version, e.expires_at_ms);
                // Read first: the newest soon stops changing, and a read
                // keeps the counter's cache line shared between threads.
                if e.version > newest.load(Ordering::Relaxed) {
                    newest.fetch_max(e.version, Ordering::Relaxed);
                }
            },
        );
        match loaded {
            Ok(loaded) => {
                attempt.advance_revision(newest.into_inner());
                if oldest_segment.is_some_and(|oldest| oldest > loaded.wal_segment) {
                    tracing::warn!(file = %path.display(), "snapshot is usable but the WAL after it is gone");
                    continue;
                }
                attempt.advance_revision(loaded.revision);
                metas = loaded.metas.into_iter().map(Record::Meta).collect();
                store = attempt;
                loaded_from = Some(loaded.wal_segment);
                tracing::info!(file = %path.display(), keys = loaded.keys, "loaded snapshot");
                break;
            }
            Err(e) => {
                tracing::error!("{e}; trying an older snapshot");
                first_damage.get_or_insert(e);
            }
        }
    }
    let replay_from = match loaded_from {
        Some(n) => n,
        // No usable snapshot: the WAL alone must reach back to the start.
        None => {
            let wal_from_start =
                oldest_segment == Some(1) || (oldest_segment.is_none() && snapshots.is_empty());
            if wal_from_start {
                1
            } else if let Some(damage) = first_damage {
                return Err(DbError::Storage(format!(
                    "{damage}, and no older snapshot with its WAL covers the data; refusing to start"
                )));
            } else {
                return Err(DbError::Storage(format!(
                    "the WAL in {} does not reach back to a usable snapshot or to its start; refusing to start",
                    dir.display()
                )));
            }
        }
    };
    let report = wal::replay(dir, replay_from, |record| match record {
        Record::Change(change) => store.replay(change),
        Record::Txn(changes) => changes.into_iter().for_each(|c| store.replay(c)),
        Record::Puts(batch) => batch.changes().into_iter().for_each(|c| store.replay(c)),
        meta @ Record::Meta(_) => metas.push(meta),
        Record::Raft(_) => {}
    })
    .map_err(|e| storage(&e))?;
    // Replay leaves the ordered index to one pass over the map.
    store.rebuild_index();
    let last_segment = segments
        .last()
        .copied()
        .unwrap_or(0)
        .max(replay_from.saturating_sub(1));
    tracing::info!(
        keys = store.count(None, 0),
        revision = store.revision(),
        wal_records = report.records,
        ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    Ok(Recovered {
        store,
        metas,
        next_segment: last_segment + 1,
    })
}

/// The control documents recovered, as raw JSON.
pub(super) fn meta_docs(metas: &[Record]) -> Vec<Bytes> {
    metas
        .iter()
        .filter_map(|r| match r {
            Record::Meta(doc) => Some(doc.clone()),
            Record::Change(_) | Record::Txn(_) | Record::Puts(_) | Record::Raft(_) => None,
        })
        .collect()
}
