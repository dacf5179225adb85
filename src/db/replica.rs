//! The database as a cluster member's state machine: opened around a store
//! that `raft/` recovered, written only through the `apply_*` methods here
//! (in Raft log order, on every member alike), and copied whole into or
//! out of a snapshot file.
//!
//! Every decision a write makes (its precondition, its revision, whether a
//! key has expired) is taken at apply time from the log entry's own
//! timestamp, never from this machine's clock, so all members reach the
//! same state. This module knows nothing of Raft itself.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{CheckedTxn, Db, DbError, Parts, Txn, TxnResult, WriteResult, event_log};
use crate::config::{Config, Storage};
use crate::events::EventHub;
use crate::events::subscriptions::Registry;
use crate::snapshot;
use crate::store::{Mutation, NoJournal, Precondition, Store};

/// Where a cluster member logs a subscription change: it returns once the
/// change is committed and applied (through [`Db::apply_meta`]).
pub trait MetaLog: Send + Sync {
    /// Logs the control document `doc`.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the change could not be committed.
    fn log_meta(&self, doc: Bytes) -> Result<(), DbError>;

    /// Proposes the control document `doc` without waiting (webhook
    /// delivery progress; one that is lost is logged again later).
    fn submit_meta(&self, doc: Bytes);
}

impl Db {
    /// Opens a cluster member's database over `store` (with the control
    /// documents `metas`), holding the data directory's lock `dir_lock`.
    /// It has no WAL of its own: the Raft log is its log.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidRequest`] for an invalid configuration,
    /// [`DbError::Storage`] when a control document is damaged.
    pub(crate) fn open_replica(
        config: Config,
        store: Store,
        metas: &[Bytes],
        dir_lock: File,
    ) -> Result<Db, DbError> {
        config.validate().map_err(DbError::InvalidRequest)?;
        let registry = Arc::new(Registry::default());
        for doc in metas {
            registry.apply_doc(doc).map_err(DbError::Storage)?;
        }
        let revision = store.revision();
        let data_dir = match &config.storage {
            Storage::Dir(dir) => Some(dir.clone()),
            Storage::InMemory => None,
        };
        let db = Db::assemble(
            config,
            Parts {
                hub: Arc::new(EventHub::default()),
                registry,
                store: Arc::new(store),
                wal: None,
                dir: None,
                dir_lock: Some(dir_lock),
                replica: true,
            },
        )?;
        if let Some(dir) = data_dir {
            // Before any change is applied (the Raft log re-applies its
            // entries after this) and before any client subscribes.
            let log =
                event_log::EventLog::open(&dir, revision, db.inner.config.event_retention_bytes)
                    .map_err(|e| DbError::Storage(format!("cannot open the change log: {e}")))?;
            db.inner.feed.set_backfill(log.backfill());
            db.inner.hub.add(log.listener());
            let _ = db.inner.event_log.set(log);
        }
        Ok(db)
    }

    /// Sets where subscription changes are logged (once).
    pub(crate) fn set_meta_log(&self, log: Arc<dyn MetaLog>) {
        let _ = self.inner.meta_log.set(log);
    }

    /// Turns webhook delivery on (this member leads) or off.
    pub(crate) fn set_delivering(&self, on: bool) {
        self.inner.pool.set_active(on);
    }

    /// Checks `key` as every write does.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidKey`].
    pub(crate) fn check_key(&self, key: &str) -> Result<(), DbError> {
        self.inner.check_key(key)
    }

    /// Checks a put before it is proposed and returns the value to log with
    /// its expiry (computed from `now_ms`).
    ///
    /// # Errors
    ///
    /// As [`Db::put`], less the write's own outcomes.
    pub(crate) fn prepare_put(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        now_ms: u64,
    ) -> Result<(Bytes, u64), DbError> {
        self.inner.prepare_put(key, value, ttl, || now_ms)
    }

    /// Checks a transaction before it is proposed, as [`Db::txn`] does,
    /// with expiry times computed from `now_ms`.
    ///
    /// # Errors
    ///
    /// As [`Db::txn`], less the transaction's own outcome.
    pub(crate) fn prepare_txn(&self, txn: Txn, now_ms: u64) -> Result<CheckedTxn, DbError> {
        self.inner.check_txn(txn, now_ms)
    }

    /// Applies a committed transaction: its compares decided and its
    /// branch run under the locks of all its keys, at `now_ms`.
    ///
    /// # Errors
    ///
    /// Whatever the store refuses (nothing changed then).
    pub(crate) fn apply_txn(&self, txn: CheckedTxn, now_ms: u64) -> Result<TxnResult, DbError> {
        let hub = &self.inner.hub;
        let outcome = self.inner.store.txn(
            &txn.compare,
            txn.success,
            txn.failure,
            now_ms,
            &NoJournal,
            &mut |e| hub.emit(e),
        )?;
        Ok(super::txn::result(outcome))
    }

    /// Applies a committed put.
    ///
    /// # Errors
    ///
    /// [`DbError::PreconditionFailed`]; nothing changed then.
    pub(crate) fn apply_put(
        &self,
        key: &str,
        value: Bytes,
        expires_at_ms: u64,
        pre: Precondition,
        now_ms: u64,
    ) -> Result<WriteResult, DbError> {
        let mutation = Mutation::Put {
            value: &value,
            expires_at_ms,
        };
        let o = self.apply(key, mutation, pre, now_ms)?;
        Ok(WriteResult {
            version: o.0,
            created: o.1,
        })
    }

    /// Applies a committed delete; returns its revision.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`], [`DbError::PreconditionFailed`].
    pub(crate) fn apply_delete(
        &self,
        key: &str,
        pre: Precondition,
        now_ms: u64,
    ) -> Result<u64, DbError> {
        Ok(self.apply(key, Mutation::Delete, pre, now_ms)?.0)
    }

    /// Applies a committed expiry (a no-op unless the key is due at
    /// `now_ms`); returns its revision.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`] when the key is absent or not due.
    pub(crate) fn apply_expire(&self, key: &str, now_ms: u64) -> Result<u64, DbError> {
        let version = self
            .apply(key, Mutation::Expire, Precondition::None, now_ms)?
            .0;
        self.inner.expired.fetch_add(1, Ordering::Relaxed);
        Ok(version)
    }

    /// Applies a committed clear of the keys under `prefix` that are live
    /// at `now_ms`; returns how many were deleted.
    pub(crate) fn apply_clear(&self, prefix: &str, now_ms: u64) -> usize {
        let mut keys: Vec<Box<str>> = Vec::new();
        self.inner.store.for_each(now_ms, |key, _| {
            if key.starts_with(prefix) {
                keys.push(Box::from(key));
            }
        });
        keys.iter()
            .filter(|key| {
                self.apply(key, Mutation::Delete, Precondition::None, now_ms)
                    .is_ok()
            })
            .count()
    }

    /// The expiry an imported entry without one gets (`--retention`),
    /// from `now_ms` on the leader.
    pub(crate) fn import_expiry(&self, expires_at_ms: u64, now_ms: u64) -> u64 {
        if expires_at_ms == 0 {
            self.inner.expiry(None, now_ms)
        } else {
            expires_at_ms
        }
    }

    /// Applies a committed batch of imported entries `(key, value JSON
    /// text, expiry)` as puts at `now_ms`, leaving out those whose expiry
    /// has passed by then. Returns how many were written, how many left
    /// out, and the revision after the last.
    pub(crate) fn apply_import_batch<'a>(
        &self,
        entries: impl Iterator<Item = (&'a str, &'a [u8], u64)>,
        now_ms: u64,
    ) -> (u64, u64, u64) {
        let (mut imported, mut expired) = (0, 0);
        for (key, value, expires_at_ms) in entries {
            if expires_at_ms != 0 && expires_at_ms <= now_ms {
                expired += 1;
                continue;
            }
            let put = Mutation::Put {
                value,
                expires_at_ms,
            };
            if self.apply(key, put, Precondition::None, now_ms).is_ok() {
                imported += 1;
            }
        }
        (imported, expired, self.revision())
    }

    /// Applies a committed subscription change.
    pub(crate) fn apply_meta(&self, doc: &[u8]) {
        if let Err(e) = self.inner.registry.apply_doc(doc) {
            tracing::error!("{e}");
        }
    }

    /// The one apply path of a member: the store's own, with no journal
    /// (the Raft log already holds the change). Returns the version and
    /// whether the key was created.
    fn apply(
        &self,
        key: &str,
        mutation: Mutation<'_>,
        pre: Precondition,
        now_ms: u64,
    ) -> Result<(u64, bool), DbError> {
        let hub = &self.inner.hub;
        let o = self
            .inner
            .store
            .mutate(key, mutation, pre, now_ms, &NoJournal, &mut |e| hub.emit(e))?;
        Ok((o.version, o.created))
    }

    /// The last revision applied.
    pub(crate) fn revision(&self) -> u64 {
        self.inner.store.revision()
    }

    /// Up to `max` keys whose expiry is due at `now_ms`.
    pub(crate) fn due_expirations(&self, now_ms: u64, max: usize) -> Vec<Box<str>> {
        self.inner.store.due_expirations(now_ms, max)
    }

    /// Writes the whole state in the snapshot format to `out`: every entry,
    /// expired ones too (their expiry is a log entry still to come), the
    /// subscriptions, and `extra` control documents.
    ///
    /// # Errors
    ///
    /// Any error of `out`.
    pub(crate) fn write_state(
        &self,
        extra: &[Bytes],
        out: impl Write,
    ) -> std::io::Result<snapshot::Written> {
        let mut metas = self.inner.meta_docs();
        metas.extend_from_slice(extra);
        snapshot::encode(&self.inner.store, &metas, 0, 0, out)
    }

    /// An empty store that [`Db::replace_state`] can swap in: load a
    /// snapshot from the leader into it first.
    pub(crate) fn empty_store(&self) -> Store {
        self.inner.store.empty_like()
    }

    /// Makes the state equal to `fresh` (a snapshot from the leader, loaded
    /// apart into a store from [`Db::empty_store`], its ordered index
    /// built) with the control documents `metas`. The two contents swap at
    /// one instant, without events, so a reader sees the whole old state or
    /// the whole new one, never a mix; `fresh` is left holding the old
    /// content for the caller to drop. The leader's copy is never behind
    /// this one, so the revision only grows.
    ///
    /// # Errors
    ///
    /// [`DbError::Storage`] when a control document is damaged.
    pub(crate) fn replace_state(&self, fresh: &Store, metas: &[Bytes]) -> Result<(), DbError> {
        self.inner.store.swap_contents(fresh);
        if let Some(log) = self.inner.event_log.get() {
            log.reset(self.inner.store.revision());
        }
        self.inner.registry.replace(metas).map_err(DbError::Storage)
    }
}
