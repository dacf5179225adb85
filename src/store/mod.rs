//! The in-memory engine: a sharded map from key to raw JSON bytes, the
//! global revision counter, TTLs, conditional writes and ordered listing.
//!
//! Invariant: nothing in here touches a file, a socket or an executor. The
//! store never logs anything itself; every change passes through a
//! [`Journal`] chosen by the caller, which either lets the store apply it at
//! once (no persistence) or takes it and applies it later, after the log has
//! accepted it (see [`Store::apply`]). That keeps one code path for every
//! change, and one place ([`Store::apply`]) where events are born.

mod batch;
mod change;
mod index;
mod list;
mod multi;
mod packed;
mod swap;
mod ttl;
mod txn;
mod value_copy;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use dashmap::{DashMap, RwLockWriteGuard, SharedValue};
use hashbrown::raw::RawTable;

pub use batch::{BatchWritten, LoggedPuts, PutBatch, PutRef};
pub use change::{Applied, Change, ChangeEvent, ChangeKind};
use index::Ordered;
pub use list::{EntryPage, ListPage};
use packed::{KeyRef, Packed};
use ttl::TtlIndex;
pub use txn::{Compare, Condition, OpResult, TxnOp, TxnOutcome};
pub use value_copy::copy_value;

/// A fast, DoS-resistant hasher (randomly seeded per process).
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// Many small shards keep each shard's lock short during snapshots and
/// listing, which walk one shard at a time.
const SHARD_AMOUNT: usize = 256;

/// Slots hashbrown compares at once (its SSE2 group), which
/// [`Store::prefetch`] loads.
const PROBE_GROUP: usize = 16;

/// Asks the CPU to start loading the cache line at `at` (no-op off x86-64).
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and never faults,
    // whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Starts loading the part of `table` that looking up a key hashed to
/// `hash` probes first: the control bytes and the slots of its first
/// probe group. A hint only, as [`prefetch_line`].
fn prefetch_probe(table: &Table, hash: u64) {
    // hashbrown's first probe position, and its layout: the control
    // bytes start at `data_end`, slot `i` ends `i` slots before it.
    let first = (hash as usize) & (table.buckets() - 1);
    let end = table.data_end().as_ptr();
    let control = end.cast::<u8>().wrapping_add(first);
    let slots = end.wrapping_sub(first + PROBE_GROUP).cast::<u8>();
    let slot_bytes = PROBE_GROUP * std::mem::size_of::<(Packed, SharedValue<()>)>();
    for line in [
        control,
        slots,
        slots.wrapping_add(slot_bytes / 2),
        slots.wrapping_add(slot_bytes - 1),
    ] {
        prefetch_line(line);
    }
}

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
#[derive(Debug, Clone)]
struct Head {
    exists: bool,
    version: u64,
    expires_at_ms: u64,
    /// The logged value (a reference, not a copy): what a transaction's
    /// compares and reads see, and the old value of the key's next change.
    value: Option<Bytes>,
}

/// A committed entry as the store holds it, lent out under its shard's
/// read lock (for snapshots and exports, which copy nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The JSON document exactly as it was written.
    pub value: &'a [u8],
    /// The revision of the key's last change.
    pub version: u64,
    /// Unix milliseconds at which the key expires; 0 for never.
    pub expires_at_ms: u64,
}

impl Packed {
    /// The entry lent out.
    fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            value: self.value(),
            version: self.version(),
            expires_at_ms: self.expires_at_ms(),
        }
    }

    /// A copy of the entry for a reader to keep.
    fn to_entry(&self) -> Entry {
        Entry {
            value: Bytes::copy_from_slice(self.value()),
            version: self.version(),
            expires_at_ms: self.expires_at_ms(),
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

/// A change a caller asks for. A value is borrowed: the store copies it
/// into the entry, and into a change record only where a journal logs it.
#[derive(Debug, Clone)]
pub enum Mutation<'v> {
    /// Store `value`; `expires_at_ms` 0 means no expiry.
    Put {
        /// The validated JSON document.
        value: &'v [u8],
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

/// What a journal does with a change (or a transaction's changes, `C`)
/// handed to it under the key's lock.
pub enum Submitted<T, C = Change> {
    /// No log: the store applies the change at once.
    ApplyNow(C),
    /// The journal keeps the change and will call [`Store::apply`] once the
    /// log has accepted it; the ticket lets the writer wait for that.
    Deferred(T),
}

/// Where changes go before they are applied. Called with the key's shard
/// lock held, so for one key, submission order is version order.
pub trait Journal {
    /// What a writer waits on for a deferred change.
    type Ticket;

    /// Whether the journal logs changes, keeping their old values (for
    /// the events it replays) and deferring some. A journal that does
    /// not is never handed a single key's change: the store takes its
    /// revision and applies it at once from the caller's bytes, without
    /// the change record (its key and old value copied) that only a log
    /// needs. Transactions still pass through [`Journal::submit_txn`].
    const LOGS: bool = true;

    /// Takes a change or hands it back for immediate application. The
    /// journal gives the change its version by calling `next_version`
    /// exactly once, at the point that orders its log: a log then holds
    /// its changes in strictly increasing version order, which is what
    /// lets a reader resume it by revision.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the change cannot be logged; the
    /// store then changes nothing (and `next_version` was not called).
    fn submit(
        &self,
        change: Change,
        next_version: &dyn Fn() -> u64,
    ) -> Result<Submitted<Self::Ticket>, StoreError>;

    /// Takes a transaction's changes as one record (all or nothing), or
    /// hands them back for immediate application.
    ///
    /// # Errors
    ///
    /// As [`Journal::submit`].
    fn submit_txn(
        &self,
        changes: Vec<Change>,
    ) -> Result<Submitted<Self::Ticket, Vec<Change>>, StoreError>;

    /// Takes a batch of puts as one record (all or nothing), or hands it
    /// back for immediate application; by default as the transaction of
    /// its changes.
    ///
    /// # Errors
    ///
    /// As [`Journal::submit`].
    fn submit_batch(
        &self,
        batch: Arc<LoggedPuts>,
    ) -> Result<Submitted<Self::Ticket, Arc<LoggedPuts>>, StoreError> {
        Ok(match self.submit_txn(batch.changes())? {
            Submitted::ApplyNow(_) => Submitted::ApplyNow(batch),
            Submitted::Deferred(ticket) => Submitted::Deferred(ticket),
        })
    }

    /// A ticket that is ready once everything submitted so far is applied,
    /// or `None` when nothing waits (no log).
    fn barrier(&self) -> Option<Self::Ticket>;
}

/// A journal that applies every change at once (no persistence).
pub struct NoJournal;

impl Journal for NoJournal {
    type Ticket = ();

    const LOGS: bool = false;

    /// Not called by the store, which applies a change of a journal that
    /// does not log without handing it over (see [`Journal::LOGS`]); a
    /// change handed here is applied at once all the same.
    fn submit(
        &self,
        mut change: Change,
        next_version: &dyn Fn() -> u64,
    ) -> Result<Submitted<()>, StoreError> {
        change.version = next_version();
        Ok(Submitted::ApplyNow(change))
    }

    fn submit_txn(&self, changes: Vec<Change>) -> Result<Submitted<(), Vec<Change>>, StoreError> {
        Ok(Submitted::ApplyNow(changes))
    }

    fn submit_batch(
        &self,
        batch: Arc<LoggedPuts>,
    ) -> Result<Submitted<(), Arc<LoggedPuts>>, StoreError> {
        Ok(Submitted::ApplyNow(batch))
    }

    fn barrier(&self) -> Option<()> {
        None
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

/// One shard's table, as DashMap keeps it: an 8-byte bucket per key.
type Table = RawTable<(Packed, SharedValue<()>)>;

/// What each shard keeps beside its table, guarded by the shard's lock
/// (see [`Side`]).
#[derive(Default)]
struct SideState {
    /// The shard's committed keys in byte order.
    order: Ordered,
    /// Keys with a logged change not yet applied: their newest logged state.
    pending: HashMap<Box<str>, Head, KeyHasher>,
}

/// A shard's ordered index and pending changes. Changed only by a holder
/// of the shard's write lock and read only under the shard's lock; the
/// mutex (always uncontended for writers, who already exclude each other)
/// is what lets readers of the same shard share it safely.
#[derive(Default)]
struct Side {
    /// Entries in `pending`, so writers skip the mutex when there are none.
    /// Changed under the shard's write lock only.
    n_pending: AtomicUsize,
    state: Mutex<SideState>,
}

impl Side {
    fn lock(&self) -> MutexGuard<'_, SideState> {
        // A holder that panicked left the state as it was between changes.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest logged, unapplied state of `key` with its value.
    fn head(&self, key: &str) -> Option<Head> {
        if self.n_pending.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.lock().pending.get(key).cloned()
    }

    /// Records the newest logged state of `key` (under the shard's write
    /// lock).
    fn set_pending(&self, key: &str, head: Head) {
        if self.lock().pending.insert(Box::from(key), head).is_none() {
            self.n_pending.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records the newest logged states of several keys of this shard,
    /// in order (a later state of a key replaces an earlier one), taking
    /// the mutex once (under the shard's write lock).
    fn set_pending_many(&self, heads: impl Iterator<Item = (Box<str>, Head)>) {
        let mut state = self.lock();
        let mut added = 0;
        for (key, head) in heads {
            if state.pending.insert(key, head).is_none() {
                added += 1;
            }
        }
        self.n_pending.fetch_add(added, Ordering::Relaxed);
    }

    /// Forgets the pending state of `key` if it is the one of `version`.
    fn settle(&self, key: &str, version: u64) {
        self.settle_many(std::iter::once((key, version)));
    }

    /// [`Side::settle`] of several keys of this shard, taking the mutex
    /// once.
    fn settle_many<'k>(&self, changes: impl Iterator<Item = (&'k str, u64)>) {
        if self.n_pending.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut state = self.lock();
        let mut removed = 0;
        for (key, version) in changes {
            if state.pending.get(key).is_some_and(|h| h.version == version) {
                state.pending.remove(key);
                removed += 1;
            }
        }
        self.n_pending.fetch_sub(removed, Ordering::Relaxed);
    }
}

/// A key's hash and the shard that holds it, computed as DashMap does.
#[derive(Clone, Copy)]
struct Place {
    hash: u64,
    shard: usize,
}

/// A key with its place in the map, from [`Store::prefetch`]: a change of
/// it ([`Store::mutate_located`]) hashes the key no second time.
#[derive(Clone, Copy)]
pub struct Located<'k> {
    key: &'k str,
    place: Place,
}

/// A change on its way into the map, borrowed: from a logged [`Change`],
/// or straight from the caller of a change applied at once.
struct Applying<'a> {
    key: &'a str,
    kind: ChangeKind,
    /// The new value (updates only).
    value: Option<&'a [u8]>,
    /// The new value as a logged change holds it, which its event shares.
    shared: Option<&'a Bytes>,
    version: u64,
    expires_at_ms: u64,
    timestamp_ms: u64,
    /// The new entry of an update, already made from the fields above
    /// (an import batch builds its entries before it takes the locks);
    /// used if the key has none, and made under the lock otherwise.
    fresh: Option<Packed>,
}

impl<'a> From<&'a Change> for Applying<'a> {
    fn from(change: &'a Change) -> Applying<'a> {
        Applying {
            key: &change.key,
            kind: change.kind,
            value: change.value.as_deref(),
            shared: change.value.as_ref(),
            version: change.version,
            expires_at_ms: change.expires_at_ms,
            timestamp_ms: change.timestamp_ms,
            fresh: None,
        }
    }
}

/// What happens to the ordered index when a change is applied.
enum Indexing<'a> {
    /// Keep it exact (every change after start-up).
    Keep,
    /// Keep it exact, except that the keys of new entries wait in the list
    /// (with their shards) for [`Store::index_new`], which the caller runs
    /// before it lets go of the shard locks: a batch of writes adds them
    /// to each shard's index in one pass. Any other change of the index
    /// adds them first.
    Batch(&'a mut Vec<(usize, KeyRef)>),
    /// Leave it alone: recovery rebuilds it in one pass at the end.
    Defer,
}

/// The in-memory map and its counters.
pub struct Store {
    /// The committed entries, one [`Packed`] allocation each behind an
    /// 8-byte bucket. Guarded per shard by DashMap's own RwLocks, which are
    /// held only for map operations and never across I/O or an await.
    /// Writes and lookups go through the shards' tables directly (DashMap's
    /// raw API), so that an entry can move without leaving the table.
    ///
    /// hashbrown tables are powers of two, so at some key counts a table
    /// is half empty: at 1M keys there are 2.1 buckets per key, which is
    /// why the bucket is a thin pointer and not the key and a box.
    map: DashMap<Packed, (), KeyHasher>,
    /// Per shard, the ordered index and the pending changes.
    sides: Box<[Side]>,
    /// The last revision handed out. Taken under the key's shard lock, so
    /// one key's versions follow its apply order.
    revision: AtomicU64,
    /// Changes that took a revision and are neither applied nor aborted:
    /// the live feed waits for a missing revision while this is not zero.
    in_flight: AtomicU64,
    /// Keys with a committed value (expired but unreaped ones included).
    n_committed: AtomicUsize,
    /// Committed keys that carry an expiry, ordered by expiry time.
    ttl: TtlIndex,
    /// Times the whole content was swapped (see `swap.rs`).
    swaps: AtomicU64,
    /// Batches of puts logged and not yet applied (`batch.rs`).
    batches: batch::PendingBatches,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store at revision 0.
    pub fn new() -> Self {
        let map = DashMap::with_hasher_and_shard_amount(KeyHasher::default(), SHARD_AMOUNT);
        let sides = (0..map.shards().len()).map(|_| Side::default()).collect();
        Store {
            map,
            sides,
            revision: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            n_committed: AtomicUsize::new(0),
            ttl: TtlIndex::default(),
            swaps: AtomicU64::new(0),
            batches: batch::PendingBatches::default(),
        }
    }

    fn place(&self, key: &str) -> Place {
        // DashMap hashes `&key`, which hashes like the `str` itself, and
        // a `Packed` hashes like its key.
        let hash = self.map.hasher().hash_one(key);
        Place {
            hash,
            shard: self.map.determine_shard(hash as usize),
        }
    }

    /// `key` with its place, for [`Store::mutate_located`].
    pub fn locate<'k>(&self, key: &'k str) -> Located<'k> {
        Located {
            key,
            place: self.place(key),
        }
    }

    /// Starts loading the part of its shard's table that a change of
    /// `key` will probe first (the control bytes and the slots of the
    /// key's first probe group), so that those cache misses overlap
    /// whatever the caller does before the change (checking the value).
    /// A hint only: nothing is read through the addresses, and a prefetch
    /// never faults.
    /// Returns the key with its place, for [`Store::mutate_located`].
    pub fn prefetch<'k>(&self, key: &'k str) -> Located<'k> {
        let place = self.place(key);
        prefetch_probe(&self.map.shards()[place.shard].read(), place.hash);
        Located { key, place }
    }

    /// Starts loading the entries a change of `located`'s key will compare
    /// its key with (the probe's first two candidates, in practice the
    /// key's own entry), so that the cache miss on the entry overlaps what
    /// the caller does before the change. Call it a while after
    /// [`Store::prefetch`], once the probe group it loads has arrived;
    /// a hint only, like that one.
    pub fn prefetch_entry(&self, located: &Located<'_>) {
        let table = self.map.shards()[located.place.shard].read();
        // SAFETY: the iterator and the buckets it yields are used within
        // this statement, while the shard's read guard is held, so no
        // bucket can be moved or freed under them.
        for bucket in unsafe { table.iter_hash(located.place.hash) }.take(2) {
            // SAFETY: as above.
            unsafe { bucket.as_ref() }.0.prefetch();
        }
    }

    fn write_shard(&self, shard: usize) -> RwLockWriteGuard<'_, Table> {
        self.map.shards()[shard].write()
    }

    /// The last revision handed out.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// How many changes took a revision but are not yet applied (their
    /// events emitted) or aborted. Zero means every revision handed out so
    /// far has either reached listeners or never will.
    pub fn changes_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// One change that was in flight is settled (applied or aborted).
    /// Saturating: changes applied without a `mutate` (tests) never counted.
    fn settled(&self) {
        self.settled_many(1);
    }

    /// [`Store::settled`] of `n` changes at once.
    fn settled_many(&self, n: u64) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(m.saturating_sub(n))
            });
    }

    /// Raises the revision counter to at least `revision` (used by recovery
    /// so versions keep growing across restarts).
    pub fn advance_revision(&self, revision: u64) {
        // Usually already there (a change applies the revision it took):
        // a load is cheaper than the locked compare-and-swap loop.
        if self.revision.load(Ordering::Acquire) < revision {
            self.revision.fetch_max(revision, Ordering::AcqRel);
        }
    }

    /// Looks `key` up under its shard's read lock and hands its committed
    /// entry, if any, to `read`.
    fn read<T>(&self, key: &str, read: impl FnOnce(Option<&Packed>) -> T) -> T {
        let place = self.place(key);
        let table = self.map.shards()[place.shard].read();
        // The probe reads the control bytes, then the slot they point to,
        // then the entry: the slots' loads start now, so that their cache
        // misses overlap the control bytes' instead of following them,
        // and each candidate entry's second line loads with its first
        // (the value of a ~100-byte entry ends there).
        prefetch_probe(&table, place.hash);
        read(
            table
                .get(place.hash, |(e, _)| {
                    e.prefetch_tail();
                    e.key() == key
                })
                .map(|(e, _)| e),
        )
    }

    /// A copy of the committed, unexpired entry of `key`. `now_ms` (Unix
    /// ms) is called only for an entry that has an expiry.
    pub fn get(&self, key: &str, now_ms: impl FnOnce() -> u64) -> Option<Entry> {
        self.read(key, |e| {
            e.filter(|e| e.is_live_by(now_ms)).map(|e| e.to_entry())
        })
    }

    /// Whether `key` has a committed, unexpired value; `now_ms` as for
    /// [`Store::get`].
    pub fn contains(&self, key: &str, now_ms: impl FnOnce() -> u64) -> bool {
        self.read(key, |e| e.is_some_and(|e| e.is_live_by(now_ms)))
    }

    /// Number of visible keys, optionally only those under `prefix`.
    pub fn count(&self, prefix: Option<&str>, now_ms: u64) -> usize {
        let prefix = prefix.unwrap_or("");
        // The committed keys, less those of them that are due to expire
        // (still there until the expiry loop reaps them). The two are read
        // one after the other, so a key reaped in between can be off by
        // one, as any count taken during writes can be.
        let committed = if prefix.is_empty() {
            self.n_committed.load(Ordering::Acquire)
        } else {
            // A walk that a content swap crossed starts over (`swap.rs`).
            loop {
                let swaps = self.swaps();
                let n: usize = (0..self.sides.len())
                    .map(|shard| {
                        let _table = self.map.shards()[shard].read();
                        self.sides[shard].lock().order.count(prefix)
                    })
                    .sum();
                if self.swaps() == swaps {
                    break n;
                }
            }
        };
        committed.saturating_sub(self.ttl.count_due_under(now_ms, prefix))
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
        mutation: Mutation<'_>,
        pre: Precondition,
        now_ms: u64,
        journal: &J,
        emit: &mut dyn FnMut(&Applied<'_>),
    ) -> Result<Outcome<J::Ticket>, StoreError> {
        self.mutate_located(self.locate(key), mutation, pre, now_ms, journal, emit)
    }

    /// [`Store::mutate`] of a key whose place [`Store::prefetch`] found.
    ///
    /// # Errors
    ///
    /// As [`Store::mutate`].
    pub fn mutate_located<J: Journal>(
        &self,
        located: Located<'_>,
        mutation: Mutation<'_>,
        pre: Precondition,
        now_ms: u64,
        journal: &J,
        emit: &mut dyn FnMut(&Applied<'_>),
    ) -> Result<Outcome<J::Ticket>, StoreError> {
        let Located { key, place } = located;
        let mut table = self.write_shard(place.shard);
        let side = &self.sides[place.shard];
        let committed = table
            .get(place.hash, |(e, _)| e.key() == key)
            .map(|(e, _)| e);
        let pending = self
            .head_of(place, key)
            .map(|h| (h.exists, h.version, h.expires_at_ms, h.value));
        // The state the change is checked against, as `(version,
        // expires_at_ms)` of an existing key: the newest logged one.
        let head = match &pending {
            Some((exists, version, expires_at_ms, _)) => {
                exists.then_some((*version, *expires_at_ms))
            }
            None => committed
                .filter(|e| e.is_live_by(|| now_ms))
                .map(|e| (e.version(), e.expires_at_ms())),
        };
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
                let due = match &pending {
                    Some((exists, _, at, _)) => *exists && *at != 0 && *at <= now_ms,
                    None => committed.is_some_and(|e| {
                        let at = e.expires_at_ms();
                        at != 0 && at <= now_ms
                    }),
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

        // Counted before the revision is taken, so that a revision the feed
        // misses is either still counted here or settled for good.
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let created = kind == ChangeKind::Update && current.is_none();
        if !J::LOGS {
            // Applied at once from the caller's value: no change record is
            // built (see `Journal::LOGS`).
            let version = self.revision.fetch_add(1, Ordering::AcqRel) + 1;
            let change = Applying {
                key,
                kind,
                value,
                shared: None,
                version,
                expires_at_ms,
                timestamp_ms: now_ms,
                fresh: None,
            };
            self.apply_locked(&mut table, place, change, Some(emit), Indexing::Keep);
            self.settled();
            return Ok(Outcome {
                version,
                created,
                ticket: None,
            });
        }
        // What subscribers will see as the old value, decided now from the
        // newest logged state, so that it is logged with the change.
        let old_value = match pending {
            Some((exists, _, at, value)) => {
                value.filter(|_| exists && (kind == ChangeKind::Expire || at == 0 || at > now_ms))
            }
            None => committed
                .filter(|e| kind == ChangeKind::Expire || e.is_live_by(|| now_ms))
                .map(|e| Bytes::copy_from_slice(e.value())),
        };
        // One copy of the new value, shared by the record and the
        // pending state.
        let value = value.map(copy_value);
        let pending_value = value.clone();
        let change = Change {
            key: Box::from(key),
            kind,
            value,
            version: 0,
            expires_at_ms,
            timestamp_ms: now_ms,
            old_value,
        };
        let taken = std::cell::Cell::new(0);
        let next_version = || {
            let version = self.revision.fetch_add(1, Ordering::AcqRel) + 1;
            taken.set(version);
            version
        };
        let submitted = journal
            .submit(change, &next_version)
            .inspect_err(|_| self.settled())?;
        let ticket = match submitted {
            Submitted::ApplyNow(change) => {
                let change = Applying::from(&change);
                self.apply_locked(&mut table, place, change, Some(emit), Indexing::Keep);
                self.settled();
                None
            }
            Submitted::Deferred(ticket) => {
                let head = Head {
                    exists: kind == ChangeKind::Update,
                    version: taken.get(),
                    expires_at_ms,
                    value: pending_value,
                };
                side.set_pending(key, head);
                Some(ticket)
            }
        };
        Ok(Outcome {
            version: taken.get(),
            created,
            ticket,
        })
    }

    /// Applies a change that the log has accepted, reporting it to `emit`.
    /// A change older than the key's committed version is ignored, which
    /// makes replaying a WAL over a fuzzy snapshot safe.
    pub fn apply(&self, change: Change, emit: &mut dyn FnMut(&Applied<'_>)) {
        let place = self.place(&change.key);
        let mut table = self.write_shard(place.shard);
        self.sides[place.shard].settle(&change.key, change.version);
        let change = Applying::from(&change);
        self.apply_locked(&mut table, place, change, Some(emit), Indexing::Keep);
        drop(table);
        self.settled();
    }

    /// Applies a recovered change (snapshot entry or WAL record) without
    /// producing an event. Recovery only: the ordered index is left behind
    /// until [`Store::rebuild_index`], which recovery calls at its end
    /// (one sort per shard instead of a search per key).
    pub fn replay(&self, change: Change) {
        let place = self.place(&change.key);
        let mut table = self.write_shard(place.shard);
        self.apply_locked(&mut table, place, (&change).into(), None, Indexing::Defer);
    }

    /// Loads one snapshot entry: [`Store::replay`] of an update, written
    /// straight from the snapshot's bytes with no [`Change`] built. Safe to
    /// call from several threads at once. Leaves the revision counter to
    /// the caller (the snapshot's trailer has it) and the ordered index to
    /// [`Store::rebuild_index`].
    pub fn replay_entry(&self, key: &str, value: &[u8], version: u64, expires_at_ms: u64) {
        let place = self.place(key);
        let mut table = self.write_shard(place.shard);
        let old_expiry = match table.get_mut(place.hash, |(e, _)| e.key() == key) {
            Some((entry, _)) if version <= entry.version() => return,
            Some((entry, _)) => {
                let old_expiry = entry.expires_at_ms();
                // No index yet, so nothing refers to the old allocation.
                drop(entry.set(value, version, expires_at_ms));
                Some(old_expiry)
            }
            None => {
                let entry = Packed::new(key, value, version, expires_at_ms);
                let hasher = self.map.hasher();
                table.insert(place.hash, (entry, SharedValue::new(())), |(e, _)| {
                    hasher.hash_one(e.key())
                });
                self.n_committed.fetch_add(1, Ordering::AcqRel);
                None
            }
        };
        self.forget_expiry(old_expiry.is_some(), old_expiry.unwrap_or(0), key);
        if expires_at_ms != 0 {
            self.ttl.insert(expires_at_ms, key);
        }
    }

    /// Makes room for `n` keys in all before they are loaded, spread over
    /// the shards as the hash spreads them, so that the tables do not grow
    /// step by step (each step re-hashes every key of its shard).
    pub fn reserve(&self, n: usize) {
        let per_shard = n.div_ceil(self.sides.len());
        let hasher = self.map.hasher();
        for shard in self.map.shards() {
            let mut table = shard.write();
            let more = per_shard.saturating_sub(table.len());
            table.reserve(more, |(e, _)| hasher.hash_one(e.key()));
        }
    }

    /// Builds the ordered index from the map, after recovery's
    /// [`Store::replay`]s, one shard at a time on each of a few threads.
    pub fn rebuild_index(&self) {
        let threads = std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .clamp(1, 8);
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(|| self.rebuild_shards(&next));
            }
            self.rebuild_shards(&next);
        });
    }

    /// Rebuilds the index of the shards `next` hands out until none is left.
    fn rebuild_shards(&self, next: &AtomicUsize) {
        loop {
            let shard = next.fetch_add(1, Ordering::Relaxed);
            let Some(side) = self.sides.get(shard) else {
                return;
            };
            let table = self.map.shards()[shard].read();
            // SAFETY: the iterator lives only within this statement, while
            // the shard's read guard is held, so no bucket it yields can
            // be moved or freed under it (DashMap's own `iter` relies on
            // the same guarantee).
            let keys = unsafe { table.iter() }
                .map(|bucket| {
                    // SAFETY: as above.
                    let (entry, _) = unsafe { bucket.as_ref() };
                    entry.key_ref()
                })
                .collect();
            side.lock().order.rebuild(keys);
        }
    }

    /// Forgets the pending state of a change the log failed to accept.
    pub fn abort(&self, change: &Change) {
        let place = self.place(&change.key);
        let _table = self.write_shard(place.shard);
        self.sides[place.shard].settle(&change.key, change.version);
        self.settled();
    }

    /// Applies `change` under its shard's write lock, held by the caller,
    /// who has also settled its pending state, if it had one (see
    /// [`Side::settle`]). Reports it to `emit`, if there is one, just
    /// before the entry changes, so that the old value is lent from the
    /// entry itself: nobody else sees the entry until the lock is
    /// released, by which time the change is made.
    fn apply_locked(
        &self,
        table: &mut Table,
        place: Place,
        change: Applying<'_>,
        emit: Option<&mut dyn FnMut(&Applied<'_>)>,
        mut indexing: Indexing<'_>,
    ) {
        let Applying {
            key,
            kind,
            value,
            shared,
            version,
            expires_at_ms,
            timestamp_ms,
            fresh,
        } = change;
        self.advance_revision(version);
        let side = &self.sides[place.shard];
        let eq = |(e, _): &(Packed, SharedValue<()>)| e.key() == key;
        // One probe for the whole change.
        let found = table.find(place.hash, eq);
        // SAFETY: a bucket of this table, which the caller's write lock
        // keeps in place; this reference is last used before the entry
        // is changed below.
        let current = found.as_ref().map(|bucket| unsafe { bucket.as_ref() });
        if current.is_some_and(|(e, _)| version <= e.version()) {
            return;
        }
        if let Some(emit) = emit {
            // A value that had already expired is gone for subscribers too,
            // except in the expire event itself, which reports what expired.
            let old_value = current
                .filter(|(e, _)| kind == ChangeKind::Expire || e.is_live_by(|| timestamp_ms))
                .map(|(e, _)| e.value());
            emit(&Applied::new(key, kind, old_value, value, version, timestamp_ms).sharing(shared));
        }
        let index = !matches!(indexing, Indexing::Defer);
        let (had_old, old_expiry) = current.map_or((false, 0), |(e, _)| (true, e.expires_at_ms()));
        match value {
            Some(value) => {
                // SAFETY: as for `current`, which is no longer used.
                if let Some((entry, _)) = found.as_ref().map(|bucket| unsafe { bucket.as_mut() }) {
                    let moved = entry.set(value, version, expires_at_ms);
                    if moved.is_some() && index {
                        // The old allocation is still alive here.
                        self.index_waiting(&mut indexing);
                        side.lock().order.replace(entry.key_ref());
                    }
                    drop(moved);
                } else {
                    let entry =
                        fresh.unwrap_or_else(|| Packed::new(key, value, version, expires_at_ms));
                    match &mut indexing {
                        Indexing::Keep => side.lock().order.insert(entry.key_ref()),
                        Indexing::Batch(new) => new.push((place.shard, entry.key_ref())),
                        Indexing::Defer => {}
                    }
                    let hasher = self.map.hasher();
                    table.insert(place.hash, (entry, SharedValue::new(())), |(e, _)| {
                        hasher.hash_one(e.key())
                    });
                }
                self.forget_expiry(had_old, old_expiry, key);
                if expires_at_ms != 0 {
                    self.ttl.insert(expires_at_ms, key);
                }
                if !had_old {
                    self.n_committed.fetch_add(1, Ordering::AcqRel);
                }
            }
            None => {
                // SAFETY: as for `current`, which is no longer used.
                if let Some((entry, _)) = found.map(|bucket| unsafe { table.remove(bucket) }.0) {
                    if index {
                        // Out of the index before the entry is freed.
                        self.index_waiting(&mut indexing);
                        side.lock().order.remove(key);
                    }
                    drop(entry);
                    self.n_committed.fetch_sub(1, Ordering::AcqRel);
                }
                self.forget_expiry(had_old, old_expiry, key);
            }
        }
    }

    /// Adds the keys of new entries that wait in a batch's list to their
    /// shards' indexes (the caller holds those shards' write locks).
    fn index_new(&self, new: &mut Vec<(usize, KeyRef)>) {
        if new.is_empty() {
            return;
        }
        new.sort_unstable_by_key(|&(shard, _)| shard);
        for group in new.chunk_by(|a, b| a.0 == b.0) {
            let keys = group.iter().map(|&(_, key)| key).collect();
            self.sides[group[0].0].lock().order.insert_many(keys);
        }
        new.clear();
    }

    /// [`Store::index_new`] of the keys waiting in `indexing`, if any.
    fn index_waiting(&self, indexing: &mut Indexing<'_>) {
        if let Indexing::Batch(new) = indexing {
            self.index_new(new);
        }
    }

    /// Drops the TTL index's record of the replaced state's expiry.
    fn forget_expiry(&self, had_old: bool, old_expiry: u64, key: &str) {
        if had_old && old_expiry != 0 {
            self.ttl.remove(old_expiry, key);
        }
    }

    /// Visits every committed, unexpired entry, one shard at a time; only
    /// that shard's read lock is held while `visit` runs.
    pub fn for_each(&self, now_ms: u64, mut visit: impl FnMut(&str, EntryRef<'_>)) {
        for entry in self.map.iter() {
            let entry = entry.key();
            if entry.is_live_by(|| now_ms) {
                visit(entry.key(), entry.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests;
