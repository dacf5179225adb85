//! The ordered key index: every committed key in ascending byte order, so
//! a page of a listing costs O(log n + page size) and a prefixed count
//! walks only the keys under its prefix.
//!
//! The index is split into [`PARTS`] sorted sets. A key's part follows from
//! its map shard, and a key is added or removed only by a writer that holds
//! that shard's write lock, at the moment its committed value appears or
//! goes away; so the index holds exactly the committed keys (expired but
//! unreaped ones included) whenever no writer is mid-change. Each part has
//! its own mutex, taken after a shard lock and never the other way round,
//! and held only to copy a few keys out: a walk merges the parts in chunks
//! and calls back with no lock of the index held.
//!
//! Invariant: no I/O and no other lock is taken while a part's mutex is
//! held.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use compact_str::CompactString;

/// How many sorted sets the index is split into. Writers of different
/// parts never meet; a walk merges all of them, so fewer parts make a
/// small page cheaper. A power of two that divides the shard count.
pub(super) const PARTS: usize = 64;

/// The sorted sets of committed keys.
pub(super) struct KeyIndex {
    parts: Box<[Mutex<BTreeSet<CompactString>>]>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            parts: (0..PARTS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// Where a walk starts: the prefix's first key, or just after the cursor
/// when that sorts later.
fn lower_bound<'a>(prefix: &'a str, after: Option<&'a str>) -> Bound<&'a str> {
    match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    }
}

/// One part's share of a walk: keys copied out and not yet merged.
struct PartCursor {
    buffered: VecDeque<CompactString>,
    /// The part has no more keys under the prefix after the buffered ones.
    exhausted: bool,
}

impl KeyIndex {
    fn part(&self, part: usize) -> MutexGuard<'_, BTreeSet<CompactString>> {
        // A set is never left half-changed by a panicking holder.
        self.parts[part].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `key` to `part` (the caller holds the key's shard write lock).
    pub(super) fn insert(&self, part: usize, key: &str) {
        self.part(part).insert(CompactString::from(key));
    }

    /// Removes `key` from `part` (the caller holds the key's shard write
    /// lock).
    pub(super) fn remove(&self, part: usize, key: &str) {
        self.part(part).remove(key);
    }

    /// Number of indexed keys under `prefix`: one pass over those keys.
    pub(super) fn count(&self, prefix: &str) -> usize {
        (0..PARTS)
            .map(|part| {
                self.part(part)
                    .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                    .take_while(|key| key.starts_with(prefix))
                    .count()
            })
            .sum()
    }

    /// Copies up to `chunk` keys of `part` under `prefix` that sort after
    /// `after` into `cursor`.
    fn fill(
        &self,
        part: usize,
        prefix: &str,
        after: Option<&str>,
        chunk: usize,
        cursor: &mut PartCursor,
    ) {
        let set = self.part(part);
        let before = cursor.buffered.len();
        cursor.buffered.extend(
            set.range::<str, _>((lower_bound(prefix, after), Bound::Unbounded))
                .take_while(|key| key.starts_with(prefix))
                .take(chunk)
                .cloned(),
        );
        cursor.exhausted = cursor.buffered.len() - before < chunk;
    }

    /// Calls `visit` with the indexed keys under `prefix` that sort after
    /// `after`, in ascending byte order, until it returns `false` or the
    /// keys run out. `expected` is how many keys the caller will probably
    /// take; it sizes the chunks copied out of each part.
    ///
    /// A key that is in the index for the whole walk is visited exactly
    /// once; one added or removed meanwhile may or may not be.
    pub(super) fn walk(
        &self,
        prefix: &str,
        after: Option<&str>,
        expected: usize,
        mut visit: impl FnMut(&str) -> bool,
    ) {
        // Enough that most parts need no second visit for one page.
        let chunk = expected / PARTS + 2;
        let mut cursors: Vec<PartCursor> = Vec::with_capacity(PARTS);
        let mut heads: BinaryHeap<Reverse<(CompactString, usize)>> =
            BinaryHeap::with_capacity(PARTS);
        for part in 0..PARTS {
            let mut cursor = PartCursor {
                buffered: VecDeque::new(),
                exhausted: false,
            };
            self.fill(part, prefix, after, chunk, &mut cursor);
            if let Some(key) = cursor.buffered.pop_front() {
                heads.push(Reverse((key, part)));
            }
            cursors.push(cursor);
        }
        while let Some(Reverse((key, part))) = heads.pop() {
            if !visit(&key) {
                return;
            }
            let cursor = &mut cursors[part];
            if cursor.buffered.is_empty() && !cursor.exhausted {
                // Every key of this part up to `key` has been merged: go on
                // right after it.
                self.fill(part, prefix, Some(&key), chunk, cursor);
            }
            if let Some(next) = cursor.buffered.pop_front() {
                heads.push(Reverse((next, part)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{KeyIndex, PARTS};

    /// An index holding `keys`, each in a part chosen from its bytes.
    fn index_of(keys: &[&str]) -> KeyIndex {
        let index = KeyIndex::default();
        for key in keys {
            index.insert(part_of(key), key);
        }
        index
    }

    fn part_of(key: &str) -> usize {
        key.bytes()
            .fold(7usize, |h, b| h.wrapping_mul(31) ^ usize::from(b))
            % PARTS
    }

    /// Walks `index` and returns what it visited, taking at most `take`.
    fn walk(index: &KeyIndex, prefix: &str, after: Option<&str>, take: usize) -> Vec<String> {
        let mut seen = Vec::new();
        index.walk(prefix, after, take, |key| {
            seen.push(key.to_owned());
            seen.len() < take
        });
        seen
    }

    /// One case: the keys, the walk's arguments and what it must visit.
    fn check(keys: &[&str], prefix: &str, after: Option<&str>, take: usize, expected: &[&str]) {
        let index = index_of(keys);
        assert_eq!(
            walk(&index, prefix, after, take),
            expected,
            "keys {keys:?} prefix {prefix:?} after {after:?} take {take}"
        );
        let under = keys.iter().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(
            index.count(prefix),
            under,
            "count of {prefix:?} in {keys:?}"
        );
    }

    #[test]
    fn walks_in_byte_order_from_the_cursor_within_the_prefix() {
        check(&[], "", None, 10, &[]);
        check(&["a"], "", None, 10, &["a"]);
        check(&["b", "a", "c"], "", None, 10, &["a", "b", "c"]);
        check(&["b", "a", "c"], "", None, 2, &["a", "b"]);
        check(&["b", "a", "c"], "", Some("a"), 10, &["b", "c"]);
        check(&["b", "a", "c"], "", Some("c"), 10, &[]);
        check(&["b", "a", "c"], "", Some("0"), 1, &["a"]);
        check(&["b", "a", "c"], "", Some("bb"), 10, &["c"]);
        check(&["a", "ab", "abc", "b"], "ab", None, 10, &["ab", "abc"]);
        check(
            &["a", "ab", "abc", "b"],
            "ab",
            Some("a"),
            10,
            &["ab", "abc"],
        );
        check(&["a", "ab", "abc", "b"], "ab", Some("ab"), 10, &["abc"]);
        check(&["a", "ab", "abc", "b"], "ab", Some("abc"), 10, &[]);
        check(&["a", "ab", "abc", "b"], "ab", Some("b"), 10, &[]);
        check(&["a", "ab", "abc", "b"], "x", None, 10, &[]);
        // Byte order, not character order: upper case sorts first, and
        // multi-byte UTF-8 after ASCII.
        check(&["é", "z", "Z", "a"], "", None, 10, &["Z", "a", "z", "é"]);
        check(
            &["k10", "k9", "k1", "k100"],
            "k1",
            None,
            10,
            &["k1", "k10", "k100"],
        );
    }

    #[test]
    fn removed_keys_are_not_walked_and_reinserts_are_single() {
        let index = index_of(&["a", "b", "c"]);
        index.remove(part_of("b"), "b");
        index.remove(part_of("zz"), "zz");
        index.insert(part_of("a"), "a");
        assert_eq!(walk(&index, "", None, 10), ["a", "c"]);
        assert_eq!(index.count(""), 2);
    }

    #[test]
    fn walks_across_many_refills_of_every_part() {
        let keys: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let index = index_of(&refs);
        // A small expectation forces the smallest chunks, so every part
        // is refilled many times during one walk.
        let mut seen = Vec::new();
        index.walk("", None, 0, |key| {
            seen.push(key.to_owned());
            true
        });
        assert_eq!(seen, keys);
        assert_eq!(
            walk(&index, "k04", Some("k04500"), 3),
            ["k04501", "k04502", "k04503"]
        );
        assert_eq!(index.count("k049"), 100);
    }

    /// A model test: random inserts, removes, walks and counts against a
    /// `BTreeSet`, with keys from a small alphabet so prefixes and cursors
    /// often meet real keys.
    #[test]
    fn agrees_with_a_btreeset_model() {
        let mut rng = fastrand::Rng::with_seed(19);
        let index = KeyIndex::default();
        let mut model: BTreeSet<String> = BTreeSet::new();
        let random_key = |rng: &mut fastrand::Rng, max_len: usize| -> String {
            (0..rng.usize(0..=max_len))
                .map(|_| ['a', 'b', 'c', '/'][rng.usize(0..4)])
                .collect()
        };
        for step in 0..6_000 {
            match rng.u8(0..10) {
                0..=4 => {
                    let key = random_key(&mut rng, 6);
                    index.insert(part_of(&key), &key);
                    model.insert(key);
                }
                5..=6 => {
                    let key = random_key(&mut rng, 6);
                    index.remove(part_of(&key), &key);
                    model.remove(&key);
                }
                7..=8 => {
                    let prefix = random_key(&mut rng, 2);
                    let after = rng.bool().then(|| random_key(&mut rng, 4));
                    let take = rng.usize(1..300);
                    let expected: Vec<String> = model
                        .iter()
                        .filter(|k| k.starts_with(&prefix))
                        .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                        .take(take)
                        .cloned()
                        .collect();
                    assert_eq!(
                        walk(&index, &prefix, after.as_deref(), take),
                        expected,
                        "step {step}: prefix {prefix:?} after {after:?} take {take}"
                    );
                }
                _ => {
                    let prefix = random_key(&mut rng, 3);
                    let expected = model.iter().filter(|k| k.starts_with(&prefix)).count();
                    assert_eq!(index.count(&prefix), expected, "step {step}: {prefix:?}");
                }
            }
        }
    }
}
