//! The database facade: owns the store, the WAL writer, snapshots, the
//! event hub and their background threads. The HTTP layer and library
//! users call only this.

mod background;
mod bulk_load;
mod event_log;
mod import;
mod log_source;
mod pubsub;
mod recovery;
mod replica;
mod retention;
mod txn;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::{Config, Storage};
use crate::events::EventHub;
use crate::events::feed::Feed;
use crate::events::subscriptions::Registry;
use crate::events::webhook::{DeliveryConfig, DeliveryPool, RetrySchedule};

use crate::snapshot::{self, Step};
use crate::store::{
    Applied, Change, Entry, EntryPage, Journal, ListPage, Located, LoggedPuts, Mutation, NoJournal,
    Outcome, Precondition, Store, StoreError, Submitted, copy_value,
};
use crate::value::ValueError;
use crate::wal::{BatchSink, LogReader, Record, WalWriter};
pub use bulk_load::{ImportHooks, set_import_hooks};
pub use import::{ImportMode, ImportResult, ImportSpool, Spooled};
pub(crate) use pubsub::check_callback_url;
pub use pubsub::{EventSubscription, SubscriptionStatus, Unsubscribe};
pub(crate) use recovery::lock_dir;
pub use replica::MetaLog;
pub use txn::{CheckedTxn, Op, Txn, TxnResult};

/// Key names taken by routes under `/kv/`.
pub const RESERVED_KEYS: [&str; 2] = ["count", "clear"];

/// Why the database refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The key is empty, too long or reserved.
    #[error("{0}")]
    InvalidKey(String),
    /// The value is not an acceptable JSON document.
    #[error(transparent)]
    InvalidValue(#[from] ValueError),
    /// The value is larger than `max_value_bytes`.
    #[error("value of {size} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A value inside a larger request (a transaction's operation) is
    /// larger than `max_value_bytes`; the message names the operation.
    #[error("{0}")]
    OpTooLarge(String),
    /// A parameter is out of range.
    #[error("{0}")]
    InvalidRequest(String),
    /// The key does not exist.
    #[error("key not found")]
    NotFound,
    /// `If-Match` / `If-None-Match` did not hold.
    #[error("precondition failed: the key is {}", match .current { Some(v) => format!("at version {v}"), None => "absent".into() })]
    PreconditionFailed {
        /// The key's current version, if it exists.
        current: Option<u64>,
    },
    /// The log refuses writes (disk failure) or the database is closing.
    #[error("{0}")]
    Unavailable(String),
    /// The data directory cannot be used.
    #[error("{0}")]
    Storage(String),
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => DbError::NotFound,
            StoreError::PreconditionFailed { current } => DbError::PreconditionFailed { current },
            StoreError::Unavailable(why) => DbError::Unavailable(why),
        }
    }
}

/// Options of a put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Expire the key this long after the write.
    pub ttl: Option<Duration>,
    /// A condition on the key's current state.
    pub precondition: Option<Precondition>,
}

/// The result of an accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteResult {
    /// The key's new version (the revision the write took).
    pub version: u64,
    /// Whether the key did not exist before.
    pub created: bool,
}

/// A finished snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The revision the snapshot covers.
    pub revision: u64,
    /// Entries written.
    pub keys: u64,
    /// File size.
    pub bytes: u64,
    /// Where it is.
    pub file: PathBuf,
    /// How long it took.
    pub duration: Duration,
    /// When it finished (unix ms).
    pub finished_at_ms: u64,
}

/// Counters for `/system/stats` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbStats {
    /// Visible keys.
    pub keys: usize,
    /// The last revision handed out.
    pub revision: u64,
    /// Seconds since open.
    pub uptime_secs: u64,
    /// WAL bytes written since start.
    pub wal_bytes: u64,
    /// WAL bytes since the last snapshot.
    pub wal_bytes_since_snapshot: u64,
    /// WAL records appended since start.
    pub wal_appends: u64,
    /// WAL batches written (one write each; appends ÷ batches is the
    /// group-commit batch size).
    pub wal_batches: u64,
    /// WAL fdatasync calls since start.
    pub wal_fsyncs: u64,
    /// Total fdatasync time, microseconds.
    pub wal_fsync_micros: u64,
    /// Why the WAL refuses writes, if it does.
    pub wal_poisoned: Option<String>,
    /// Snapshots written since start.
    pub snapshots: u64,
    /// Total snapshot time, microseconds.
    pub snapshot_micros: u64,
    /// The last snapshot, if any since start.
    pub last_snapshot: Option<SnapshotInfo>,
    /// Keys removed by expiry since start.
    pub expired_keys: u64,
}

/// An embedded DodoDB database. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    store: Arc<Store>,
    hub: Arc<EventHub>,
    wal: Option<WalWriter>,
    dir: Option<PathBuf>,
    /// Held for the life of the database: the data dir's exclusive lock.
    _dir_lock: Option<File>,
    /// Webhook subscriptions (durable through WAL control records).
    registry: Arc<Registry>,
    /// Delivers webhook events off the write path.
    pool: Arc<DeliveryPool>,
    /// The live feed (`/events`, `/ws`): a hub listener with its ring.
    feed: Feed,
    /// Reads the retained WAL back (feed resumes, webhook delivery).
    log_reader: Option<Arc<LogReader>>,
    /// Serializes subscribe/unsubscribe so "same target and URL" is checked
    /// and logged atomically. Held across a blocking WAL wait, never on the
    /// write path of keys.
    subscribe_lock: Mutex<()>,
    /// One snapshot at a time; held for the whole snapshot (blocking I/O on
    /// a non-async thread), never by the write path.
    snapshot_lock: Mutex<()>,
    /// Imports being applied: the snapshot the log's size would call for
    /// waits until they are done (see `background.rs`).
    imports: AtomicU64,
    last_snapshot: Mutex<Option<SnapshotInfo>>,
    snapshots: AtomicU64,
    snapshot_micros: AtomicU64,
    expired: AtomicU64,
    opened_at: Instant,
    closed: AtomicBool,
    background: background::Background,
    /// Test hook: abort the process after this snapshot step.
    crash_at_step: Option<u8>,
    /// A cluster member: writes arrive through `raft/` (the `apply_*`
    /// methods of `replica.rs`), never through `put`/`delete`, and the
    /// leader proposes expiries.
    replica: bool,
    /// Where a cluster member logs subscription changes (the Raft log).
    meta_log: std::sync::OnceLock<Arc<dyn MetaLog>>,
    /// A cluster member's log of applied changes (`event_log.rs`).
    event_log: std::sync::OnceLock<Arc<event_log::EventLog>>,
}

/// What [`Db::assemble`] builds a database from.
struct Parts {
    hub: Arc<EventHub>,
    registry: Arc<Registry>,
    store: Arc<Store>,
    wal: Option<WalWriter>,
    dir: Option<PathBuf>,
    dir_lock: Option<File>,
    replica: bool,
}

/// Applies batches the WAL accepted, on the writer thread, in log order.
struct ApplySink {
    store: Arc<Store>,
    hub: Arc<EventHub>,
    registry: Arc<Registry>,
}

impl BatchSink for ApplySink {
    fn durable(&mut self, records: Vec<Record>) {
        for record in records {
            match record {
                Record::Change(change) => self.store.apply(change, &mut |e| self.hub.emit(e)),
                Record::Txn(changes) => self.store.apply_many(changes, &mut |e| self.hub.emit(e)),
                Record::Puts(batch) => self.store.apply_batch(&batch, &mut |e| self.hub.emit(e)),
                Record::Meta(doc) => {
                    if let Err(e) = self.registry.apply_doc(&doc) {
                        tracing::error!("{e}");
                    }
                }
                // A single server never logs Raft items (a cluster member
                // keeps its log in a directory of its own, `raft/`).
                Record::Raft(_) => {}
            }
        }
    }

    fn failed(&mut self, records: Vec<Record>) {
        for record in &records {
            match record {
                Record::Change(change) => self.store.abort(change),
                Record::Txn(changes) => self.store.abort_many(changes),
                Record::Puts(batch) => self.store.abort_batch(batch),
                Record::Meta(_) | Record::Raft(_) => {}
            }
        }
    }
}

/// Logs each change through the WAL writer; the writer applies it later.
struct WalJournal<'a>(&'a WalWriter);

impl Journal for WalJournal<'_> {
    type Ticket = u64;

    fn submit(
        &self,
        mut change: Change,
        next_version: &dyn Fn() -> u64,
    ) -> Result<Submitted<u64>, StoreError> {
        self.0
            .submit_with(|| {
                change.version = next_version();
                Record::Change(change)
            })
            .map(Submitted::Deferred)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn submit_txn(&self, changes: Vec<Change>) -> Result<Submitted<u64, Vec<Change>>, StoreError> {
        self.0.stall_for(changes.iter().map(|c| &*c.key));
        self.0
            .submit(Record::Txn(changes))
            .map(Submitted::Deferred)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn submit_batch(
        &self,
        batch: Arc<LoggedPuts>,
    ) -> Result<Submitted<u64, Arc<LoggedPuts>>, StoreError> {
        self.0
            .submit(Record::Puts(batch))
            .map(Submitted::Deferred)
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn barrier(&self) -> Option<u64> {
        Some(self.0.last_seq())
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Db {
    /// Opens (or creates) the database described by `config`: locks the data
    /// directory, loads the newest valid snapshot, replays the WAL and starts
    /// the writer, expiry and snapshot threads.
    ///
    /// # Errors
    ///
    /// [`DbError::Storage`] when the data directory cannot be used or the
    /// log is damaged (the message names the file and offset);
    /// [`DbError::InvalidRequest`] for an invalid configuration.
    pub fn open(config: Config) -> Result<Db, DbError> {
        config.validate().map_err(DbError::InvalidRequest)?;
        let hub = Arc::new(EventHub::default());
        let registry = Arc::new(Registry::default());
        let (store, wal, dir, dir_lock) = match &config.storage {
            Storage::InMemory => (Arc::new(Store::new()), None, None, None),
            Storage::Dir(dir) => {
                let lock = recovery::lock_dir(dir)?;
                let recovered = recovery::recover(dir)?;
                for doc in recovery::meta_docs(&recovered.metas) {
                    registry.apply_doc(&doc).map_err(DbError::Storage)?;
                }
                let store = Arc::new(recovered.store);
                let sink = ApplySink {
                    store: Arc::clone(&store),
                    hub: Arc::clone(&hub),
                    registry: Arc::clone(&registry),
                };
                let wal = WalWriter::start(
                    dir.clone(),
                    recovered.next_segment,
                    config.fsync,
                    Box::new(sink),
                )
                .map_err(|e| DbError::Storage(e.to_string()))?;
                (store, Some(wal), Some(dir.clone()), Some(lock))
            }
        };
        Db::assemble(
            config,
            Parts {
                hub,
                registry,
                store,
                wal,
                dir,
                dir_lock,
                replica: false,
            },
        )
    }

    /// Builds the database around its recovered parts and starts its
    /// background work (the expiry loop only where writes are local).
    fn assemble(config: Config, parts: Parts) -> Result<Db, DbError> {
        let Parts {
            hub,
            registry,
            store,
            wal,
            dir,
            dir_lock,
            replica,
        } = parts;
        let crash_at_step = std::env::var("DODODB_TEST_CRASH_AT_SNAPSHOT_STEP")
            .ok()
            .and_then(|s| s.parse().ok());
        // Created before any change can happen, so it continues exactly
        // after the recovered revision.
        let feed = Feed::new(config.feed_retained_events, store.revision())
            .map_err(|e| DbError::Storage(format!("cannot start the live feed: {e}")))?;
        let counted = Arc::clone(&store);
        feed.watch_in_flight(move || counted.changes_in_flight() > 0);
        let log_reader = dir.as_ref().map(|dir| {
            let reader = LogReader::new(dir.clone(), 0);
            reader.raise_floor(retention::initial_floor(&reader, dir, store.revision()));
            Arc::new(reader)
        });
        if let Some(reader) = &log_reader {
            feed.set_backfill(Arc::new(log_source::LogBackfill(Arc::clone(reader))));
        }
        let slot = log_source::InnerSlot::default();
        let pool = Arc::new(
            DeliveryPool::start(
                DeliveryConfig {
                    timeout: config.webhook_timeout,
                    schedule: RetrySchedule::new(config.webhook_retry_schedule.clone()),
                    disable_after: config.webhook_disable_after,
                    queue_capacity: config.webhook_queue_capacity,
                    window: config.webhook_window_events,
                },
                Arc::clone(&registry),
                feed.reader(),
                Arc::new(log_source::DbControlLog(slot.clone())),
                pubsub::on_gone(slot.clone()),
            )
            .map_err(DbError::Storage)?,
        );
        // A cluster member delivers only while it leads (raft/ turns it on).
        if replica {
            pool.set_active(false);
        }
        let inner = Arc::new(Inner {
            config,
            store,
            hub,
            wal,
            dir,
            _dir_lock: dir_lock,
            registry,
            pool,
            feed,
            log_reader,
            subscribe_lock: Mutex::new(()),
            snapshot_lock: Mutex::new(()),
            imports: AtomicU64::new(0),
            last_snapshot: Mutex::new(None),
            snapshots: AtomicU64::new(0),
            snapshot_micros: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            opened_at: Instant::now(),
            closed: AtomicBool::new(false),
            background: background::Background::default(),
            crash_at_step,
            replica,
            meta_log: std::sync::OnceLock::new(),
            event_log: std::sync::OnceLock::new(),
        });
        slot.set(&inner);
        // The feed first: the pool reads what the feed has when hinted.
        inner.hub.add(inner.feed.listener());
        inner.hub.add(pubsub::webhook_listener(&inner));
        background::start(&inner)?;
        Ok(Db { inner })
    }

    /// The configuration the database runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Stores `value` (a JSON document, kept byte for byte) under `key`.
    /// Returns once the write is durable per the fsync policy.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidKey`], [`DbError::InvalidValue`],
    /// [`DbError::ValueTooLarge`], [`DbError::PreconditionFailed`],
    /// [`DbError::Unavailable`].
    pub fn put(
        &self,
        key: &str,
        value: &[u8],
        options: PutOptions,
    ) -> Result<WriteResult, DbError> {
        let outcome = self.inner.begin_put(key, value, options)?;
        self.inner.finish_blocking(outcome.ticket)?;
        Ok(outcome.result())
    }

    /// [`Db::put`] for async callers: waits for durability without blocking
    /// the executor.
    ///
    /// # Errors
    ///
    /// As [`Db::put`].
    pub async fn put_async(
        &self,
        key: &str,
        value: &[u8],
        options: PutOptions,
    ) -> Result<WriteResult, DbError> {
        let outcome = self.inner.begin_put(key, value, options)?;
        self.inner.finish(outcome.ticket).await?;
        Ok(outcome.result())
    }

    /// The committed value of `key` with its version and expiry.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidKey`].
    pub fn get(&self, key: &str) -> Result<Option<Entry>, DbError> {
        self.inner.check_key(key)?;
        Ok(self.inner.store.get(key, now_ms))
    }

    /// Whether `key` exists.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidKey`].
    pub fn exists(&self, key: &str) -> Result<bool, DbError> {
        self.inner.check_key(key)?;
        Ok(self.inner.store.contains(key, now_ms))
    }

    /// Removes `key`; returns the revision of the delete.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`], [`DbError::PreconditionFailed`],
    /// [`DbError::InvalidKey`], [`DbError::Unavailable`].
    pub fn delete(&self, key: &str, precondition: Option<Precondition>) -> Result<u64, DbError> {
        let outcome = self.inner.begin_delete(key, precondition)?;
        self.inner.finish_blocking(outcome.ticket)?;
        Ok(outcome.version)
    }

    /// [`Db::delete`] for async callers.
    ///
    /// # Errors
    ///
    /// As [`Db::delete`].
    pub async fn delete_async(
        &self,
        key: &str,
        precondition: Option<Precondition>,
    ) -> Result<u64, DbError> {
        let outcome = self.inner.begin_delete(key, precondition)?;
        self.inner.finish(outcome.ticket).await?;
        Ok(outcome.version)
    }

    /// Up to `limit` keys under `prefix` that sort after `after` (the
    /// bytes of the last key of the previous page, or any position in byte
    /// order), in ascending byte order.
    pub fn list(&self, prefix: &str, after: Option<&[u8]>, limit: usize) -> ListPage {
        self.inner.store.list(prefix, after, limit, now_ms())
    }

    /// [`Db::list`] with each key's entry, read as one consistent page:
    /// no write lands between two of its entries.
    pub fn list_entries(&self, prefix: &str, after: Option<&[u8]>, limit: usize) -> EntryPage {
        self.inner
            .store
            .list_entries(prefix, after, limit, now_ms())
    }

    /// Number of keys, or of keys under `prefix`.
    pub fn count(&self, prefix: Option<&str>) -> usize {
        self.inner.store.count(prefix, now_ms())
    }

    /// Deletes every key (or every key under `prefix`), one delete event
    /// each; returns how many were removed.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the log refuses writes.
    pub fn clear(&self, prefix: Option<&str>) -> Result<usize, DbError> {
        let (n, ticket) = self.inner.begin_clear(prefix)?;
        self.inner.finish_blocking(ticket)?;
        Ok(n)
    }

    /// [`Db::clear`] for async callers.
    ///
    /// # Errors
    ///
    /// As [`Db::clear`].
    pub async fn clear_async(&self, prefix: Option<&str>) -> Result<usize, DbError> {
        let (n, ticket) = self.inner.begin_clear(prefix)?;
        self.inner.finish(ticket).await?;
        Ok(n)
    }

    /// Writes a snapshot now and returns once it is on disk. Blocks; call
    /// it from a blocking thread in async code.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidRequest`] without a data directory,
    /// [`DbError::Unavailable`] when the log refuses writes or the file
    /// cannot be written.
    pub fn snapshot(&self) -> Result<SnapshotInfo, DbError> {
        self.inner.snapshot()
    }

    /// Streams every entry in the snapshot format to `out` (a backup).
    ///
    /// # Errors
    ///
    /// Any error of `out`.
    pub fn export(&self, out: impl Write) -> std::io::Result<snapshot::Written> {
        let metas = self.inner.meta_docs();
        snapshot::encode(&self.inner.store, &metas, 0, now_ms(), out)
    }

    /// Current counters.
    pub fn stats(&self) -> DbStats {
        self.inner.stats()
    }

    /// The event hub every applied change passes through.
    pub fn events(&self) -> &EventHub {
        &self.inner.hub
    }

    /// The live feed: ordered changes with a replay ring, for `/events`
    /// and `/ws`.
    pub fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// Stops the background threads, writes a final snapshot (with a data
    /// directory), syncs and closes the WAL. Later writes get
    /// [`DbError::Unavailable`]. Idempotent.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the final snapshot fails (the WAL is
    /// still synced, so nothing acknowledged is lost).
    pub fn close(&self) -> Result<(), DbError> {
        self.inner.close()
    }
}

impl<T> Outcome<T> {
    fn result(&self) -> WriteResult {
        WriteResult {
            version: self.version,
            created: self.created,
        }
    }
}

impl Inner {
    /// Refuses an empty, too long or reserved key. Inlined into every
    /// lookup, so the common case is a few compares: the reserved names
    /// are checked only for a key of their length, and the error is built
    /// out of line.
    #[inline]
    fn check_key(&self, key: &str) -> Result<(), DbError> {
        let reserved_len = RESERVED_KEYS.iter().any(|r| r.len() == key.len());
        if key.is_empty() || key.len() > self.config.max_key_bytes || reserved_len {
            return self.check_key_slow(key);
        }
        Ok(())
    }

    /// [`Inner::check_key`] in full, with the error.
    #[cold]
    #[inline(never)]
    fn check_key_slow(&self, key: &str) -> Result<(), DbError> {
        if key.is_empty() {
            return Err(DbError::InvalidKey("key is empty".into()));
        }
        if key.len() > self.config.max_key_bytes {
            return Err(DbError::InvalidKey(format!(
                "key of {} bytes is longer than the limit of {} bytes",
                key.len(),
                self.config.max_key_bytes
            )));
        }
        if RESERVED_KEYS.contains(&key) {
            return Err(DbError::InvalidKey(format!(
                "{key:?} is a reserved name under /kv/"
            )));
        }
        Ok(())
    }

    fn mutate(
        &self,
        key: &str,
        mutation: Mutation<'_>,
        pre: Precondition,
    ) -> Result<Outcome<u64>, DbError> {
        self.mutate_located(self.store.locate(key), mutation, pre)
    }

    /// [`Inner::mutate`] of a key whose place the store found already.
    fn mutate_located(
        &self,
        key: Located<'_>,
        mutation: Mutation<'_>,
        pre: Precondition,
    ) -> Result<Outcome<u64>, DbError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DbError::Unavailable("the database is shutting down".into()));
        }
        if self.replica {
            return Err(DbError::Unavailable(
                "this database is a cluster member: writes go through the Raft log".into(),
            ));
        }
        let now = now_ms();
        let emit = &mut |change: &Applied<'_>| self.hub.emit(change);
        let outcome = match &self.wal {
            Some(wal) => {
                let o =
                    self.store
                        .mutate_located(key, mutation, pre, now, &WalJournal(wal), emit)?;
                Outcome {
                    version: o.version,
                    created: o.created,
                    ticket: o.ticket,
                }
            }
            None => {
                let o = self
                    .store
                    .mutate_located(key, mutation, pre, now, &NoJournal, emit)?;
                Outcome {
                    version: o.version,
                    created: o.created,
                    ticket: None,
                }
            }
        };
        Ok(outcome)
    }

    fn begin_put(
        &self,
        key: &str,
        value: &[u8],
        options: PutOptions,
    ) -> Result<Outcome<u64>, DbError> {
        // The key's table slots load while the value's structure is
        // parsed, and then its entry while its tokens are scanned.
        let located = self.store.prefetch(key);
        let expires_at_ms = self.check_put(key, value, options.ttl, now_ms, || {
            self.store.prefetch_entry(&located)
        })?;
        self.mutate_located(
            located,
            Mutation::Put {
                value,
                expires_at_ms,
            },
            options.precondition.unwrap_or(Precondition::None),
        )
    }

    /// Checks a put and returns the value to store (a copy) with its
    /// expiry, computed from `now_ms` (read only for an expiring value).
    fn prepare_put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        now_ms: impl FnOnce() -> u64,
    ) -> Result<(Bytes, u64), DbError> {
        let expires_at_ms = self.check_put(key, value, ttl, now_ms, || {})?;
        // A copy of its own: a slice of a request buffer would keep the
        // whole buffer alive for as long as the value lives.
        Ok((copy_value(value), expires_at_ms))
    }

    /// Checks a put and returns its expiry, as [`Inner::prepare_put`];
    /// `meanwhile` runs midway through the value's check, as
    /// [`crate::value::validate_overlapping`] says.
    fn check_put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        now_ms: impl FnOnce() -> u64,
        meanwhile: impl FnOnce(),
    ) -> Result<u64, DbError> {
        self.check_key(key)?;
        self.check_value_overlapping(value, meanwhile)?;
        // Most puts never expire: they skip the clock read here (the
        // change reads it once more when it is made).
        Ok(if ttl.or(self.config.retention).is_some() {
            self.expiry(ttl, now_ms())
        } else {
            0
        })
    }

    fn begin_delete(&self, key: &str, pre: Option<Precondition>) -> Result<Outcome<u64>, DbError> {
        self.check_key(key)?;
        self.mutate(key, Mutation::Delete, pre.unwrap_or(Precondition::None))
    }

    /// Deletes the visible keys under `prefix`; returns how many and the
    /// last ticket to wait for (tickets are ordered, so that covers all).
    fn begin_clear(&self, prefix: Option<&str>) -> Result<(usize, Option<u64>), DbError> {
        let prefix = prefix.unwrap_or("");
        let mut keys: Vec<Box<str>> = Vec::new();
        self.store.for_each(now_ms(), |key, _| {
            if key.starts_with(prefix) {
                keys.push(Box::from(key));
            }
        });
        let mut removed = 0;
        let mut last_ticket = None;
        for key in keys {
            match self.mutate(&key, Mutation::Delete, Precondition::None) {
                Ok(outcome) => {
                    removed += 1;
                    last_ticket = outcome.ticket.or(last_ticket);
                }
                // Deleted or expired meanwhile: nothing to clear.
                Err(DbError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((removed, last_ticket))
    }

    fn finish_blocking(&self, ticket: Option<u64>) -> Result<(), DbError> {
        match (ticket, &self.wal) {
            (Some(seq), Some(wal)) => wal
                .wait_blocking(seq)
                .map_err(|e| DbError::Unavailable(e.to_string())),
            _ => Ok(()),
        }
    }

    async fn finish(&self, ticket: Option<u64>) -> Result<(), DbError> {
        match (ticket, &self.wal) {
            (Some(seq), Some(wal)) => wal
                .wait(seq)
                .await
                .map_err(|e| DbError::Unavailable(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Expires up to a batch of due keys; returns how many.
    fn expire_due(&self) -> usize {
        let now = now_ms();
        let mut expired = 0;
        for key in self.store.due_expirations(now, 10_000) {
            if self
                .mutate(&key, Mutation::Expire, Precondition::None)
                .is_ok()
            {
                expired += 1;
            }
        }
        self.expired.fetch_add(expired as u64, Ordering::Relaxed);
        expired
    }

    fn meta_docs(&self) -> Vec<Bytes> {
        self.registry.docs()
    }

    fn snapshot(&self) -> Result<SnapshotInfo, DbError> {
        let (Some(dir), Some(wal)) = (&self.dir, &self.wal) else {
            return Err(DbError::InvalidRequest(
                "snapshots need a data directory; this database runs in memory".into(),
            ));
        };
        let _one_at_a_time = self.snapshot_lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        // After the rotation every record of older segments is applied, so
        // the walk below sees all of them; later changes are replayed from
        // the new segment on top of it (replay skips what it already has).
        let segment = wal
            .rotate()
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        let metas = self.meta_docs();
        let crash_at = self.crash_at_step;
        let at_step = move |step: Step| {
            if crash_at == Some(step as u8) {
                eprintln!("test hook: aborting after snapshot step {step:?}");
                std::process::abort();
            }
        };
        let (written, file) = snapshot::write(
            dir,
            &self.store,
            &metas,
            segment,
            self.config.snapshot_retain,
            now_ms(),
            &at_step,
        )
        .map_err(|e| DbError::Unavailable(e.to_string()))?;
        if let Some(keep_from) = snapshot::oldest_kept(dir, self.config.snapshot_retain)
            .map_err(|e| DbError::Unavailable(e.to_string()))?
        {
            self.prune_wal(keep_from)?;
        }
        let info = SnapshotInfo {
            revision: written.revision,
            keys: written.keys,
            bytes: written.bytes,
            file,
            duration: started.elapsed(),
            finished_at_ms: now_ms(),
        };
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.snapshot_micros.fetch_add(
            u64::try_from(info.duration.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        tracing::info!(
            file = %info.file.display(),
            keys = info.keys,
            bytes = info.bytes,
            revision = info.revision,
            ms = info.duration.as_millis() as u64,
            "snapshot written"
        );
        *self.last_snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.clone());
        Ok(info)
    }

    fn stats(&self) -> DbStats {
        let wal = self.wal.as_ref().map(|w| w.stats());
        let load = |f: fn(&crate::wal::WalStats) -> &AtomicU64| {
            wal.map_or(0, |s| f(s).load(Ordering::Relaxed))
        };
        DbStats {
            keys: self.store.count(None, now_ms()),
            revision: self.store.revision(),
            uptime_secs: self.opened_at.elapsed().as_secs(),
            wal_bytes: load(|s| &s.bytes),
            wal_bytes_since_snapshot: load(|s| &s.bytes_since_rotation),
            wal_appends: load(|s| &s.appends),
            wal_batches: load(|s| &s.batches),
            wal_fsyncs: load(|s| &s.fsyncs),
            wal_fsync_micros: load(|s| &s.fsync_micros),
            wal_poisoned: self.wal.as_ref().and_then(|w| w.poisoned()),
            snapshots: self.snapshots.load(Ordering::Relaxed),
            snapshot_micros: self.snapshot_micros.load(Ordering::Relaxed),
            last_snapshot: self
                .last_snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            expired_keys: self.expired.load(Ordering::Relaxed),
        }
    }

    fn close(&self) -> Result<(), DbError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.background.stop();
        self.pool.stop();
        let snapshot = match (&self.wal, &self.dir) {
            (Some(wal), Some(_)) if wal.poisoned().is_none() => self.snapshot().map(|_| ()),
            _ => Ok(()),
        };
        if let Some(wal) = &self.wal {
            wal.close();
        }
        snapshot
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Library users who never call close still get their threads
        // stopped and the WAL synced (by the writer's own Drop).
        self.background.stop();
    }
}

#[cfg(test)]
mod tests;
