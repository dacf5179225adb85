//! Transactions in the store: compares, then one branch of operations,
//! with the shards of every key involved held at once (`multi.rs`).
//!
//! A transaction with writes locks its shards for writing, checks its
//! compares against each key's newest logged state (as `If-Match` does),
//! takes one revision per write, and hands all its changes to the journal
//! as one record before it lets go: no other writer can slip between its
//! compares and its writes, and the record is applied with the same shards
//! held again (see [`Store::apply_many`]), so readers see all of it or none.
//! A transaction without writes in either branch is a batch read: it takes
//! read locks and sees the committed state of its keys at one instant.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::multi::WriteLocked;
use super::packed::Packed;
use super::value_copy::copy_value;
use super::{
    Applied, Change, ChangeKind, Entry, Head, Indexing, Journal, KeyHasher, Place, Store,
    StoreError, Submitted,
};
use crate::json_eq::json_eq;

/// What a compare asks of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key is at this version; 0 means it is absent (as in etcd).
    Version(u64),
    /// The key exists (`true`) or not (`false`).
    Exists(bool),
    /// The key holds a document equal to this one as JSON.
    Value(Bytes),
}

/// One compare of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The key compared.
    pub key: Box<str>,
    /// What must hold.
    pub compare: Compare,
}

/// One operation of a transaction's branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Store a validated document.
    Put {
        /// The key written.
        key: Box<str>,
        /// The document, byte for byte.
        value: Bytes,
        /// Unix milliseconds of expiry, 0 for never.
        expires_at_ms: u64,
    },
    /// Remove a key (nothing happens if it is absent).
    Delete {
        /// The key removed.
        key: Box<str>,
    },
    /// Read a key.
    Get {
        /// The key read.
        key: Box<str>,
    },
}

impl TxnOp {
    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } | TxnOp::Get { key } => key,
        }
    }

    /// Whether it changes the key.
    pub fn is_write(&self) -> bool {
        !matches!(self, TxnOp::Get { .. })
    }
}

/// The result of one operation, in the order of the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A put: the key's new version and whether it was new.
    Put {
        /// The revision the put took.
        version: u64,
        /// Whether the key did not exist before.
        created: bool,
    },
    /// A delete: the revision it took, `None` when the key was absent.
    Delete {
        /// The revision of the delete, if anything was deleted.
        version: Option<u64>,
    },
    /// A get: the entry, if the key exists.
    Get(Option<Entry>),
}

/// What a transaction did.
#[derive(Debug)]
pub struct TxnOutcome<T> {
    /// Whether every compare held (and `success` ran).
    pub succeeded: bool,
    /// The last revision the transaction took, or the store's revision
    /// when it wrote nothing.
    pub revision: u64,
    /// One result per operation of the branch that ran.
    pub results: Vec<OpResult>,
    /// Wait on it before answering: the transaction's record, or (for one
    /// that wrote nothing but saw a logged, unapplied change) everything
    /// logged so far.
    pub ticket: Option<T>,
}

/// A key's state as a transaction sees it.
#[derive(Debug, Clone)]
struct View {
    version: u64,
    expires_at_ms: u64,
    /// The value; empty when the caller did not need it.
    value: Bytes,
}

impl View {
    fn entry(self) -> Entry {
        Entry {
            value: self.value,
            version: self.version,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// A committed entry's state, if it is live at `now_ms`; its value is
    /// copied only when `need_value`.
    fn committed(entry: Option<&Packed>, now_ms: u64, need_value: bool) -> Option<View> {
        entry.filter(|e| e.is_live_by(|| now_ms)).map(|e| View {
            version: e.version(),
            expires_at_ms: e.expires_at_ms(),
            value: if need_value {
                // One allocation, shared by the change and its event.
                copy_value(e.value())
            } else {
                Bytes::new()
            },
        })
    }
}

fn holds(compare: &Compare, view: Option<&View>) -> bool {
    match compare {
        Compare::Version(0) => view.is_none(),
        Compare::Version(v) => view.is_some_and(|view| view.version == *v),
        Compare::Exists(exists) => view.is_some() == *exists,
        Compare::Value(doc) => view.is_some_and(|view| json_eq(&view.value, doc)),
    }
}

impl Store {
    /// Runs a transaction: if every condition holds, `success`, else
    /// `failure`. The caller has checked the operations (no key written
    /// twice in a branch, valid keys and values).
    ///
    /// # Errors
    ///
    /// The journal's error; nothing changed then.
    pub fn txn<J: Journal>(
        &self,
        conditions: &[Condition],
        success: Vec<TxnOp>,
        failure: Vec<TxnOp>,
        now_ms: u64,
        journal: &J,
        emit: &mut dyn FnMut(&Applied<'_>),
    ) -> Result<TxnOutcome<J::Ticket>, StoreError> {
        let keys = || {
            conditions
                .iter()
                .map(|c| &*c.key)
                .chain(success.iter().chain(&failure).map(TxnOp::key))
        };
        if !success.iter().chain(&failure).any(TxnOp::is_write) {
            let locked = self.lock_read(keys());
            let view =
                |key: &str, need_value| View::committed(locked.entry(key), now_ms, need_value);
            let succeeded = conditions.iter().all(|c| {
                let need_value = matches!(c.compare, Compare::Value(_));
                holds(&c.compare, view(&c.key, need_value).as_ref())
            });
            let branch = if succeeded { &success } else { &failure };
            let results = branch
                .iter()
                .map(|op| OpResult::Get(view(op.key(), true).map(View::entry)))
                .collect();
            return Ok(TxnOutcome {
                succeeded,
                revision: self.revision(),
                results,
                ticket: None,
            });
        }

        // Each key hashed once: conditions, then success, then failure.
        let places: Vec<Place> = keys().map(|key| self.place(key)).collect();
        let mut locked = self.lock_write_places(&places);
        let mut saw_pending = false;
        // The state after the branch's earlier writes, for later gets.
        let mut written: HashMap<&str, Option<View>, KeyHasher> = HashMap::with_capacity_and_hasher(
            success.len().max(failure.len()),
            KeyHasher::default(),
        );
        let mut view = |locked: &mut WriteLocked<'_>,
                        written: &HashMap<&str, Option<View>, KeyHasher>,
                        key: &str,
                        place: Place,
                        need_value: bool| {
            if let Some(state) = written.get(key) {
                return state.clone();
            }
            match self.head_of(place, key) {
                Some(head) => {
                    saw_pending = true;
                    let live =
                        head.exists && (head.expires_at_ms == 0 || head.expires_at_ms > now_ms);
                    live.then(|| View {
                        version: head.version,
                        expires_at_ms: head.expires_at_ms,
                        value: head.value.unwrap_or_default(),
                    })
                }
                None => View::committed(locked.entry_at(place, key), now_ms, need_value),
            }
        };
        let (condition_places, branch_places) = places.split_at(conditions.len());
        let succeeded = conditions.iter().zip(condition_places).all(|(c, &place)| {
            let need_value = matches!(c.compare, Compare::Value(_));
            holds(
                &c.compare,
                view(&mut locked, &written, &c.key, place, need_value).as_ref(),
            )
        });
        let (success_places, failure_places) = branch_places.split_at(success.len());
        let (branch, branch_places) = if succeeded {
            (success, success_places)
        } else {
            (failure, failure_places)
        };
        let mut results = Vec::with_capacity(branch.len());
        // Sized for a branch of writes at once: an import's batch has
        // thousands, and growing these step by step copied them each time.
        let n_writes = branch.iter().filter(|op| op.is_write()).count();
        let mut changes = Vec::with_capacity(n_writes);
        // The place of each change's key.
        let mut change_places = Vec::with_capacity(n_writes);
        for (op, &place) in branch.iter().zip(branch_places) {
            // Writes need the value too: it is logged as the old value.
            let current = view(&mut locked, &written, op.key(), place, true);
            match op {
                TxnOp::Get { .. } => results.push(OpResult::Get(current.map(View::entry))),
                TxnOp::Put {
                    key,
                    value,
                    expires_at_ms,
                } => {
                    // Counted like a single change (see `Store::mutate`).
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    let version = self.revision.fetch_add(1, Ordering::AcqRel) + 1;
                    results.push(OpResult::Put {
                        version,
                        created: current.is_none(),
                    });
                    written.insert(
                        &**key,
                        Some(View {
                            version,
                            expires_at_ms: *expires_at_ms,
                            value: value.clone(),
                        }),
                    );
                    let old_value = current.as_ref().map(|v| v.value.clone());
                    changes.push(Change {
                        key: key.clone(),
                        kind: ChangeKind::Update,
                        value: Some(value.clone()),
                        version,
                        expires_at_ms: *expires_at_ms,
                        timestamp_ms: now_ms,
                        old_value,
                    });
                    change_places.push(place);
                }
                TxnOp::Delete { key } => {
                    if current.is_none() {
                        results.push(OpResult::Delete { version: None });
                        continue;
                    }
                    // Counted like a single change (see `Store::mutate`).
                    self.in_flight.fetch_add(1, Ordering::AcqRel);
                    let version = self.revision.fetch_add(1, Ordering::AcqRel) + 1;
                    results.push(OpResult::Delete {
                        version: Some(version),
                    });
                    written.insert(&**key, None);
                    let old_value = current.as_ref().map(|v| v.value.clone());
                    changes.push(Change {
                        key: key.clone(),
                        kind: ChangeKind::Delete,
                        value: None,
                        version,
                        expires_at_ms: 0,
                        timestamp_ms: now_ms,
                        old_value,
                    });
                    change_places.push(place);
                }
            }
        }
        drop(written);
        let Some(last) = changes.last().map(|c| c.version) else {
            return Ok(TxnOutcome {
                succeeded,
                revision: self.revision(),
                results,
                ticket: if saw_pending { journal.barrier() } else { None },
            });
        };
        // Each key's newest logged state, grouped by shard (in version
        // order within one: a key written twice keeps its later state last).
        let mut heads: Vec<(usize, Box<str>, Head)> = changes
            .iter()
            .zip(&change_places)
            .map(|(c, place)| {
                let head = Head {
                    exists: c.kind == ChangeKind::Update,
                    version: c.version,
                    expires_at_ms: c.expires_at_ms,
                    value: c.value.clone(),
                };
                (place.shard, c.key.clone(), head)
            })
            .collect();
        heads.sort_unstable_by_key(|(shard, _, head)| (*shard, head.version));
        let n_changes = changes.len();
        let submitted = journal.submit_txn(changes).inspect_err(|_| {
            for _ in 0..n_changes {
                self.settled();
            }
        })?;
        let ticket = match submitted {
            Submitted::ApplyNow(changes) => {
                self.apply_all(&mut locked, changes, &change_places, emit);
                None
            }
            Submitted::Deferred(ticket) => {
                let mut heads = heads.into_iter().peekable();
                while let Some(&(shard, ..)) = heads.peek() {
                    let of_shard = std::iter::from_fn(|| heads.next_if(|h| h.0 == shard));
                    self.sides[shard].set_pending_many(of_shard.map(|(_, key, head)| (key, head)));
                }
                Some(ticket)
            }
        };
        Ok(TxnOutcome {
            succeeded,
            revision: last,
            results,
            ticket,
        })
    }

    /// Applies a transaction's changes that the log has accepted, with the
    /// shards of all its keys held, so readers see all of them or none.
    pub fn apply_many(&self, changes: Vec<Change>, emit: &mut dyn FnMut(&Applied<'_>)) {
        let places: Vec<Place> = changes.iter().map(|c| self.place(&c.key)).collect();
        let mut locked = self.lock_write_places(&places);
        // Their pending states go first, each shard's in one go: nobody
        // reads them while these shards are held.
        let mut order: Vec<usize> = (0..changes.len()).collect();
        order.sort_unstable_by_key(|&i| (places[i].shard, i));
        for group in order.chunk_by(|&a, &b| places[a].shard == places[b].shard) {
            let of_shard = group
                .iter()
                .map(|&i| (&*changes[i].key, changes[i].version));
            self.sides[places[group[0]].shard].settle_many(of_shard);
        }
        self.apply_all(&mut locked, changes, &places, emit);
    }

    /// Applies changes in order with their shards held (`places` are their
    /// keys'), their new keys joining the ordered index in one pass.
    fn apply_all(
        &self,
        locked: &mut WriteLocked<'_>,
        changes: Vec<Change>,
        places: &[Place],
        emit: &mut dyn FnMut(&Applied<'_>),
    ) {
        let mut new = Vec::with_capacity(changes.len());
        for (change, &place) in changes.into_iter().zip(places) {
            let table = locked.table(place);
            let indexing = Indexing::Batch(&mut new);
            self.apply_locked(table, place, (&change).into(), Some(&mut *emit), indexing);
            self.settled();
        }
        self.index_new(&mut new);
    }

    /// Forgets the pending states of a transaction the log failed to take.
    pub fn abort_many(&self, changes: &[Change]) {
        for change in changes {
            self.abort(change);
        }
    }
}
