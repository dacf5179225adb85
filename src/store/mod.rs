//! The in-memory engine: a sharded map from key to raw JSON bytes, the
//! global revision counter, TTLs, conditional writes and ordered listing.
//!
//! Invariant: nothing in here touches a file, a socket or an executor. The
//! store never logs anything itself; every change passes through a
//! [`Journal`] chosen by the caller, which either lets the store apply it at
//! once (no persistence) or takes it and applies it later, after the log has
//! accepted it (see [`Store::apply`]). That keeps one code path for every
//! change, and one place ([`Store::apply`]) where events are born.

mod change;
mod index;
mod list;
mod ttl;
mod value_copy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use compact_str::CompactString;
use dashmap::DashMap;

pub use change::{Change, ChangeEvent, ChangeKind};
use index::KeyIndex;
pub use list::ListPage;
use ttl::TtlIndex;
pub use value_copy::copy_value;

/// A fast, DoS-resistant hasher (randomly seeded per process).
type KeyHasher = foldhash::fast::RandomState;

/// Many small shards keep each shard's lock short during snapshots and
/// listing, which walk one shard at a time.
const SHARD_AMOUNT: usize = 256;

/// The committed state of one key: what readers see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The JSON document exactly as it was written.
    pub value: Bytes,
    /// The revision of the key's last change.
    pub version: u64,
    /// Unix milliseconds at which the key expires; 0 for never.
    pub expires_at_ms: u64,
}

impl Entry {
    /// Whether the entry is still visible at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.is_live_by(|| now_ms)
    }

    /// [`Entry::is_live`], reading the clock only for an entry that has an
    /// expiry: most have none, and a clock read is a noticeable part of a
    /// lookup.
    fn is_live_by(&self, now_ms: impl FnOnce() -> u64) -> bool {
        self.expires_at_ms == 0 || self.expires_at_ms > now_ms()
    }
}

/// The newest logged state of a key whose change has not been applied yet.
/// Conditional writes are checked against it, so that two writers racing on
/// one version cannot both pass while the first is still on its way to disk.
#[derive(Debug)]
struct Head {
    exists: bool,
    version: u64,
    expires_at_ms: u64,
}

/// One map slot. Readers see only `committed`; `pending` is set while a
/// logged change of this key waits to be applied.
#[derive(Debug, Default)]
struct Slot {
    committed: Option<Entry>,
    pending: Option<Box<Head>>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.committed.is_none() && self.pending.is_none()
    }

    /// The state the next change must be checked against, as
    /// `(version, expires_at_ms)` of an existing key, or `None` when absent.
    fn head(&self, now_ms: u64) -> Option<(u64, u64)> {
        match &self.pending {
            Some(h) if h.exists => Some((h.version, h.expires_at_ms)),
            Some(_) => None,
            None => self
                .committed
                .as_ref()
                .filter(|e| e.is_live(now_ms))
                .map(|e| (e.version, e.expires_at_ms)),
        }
    }
}

/// What a write asks of the key's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The key must exist at exactly this version (`If-Match`).
    IfVersion(u64),
    /// The key must exist at one of these versions (an `If-Match` list);
    /// an empty list never holds.
    IfVersionIn(Box<[u64]>),
    /// The key must not exist (`If-None-Match: *`).
    IfAbsent,
    /// The key must exist, at any version (`If-Match: *`).
    IfExists,
}

/// A change a caller asks for.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Store `value`; `expires_at_ms` 0 means no expiry.
    Put {
        /// The validated JSON document.
        value: Bytes,
        /// Unix milliseconds of expiry, 0 for never.
        expires_at_ms: u64,
    },
    /// Remove the key.
    Delete,
    /// Remove the key because its TTL ran out (only if it really has).
    Expire,
}

/// Why the store refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The key does not exist (or has expired).
    #[error("key not found")]
    NotFound,
    /// The precondition did not hold; `current` is the key's version, if any.
    #[error("precondition failed")]
    PreconditionFailed {
        /// The key's current version, `None` when absent.
        current: Option<u64>,
    },
    /// The journal would not take the change (for example, a poisoned log).
    #[error("journal refused the change: {0}")]
    Unavailable(String),
}

/// What a journal does with a change handed to it under the key's lock.
pub enum Submitted<T> {
    /// No log: the store applies the change at once.
    ApplyNow(Change),
    /// The journal keeps the change and will call [`Store::apply`] once the
    /// log has accepted it; the ticket lets the writer wait for that.
    Deferred(T),
}

/// Where changes go before they are applied. Called with the key's shard
/// lock held, so for one key, submission order is version order.
pub trait Journal {
    /// What a writer waits on for a deferred change.
    type Ticket;

    /// Takes a change or hands it back for immediate application.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the change cannot be logged; the
    /// store then changes nothing.
    fn submit(&self, change: Change) -> Result<Submitted<Self::Ticket>, StoreError>;
}

/// A journal that applies every change at once (no persistence).
pub struct NoJournal;

impl Journal for NoJournal {
    type Ticket = ();

    fn submit(&self, change: Change) -> Result<Submitted<()>, StoreError> {
        Ok(Submitted::ApplyNow(change))
    }
}

/// The result of an accepted change.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The revision the change took.
    pub version: u64,
    /// Whether the key did not exist before (always false for deletes).
    pub created: bool,
    /// Present when the change was deferred: wait on it before acknowledging.
    pub ticket: Option<T>,
}

/// The in-memory map and its counters.
pub struct Store {
    /// Guarded per shard by DashMap's own RwLocks; those are held only for
    /// map operations and never across I/O or an await.
    ///
    /// A bucket is 32 bytes: the key inline (up to 24 bytes, so a lookup
    /// compares it without another cache miss) and the slot boxed. The
    /// table's size is a power of two, so at some key counts it is half
    /// empty: small buckets keep that cheap (at 1M keys a bucket inline with
    /// its 56-byte slot cost 81 bytes per bucket, 2.1 buckets per key).
    map: DashMap<CompactString, Box<Slot>, KeyHasher>,
    /// The last revision handed out. Taken under the key's shard lock, so
    /// one key's versions follow its apply order.
    revision: AtomicU64,
    /// Keys with a committed value (expired but unreaped ones included).
    n_committed: AtomicUsize,
    /// Committed keys that carry an expiry, ordered by expiry time.
    ttl: TtlIndex,
    /// Committed keys in byte order, for listing and prefixed counts;
    /// changed only under the key's shard write lock.
    index: KeyIndex,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        Store {
            map: DashMap::with_hasher_and_shard_amount(KeyHasher::default(), SHARD_AMOUNT),
            revision: AtomicU64::new(0),
            n_committed: AtomicUsize::new(0),
            ttl: TtlIndex::default(),
            index: KeyIndex::default(),
        }
    }

    /// The part of the ordered index that holds `key`: a function of the
    /// key's map shard.
    fn index_part(&self, key: &str) -> usize {
        self.map.determine_map(key) % index::PARTS
    }

    /// The last revision handed out.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Raises the revision counter to at least `revision` (used by recovery
    /// so versions keep growing across restarts).
    pub fn advance_revision(&self, revision: u64) {
        self.revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// The committed, unexpired entry of `key`. `now_ms` (Unix ms) is
    /// called only for an entry that has an expiry.
    pub fn get(&self, key: &str, now_ms: impl FnOnce() -> u64) -> Option<Entry> {
        let slot = self.map.get(key)?;
        slot.committed
            .as_ref()
            .filter(|e| e.is_live_by(now_ms))
            .cloned()
    }

    /// Whether `key` has a committed, unexpired value; `now_ms` as for
    /// [`Store::get`].
    pub fn contains(&self, key: &str, now_ms: impl FnOnce() -> u64) -> bool {
        self.map.get(key).is_some_and(|slot| {
            slot.committed
                .as_ref()
                .is_some_and(|e| e.is_live_by(now_ms))
        })
    }

    /// Number of visible keys, optionally only those under `prefix`.
    pub fn count(&self, prefix: Option<&str>, now_ms: u64) -> usize {
        match prefix {
            None | Some("") => {
                let expired = self.ttl.count_due_under(now_ms, "");
                self.n_committed
                    .load(Ordering::Acquire)
                    .saturating_sub(expired)
            }
            Some(prefix) => {
                // The index holds expired but unreaped keys too; the TTL
                // index says which of them are due. The two are read one
                // after the other, so a key reaped in between can be off
                // by one, as any count taken during writes can be.
                let committed = self.index.count(prefix);
                committed.saturating_sub(self.ttl.count_due_under(now_ms, prefix))
            }
        }
    }

    /// Keys whose expiry is due at `now_ms`, at most `max` of them.
    pub fn due_expirations(&self, now_ms: u64, max: usize) -> Vec<Box<str>> {
        self.ttl.due(now_ms, max)
    }

    /// Asks for a change of `key`, checked against `pre` and the key's
    /// newest logged state, and hands it to `journal` under the key's lock.
    /// Changes applied at once are reported to `emit` before the lock is
    /// released, so events of one key are emitted in version order.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] for a delete or expiry of an absent key,
    /// [`StoreError::PreconditionFailed`] when `pre` does not hold, and the
    /// journal's error. In every error case nothing changed.
    pub fn mutate<J: Journal>(
        &self,
        key: &str,
        mutation: Mutation,
        pre: Precondition,
        now_ms: u64,
        journal: &J,
        emit: &mut dyn FnMut(ChangeEvent),
    ) -> Result<Outcome<J::Ticket>, StoreError> {
        let mut slot = match mutation {
            // Most PUTs overwrite: look the key up before allocating it.
            Mutation::Put { .. } => match self.map.get_mut(key) {
                Some(slot) => slot,
                None => self.map.entry(CompactString::from(key)).or_default(),
            },
            Mutation::Delete | Mutation::Expire => {
                self.map.get_mut(key).ok_or(StoreError::NotFound)?
            }
        };
        let result = self.mutate_slot(key, &mut slot, mutation, pre, now_ms, journal, emit);
        let now_empty = slot.is_empty();
        drop(slot);
        if now_empty {
            // A refused first write or an applied delete leaves an empty slot.
            self.map.remove_if(key, |_, slot| slot.is_empty());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn mutate_slot<J: Journal>(
        &self,
        key: &str,
        slot: &mut Slot,
        mutation: Mutation,
        pre: Precondition,
        now_ms: u64,
        journal: &J,
        emit: &mut dyn FnMut(ChangeEvent),
    ) -> Result<Outcome<J::Ticket>, StoreError> {
        let head = slot.head(now_ms);
        let (kind, value, expires_at_ms) = match mutation {
            Mutation::Put {
                value,
                expires_at_ms,
            } => (ChangeKind::Update, Some(value), expires_at_ms),
            Mutation::Delete => {
                if head.is_none() {
                    return Err(StoreError::NotFound);
                }
                (ChangeKind::Delete, None, 0)
            }
            Mutation::Expire => {
                // The TTL index may lag behind a newer write: expire only
                // what is really due in the newest logged state.
                let due = match &slot.pending {
                    Some(h) => h.exists && h.expires_at_ms != 0 && h.expires_at_ms <= now_ms,
                    None => slot
                        .committed
                        .as_ref()
                        .is_some_and(|e| e.expires_at_ms != 0 && e.expires_at_ms <= now_ms),
                };
                if !due {
                    return Err(StoreError::NotFound);
                }
                (ChangeKind::Expire, None, 0)
            }
        };
        let current = head.map(|(version, _)| version);
        let holds = match pre {
            Precondition::None => true,
            Precondition::IfVersion(v) => current == Some(v),
            Precondition::IfVersionIn(versions) => current.is_some_and(|v| versions.contains(&v)),
            Precondition::IfAbsent => current.is_none(),
            Precondition::IfExists => current.is_some(),
        };
        if !holds {
            return Err(StoreError::PreconditionFailed { current });
        }

        let version = self.revision.fetch_add(1, Ordering::AcqRel) + 1;
        let change = Change {
            key: Box::from(key),
            kind,
            value,
            version,
            expires_at_ms,
            timestamp_ms: now_ms,
        };
        let ticket = match journal.submit(change)? {
            Submitted::ApplyNow(change) => {
                self.apply_to_slot(key, slot, change, Some(emit));
                None
            }
            Submitted::Deferred(ticket) => {
                slot.pending = Some(Box::new(Head {
                    exists: kind == ChangeKind::Update,
                    version,
                    expires_at_ms,
                }));
                Some(ticket)
            }
        };
        Ok(Outcome {
            version,
            created: kind == ChangeKind::Update && current.is_none(),
            ticket,
        })
    }

    /// Applies a change that the log has accepted, reporting it to `emit`.
    /// A change older than the key's committed version is ignored, which
    /// makes replaying a WAL over a fuzzy snapshot safe.
    pub fn apply(&self, change: Change, emit: &mut dyn FnMut(ChangeEvent)) {
        self.apply_inner(change, Some(emit));
    }

    /// Applies a recovered change (snapshot entry or WAL record) without
    /// producing an event, and so without copying the value.
    pub fn replay(&self, change: Change) {
        self.apply_inner(change, None);
    }

    fn apply_inner(&self, change: Change, emit: Option<&mut dyn FnMut(ChangeEvent)>) {
        self.advance_revision(change.version);
        if let Some(mut slot) = self.map.get_mut(&*change.key) {
            let (key, slot_ref) = slot.pair_mut();
            self.apply_to_slot(key, slot_ref, change, emit);
            if slot.is_empty() {
                let key = slot.key().clone();
                drop(slot);
                self.map.remove_if(key.as_str(), |_, slot| slot.is_empty());
            }
        } else if change.kind == ChangeKind::Update {
            let mut slot = self
                .map
                .entry(CompactString::from(&*change.key))
                .or_default();
            let (key, slot_ref) = slot.pair_mut();
            self.apply_to_slot(key, slot_ref, change, emit);
        }
    }

    /// Forgets the pending state of a change the log failed to accept.
    pub fn abort(&self, change: &Change) {
        let Some(mut slot) = self.map.get_mut(&*change.key) else {
            return;
        };
        if slot
            .pending
            .as_ref()
            .is_some_and(|h| h.version == change.version)
        {
            slot.pending = None;
        }
        let now_empty = slot.is_empty();
        drop(slot);
        if now_empty {
            self.map.remove_if(&*change.key, |_, slot| slot.is_empty());
        }
    }

    /// Applies `change` to the slot of `key` (`change.key` may have been
    /// moved out already). Builds an event only when there is an `emit`.
    fn apply_to_slot(
        &self,
        key: &str,
        slot: &mut Slot,
        change: Change,
        emit: Option<&mut dyn FnMut(ChangeEvent)>,
    ) {
        if slot
            .pending
            .as_ref()
            .is_some_and(|h| h.version == change.version)
        {
            slot.pending = None;
        }
        let current = slot.committed.as_ref().map_or(0, |e| e.version);
        if change.version <= current {
            return;
        }
        let Change {
            key: change_key,
            kind,
            value,
            version,
            expires_at_ms,
            timestamp_ms,
        } = change;
        let (stored, new_value) = match (&emit, value) {
            (Some(_), Some(v)) => (Some(v.clone()), Some(v)),
            (None, v) => (v, None),
            (Some(_), None) => (None, None),
        };
        let has_value = stored.is_some();
        let new_entry = stored.map(|value| Entry {
            value,
            version,
            expires_at_ms,
        });
        let old = std::mem::replace(&mut slot.committed, new_entry);
        if let Some(old) = &old
            && old.expires_at_ms != 0
        {
            self.ttl.remove(old.expires_at_ms, key);
        }
        if expires_at_ms != 0 && has_value {
            self.ttl.insert(expires_at_ms, key);
        }
        match (old.is_some(), has_value) {
            (false, true) => {
                self.index.insert(self.index_part(key), key);
                self.n_committed.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.index.remove(self.index_part(key), key);
                self.n_committed.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        let Some(emit) = emit else { return };
        // A value that had already expired is gone for subscribers too,
        // except in the expire event itself, which reports what expired.
        let old_value = old
            .filter(|e| kind == ChangeKind::Expire || e.is_live(timestamp_ms))
            .map(|e| e.value);
        emit(ChangeEvent {
            key: if change_key.is_empty() {
                Box::from(key)
            } else {
                change_key
            },
            kind,
            old_value,
            new_value,
            version,
            timestamp_ms,
        });
    }

    /// Visits every committed, unexpired entry, one shard at a time; only
    /// that shard's read lock is held while `visit` runs.
    pub fn for_each(&self, now_ms: u64, mut visit: impl FnMut(&str, &Entry)) {
        for slot in self.map.iter() {
            if let Some(entry) = slot.committed.as_ref().filter(|e| e.is_live(now_ms)) {
                visit(slot.key().as_str(), entry);
            }
        }
    }
}

#[cfg(test)]
mod tests;
