//! The state machine openraft drives: the database itself. Committed
//! entries are applied through `Db`'s replica apply path, in log order;
//! snapshots are the database's own snapshot files (the JSON-lines format
//! with its checksum trailer), written while applying waits, and streamed
//! to followers in chunks straight from the file.
//!
//! A snapshot file carries the Raft metadata (last applied log id and the
//! membership) as one more control document, `{"raft": {...}}`.
//!
//! Invariant: `gate` is held while a batch is applied and while a snapshot
//! is written, so a snapshot is exactly the state after its last log id.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};

use super::types::{Command, Entry, LogId, Member, Reply, StorageError, TypeConfig};
use crate::db::{Db, DbError};
use crate::snapshot;
use crate::store::Store;
use crate::wal::segment;

const PREFIX: &str = "raft-snapshot-";
const SUFFIX: &str = ".json";
const INCOMING: &str = "incoming-snapshot.tmp";

type Meta = SnapshotMeta<u64, Member>;

/// The control document that carries a snapshot's Raft metadata.
#[derive(Serialize, Deserialize)]
struct RaftDoc {
    raft: Meta,
}

/// A snapshot on disk: its metadata, its file and what it holds.
#[derive(Clone)]
struct OnDisk {
    meta: Meta,
    path: PathBuf,
    /// The store's revision in it.
    revision: u64,
    /// Entries in it.
    keys: u64,
}

/// The newest snapshot, as `POST /system/snapshot` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Its file.
    pub path: PathBuf,
    /// The log index it covers.
    pub index: u64,
    /// The revision it holds.
    pub revision: u64,
    /// Entries in it.
    pub keys: u64,
}

/// What the state machine has applied.
#[derive(Default)]
pub(super) struct Applied {
    pub log_id: Option<LogId>,
    pub membership: StoredMembership<u64, Member>,
}

struct Shared {
    db: Db,
    dir: PathBuf,
    /// Snapshots kept on disk.
    retain: usize,
    gate: Arc<tokio::sync::Mutex<Applied>>,
    current: Mutex<Option<OnDisk>>,
    built: AtomicU64,
    /// Snapshots installed from a leader since start.
    installed: AtomicU64,
    /// A snapshot is due after this many writes.
    snapshot_every: u64,
    /// Writes applied since the last snapshot (an entry may carry many).
    writes: AtomicU64,
    /// Woken when `writes` reaches `snapshot_every`.
    due: tokio::sync::Notify,
}

/// The state machine and its snapshot builder (a clone).
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_snapshot(None, &e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

/// The snapshot files in `dir`, newest (highest log index) first.
fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX)?.strip_suffix(SUFFIX))
            .and_then(|n| n.split('-').next()?.parse::<u64>().ok());
        if let Some(index) = index {
            found.push((index, entry.path()));
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Loads the snapshot at `path` into `store`: its Raft metadata, its
/// subscription documents and its revision.
fn load_into(path: &Path, store: &Store) -> Result<(Meta, Vec<Bytes>, snapshot::Loaded), DbError> {
    let loaded = snapshot::load(path, |change| store.replay(change))
        .map_err(|e| DbError::Storage(e.to_string()))?;
    let mut meta = None;
    let mut docs = Vec::new();
    let mut loaded = loaded;
    for doc in std::mem::take(&mut loaded.metas) {
        match serde_json::from_slice::<RaftDoc>(&doc) {
            Ok(raft) => meta = Some(raft.raft),
            Err(_) => docs.push(doc),
        }
    }
    let meta = meta.ok_or_else(|| {
        DbError::Storage(format!("snapshot {} has no Raft metadata", path.display()))
    })?;
    Ok((meta, docs, loaded))
}

/// What start-up recovered from the newest valid snapshot.
pub(super) struct Recovered {
    pub store: Store,
    pub docs: Vec<Bytes>,
    pub applied: Applied,
    current: Option<OnDisk>,
}

/// Loads the newest valid snapshot in `dir` (an empty state if none).
///
/// # Errors
///
/// The directory cannot be read, or every snapshot there is damaged.
pub(super) fn recover(dir: &Path) -> Result<Recovered, DbError> {
    let storage = |e: std::io::Error| DbError::Storage(format!("{}: {e}", dir.display()));
    let _ = std::fs::remove_file(dir.join(INCOMING));
    let files = list(dir).map_err(storage)?;
    let mut first_error = None;
    for path in &files {
        let store = Store::new();
        match load_into(path, &store) {
            Ok((meta, docs, loaded)) => {
                store.advance_revision(loaded.revision);
                // Loading replays entries; the ordered index is built once.
                store.rebuild_index();
                tracing::info!(file = %path.display(), "loaded the Raft snapshot");
                return Ok(Recovered {
                    store,
                    docs,
                    applied: Applied {
                        log_id: meta.last_log_id,
                        membership: meta.last_membership.clone(),
                    },
                    current: Some(OnDisk {
                        meta,
                        path: path.clone(),
                        revision: loaded.revision,
                        keys: loaded.keys,
                    }),
                });
            }
            Err(e) => {
                tracing::error!("{e}; trying an older snapshot");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        // The log was purged up to the damaged snapshot: it cannot be
        // rebuilt here (a new member id, or a snapshot from the leader).
        Some(e) => Err(e),
        None => Ok(Recovered {
            store: Store::new(),
            docs: Vec::new(),
            applied: Applied::default(),
            current: None,
        }),
    }
}

impl StateMachine {
    /// The state machine over `db`, which holds `recovered`'s store.
    pub(super) fn new(
        db: Db,
        dir: PathBuf,
        retain: usize,
        applied: Applied,
        recovered_current: Option<RecoveredCurrent>,
        snapshot_every: u64,
    ) -> StateMachine {
        StateMachine {
            shared: Arc::new(Shared {
                db,
                dir,
                retain: retain.max(1),
                gate: Arc::new(tokio::sync::Mutex::new(applied)),
                current: Mutex::new(recovered_current.map(|c| c.0)),
                built: AtomicU64::new(0),
                installed: AtomicU64::new(0),
                snapshot_every: snapshot_every.max(1),
                writes: AtomicU64::new(0),
                due: tokio::sync::Notify::new(),
            }),
        }
    }

    fn set_current(&self, on_disk: OnDisk) {
        *self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(on_disk);
        if let Err(e) = self.prune() {
            tracing::warn!("could not remove old Raft snapshots: {e}");
        }
    }

    /// Snapshots installed from a leader since start.
    pub(super) fn installed(&self) -> u64 {
        self.shared.installed.load(Ordering::Relaxed)
    }

    /// The newest snapshot on disk, if any.
    pub(super) fn current(&self) -> Option<SnapshotFile> {
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        Some(SnapshotFile {
            index: current.meta.last_log_id.map_or(0, |l| l.index),
            path: current.path,
            revision: current.revision,
            keys: current.keys,
        })
    }

    /// Returns once `snapshot_every` writes were applied since the last
    /// snapshot. Snapshots follow writes, not log entries: an entry may
    /// carry a batch of writes (`raft/write_batch.rs`).
    pub(super) async fn snapshot_due(&self) {
        loop {
            let due = self.shared.due.notified();
            if self.shared.writes.load(Ordering::Relaxed) >= self.shared.snapshot_every {
                return;
            }
            due.await;
        }
    }

    /// Starts counting towards the next snapshot again (one was asked for).
    pub(super) fn restart_count(&self) {
        self.shared.writes.store(0, Ordering::Relaxed);
    }

    /// Counts `n` applied writes towards the next snapshot.
    fn count_writes(&self, n: u64) {
        let total = self.shared.writes.fetch_add(n, Ordering::Relaxed) + n;
        if total >= self.shared.snapshot_every {
            self.shared.due.notify_waiters();
        }
    }

    /// Keeps the newest `retain` snapshots.
    fn prune(&self) -> std::io::Result<()> {
        for old in list(&self.shared.dir)?.into_iter().skip(self.shared.retain) {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

/// The snapshot recovery found, handed from [`recover`] to the machine.
pub(super) struct RecoveredCurrent(OnDisk);

impl Recovered {
    /// Splits off the snapshot on disk for [`StateMachine::new`].
    pub(super) fn take_current(&mut self) -> Option<RecoveredCurrent> {
        self.current.take().map(RecoveredCurrent)
    }
}

/// Applies one command through the database's replica apply path.
fn apply_command(db: &Db, command: Command) -> Reply {
    let outcome = match command {
        Command::Put {
            key,
            value,
            expires_at_ms,
            condition,
            at_ms,
        } => db
            .apply_put(
                &key,
                crate::store::copy_value(value.as_bytes()),
                expires_at_ms,
                condition.into(),
                at_ms,
            )
            .map(Reply::from),
        Command::Delete {
            key,
            condition,
            at_ms,
        } => db
            .apply_delete(&key, condition.into(), at_ms)
            .map(|version| Reply::Deleted { version }),
        Command::Expire { key, at_ms } => db.apply_expire(&key, at_ms).map(|_| Reply::Done),
        Command::Clear { prefix, at_ms } => Ok(Reply::Cleared {
            n: db.apply_clear(&prefix, at_ms),
        }),
        Command::Txn { txn, at_ms } => db
            .apply_txn(txn.into(), at_ms)
            .map(|r| Reply::Txn(r.into())),
        Command::Import { entries, at_ms } => {
            let batch = entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_bytes(), e.expires_at_ms));
            // A batch is many puts: the runtime moves the tasks queued on
            // this worker (heartbeats among them) to another meanwhile.
            let (imported, expired, revision) =
                tokio::task::block_in_place(|| db.apply_import_batch(batch, at_ms));
            Ok(Reply::Imported {
                imported,
                expired,
                revision,
            })
        }
        Command::Meta { doc } => {
            db.apply_meta(doc.as_bytes());
            Ok(Reply::Done)
        }
        Command::Batch(commands) => Ok(Reply::Batch(
            commands
                .into_iter()
                .map(|command| apply_command(db, command))
                .collect(),
        )),
    };
    match outcome {
        Ok(reply) => reply,
        Err(DbError::PreconditionFailed { current }) => Reply::PreconditionFailed { current },
        Err(_) => Reply::NotFound,
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = Arc::clone(&self.shared.gate).lock_owned().await;
        let Some(last) = applied.log_id else {
            return Err(write_err(std::io::Error::other(
                "nothing applied yet: no snapshot to build",
            )));
        };
        let n = self.shared.built.fetch_add(1, Ordering::Relaxed) + 1;
        let meta = Meta {
            last_log_id: applied.log_id,
            last_membership: applied.membership.clone(),
            snapshot_id: format!("{}-{}-{n}", last.index, last.leader_id.term),
        };
        let doc = serde_json::to_vec(&RaftDoc { raft: meta.clone() }).map_err(write_err)?;
        let shared = Arc::clone(&self.shared);
        let name = format!(
            "{PREFIX}{:020}-{}-{n}{SUFFIX}",
            last.index, last.leader_id.term
        );
        let path = shared.dir.join(&name);
        let written = tokio::task::spawn_blocking(move || {
            let temp = path.with_extension("json.tmp");
            let result = (|| {
                let file = std::fs::File::create(&temp)?;
                let counts = shared.db.write_state(
                    &[Bytes::from(doc)],
                    BufWriter::with_capacity(1 << 20, &file),
                )?;
                file.sync_all()?;
                std::fs::rename(&temp, &path)?;
                segment::sync_dir(&shared.dir)?;
                Ok::<_, std::io::Error>((path, counts))
            })();
            // Applying resumes once the file is complete.
            drop(applied);
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        let (written, counts) = written;
        tracing::info!(file = %written.display(), "Raft snapshot written");
        self.set_current(OnDisk {
            meta: meta.clone(),
            path: written.clone(),
            revision: counts.revision,
            keys: counts.keys,
        });
        let file = tokio::fs::File::open(&written).await.map_err(read_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, Member>), StorageError> {
        let applied = self.shared.gate.lock().await;
        Ok((applied.log_id, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.shared.gate.lock().await;
        let mut replies = Vec::new();
        let mut writes = 0;
        for entry in entries {
            applied.log_id = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => Reply::Done,
                EntryPayload::Normal(command) => {
                    writes += command.writes();
                    apply_command(&self.shared.db, command)
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Reply::Done
                }
            });
        }
        drop(applied);
        self.count_writes(writes);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.dir.join(INCOMING);
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(write_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot.sync_all().await.map_err(write_err)?;
        drop(snapshot);
        let Some(last) = meta.last_log_id else {
            return Err(write_err(std::io::Error::other(
                "a snapshot without a log id",
            )));
        };
        let incoming = self.shared.dir.join(INCOMING);
        let name = format!(
            "{PREFIX}{:020}-{}-0{SUFFIX}",
            last.index, last.leader_id.term
        );
        let path = self.shared.dir.join(name);
        let mut applied = self.shared.gate.lock().await;
        let shared = Arc::clone(&self.shared);
        let load_path = incoming.clone();
        let (loaded_meta, path) = tokio::task::spawn_blocking(move || {
            // Loaded apart and checked first: a damaged file changes
            // nothing. Then swapped in whole, so stale reads see the old
            // state or the new one, never a mix; the old content is
            // dropped here, off the map's locks.
            let fresh = shared.db.empty_store();
            let (meta, docs, loaded) = load_into(&load_path, &fresh)?;
            fresh.advance_revision(loaded.revision);
            fresh.rebuild_index();
            shared.db.replace_state(&fresh, &docs)?;
            drop(fresh);
            let loaded_meta = Some((meta, loaded.revision, loaded.keys));
            std::fs::rename(&load_path, &path)
                .and_then(|()| segment::sync_dir(&shared.dir))
                .map_err(|e| DbError::Storage(e.to_string()))?;
            Ok::<_, DbError>((loaded_meta, path))
        })
        .await
        .map_err(read_err)?
        .map_err(read_err)?;
        let (own_meta, revision, keys) = loaded_meta
            .ok_or_else(|| read_err(std::io::Error::other("the snapshot was not loaded")))?;
        if own_meta.last_log_id != meta.last_log_id {
            tracing::warn!("an installed snapshot's own metadata differs from its message's");
        }
        applied.log_id = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        self.shared.writes.store(0, Ordering::Relaxed);
        drop(applied);
        self.shared.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(file = %path.display(), index = last.index, "installed a snapshot from the leader");
        self.set_current(OnDisk {
            meta: meta.clone(),
            path,
            revision,
            keys,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let current = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match current {
            Some(on_disk) => {
                let file = tokio::fs::File::open(&on_disk.path)
                    .await
                    .map_err(read_err)?;
                Ok(Some(Snapshot {
                    meta: on_disk.meta,
                    snapshot: Box::new(file),
                }))
            }
            None => Ok(None),
        }
    }
}
