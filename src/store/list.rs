//! Paged listing in ascending byte order over an unordered map.
//!
//! A page is the `limit` smallest visible keys after the cursor, found in
//! one pass with a bounded max-heap: O(n log limit) per page and no extra
//! memory per key. Because the cursor is the last key returned, a full walk
//! sees every key that existed for the whole walk exactly once.

use std::collections::BinaryHeap;

use super::Store;

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in ascending byte order.
    pub keys: Vec<Box<str>>,
    /// The last key of this page when more keys follow it.
    pub next_after: Option<Box<str>>,
}

impl Store {
    /// Up to `limit` visible keys under `prefix` that sort after `after`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize, now_ms: u64) -> ListPage {
        let limit = limit.max(1);
        // Keep limit + 1 keys so that we know whether another page follows.
        let mut heap: BinaryHeap<Box<str>> = BinaryHeap::with_capacity(limit + 1);
        self.for_each(now_ms, |key, _| {
            if !key.starts_with(prefix) || after.is_some_and(|a| key <= a) {
                return;
            }
            if heap.len() <= limit {
                heap.push(Box::from(key));
            } else if heap.peek().is_some_and(|largest| key < &**largest) {
                heap.pop();
                heap.push(Box::from(key));
            }
        });
        let mut keys = heap.into_sorted_vec();
        let next_after = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        ListPage { keys, next_after }
    }
}
