//! The Raft log on the WAL: every log entry, vote, committed index,
//! truncation and purge is one `Record::Raft` in the same segment files,
//! with the same checksums, group commit, torn-tail rule and `repair` as a
//! single server's log. openraft's flush callback fires once the batch that
//! carried an append is written (and synced under `--fsync always`).
//!
//! The entries since the last purge are also kept in memory, so
//! replication reads them without touching the disk; a purge (after a
//! snapshot) drops them, and whole segments that hold nothing needed any
//! more are deleted.
//!
//! Invariant: records are submitted under `state`'s lock, so their order
//! in the file is the order the log saw them; replaying them in file order
//! rebuilds exactly the log openraft was told about.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{EntryPayload, RaftLogReader, StorageIOError, Vote};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{Entry, LogId, StorageError, TypeConfig};
use crate::config::FsyncPolicy;
use crate::wal::{self, BatchSink, Record, WalError, WalWriter, segment};

/// One item of the log as it is written (serde JSON in a WAL record).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Item {
    Entry(Entry),
    Vote(Vote<u64>),
    Committed(Option<LogId>),
    /// Entries from this index on are gone (a new leader overwrote them).
    Truncate(u64),
    /// Entries up to this id are in a snapshot and gone from the log.
    Purge(LogId),
}

impl Item {
    fn record(&self) -> Result<Record, StorageError> {
        serde_json::to_vec(self)
            .map(|v| Record::Raft(Bytes::from(v)))
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

/// What the log holds, rebuilt from the file at start-up.
#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// Segments numbered below `.0` hold no entry after index `.1`: once
    /// the log is purged past `.1` they can go.
    sealed: Option<(u64, u64)>,
}

impl State {
    fn visit(&mut self, item: Item) {
        match item {
            Item::Entry(entry) => {
                self.entries.insert(entry.log_id.index, entry);
            }
            Item::Vote(vote) => self.vote = Some(vote),
            Item::Committed(committed) => self.committed = committed,
            Item::Truncate(since) => {
                self.entries.split_off(&since);
            }
            Item::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.last_purged = Some(upto);
            }
        }
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last_key_value()
            .map(|(i, _)| *i)
            .or(self.last_purged.map(|l| l.index))
            .unwrap_or(0)
    }
}

/// Raft items are applied by openraft, not by the writer.
struct NoApply;

impl BatchSink for NoApply {
    fn durable(&mut self, _records: Vec<Record>) {}
    fn failed(&mut self, _records: Vec<Record>) {}
}

struct Shared {
    dir: PathBuf,
    wal: WalWriter,
    /// Appends flushed so far (the write batcher proposes again after
    /// each: openraft's core takes the next proposal only then).
    flushed: watch::Sender<u64>,
    /// Held briefly to submit records and to read entries; never across
    /// an await or a disk wait.
    state: Mutex<State>,
}

/// The log store handed to openraft (and its reader: a clone).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn io_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Replays the log in `dir` (truncating a torn tail) and starts its
    /// writer on a new segment.
    ///
    /// # Errors
    ///
    /// The log is damaged before its end (run `dododb repair` on `dir`) or
    /// cannot be read or written.
    pub fn open(dir: &Path, fsync: FsyncPolicy) -> Result<LogStore, WalError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| WalError::Io(format!("{}: {e}", dir.display())))?;
        let mut state = State::default();
        let mut bad: Option<String> = None;
        wal::replay(dir, 0, |record| {
            if let Record::Raft(bytes) = record {
                match serde_json::from_slice::<Item>(&bytes) {
                    Ok(item) => state.visit(item),
                    Err(e) => {
                        bad.get_or_insert(e.to_string());
                    }
                }
            }
        })?;
        if let Some(why) = bad {
            return Err(WalError::Io(format!(
                "a Raft record in {} does not decode: {why}",
                dir.display()
            )));
        }
        let segments = segment::list(dir).map_err(|e| WalError::Io(e.to_string()))?;
        let next = segments.last().copied().unwrap_or(0) + 1;
        state.sealed = Some((next, state.last_index()));
        let wal = WalWriter::start(dir.to_path_buf(), next, fsync, Box::new(NoApply))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                wal,
                flushed: watch::Sender::new(0),
                state: Mutex::new(state),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committed log id this member knows of.
    pub fn committed(&self) -> Option<LogId> {
        self.lock().committed
    }

    /// Submits `items` in order; returns the sequence number of the last.
    fn submit(&self, state: &mut State, items: Vec<Item>) -> Result<u64, StorageError> {
        let mut seq = 0;
        for item in items {
            seq = self.shared.wal.submit(item.record()?).map_err(io_err)?;
            state.visit(item);
        }
        Ok(seq)
    }

    async fn wait(&self, seq: u64) -> Result<(), StorageError> {
        self.shared.wal.wait(seq).await.map_err(io_err)
    }

    /// Counts the appends flushed so far.
    pub fn flushed(&self) -> watch::Receiver<u64> {
        self.shared.flushed.subscribe()
    }

    /// Syncs and stops the writer.
    pub fn close(&self) {
        self.shared.wal.close();
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    /// What one append RPC carries: entries from `start` until they pass
    /// [`RPC_BYTES`] (at least one). openraft gives an append RPC one
    /// heartbeat interval, so a member that lags behind large entries
    /// (transactions, import batches) gets them a few at a time.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let state = self.lock();
        let mut bytes = 0;
        let mut out = Vec::new();
        for (_, entry) in state.entries.range(start..end) {
            if !out.is_empty() && bytes >= RPC_BYTES {
                break;
            }
            bytes += match &entry.payload {
                EntryPayload::Normal(command) => command.weight(),
                _ => 0,
            } + 64;
            out.push(entry.clone());
        }
        Ok(out)
    }
}

/// About how many bytes of entries one append RPC carries.
const RPC_BYTES: usize = 256 << 10;

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let state = self.lock();
        let last_log_id = state
            .entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(state.last_purged);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        let seq = {
            let mut state = self.lock();
            self.submit(&mut state, vec![Item::Vote(*vote)])?
        };
        self.wait(seq).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.lock().vote)
    }

    /// Logged without waiting: it reaches the disk with the next batch, in
    /// order, so a restarted member re-applies at least what it had
    /// applied before and never answers from an older state (openraft
    /// issue 1511). Deferring it to ride with later records saved little
    /// once writes are batched, and let a member killed just after applying
    /// come back with an older state.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut state = self.lock();
        self.submit(&mut state, vec![Item::Committed(committed)])?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let items: Vec<Item> = entries.into_iter().map(Item::Entry).collect();
        let n = items.len();
        let seq = {
            let mut state = self.lock();
            self.submit(&mut state, items)?
        };
        let this = self.clone();
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let flushed = this.shared.wal.wait(seq).await;
            tracing::debug!(
                target: "dododb::raft::timing",
                entries = n,
                flush_us = started.elapsed().as_micros() as u64,
                "log append flushed"
            );
            callback.log_io_completed(flushed.map_err(std::io::Error::other));
            this.shared.flushed.send_modify(|n| *n += 1);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let seq = {
            let mut state = self.lock();
            self.submit(&mut state, vec![Item::Truncate(log_id.index)])?
        };
        self.wait(seq).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge, then the vote and committed index again: segments
        // before the sealed one may be deleted below, and these records
        // (in the current segment) must outlive them.
        let (seq, sealed) = {
            let mut state = self.lock();
            let mut items = vec![Item::Purge(log_id)];
            items.extend(state.vote.map(Item::Vote));
            items.push(Item::Committed(state.committed));
            (self.submit(&mut state, items)?, state.sealed)
        };
        self.wait(seq).await?;
        let this = self.clone();
        let last_index = self.lock().last_index();
        tokio::task::spawn_blocking(move || this.drop_segments(sealed, log_id.index, last_index))
            .await
            .map_err(io_err)?
    }
}

impl LogStore {
    /// Deletes the segments before `sealed` when the purge reached past
    /// what they hold, then starts a new segment so that the current one
    /// can go at a later purge.
    fn drop_segments(
        &self,
        sealed: Option<(u64, u64)>,
        purged: u64,
        last_index: u64,
    ) -> Result<(), StorageError> {
        let dir = &self.shared.dir;
        if let Some((below, upto)) = sealed
            && upto <= purged
        {
            for n in segment::list(dir).map_err(io_err)? {
                if n < below {
                    std::fs::remove_file(segment::path(dir, n)).map_err(io_err)?;
                }
            }
            segment::sync_dir(dir).map_err(io_err)?;
        }
        let next = self.shared.wal.rotate().map_err(io_err)?;
        self.lock().sealed = Some((next, last_index));
        Ok(())
    }
}
