//! Locking several keys at once: the shards that hold them, taken in
//! ascending shard order and held together.
//!
//! A transaction must check its compares, take its revisions and log its
//! writes while no other writer can change any of its keys, and its writes
//! must become visible to readers all at once. A batch read must see its
//! keys at one instant. Both are done by holding the locks of every shard
//! that holds one of the keys for the whole operation. Single-key paths
//! keep taking one shard lock at a time, so they pay nothing for this;
//! multi-key paths always lock in ascending shard index, so two of them can
//! never deadlock each other, and a single-key path holds no shard lock
//! while it waits for another one.
//!
//! This is the alternative to a store-wide "transaction gate" (an RwLock
//! every write would take): that would put a shared cache line on every
//! PUT, and a gate that writers take shared cannot keep batch reads
//! consistent against single-key writes. Shard locks cost the single-key
//! path nothing and make a batch read a true snapshot of its keys.
//!
//! Lock order: WAL log lock → shard locks (ascending) → a shard's side
//! state → WAL queue lock. DashMap's shard lock lets a holder of a read
//! lock take it again while a writer waits (a writer only ever gets it from
//! no holders), so a reader holding every shard may still call the
//! single-key read paths.

use dashmap::{RwLockReadGuard, RwLockWriteGuard};

use super::packed::Packed;
use super::{Place, Store, Table, prefetch_probe};

impl Store {
    /// The distinct shards of `keys`, ascending.
    fn shards_of<'k>(&self, keys: impl Iterator<Item = &'k str>) -> Vec<usize> {
        distinct(keys.map(|k| self.place(k).shard).collect())
    }

    /// Write-locks the shards of `places` (keys already hashed) in
    /// ascending order.
    /// The first keys' lookups are started at once (see
    /// [`WriteLocked::prefetch`]).
    pub(super) fn lock_write_places(&self, places: &[Place]) -> WriteLocked<'_> {
        let guards = distinct(places.iter().map(|p| p.shard).collect())
            .into_iter()
            .map(|i| (i, self.map.shards()[i].write()))
            .collect();
        let locked = WriteLocked { guards };
        locked.prefetch(places);
        locked
    }

    /// Read-locks the shards of `keys` in ascending order.
    pub(super) fn lock_read<'k>(&self, keys: impl Iterator<Item = &'k str>) -> ReadLocked<'_> {
        let guards = self
            .shards_of(keys)
            .into_iter()
            .map(|i| (i, self.map.shards()[i].read()))
            .collect();
        ReadLocked {
            store: self,
            guards,
        }
    }

    /// Read-locks every shard, in ascending order: the whole map at one
    /// instant. Writers wait until it is dropped, so hold it briefly.
    pub(super) fn lock_all_read(&self) -> ReadLocked<'_> {
        let guards = self
            .map
            .shards()
            .iter()
            .enumerate()
            .map(|(i, shard)| (i, shard.read()))
            .collect();
        ReadLocked {
            store: self,
            guards,
        }
    }
}

/// Keys whose lookups [`WriteLocked::prefetch`] starts at once: a
/// transaction's worth, whose probe groups and entries (a few hundred
/// bytes each) stay well within the cache until they are used.
const PREFETCHED: usize = 128;

/// `shards` sorted, each once.
fn distinct(mut shards: Vec<usize>) -> Vec<usize> {
    shards.sort_unstable();
    shards.dedup();
    shards
}

/// Shards held for reading; see the module docs.
pub(super) struct ReadLocked<'a> {
    store: &'a Store,
    guards: Vec<(usize, RwLockReadGuard<'a, Table>)>,
}

impl ReadLocked<'_> {
    /// The committed entry of `key`, which must be in one of the held shards.
    ///
    /// # Panics
    ///
    /// When the key's shard is not held: a bug of the caller.
    pub(super) fn entry(&self, key: &str) -> Option<&Packed> {
        let place = self.store.place(key);
        let at = self
            .guards
            .binary_search_by_key(&place.shard, |(i, _)| *i)
            .expect("the key's shard is locked");
        self.guards[at]
            .1
            .get(place.hash, |(e, _)| e.key() == key)
            .map(|(e, _)| e)
    }
}

/// Shards held for writing; see the module docs.
pub(super) struct WriteLocked<'a> {
    guards: Vec<(usize, RwLockWriteGuard<'a, Table>)>,
}

impl WriteLocked<'_> {
    /// Where the shard of `place` is among the held ones.
    ///
    /// # Panics
    ///
    /// When the shard is not held: a bug of the caller.
    fn held(&self, place: Place) -> usize {
        // Where every shard up to it is held (a batch of thousands of keys
        // holds them all), it is at its own index.
        if self
            .guards
            .get(place.shard)
            .is_some_and(|(i, _)| *i == place.shard)
        {
            return place.shard;
        }
        self.guards
            .binary_search_by_key(&place.shard, |(i, _)| *i)
            .expect("the key's shard is locked")
    }

    /// The table of the shard `place` is in, which must be held.
    ///
    /// # Panics
    ///
    /// As [`WriteLocked::held`].
    pub(super) fn table(&mut self, place: Place) -> &mut Table {
        let at = self.held(place);
        &mut self.guards[at].1
    }

    /// Starts loading what looking up the keys at the first
    /// [`PREFETCHED`] of `places` will read, in two rounds: the probe
    /// groups of them all, then the entries in those groups whose hash
    /// tags match. A key looked up in a table too large for the cache
    /// costs a miss on its probe group and another on its entry; started
    /// together, the misses of many keys overlap instead of following one
    /// another. Hints only: nothing changes.
    fn prefetch(&self, places: &[Place]) {
        let places = &places[..places.len().min(PREFETCHED)];
        for &place in places {
            prefetch_probe(&self.guards[self.held(place)].1, place.hash);
        }
        for &place in places {
            let table = &self.guards[self.held(place)].1;
            // SAFETY: buckets of a table this holds the lock of, read
            // (not kept) while it is held.
            for bucket in unsafe { table.iter_hash(place.hash) } {
                // SAFETY: as above.
                unsafe { bucket.as_ref() }.0.prefetch();
            }
        }
    }

    /// Starts loading the probe group of a key at `place` (in a held
    /// shard), as [`WriteLocked::prefetch`] does for the first keys: for a
    /// caller that looks keys up one after another, some way ahead.
    pub(super) fn prefetch_one(&self, place: Place) {
        prefetch_probe(&self.guards[self.held(place)].1, place.hash);
    }

    /// The committed entry of `key` (at `place`), which must be in one of
    /// the held shards.
    ///
    /// # Panics
    ///
    /// As [`WriteLocked::table`].
    pub(super) fn entry_at(&mut self, place: Place, key: &str) -> Option<&Packed> {
        self.table(place)
            .get(place.hash, |(e, _)| e.key() == key)
            .map(|(e, _)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Mutation, NoJournal, Precondition};

    #[test]
    fn locked_lookups_find_what_the_store_holds() {
        let store = Store::new();
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
        for key in &keys {
            let put = Mutation::Put {
                value: b"1",
                expires_at_ms: 0,
            };
            store
                .mutate(key, put, Precondition::None, 1, &NoJournal, &mut |_| {})
                .expect("put");
        }
        let locked = store.lock_read(keys.iter().map(String::as_str));
        assert!(keys.iter().all(|key| locked.entry(key).is_some()));
        // A read lock may be taken again while held.
        assert!(store.get("key-1", || 1).is_some());
        drop(locked);
        let (absent, key_1) = (store.place("absent"), store.place("key-1"));
        let mut locked = store.lock_write_places(&[absent, key_1]);
        assert!(locked.entry_at(absent, "absent").is_none());
        assert_eq!(
            locked.entry_at(key_1, "key-1").map(|e| e.value()),
            Some(&b"1"[..])
        );
        drop(locked);
        let all = store.lock_all_read();
        assert!(keys.iter().all(|key| all.entry(key).is_some()));
    }
}
