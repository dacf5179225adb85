//! Paged listing in ascending byte order, read from the ordered index.
//!
//! A page walks the index from the cursor and stops after `limit` + 1
//! visible keys: O(log n + page size), never a pass over the map. Because
//! the cursor is the last key returned and the index holds every committed
//! key, a full walk sees every key that existed for the whole walk exactly
//! once.

use std::collections::VecDeque;

use compact_str::CompactString;

use super::{Entry, Store, index};

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in ascending byte order.
    pub keys: Vec<Box<str>>,
    /// The last key of this page when more keys follow it.
    pub next_after: Option<Box<str>>,
}

/// One page of keys with their entries, read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPage {
    /// Keys in ascending byte order, each with its committed entry.
    pub items: Vec<(Box<str>, Entry)>,
    /// The last key of this page when more keys follow it.
    pub next_after: Option<Box<str>>,
}

/// One page of items of any kind, for [`Store::page`].
pub(super) struct Page<T> {
    /// Items in their keys' ascending byte order.
    pub(super) items: Vec<T>,
    /// The key of the last item when more items follow it.
    pub(super) next_after: Option<Box<str>>,
}

impl Store {
    /// Up to `limit` visible keys under `prefix` that sort after the bytes
    /// `after` (a key, or any position in byte order).
    pub fn list(&self, prefix: &str, after: Option<&[u8]>, limit: usize, now_ms: u64) -> ListPage {
        let Page { items, next_after } =
            self.page(prefix, after, limit, now_ms, |key| Some(Box::from(key)));
        ListPage {
            keys: items,
            next_after,
        }
    }

    /// [`Store::list`] with a copy of each key's entry, as one consistent
    /// read: every shard is read-locked (in ascending order) for the page,
    /// so no write lands between two of its entries (the index changes
    /// only under a shard's write lock too), and a transaction's writes are
    /// all in it or none. Writers wait for the page: O(log n + page size).
    /// The walk and the lookups take their shards' read locks again, which
    /// DashMap's lock allows while a writer waits (see `multi.rs`).
    pub fn list_entries(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: u64,
    ) -> EntryPage {
        let locked = self.lock_all_read();
        let Page { items, next_after } = self.page(prefix, after, limit, now_ms, |key| {
            let entry = locked.entry(key)?;
            entry
                .is_live_by(|| now_ms)
                .then(|| (Box::from(key), entry.to_entry()))
        });
        EntryPage { items, next_after }
    }

    /// Copies up to `chunk` visible keys of `shard` under `prefix` after
    /// `after` to `out`, under the shard's read lock; returns whether the
    /// shard has no more.
    fn copy_keys(
        &self,
        shard: usize,
        prefix: &str,
        after: Option<&[u8]>,
        chunk: usize,
        now_ms: u64,
        out: &mut VecDeque<CompactString>,
    ) -> bool {
        // The read lock keeps every entry the index points to alive.
        let _table = self.map.shards()[shard].read();
        self.sides[shard]
            .lock()
            .order
            .copy_out(prefix, after, chunk, |k| k.is_live_at(now_ms), out)
    }

    /// Walks the index for one page: `take` turns a key into an item, or
    /// skips it with `None`. Stops at the first item past `limit`, which
    /// only says that another page follows.
    pub(super) fn page<T>(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: u64,
        mut take: impl FnMut(&str) -> Option<T>,
    ) -> Page<T> {
        // A walk that a content swap crossed starts over (`swap.rs`).
        loop {
            let swaps = self.swaps();
            let page = self.page_once(prefix, after, limit, now_ms, &mut take);
            if self.swaps() == swaps {
                return page;
            }
        }
    }

    fn page_once<T>(
        &self,
        prefix: &str,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: u64,
        take: &mut impl FnMut(&str) -> Option<T>,
    ) -> Page<T> {
        let limit = limit.max(1);
        let mut items: Vec<T> = Vec::with_capacity(limit.min(1024));
        let mut last: Option<Box<str>> = None;
        let mut more = false;
        let fill = |shard, after: Option<&[u8]>, chunk, out: &mut VecDeque<CompactString>| {
            self.copy_keys(shard, prefix, after, chunk, now_ms, out)
        };
        index::walk(self.sides.len(), after, limit + 1, fill, |key| {
            let Some(item) = take(key) else { return true };
            if items.len() == limit {
                more = true;
                return false;
            }
            items.push(item);
            if items.len() == limit {
                last = Some(Box::from(key));
            }
            true
        });
        Page {
            items,
            next_after: if more { last } else { None },
        }
    }
}
