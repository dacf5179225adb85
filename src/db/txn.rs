//! Transactions on the database: the request is checked as a whole (limits,
//! keys, values, no key written twice in a branch) before anything runs,
//! then the store runs it under the locks of all its keys and the WAL logs
//! its writes as one record (see `store/txn.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{Db, DbError, Inner, WalJournal, now_ms};
use crate::store::{
    Applied, Compare, Condition, KeyHasher, NoJournal, OpResult, TxnOp, TxnOutcome, copy_value,
};
use crate::value;

/// One operation of a transaction, as a caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store a JSON document (kept byte for byte).
    Put {
        /// The key.
        key: String,
        /// The document.
        value: Bytes,
        /// Expire the key this long after the write.
        ttl: Option<Duration>,
    },
    /// Remove a key; nothing happens (and nothing is logged) if it is absent.
    Delete {
        /// The key.
        key: String,
    },
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
}

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions, all of which must hold.
    pub compare: Vec<Condition>,
    /// What runs when they do.
    pub success: Vec<Op>,
    /// What runs when one does not.
    pub failure: Vec<Op>,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and `success` ran).
    pub succeeded: bool,
    /// The revision after the transaction's last write, or the current
    /// revision when it wrote nothing.
    pub revision: u64,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<OpResult>,
}

impl Db {
    /// Runs `txn` atomically: its writes are one WAL record (all of them
    /// survive a crash or none does), each takes its own revision, and no
    /// reader sees some of them without the others. Returns once its writes
    /// are durable per the fsync policy. A transaction of only `get`s is a
    /// consistent batch read.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidRequest`] (naming the operation) for too many
    /// operations, a key written twice in one branch or a bad value;
    /// [`DbError::InvalidKey`], [`DbError::OpTooLarge`],
    /// [`DbError::Unavailable`]. Nothing runs in any error case.
    pub fn txn(&self, txn: Txn) -> Result<TxnResult, DbError> {
        let outcome = self.inner.begin_txn(txn)?;
        self.inner.finish_blocking(outcome.ticket)?;
        Ok(result(outcome))
    }

    /// [`Db::txn`] for async callers.
    ///
    /// # Errors
    ///
    /// As [`Db::txn`].
    pub async fn txn_async(&self, txn: Txn) -> Result<TxnResult, DbError> {
        let outcome = self.inner.begin_txn(txn)?;
        self.inner.finish(outcome.ticket).await?;
        Ok(result(outcome))
    }
}

pub(super) fn result<T>(outcome: TxnOutcome<T>) -> TxnResult {
    TxnResult {
        succeeded: outcome.succeeded,
        revision: outcome.revision,
        results: outcome.results,
    }
}

/// A transaction checked whole and turned into store operations, ready to
/// run (on a cluster member: to be logged as one entry, then run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedTxn {
    /// The conditions.
    pub compare: Vec<Condition>,
    /// What runs when they hold.
    pub success: Vec<TxnOp>,
    /// What runs when one does not.
    pub failure: Vec<TxnOp>,
}

impl Inner {
    fn begin_txn(&self, txn: Txn) -> Result<TxnOutcome<u64>, DbError> {
        let now = now_ms();
        let txn = self.check_txn(txn, now)?;
        self.run_txn(txn, now)
    }

    /// Runs a checked transaction (or an import's batch of puts) as one
    /// log record; the caller waits on its ticket.
    pub(super) fn run_txn(&self, txn: CheckedTxn, now: u64) -> Result<TxnOutcome<u64>, DbError> {
        self.check_writable()?;
        let emit = &mut |change: &Applied<'_>| self.hub.emit(change);
        let outcome = match &self.wal {
            Some(wal) => self.store.txn(
                &txn.compare,
                txn.success,
                txn.failure,
                now,
                &WalJournal(wal),
                emit,
            )?,
            None => {
                let o = self.store.txn(
                    &txn.compare,
                    txn.success,
                    txn.failure,
                    now,
                    &NoJournal,
                    emit,
                )?;
                TxnOutcome {
                    succeeded: o.succeeded,
                    revision: o.revision,
                    results: o.results,
                    ticket: None,
                }
            }
        };
        Ok(outcome)
    }

    /// Refuses a write of several keys once the database is closing, or on
    /// a cluster member (whose writes come through the Raft log).
    pub(super) fn check_writable(&self) -> Result<(), DbError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DbError::Unavailable("the database is shutting down".into()));
        }
        if self.replica {
            return Err(DbError::Unavailable(
                "this database is a cluster member: writes go through the Raft log".into(),
            ));
        }
        Ok(())
    }

    /// Checks a whole transaction (limits, keys, values, no key written
    /// twice in a branch) and computes its expiry times from `now`.
    pub(super) fn check_txn(&self, txn: Txn, now: u64) -> Result<CheckedTxn, DbError> {
        let max_ops = self.config.max_txn_ops;
        let n_ops = txn.success.len() + txn.failure.len();
        if n_ops > max_ops {
            return Err(DbError::InvalidRequest(format!(
                "the transaction has {n_ops} operations in success and failure; at most {max_ops} are allowed (--max-txn-ops)"
            )));
        }
        if txn.compare.len() > max_ops {
            return Err(DbError::InvalidRequest(format!(
                "the transaction has {} compares; at most {max_ops} are allowed (--max-txn-ops)",
                txn.compare.len()
            )));
        }
        for (i, c) in txn.compare.iter().enumerate() {
            let at = || format!("compare[{i}]");
            self.check_key(&c.key).map_err(|e| within(&at(), e))?;
            if let Compare::Value(doc) = &c.compare {
                self.check_value(doc).map_err(|e| within(&at(), e))?;
            }
        }
        Ok(CheckedTxn {
            success: self.check_branch("success", txn.success, now)?,
            failure: self.check_branch("failure", txn.failure, now)?,
            compare: txn.compare,
        })
    }

    /// Checks one branch and turns it into store operations: keys, values,
    /// expiry times, and no key written twice.
    fn check_branch(&self, name: &str, ops: Vec<Op>, now: u64) -> Result<Vec<TxnOp>, DbError> {
        let n_writes = ops
            .iter()
            .filter(|op| !matches!(op, Op::Get { .. }))
            .count();
        // Where each key was first written, by the keys in `ops`.
        let mut written: HashMap<&str, usize, KeyHasher> =
            HashMap::with_capacity_and_hasher(n_writes, KeyHasher::default());
        // The operation's name, built only for an error.
        let at = |i: usize| format!("{name}[{i}]");
        for (i, op) in ops.iter().enumerate() {
            let (key, value) = match op {
                Op::Put { key, value, .. } => (key, Some(value)),
                Op::Delete { key } => (key, None),
                Op::Get { key } => {
                    self.check_key(key).map_err(|e| within(&at(i), e))?;
                    continue;
                }
            };
            self.check_key(key).map_err(|e| within(&at(i), e))?;
            if let Some(&first) = written.get(key.as_str()) {
                return Err(DbError::InvalidRequest(format!(
                    "{}: key {key:?} is already written by {name}[{first}]; a transaction writes each key at most once",
                    at(i)
                )));
            }
            written.insert(key, i);
            if let Some(value) = value {
                self.check_value(value).map_err(|e| within(&at(i), e))?;
            }
        }
        drop(written);
        Ok(ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, ttl } => TxnOp::Put {
                    key: key.into_boxed_str(),
                    value: copy_value(&value),
                    expires_at_ms: self.expiry(ttl, now),
                },
                Op::Delete { key } => TxnOp::Delete {
                    key: key.into_boxed_str(),
                },
                Op::Get { key } => TxnOp::Get {
                    key: key.into_boxed_str(),
                },
            })
            .collect())
    }

    /// Unix ms at which a value written at `now` with `ttl` (or the
    /// retention policy) expires; 0 for never.
    pub(super) fn expiry(&self, ttl: Option<Duration>, now: u64) -> u64 {
        match ttl.or(self.config.retention) {
            Some(ttl) => now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            None => 0,
        }
    }

    /// A value's size and syntax.
    pub(super) fn check_value(&self, value: &[u8]) -> Result<(), DbError> {
        self.check_value_overlapping(value, || {})
    }

    /// [`Inner::check_value`], calling `meanwhile` midway as
    /// [`value::validate_overlapping`] does.
    pub(super) fn check_value_overlapping(
        &self,
        value: &[u8],
        meanwhile: impl FnOnce(),
    ) -> Result<(), DbError> {
        if value.len() > self.config.max_value_bytes {
            return Err(DbError::ValueTooLarge {
                size: value.len(),
                max: self.config.max_value_bytes,
            });
        }
        value::validate_overlapping(value, meanwhile)?;
        Ok(())
    }
}

/// The error `e` of the operation named `at`, saying which one it was.
fn within(at: &str, e: DbError) -> DbError {
    match e {
        DbError::InvalidKey(why) => DbError::InvalidKey(format!("{at}: {why}")),
        DbError::ValueTooLarge { .. } => DbError::OpTooLarge(format!("{at}: {e}")),
        DbError::InvalidValue(why) => DbError::InvalidRequest(format!("{at}: value: {why}")),
        other => other,
    }
}
