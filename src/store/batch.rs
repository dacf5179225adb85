//! A batch of puts written as one log record (an import's batch): the keys
//! and values in one buffer, built once from the caller's bytes, with one
//! revision each (consecutive) and one event each.
//!
//! It is what a transaction of puts does (`txn.rs`: compares none, the
//! shards of every key held while the revisions are taken and the record
//! is queued, applied with them held again), with less per entry: no
//! operation, change or pending state is built per key. Until the log has
//! it, the batch itself is the pending state of its keys: other writers
//! find a key's newest logged state in it (see [`Store::head_of`]), and
//! applying the batch removes it in one step.
//!
//! On disk it is a transaction record (`wal/record.rs` writes the same
//! bytes), so replay, the log reader and webhooks read it back as one.
//!
//! Invariant: no I/O; like the rest of the store, logging is the
//! journal's business.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use hashbrown::raw::RawTable;

use super::multi::WriteLocked;
use super::packed::Packed;
use super::{
    Applied, Applying, Change, ChangeEvent, ChangeKind, Head, Journal, Place, Store, StoreError,
    Submitted,
};

/// Marks an entry without an old value in [`Item::old_len`].
const NO_OLD: u32 = u32::MAX;

/// One put of a batch: where its key and value are in the batch's buffer.
#[derive(Debug, Clone, Copy)]
struct Item {
    /// Offset of the key; the value follows it.
    at: u32,
    key_len: u32,
    value_len: u32,
    /// Offset of the value it replaced in [`PutBatch::old`], if any.
    old_at: u32,
    /// Its length, or [`NO_OLD`].
    old_len: u32,
    /// The batch's earlier put of the same key, or [`NO_OLD`].
    earlier: u32,
    expires_at_ms: u64,
    /// The key's place in the map, found when the batch is written.
    hash: u64,
    shard: usize,
}

/// Puts to write together (see the module docs): filled with
/// [`PutBatch::push`], then written by [`Store::put_batch`].
#[derive(Debug, Default)]
pub struct PutBatch {
    /// Every key and value, back to back.
    data: Vec<u8>,
    items: Vec<Item>,
}

impl PutBatch {
    /// An empty batch with room for `entries` puts of `bytes` bytes of
    /// keys and values.
    pub fn with_capacity(entries: usize, bytes: usize) -> Self {
        PutBatch {
            data: Vec::with_capacity(bytes),
            items: Vec::with_capacity(entries),
        }
    }

    /// Adds a put of a checked key and value; `expires_at_ms` is Unix ms,
    /// 0 for never.
    ///
    /// # Panics
    ///
    /// When the batch would exceed 4 GiB.
    pub fn push(&mut self, key: &str, value: &[u8], expires_at_ms: u64) {
        let at = offset(self.data.len());
        self.data.extend_from_slice(key.as_bytes());
        self.data.extend_from_slice(value);
        offset(self.data.len());
        self.items.push(Item {
            at,
            key_len: offset(key.len()),
            value_len: offset(value.len()),
            old_at: 0,
            old_len: NO_OLD,
            earlier: NO_OLD,
            expires_at_ms,
            hash: 0,
            shard: 0,
        });
    }

    /// Puts in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it has no put.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of keys and values in it.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// A written [`PutBatch`]: its puts with their revisions and the values
/// they replaced, as logged; pending until applied. Two are equal when
/// their changes are.
pub struct LoggedPuts {
    /// The batch's keys and values; the events' values are slices of it.
    data: Bytes,
    items: Vec<Item>,
    /// The values the puts replaced.
    old: Vec<u8>,
    /// The revision of the first put; the others follow it.
    first_version: u64,
    timestamp_ms: u64,
    /// Each key's last put in the batch, by the key's hash.
    index: RawTable<(u64, u32)>,
    /// One bit per [`filter_bit`] of the batch's keys: most keys looked
    /// up in a batch are not in it, and this says so without the index.
    filter: Box<[u64]>,
}

/// Bits in a batch's [`LoggedPuts::filter`]: 16 per put of a full batch,
/// so a key not in it is taken for one about once in 16.
const FILTER_BITS: usize = 1 << 16;

/// The bit of a key's hash in a batch's filter (bits the shard and the
/// tables' probe positions do not use).
fn filter_bit(hash: u64) -> usize {
    (hash >> 24) as usize & (FILTER_BITS - 1)
}

impl PartialEq for LoggedPuts {
    fn eq(&self, other: &Self) -> bool {
        self.changes() == other.changes()
    }
}

impl Eq for LoggedPuts {}

impl std::fmt::Debug for LoggedPuts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoggedPuts")
            .field("puts", &self.len())
            .field("first_version", &self.first_version)
            .finish_non_exhaustive()
    }
}

impl LoggedPuts {
    /// Puts in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it has no put (never, once written).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes of keys, values and replaced values in it.
    pub fn data_len(&self) -> usize {
        self.data.len() + self.old.len()
    }

    fn key(&self, item: &Item) -> &str {
        key_in(&self.data, item)
    }

    fn value_range(item: &Item) -> std::ops::Range<usize> {
        let at = (item.at + item.key_len) as usize;
        at..at + item.value_len as usize
    }

    fn old_value(&self, item: &Item) -> Option<&[u8]> {
        (item.old_len != NO_OLD)
            .then(|| &self.old[item.old_at as usize..(item.old_at + item.old_len) as usize])
    }

    fn place(item: &Item) -> Place {
        Place {
            hash: item.hash,
            shard: item.shard,
        }
    }

    /// The revision of the first put.
    pub fn first_version(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.first_version)
    }

    /// The revision of the last put.
    pub fn last_version(&self) -> u64 {
        self.first_version + self.items.len() as u64 - 1
    }

    /// Each put as the log holds it, in order.
    pub fn visit(&self, mut visit: impl FnMut(PutRef<'_>)) {
        for (i, item) in self.items.iter().enumerate() {
            visit(PutRef {
                key: self.key(item),
                value: &self.data[LoggedPuts::value_range(item)],
                version: self.first_version + i as u64,
                expires_at_ms: item.expires_at_ms,
                timestamp_ms: self.timestamp_ms,
                old_value: self.old_value(item),
            });
        }
    }

    /// The batch's changes, as a transaction record of them reads back.
    pub fn changes(&self) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.len());
        self.visit(|put| {
            changes.push(Change {
                key: Box::from(put.key),
                kind: ChangeKind::Update,
                value: Some(Bytes::copy_from_slice(put.value)),
                version: put.version,
                expires_at_ms: put.expires_at_ms,
                timestamp_ms: put.timestamp_ms,
                old_value: put.old_value.map(Bytes::copy_from_slice),
            });
        });
        changes
    }

    /// The newest state of `key` in the batch, if it puts it.
    fn head(&self, hash: u64, key: &str) -> Option<Head> {
        let bit = filter_bit(hash);
        if self.filter[bit / 64] & (1 << (bit % 64)) == 0 {
            return None;
        }
        let &(_, i) = self.index.get(hash, |&(h, i)| {
            h == hash && self.key(&self.items[i as usize]) == key
        })?;
        let item = &self.items[i as usize];
        Some(Head {
            exists: true,
            version: self.first_version + u64::from(i),
            expires_at_ms: item.expires_at_ms,
            value: Some(self.data.slice(LoggedPuts::value_range(item))),
        })
    }
}

/// One put of a [`LoggedPuts`], borrowed (see [`PutBatch::visit`]).
#[derive(Debug, Clone, Copy)]
pub struct PutRef<'a> {
    /// The key.
    pub key: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// Its revision.
    pub version: u64,
    /// Unix ms of expiry, 0 for never.
    pub expires_at_ms: u64,
    /// Unix ms of the write.
    pub timestamp_ms: u64,
    /// The value it replaced, if the key held one.
    pub old_value: Option<&'a [u8]>,
}

/// What [`Store::put_batch`] did.
#[derive(Debug)]
pub struct BatchWritten<T> {
    /// The revision of the batch's last put.
    pub last_version: u64,
    /// Wait on it before answering (`None` when applied at once).
    pub ticket: Option<T>,
}

/// Batches logged and not yet applied: the pending state of their keys.
///
/// Added and removed only with the shards of every key of the batch
/// write-locked, and read only with the shard of the key looked up held,
/// so a reader sees every batch that holds its key (as [`super::Side`]'s
/// pending map is kept).
#[derive(Default)]
pub(super) struct PendingBatches {
    /// Entries in `batches`, so lookups skip the lock when there are none.
    n: std::sync::atomic::AtomicUsize,
    /// In the order they were logged.
    batches: RwLock<Vec<Arc<LoggedPuts>>>,
}

impl PendingBatches {
    fn add(&self, batch: Arc<LoggedPuts>) {
        let mut batches = self.batches.write().unwrap_or_else(|e| e.into_inner());
        batches.push(batch);
        self.n.store(batches.len(), Ordering::Release);
    }

    fn remove(&self, batch: &Arc<LoggedPuts>) {
        let mut batches = self.batches.write().unwrap_or_else(|e| e.into_inner());
        batches.retain(|b| !Arc::ptr_eq(b, batch));
        self.n.store(batches.len(), Ordering::Release);
    }

    /// The newest state of `key` in a pending batch, if one puts it.
    fn head(&self, hash: u64, key: &str) -> Option<Head> {
        if self.n.load(Ordering::Acquire) == 0 {
            return None;
        }
        let batches = self.batches.read().unwrap_or_else(|e| e.into_inner());
        newest_put(&batches, hash, key)
    }

    /// The batches pending now. Those that put a key whose shard the
    /// caller holds stay pending (and no other one that puts it comes)
    /// until it lets go.
    fn now(&self) -> Vec<Arc<LoggedPuts>> {
        if self.n.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.batches
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The newest state of `key` in `batches` (in log order), if one puts it.
fn newest_put(batches: &[Arc<LoggedPuts>], hash: u64, key: &str) -> Option<Head> {
    // A later batch holding the key was logged after an earlier one: both
    // held the key's shard.
    batches.iter().rev().find_map(|b| b.head(hash, key))
}

/// The newer of a key's own pending change and a pending batch's put.
fn newer(own: Option<Head>, put: Option<Head>) -> Option<Head> {
    match (own, put) {
        (Some(own), Some(put)) if put.version > own.version => Some(put),
        (Some(own), _) => Some(own),
        (None, put) => put,
    }
}

/// How many puts ahead [`Store::put_batch`] and the batch's application
/// start loading a key's probe (a table of 1M keys is far larger than the
/// cache: each lookup would wait for its own misses).
const PREFETCH_AHEAD: usize = 16;

impl Store {
    /// The newest logged, unapplied state of `key` (at `place`, whose shard
    /// the caller holds): its own pending change or a pending batch's put,
    /// whichever is newer.
    pub(super) fn head_of(&self, place: Place, key: &str) -> Option<Head> {
        let own = self.sides[place.shard].head(key);
        newer(own, self.batches.head(place.hash, key))
    }

    /// Writes a batch of puts: the shards of its keys held, one revision
    /// each (consecutive, in order), the values they replace found (the
    /// newest logged state, as for a transaction), and the batch handed to
    /// `journal` as one record. Returns the last revision and the ticket,
    /// or `None` for an empty batch.
    ///
    /// # Errors
    ///
    /// The journal's error; nothing changed then.
    pub fn put_batch<J: Journal>(
        &self,
        batch: PutBatch,
        now_ms: u64,
        journal: &J,
        emit: &mut dyn FnMut(&Applied<'_>),
    ) -> Result<Option<BatchWritten<J::Ticket>>, StoreError> {
        let PutBatch { data, mut items } = batch;
        if items.is_empty() {
            return Ok(None);
        }
        let places: Vec<Place> = items
            .iter()
            .map(|item| self.place(key_in(&data, item)))
            .collect();
        // What needs no lock first: each key's earlier put in the batch,
        // the index and the filter.
        let mut index: RawTable<(u64, u32)> = RawTable::with_capacity(items.len());
        let mut filter = vec![0u64; FILTER_BITS / 64].into_boxed_slice();
        for i in 0..items.len() {
            let place = places[i];
            let key = key_in(&data, &items[i]);
            let found = index.get_mut(place.hash, |&(h, j)| {
                h == place.hash && key_in(&data, &items[j as usize]) == key
            });
            let earlier = match found {
                Some(slot) => std::mem::replace(&mut slot.1, i as u32),
                None => {
                    index.insert(place.hash, (place.hash, i as u32), |&(h, _)| h);
                    NO_OLD
                }
            };
            let bit = filter_bit(place.hash);
            filter[bit / 64] |= 1 << (bit % 64);
            let item = &mut items[i];
            item.hash = place.hash;
            item.shard = place.shard;
            item.earlier = earlier;
        }
        let mut locked = self.lock_write_places(&places);
        let pending = self.batches.now();
        let n = items.len() as u64;
        // Counted before the revisions are taken (see `Store::mutate`).
        self.in_flight.fetch_add(n, Ordering::AcqRel);
        let first_version = self.revision.fetch_add(n, Ordering::AcqRel) + 1;
        let mut old = Vec::new();
        let live = |expires_at_ms: u64| expires_at_ms == 0 || expires_at_ms > now_ms;
        for i in 0..items.len() {
            if let Some(&ahead) = places.get(i + PREFETCH_AHEAD) {
                locked.prefetch_one(ahead);
            }
            let item = items[i];
            let place = places[i];
            let key = key_in(&data, &item);
            // The value it replaces: an earlier put of the batch (as a
            // transaction's later operations see its earlier writes), else
            // the newest logged state, else the committed entry.
            let replaced = match items.get(item.earlier as usize) {
                Some(before) => Some(append_old(&mut old, &data[LoggedPuts::value_range(before)])),
                None => {
                    let own = self.sides[place.shard].head(key);
                    match newer(own, newest_put(&pending, place.hash, key)) {
                        Some(head) => head
                            .value
                            .filter(|_| head.exists && live(head.expires_at_ms))
                            .map(|v| append_old(&mut old, &v)),
                        None => locked
                            .entry_at(place, key)
                            .filter(|e| e.is_live_by(|| now_ms))
                            .map(|e| append_old(&mut old, e.value())),
                    }
                }
            };
            if let Some((at, len)) = replaced {
                items[i].old_at = at;
                items[i].old_len = len;
            }
        }
        drop((places, pending));
        let batch = Arc::new(LoggedPuts {
            data: Bytes::from(data),
            items,
            old,
            first_version,
            timestamp_ms: now_ms,
            index,
            filter,
        });
        let last = batch.last_version();
        let submitted = journal
            .submit_batch(Arc::clone(&batch))
            .inspect_err(|_| self.settled_many(n))?;
        let ticket = match submitted {
            Submitted::ApplyNow(batch) => {
                // Emitted before the locks go: another writer of these keys
                // applies its change (and emits it) as soon as it has them.
                let mut events = Vec::with_capacity(batch.len());
                let fresh = new_entries(&batch);
                self.apply_batch_locked(&mut locked, &batch, fresh, &mut events);
                events.iter().for_each(|e| emit(&Applied::of(e)));
                drop(locked);
                self.settled_many(n);
                None
            }
            Submitted::Deferred(ticket) => {
                self.batches.add(batch);
                Some(ticket)
            }
        };
        Ok(Some(BatchWritten {
            last_version: last,
            ticket,
        }))
    }

    /// Applies a batch the log has accepted, with the shards of all its
    /// keys held, so readers see all of it or none. Its events are emitted
    /// once the locks are let go (the caller applies every logged change,
    /// one record after another, so they still follow the log's order).
    pub fn apply_batch(&self, batch: &Arc<LoggedPuts>, emit: &mut dyn FnMut(&Applied<'_>)) {
        let places: Vec<Place> = batch.items.iter().map(LoggedPuts::place).collect();
        // Made before the locks are taken: allocating and filling the new
        // entries (fresh memory the kernel clears, for an import) was most
        // of the time they were held.
        let fresh = new_entries(batch);
        let mut locked = self.lock_write_places(&places);
        self.batches.remove(batch);
        let mut events = Vec::with_capacity(batch.len());
        self.apply_batch_locked(&mut locked, batch, fresh, &mut events);
        drop(locked);
        events.iter().for_each(|e| emit(&Applied::of(e)));
        // Settled once emitted: until then the feed waits for them.
        self.settled_many(batch.len() as u64);
    }

    /// Forgets a batch the log failed to take.
    pub fn abort_batch(&self, batch: &Arc<LoggedPuts>) {
        let places: Vec<Place> = batch.items.iter().map(LoggedPuts::place).collect();
        let locked = self.lock_write_places(&places);
        self.batches.remove(batch);
        drop(locked);
        self.settled_many(batch.len() as u64);
    }

    /// Applies the batch's puts in order, their shards held, with the
    /// entries [`new_entries`] made for them; their events go to `events`,
    /// and the caller settles them.
    fn apply_batch_locked(
        &self,
        locked: &mut WriteLocked<'_>,
        batch: &LoggedPuts,
        fresh: Vec<Packed>,
        events: &mut Vec<Arc<ChangeEvent>>,
    ) {
        let mut new = Vec::with_capacity(batch.len());
        for ((i, item), fresh) in batch.items.iter().enumerate().zip(fresh) {
            if let Some(ahead) = batch.items.get(i + PREFETCH_AHEAD) {
                locked.prefetch_one(LoggedPuts::place(ahead));
            }
            let place = LoggedPuts::place(item);
            let value = batch.data.slice(LoggedPuts::value_range(item));
            let change = Applying {
                key: batch.key(item),
                kind: ChangeKind::Update,
                value: Some(&value),
                shared: Some(&value),
                version: batch.first_version + i as u64,
                expires_at_ms: item.expires_at_ms,
                timestamp_ms: batch.timestamp_ms,
                fresh: Some(fresh),
            };
            let table = locked.table(place);
            let indexing = super::Indexing::Batch(&mut new);
            // The events are emitted once the caller is done: kept.
            let keep = &mut |e: &Applied<'_>| events.push(Arc::clone(e.event()));
            self.apply_locked(table, place, change, Some(keep), indexing);
        }
        self.index_new(&mut new);
    }
}

/// The entry each put of `batch` makes if its key has none (one whose key
/// has one is dropped, the existing entry overwritten in place).
fn new_entries(batch: &LoggedPuts) -> Vec<Packed> {
    batch
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let value = &batch.data[LoggedPuts::value_range(item)];
            let version = batch.first_version + i as u64;
            Packed::new(batch.key(item), value, version, item.expires_at_ms)
        })
        .collect()
}

/// Appends `value` to `old`; returns where it is.
fn append_old(old: &mut Vec<u8>, value: &[u8]) -> (u32, u32) {
    let at = offset(old.len());
    old.extend_from_slice(value);
    (at, offset(value.len()))
}

/// A position or length within a batch's buffers.
///
/// # Panics
///
/// Beyond 4 GiB (a batch is a few MiB, a value at most 64 MiB).
fn offset(n: usize) -> u32 {
    u32::try_from(n).expect("a batch under 4 GiB")
}

/// The key of `item` in the buffer `data`.
fn key_in<'a>(data: &'a [u8], item: &Item) -> &'a str {
    let key = &data[item.at as usize..(item.at + item.key_len) as usize];
    // SAFETY: copied from a `&str` by `PutBatch::push`, whole.
    unsafe { std::str::from_utf8_unchecked(key) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::Deferring;
    use crate::store::{Compare, Condition, Mutation, NoJournal, Precondition, TxnOp};

    const NOW: u64 = 1_000_000;

    fn batch(puts: &[(&str, &str)]) -> PutBatch {
        let mut batch = PutBatch::default();
        for (key, value) in puts {
            batch.push(key, value.as_bytes(), 0);
        }
        batch
    }

    fn put(store: &Store, key: &str, value: &str, pre: Precondition) -> Result<u64, StoreError> {
        let put = Mutation::Put {
            value: value.as_bytes(),
            expires_at_ms: 0,
        };
        store
            .mutate(key, put, pre, NOW, &NoJournal, &mut |_| {})
            .map(|o| o.version)
    }

    fn olds(batch: &LoggedPuts) -> Vec<Option<String>> {
        batch
            .changes()
            .into_iter()
            .map(|c| {
                c.old_value
                    .map(|v| String::from_utf8(v.to_vec()).expect("utf-8"))
            })
            .collect()
    }

    #[test]
    fn a_batch_takes_consecutive_revisions_and_logs_what_each_put_replaced() {
        let store = Store::new();
        put(&store, "a", "1", Precondition::None).expect("put");
        let journal = Deferring::default();
        let puts = batch(&[("a", "2"), ("b", "3"), ("a", "4")]);
        let written = store.put_batch(puts, NOW, &journal, &mut |_| {});
        assert_eq!(written.expect("written").map(|w| w.last_version), Some(4));
        let logged = journal.1.lock().expect("lock").remove(0);
        let versions: Vec<u64> = logged.changes().iter().map(|c| c.version).collect();
        assert_eq!(versions, [2, 3, 4]);
        assert_eq!(olds(&logged), [Some("1".into()), None, Some("2".into())]);
        // Not applied yet: readers see the committed state.
        assert_eq!(store.get("a", || NOW).map(|e| e.version), Some(1));
        assert!(store.get("b", || NOW).is_none());

        // A second batch sees the first one's puts as the newest state.
        let again = batch(&[("b", "5")]);
        store
            .put_batch(again, NOW, &journal, &mut |_| {})
            .expect("written");
        let second = journal.1.lock().expect("lock").remove(0);
        assert_eq!(olds(&second), [Some("3".into())]);

        let mut events = Vec::new();
        let mut keep = |e: &Applied<'_>| events.push(ChangeEvent::clone(e.event()));
        store.apply_batch(&logged, &mut keep);
        store.apply_batch(&second, &mut keep);
        let seen: Vec<(String, u64, Option<Bytes>)> = events
            .into_iter()
            .map(|e| (e.key.into(), e.version, e.old_value))
            .collect();
        let old = |v: &'static str| Some(Bytes::from_static(v.as_bytes()));
        assert_eq!(
            seen,
            [
                ("a".into(), 2, old("1")),
                ("b".into(), 3, None),
                ("a".into(), 4, old("2")),
                ("b".into(), 5, old("3")),
            ]
        );
        let a = store.get("a", || NOW).expect("a");
        assert_eq!((&a.value[..], a.version), (&b"4"[..], 4));
        assert_eq!(store.count(None, NOW), 2);
        assert_eq!(store.changes_in_flight(), 0);
    }

    #[test]
    fn conditional_writes_and_compares_see_a_pending_batch() {
        let store = Store::new();
        let journal = Deferring::default();
        store
            .put_batch(batch(&[("k", "1"), ("j", "2")]), NOW, &journal, &mut |_| {})
            .expect("written");
        let logged = journal.1.lock().expect("lock").remove(0);
        // The batch is logged, not applied: "k" is at version 1 for writers.
        assert_eq!(
            put(&store, "k", "x", Precondition::IfAbsent),
            Err(StoreError::PreconditionFailed { current: Some(1) })
        );
        let compare = [Condition {
            key: "j".into(),
            compare: Compare::Version(2),
        }];
        // A transaction that writes checks the newest logged state (one
        // of only reads sees the committed state at one instant).
        let write = vec![TxnOp::Put {
            key: "z".into(),
            value: Bytes::from_static(b"0"),
            expires_at_ms: 0,
        }];
        let seen = store
            .txn(&compare, write, Vec::new(), NOW, &journal, &mut |_| {})
            .expect("txn");
        assert!(seen.succeeded, "the compare sees the pending put");
        // A later single write of a batch's key wins over the batch.
        let later = Mutation::Put {
            value: b"9",
            expires_at_ms: 0,
        };
        store
            .mutate(
                "k",
                later,
                Precondition::IfVersion(1),
                NOW,
                &journal,
                &mut |_| {},
            )
            .expect("the batch's version holds");
        assert_eq!(
            put(&store, "k", "x", Precondition::IfVersion(1)),
            Err(StoreError::PreconditionFailed { current: Some(4) })
        );
        store.apply_batch(&logged, &mut |_| {});
        // Applied: the batch is no longer pending, the single write still is.
        assert_eq!(
            put(&store, "k", "x", Precondition::IfVersion(1)),
            Err(StoreError::PreconditionFailed { current: Some(4) })
        );
        assert_eq!(put(&store, "j", "y", Precondition::IfVersion(2)), Ok(5));
    }

    #[test]
    fn an_aborted_batch_leaves_the_committed_state() {
        let store = Store::new();
        put(&store, "k", "1", Precondition::None).expect("put");
        let journal = Deferring::default();
        store
            .put_batch(
                batch(&[("k", "2"), ("new", "3")]),
                NOW,
                &journal,
                &mut |_| {},
            )
            .expect("written");
        let logged = journal.1.lock().expect("lock").remove(0);
        assert_eq!(store.changes_in_flight(), 2);
        store.abort_batch(&logged);
        assert_eq!(store.changes_in_flight(), 0);
        assert_eq!(put(&store, "k", "x", Precondition::IfVersion(1)), Ok(4));
        assert!(store.get("new", || NOW).is_none());
        assert_eq!(store.count(None, NOW), 1);
    }

    #[test]
    fn without_a_log_a_batch_is_applied_at_once() {
        let store = Store::new();
        let mut events = 0;
        let written = store
            .put_batch(
                batch(&[("a", "1"), ("b", "2")]),
                NOW,
                &NoJournal,
                &mut |_| {
                    events += 1;
                },
            )
            .expect("written");
        assert_eq!(written.map(|w| w.last_version), Some(2));
        assert_eq!(events, 2);
        assert_eq!(store.get("b", || NOW).map(|e| e.version), Some(2));
        let empty = store.put_batch(PutBatch::default(), NOW, &NoJournal, &mut |_| {});
        assert_eq!(empty.expect("nothing").map(|w| w.last_version), None);
    }
}
