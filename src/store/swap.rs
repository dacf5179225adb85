//! Replacing a store's whole content at one instant: a cluster member that
//! installs a snapshot from its leader builds the new state aside, in a
//! store that hashes like the live one ([`Store::empty_like`]), then swaps
//! the two contents under every shard's write lock ([`Store::swap_contents`]).
//!
//! The swap moves table headers, index vectors and counters, never an
//! entry, so the map pauses for O(shards), not O(keys): a single-key read
//! sees the whole old state or the whole new one, a page with values (read
//! under every shard's read lock) too, and a key-only page or a prefix
//! count, which walk the shards one at a time, start over when a swap
//! happened during their walk ([`Store::swaps`]).
//!
//! The alternative, merging the new state key by key into the live map,
//! needs no second copy's worth of lookups but lets readers see some keys
//! at the new state and others at the old one; building aside costs one
//! extra copy of the state in memory until the old content is dropped,
//! which the merge needed too (it copied every value out of the loaded
//! store).

use std::hash::BuildHasher;
use std::sync::atomic::Ordering;

use dashmap::DashMap;

use super::{SHARD_AMOUNT, Side, Store};

impl Store {
    /// An empty store with this one's hasher, so its content can later be
    /// swapped in with [`Store::swap_contents`].
    pub fn empty_like(&self) -> Store {
        let map = DashMap::with_hasher_and_shard_amount(*self.map.hasher(), SHARD_AMOUNT);
        let sides = (0..map.shards().len()).map(|_| Side::default()).collect();
        Store {
            map,
            sides,
            ..Store::new()
        }
    }

    /// Swaps the whole content (entries, ordered index, expiry index, key
    /// count) of this store and `other`, a store made by
    /// [`Store::empty_like`], and raises this store's revision to
    /// `other`'s. Every shard of both is write-locked, in ascending order,
    /// while the headers move. `other` then holds the old content, to be
    /// dropped by the caller (outside any lock).
    ///
    /// # Panics
    ///
    /// When `other` hashes differently (it was not made by `empty_like`):
    /// its entries would be unreachable here.
    pub fn swap_contents(&self, other: &Store) {
        assert!(
            self.map.hasher().hash_one("k") == other.map.hasher().hash_one("k"),
            "swap_contents needs a store made by empty_like"
        );
        let mut mine: Vec<_> = self.map.shards().iter().map(|s| s.write()).collect();
        let mut theirs: Vec<_> = other.map.shards().iter().map(|s| s.write()).collect();
        for (shard, (a, b)) in mine.iter_mut().zip(theirs.iter_mut()).enumerate() {
            std::mem::swap(&mut **a, &mut **b);
            let (x, y) = (&self.sides[shard], &other.sides[shard]);
            std::mem::swap(&mut *x.lock(), &mut *y.lock());
            let pending = x.n_pending.load(Ordering::Relaxed);
            x.n_pending
                .store(y.n_pending.load(Ordering::Relaxed), Ordering::Relaxed);
            y.n_pending.store(pending, Ordering::Relaxed);
        }
        self.ttl.swap(&other.ttl);
        let n = self.n_committed.load(Ordering::Acquire);
        self.n_committed
            .store(other.n_committed.load(Ordering::Acquire), Ordering::Release);
        other.n_committed.store(n, Ordering::Release);
        self.advance_revision(other.revision());
        self.swaps.fetch_add(1, Ordering::AcqRel);
        drop(theirs);
        drop(mine);
    }

    /// How many times [`Store::swap_contents`] replaced this store's
    /// content: a walk over the shards that saw this change started over.
    pub(super) fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Acquire)
    }
}
