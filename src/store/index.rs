//! The ordered key index: every committed key in ascending byte order, so
//! a page of a listing costs O(log n + page size) and a prefixed count
//! walks only the keys under its prefix.
//!
//! There is one [`Ordered`] set per map shard, holding a [`KeyRef`] (8
//! bytes) to each committed entry of that shard, sorted. It is changed only by a
//! writer that holds the shard's write lock, at the moment an entry
//! appears, goes away or moves, and read only under the shard's read lock,
//! which keeps every entry it points to alive (see `packed.rs`). A walk
//! ([`walk`]) merges the shards' sets: it copies a few keys of each out at
//! a time, under that shard's lock alone, and calls back with no lock held.
//!
//! Invariant: no I/O here, and no lock is taken by this module itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use compact_str::CompactString;

use super::packed::KeyRef;

/// One shard's committed keys in byte order: a sorted vector of 8-byte
/// references. Measured with dhat at 200k keys loaded in the wrk
/// preloader's order, std's `BTreeSet` of the same references took 19 bytes
/// per key (its nodes split in halves and sequential runs leave them half
/// full); the vector takes 8 and a little slack. An insert or remove moves
/// on average half of a shard's references (at 1M keys, 16 KiB), which a
/// memmove does in well under the cost of the key comparisons that find
/// the place, and only a new or removed key pays it: an overwrite leaves
/// the index alone unless the entry moves, and then replaces in place.
///
/// A walk usually goes on where the last one stopped (a cursor walk's
/// next page starts right after the previous page's last key), so the set
/// remembers where its last copy stopped, and the next one searches
/// outward from there: a few comparisons of keys still in cache instead of
/// a binary search over the whole shard, which costs a cache miss per step
/// and, with 256 shards, made up most of a page's time.
///
/// New keys that come in batches ([`Ordered::insert_many`]) wait unsorted
/// until the set is next used: a large import adds a few keys to every
/// shard per batch, and sorting each batch in moved the shard's keys and
/// searched among them once per batch, most of the cost of applying it.
/// Waiting, they are sorted in once, by whatever uses the set next (a
/// write of the shard, a listing, a count), in one pass like a rebuild
/// when they are many. Every method but `insert_many` sorts them in first,
/// so what the set answers is always exact.
///
/// Invariant: an entry whose key is in the set, sorted in or waiting,
/// stays alive until the set is told it went ([`Ordered::remove`]) or
/// moved ([`Ordered::replace`]).
#[derive(Default)]
pub(super) struct Ordered {
    keys: Vec<KeyRef>,
    /// Keys added by [`Ordered::insert_many`] and not sorted in yet.
    waiting: Vec<KeyRef>,
    /// Where the last [`Ordered::copy_out`] stopped: only a guess, checked
    /// before use, since keys come and go in between.
    hint: usize,
}

/// A key's first eight bytes as a number that sorts like them: most
/// comparisons of a sort by it read no entry.
fn head(key: &KeyRef) -> u64 {
    let mut head = [0u8; 8];
    let bytes = key.key().as_bytes();
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(head)
}

/// The smallest byte string greater than every string that starts with
/// `prefix`, or `None` when there is none (empty or all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Reads the start of each entry in `keys`: loads with no branch between
/// them, so the CPU waits for all of their cache misses at once.
fn touch<'a>(keys: impl Iterator<Item = &'a KeyRef>) {
    let mut sum = 0usize;
    for key in keys {
        sum = sum.wrapping_add(key.key().len());
    }
    std::hint::black_box(sum);
}

impl Ordered {
    /// Where `key` is, or would be inserted.
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        self.keys.binary_search_by(|k| k.key().as_bytes().cmp(key))
    }

    /// The first position whose key is not below `bound`.
    fn first_not_below(&self, bound: &[u8]) -> usize {
        self.keys.partition_point(|k| k.key().as_bytes() < bound)
    }

    /// The first position whose key is under `prefix` or past it, and
    /// after `after`: where a walk of `prefix` from the cursor `after`
    /// starts. With a `hint`, the search starts there.
    fn start(&self, prefix: &str, after: Option<&[u8]>, hint: Option<usize>) -> usize {
        match after {
            Some(after) if after >= prefix.as_bytes() => self.partition_from(hint, |k| k <= after),
            _ => {
                let prefix = prefix.as_bytes();
                self.partition_from(hint, |k| k < prefix)
            }
        }
    }

    /// The first position whose key fails `below` (which holds for a
    /// leading run of keys and for none after it). With a `hint`, the
    /// positions next to it are tried first, a few doubling steps away on
    /// the side where the answer lies; an answer that far or nearer costs
    /// a handful of comparisons of keys a walk has just read. Farther away,
    /// or without a hint, it bisects what is left, so a wrong hint costs
    /// at most those few comparisons more than a plain binary search.
    fn partition_from(&self, hint: Option<usize>, below: impl Fn(&[u8]) -> bool) -> usize {
        /// Doubling steps tried from the hint: answers up to 15 positions away.
        const STEPS: u32 = 4;
        let keys = &self.keys;
        let below_at = |i: usize| below(keys[i].key().as_bytes());
        let bisect =
            |lo: usize, hi: usize| lo + keys[lo..hi].partition_point(|k| below(k.key().as_bytes()));
        let Some(hint) = hint.map(|h| h.min(keys.len())) else {
            return bisect(0, keys.len());
        };
        if hint < keys.len() && below_at(hint) {
            // The answer lies after the hint: in lo..=hi.
            let mut lo = hint + 1;
            for step in (0..STEPS).map(|i| 1usize << i) {
                let probe = hint + step;
                if probe >= keys.len() {
                    return bisect(lo, keys.len());
                }
                if !below_at(probe) {
                    return bisect(lo, probe);
                }
                lo = probe + 1;
            }
            bisect(lo, keys.len())
        } else if hint > 0 && !below_at(hint - 1) {
            // The answer lies before the hint: in lo..=hi.
            let mut hi = hint - 1;
            for step in (0..STEPS).map(|i| 1usize << i) {
                let Some(probe) = (hint - 1).checked_sub(step) else {
                    return bisect(0, hi);
                };
                if below_at(probe) {
                    return bisect(probe + 1, hi);
                }
                hi = probe;
            }
            bisect(0, hi)
        } else {
            hint
        }
    }

    /// The positions of the keys under `prefix` that sort after the bytes
    /// `after`.
    fn range(&self, prefix: &str, after: Option<&[u8]>) -> std::ops::Range<usize> {
        let start = self.start(prefix, after, None);
        let end = match prefix_end(prefix.as_bytes()) {
            Some(end) => self.first_not_below(&end),
            None => self.keys.len(),
        };
        start..end.max(start)
    }

    /// Adds an entry's key (the caller holds the shard's write lock).
    pub(super) fn insert(&mut self, key: KeyRef) {
        self.sort_in();
        if let Err(at) = self.find(key.key().as_bytes()) {
            if self.keys.len() == self.keys.capacity() {
                // Grow by an eighth, not by doubling: the slack is memory
                // every key pays for.
                self.keys.reserve_exact(self.keys.len() / 8 + 16);
            }
            self.keys.insert(at, key);
        }
    }

    /// Adds the keys of many new entries at once (the caller holds the
    /// shard's write lock), as a batch of writes does. They wait, unsorted,
    /// until the set is next used (see [`Ordered`]).
    pub(super) fn insert_many(&mut self, new: Vec<KeyRef>) {
        if self.waiting.is_empty() {
            self.waiting = new;
        } else {
            self.waiting.extend(new);
        }
    }

    /// Sorts the waiting keys in. When they are many beside the set, all
    /// are sorted in one go, as a rebuild does; otherwise they are merged
    /// in one pass that moves each key of the set at most once. A key that
    /// is in the set already points at its newer entry afterwards.
    fn sort_in(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let new = std::mem::take(&mut self.waiting);
        if new.len() >= 4 && new.len() >= self.keys.len() / 4 {
            self.sort_all_in(new);
        } else {
            self.merge_in(new);
        }
    }

    /// [`Ordered::sort_in`] of many keys: the set and `new` sorted
    /// together, by their first eight bytes first; of two equal keys the
    /// one from `new` stays.
    fn sort_all_in(&mut self, new: Vec<KeyRef>) {
        let old = std::mem::take(&mut self.keys);
        let mut all: Vec<(u64, KeyRef, bool)> = old
            .into_iter()
            .map(|k| (head(&k), k, false))
            .chain(new.into_iter().map(|k| (head(&k), k, true)))
            .collect();
        all.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        let mut keys: Vec<KeyRef> = Vec::with_capacity(all.len());
        let mut last_head = None;
        for (head, key, _) in all {
            match keys.last_mut() {
                Some(last) if last_head == Some(head) && *last == key => *last = key,
                _ => keys.push(key),
            }
            last_head = Some(head);
        }
        self.keys = keys;
    }

    /// [`Ordered::sort_in`] of a few keys. The places are found by
    /// bisecting for all of the new keys in step: a comparison reads an
    /// entry, which at scale is a cache miss, and each step first touches
    /// the entries that every search will compare with, so their misses
    /// overlap instead of following one another.
    fn merge_in(&mut self, mut new: Vec<KeyRef>) {
        if new.len() < 4 {
            for key in new {
                self.insert(key);
            }
            return;
        }
        new.sort_unstable();
        new.dedup();
        let keys = &self.keys;
        // Branch-free lower bounds, as `partition_point` computes them:
        // `base[j]` ends at the last key below `new[j]` (or 0).
        let mut base = vec![0usize; new.len()];
        let mut size = keys.len();
        while size > 1 {
            let half = size / 2;
            touch(base.iter().map(|&b| &keys[b + half]));
            for (b, key) in base.iter_mut().zip(&new) {
                if keys[*b + half] < *key {
                    *b += half;
                }
            }
            size -= half;
        }
        if !keys.is_empty() {
            touch(base.iter().map(|&b| &keys[b]));
        }
        // Where each new key goes, and whether the set has it already
        // (which a new entry's key never is; kept exact all the same).
        let mut places = Vec::with_capacity(new.len());
        let mut fresh = Vec::with_capacity(new.len());
        let mut present = Vec::new();
        for (&b, key) in base.iter().zip(&new) {
            let at = b + usize::from(keys.get(b).is_some_and(|k| k < key));
            if keys.get(at).is_some_and(|k| k == key) {
                present.push((at, *key));
            } else {
                places.push(at);
                fresh.push(*key);
            }
        }
        for (at, key) in present {
            self.keys[at] = key;
        }
        let old_len = self.keys.len();
        let room = old_len + fresh.len();
        if room > self.keys.capacity() {
            // Grow by an eighth (see `insert`), or to fit the batch.
            self.keys
                .reserve_exact((old_len / 8 + 16).max(room - old_len));
        }
        // Merged from the back: each old key moves once, to its final place.
        self.keys.extend_from_slice(&fresh);
        let mut end = old_len;
        for (j, (&at, &key)) in places.iter().zip(&fresh).enumerate().rev() {
            self.keys.copy_within(at..end, at + j + 1);
            self.keys[at + j] = key;
            end = at;
        }
    }

    /// Removes `key`, before its entry is freed (under the write lock).
    pub(super) fn remove(&mut self, key: &str) {
        self.sort_in();
        if let Ok(at) = self.find(key.as_bytes()) {
            self.keys.remove(at);
        }
    }

    /// Points the index at an entry that moved, while the old allocation
    /// is still alive (under the write lock).
    pub(super) fn replace(&mut self, key: KeyRef) {
        self.sort_in();
        match self.find(key.key().as_bytes()) {
            Ok(at) => self.keys[at] = key,
            Err(_) => self.insert(key),
        }
    }

    /// Replaces the whole set with `keys`, in any order: sorted by their
    /// first eight bytes first, so that most comparisons read no entry.
    pub(super) fn rebuild(&mut self, keys: Vec<KeyRef>) {
        self.waiting = Vec::new();
        let mut keys: Vec<(u64, KeyRef)> = keys.into_iter().map(|k| (head(&k), k)).collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        self.keys = keys.into_iter().map(|(_, k)| k).collect();
    }

    /// Number of keys under `prefix` (expired ones included): two binary
    /// searches, no walk.
    pub(super) fn count(&mut self, prefix: &str) -> usize {
        self.sort_in();
        self.range(prefix, None).len()
    }

    /// Copies up to `chunk` keys under `prefix` that sort after `after`
    /// and pass `keep` to the back of `out`; returns whether the set has
    /// no more such keys after them.
    ///
    /// It starts from where the last copy stopped (see [`Ordered::hint`])
    /// and stops at the first key outside `prefix`: the keys under a
    /// prefix are one run, so no search for the run's end is needed.
    pub(super) fn copy_out(
        &mut self,
        prefix: &str,
        after: Option<&[u8]>,
        chunk: usize,
        keep: impl Fn(&KeyRef) -> bool,
        out: &mut VecDeque<CompactString>,
    ) -> bool {
        self.sort_in();
        let start = self.start(prefix, after, Some(self.hint));
        let mut copied = 0;
        for (at, key) in self.keys.iter().enumerate().skip(start) {
            let text = key.key();
            if !text.starts_with(prefix) {
                self.hint = at;
                return true;
            }
            if copied == chunk {
                self.hint = at;
                return false;
            }
            if keep(key) {
                out.push_back(CompactString::from(text));
                copied += 1;
            }
        }
        self.hint = self.keys.len();
        true
    }

    /// Every key, for a consistency check in tests.
    #[cfg(test)]
    pub(super) fn keys(&mut self) -> Vec<String> {
        self.sort_in();
        self.keys.iter().map(|k| k.key().to_owned()).collect()
    }
}

/// Calls `visit` with the keys of `parts` sets in ascending byte order,
/// until it returns `false` or the keys run out. `fill(part, after, chunk,
/// out)` copies up to `chunk` keys of one part that sort after `after` (the
/// walk's cursor, then the last key merged from that part) to `out`, and
/// says whether that part has no more. `expected` is how many keys the
/// caller will probably take; it sizes the chunks.
///
/// A key that is in its part for the whole walk is visited exactly once;
/// one added or removed meanwhile may or may not be.
pub(super) fn walk(
    parts: usize,
    after: Option<&[u8]>,
    expected: usize,
    mut fill: impl FnMut(usize, Option<&[u8]>, usize, &mut VecDeque<CompactString>) -> bool,
    mut visit: impl FnMut(&str) -> bool,
) {
    // Enough that most parts need no second visit for one page.
    let chunk = expected / parts + 2;
    let mut buffers: Vec<(VecDeque<CompactString>, bool)> = Vec::with_capacity(parts);
    let mut heads: BinaryHeap<Reverse<(CompactString, usize)>> = BinaryHeap::with_capacity(parts);
    for part in 0..parts {
        let mut buffer = VecDeque::new();
        let exhausted = fill(part, after, chunk, &mut buffer);
        if let Some(key) = buffer.pop_front() {
            heads.push(Reverse((key, part)));
        }
        buffers.push((buffer, exhausted));
    }
    while let Some(Reverse((key, part))) = heads.pop() {
        if !visit(&key) {
            return;
        }
        let (buffer, exhausted) = &mut buffers[part];
        if buffer.is_empty() && !*exhausted {
            // Every key of this part up to `key` has been merged: go on
            // right after it.
            *exhausted = fill(part, Some(key.as_bytes()), chunk, buffer);
        }
        if let Some(next) = buffer.pop_front() {
            heads.push(Reverse((next, part)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{Ordered, walk};
    use crate::store::packed::Packed;

    const PARTS: usize = 8;

    /// Entries spread over a few parts, each part's index kept in step,
    /// as the store does under its shard locks.
    #[derive(Default)]
    struct Fixture {
        entries: BTreeMap<String, Packed>,
        parts: Vec<Ordered>,
    }

    fn part_of(key: &str) -> usize {
        key.bytes()
            .fold(7usize, |h, b| h.wrapping_mul(31) ^ usize::from(b))
            % PARTS
    }

    impl Fixture {
        fn new(keys: &[&str]) -> Fixture {
            let mut fixture = Fixture {
                entries: BTreeMap::new(),
                parts: (0..PARTS).map(|_| Ordered::default()).collect(),
            };
            for key in keys {
                fixture.insert(key);
            }
            fixture
        }

        fn insert(&mut self, key: &str) {
            if self.entries.contains_key(key) {
                return;
            }
            let entry = Packed::new(key, b"1", 1, 0);
            self.parts[part_of(key)].insert(entry.key_ref());
            self.entries.insert(key.to_owned(), entry);
        }

        /// Inserts new keys as a batch of writes does: created first,
        /// then added to each part's index in one go.
        fn insert_batch(&mut self, keys: &[String]) {
            let mut new: Vec<Vec<_>> = (0..PARTS).map(|_| Vec::new()).collect();
            for key in keys {
                if !self.entries.contains_key(key) {
                    let entry = Packed::new(key, b"1", 1, 0);
                    new[part_of(key)].push(entry.key_ref());
                    self.entries.insert(key.clone(), entry);
                }
            }
            for (part, keys) in self.parts.iter_mut().zip(new) {
                part.insert_many(keys);
            }
        }

        fn remove(&mut self, key: &str) {
            // Out of the index first, then freed.
            self.parts[part_of(key)].remove(key);
            self.entries.remove(key);
        }

        /// Gives `key` a value in another size class, so its entry moves.
        fn grow(&mut self, key: &str) {
            if let Some(entry) = self.entries.get_mut(key) {
                let len = if entry.value().len() == 1 { 300 } else { 1 };
                let old = entry.set(&vec![b'x'; len], 2, 0);
                assert!(old.is_some(), "a new size class moves the entry");
                self.parts[part_of(key)].replace(entry.key_ref());
                drop(old);
            }
        }

        fn walk(&mut self, prefix: &str, after: Option<&str>, take: usize) -> Vec<String> {
            let mut seen = Vec::new();
            walk(
                PARTS,
                after.map(str::as_bytes),
                take,
                |part, after, chunk, out| {
                    self.parts[part].copy_out(prefix, after, chunk, |_| true, out)
                },
                |key| {
                    seen.push(key.to_owned());
                    seen.len() < take
                },
            );
            seen
        }

        fn count(&mut self, prefix: &str) -> usize {
            self.parts.iter_mut().map(|p| p.count(prefix)).sum()
        }
    }

    /// One case: the keys, the walk's arguments and what it must visit.
    fn check(keys: &[&str], prefix: &str, after: Option<&str>, take: usize, expected: &[&str]) {
        let mut fixture = Fixture::new(keys);
        assert_eq!(
            fixture.walk(prefix, after, take),
            expected,
            "keys {keys:?} prefix {prefix:?} after {after:?} take {take}"
        );
        let under = keys.iter().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(
            fixture.count(prefix),
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
        check(&["a", "ab", "abc", "b"], "ab", Some("zz"), 10, &[]);
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
        // A prefix whose last byte is the largest UTF-8 byte there is.
        check(
            &["a\u{7f}", "a\u{7f}b", "a\u{80}"],
            "a\u{7f}",
            None,
            10,
            &["a\u{7f}", "a\u{7f}b"],
        );
        check(
            &["\u{10ffff}", "\u{10ffff}x"],
            "\u{10ffff}",
            None,
            10,
            &["\u{10ffff}", "\u{10ffff}x"],
        );
    }

    #[test]
    fn removed_keys_are_not_walked_and_moved_entries_are_walked_once() {
        let mut fixture = Fixture::new(&["a", "b", "c"]);
        fixture.remove("b");
        fixture.remove("zz");
        fixture.grow("c");
        fixture.insert("a");
        assert_eq!(fixture.walk("", None, 10), ["a", "c"]);
        assert_eq!(fixture.count(""), 2);
    }

    #[test]
    fn walks_across_many_refills_of_every_part() {
        let keys: Vec<String> = (0..3000).map(|i| format!("k{i:05}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut fixture = Fixture::new(&refs);
        // A small expectation forces the smallest chunks, so every part
        // is refilled many times during one walk.
        assert_eq!(fixture.walk("", None, usize::MAX), keys);
        assert_eq!(
            fixture.walk("k02", Some("k02500"), 3),
            ["k02501", "k02502", "k02503"]
        );
        assert_eq!(fixture.count("k029"), 100);
    }

    #[test]
    fn a_search_from_any_hint_finds_what_bisection_finds() {
        let keys: Vec<String> = (0..200).map(|i| format!("k{:04}", i * 3)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let fixture = Fixture::new(&refs);
        let mut rng = fastrand::Rng::with_seed(18);
        for part in &fixture.parts {
            for _ in 0..500 {
                let bound = format!("k{:04}", rng.usize(0..650));
                let bound = bound.as_bytes();
                let hint = rng.usize(0..part.keys.len() + 3);
                let expected = part.keys.partition_point(|k| k.key().as_bytes() <= bound);
                assert_eq!(part.partition_from(None, |k| k <= bound), expected);
                assert_eq!(
                    part.partition_from(Some(hint), |k| k <= bound),
                    expected,
                    "hint {hint} bound {bound:?}"
                );
            }
        }
    }

    #[test]
    fn keys_added_in_one_batch_land_where_single_inserts_put_them() {
        let mut rng = fastrand::Rng::with_seed(18);
        for existing in [0, 1, 2, 5, 100, 3000] {
            for batch in [0, 1, 4, 5, 17, 600] {
                let key = |rng: &mut fastrand::Rng| format!("k{}", rng.u32(0..5000));
                let old: Vec<String> = (0..existing).map(|_| key(&mut rng)).collect();
                // Some before, after and among the others; some present.
                let mut new: Vec<String> = (0..batch).map(|_| key(&mut rng)).collect();
                new.extend(["", "a", "zz"].map(String::from));
                new.extend(old.iter().take(3).cloned());
                let mut batched = Fixture::new(&[]);
                for key in &old {
                    batched.insert(key);
                }
                batched.insert_batch(&new);
                let mut single = Fixture::new(&[]);
                for key in old.iter().chain(&new) {
                    single.insert(key);
                }
                for (a, b) in batched.parts.iter_mut().zip(&mut single.parts) {
                    assert_eq!(a.keys(), b.keys(), "{existing} + {batch}");
                }
            }
        }
    }

    #[test]
    fn a_batch_with_a_key_already_there_points_it_at_the_new_entry() {
        // A few new keys are merged in; many are sorted in with the rest.
        for more in [0, 40] {
            let keys: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
            let mut fixture = Fixture::new(&keys.iter().map(String::as_str).collect::<Vec<_>>());
            let part = part_of("k07");
            let mut batch = vec![
                Packed::new("k07", b"22", 2, 0),
                Packed::new("k07x", b"1", 1, 0),
            ];
            batch.extend(["a", "b", "c"].map(|k| Packed::new(k, b"1", 1, 0)));
            batch.extend((0..more).map(|i| Packed::new(&format!("m{i:02}"), b"1", 1, 0)));
            let extra: Vec<String> = batch[1..].iter().map(|e| e.key().to_owned()).collect();
            let refs = batch.iter().map(Packed::key_ref).collect();
            fixture.parts[part].insert_many(refs);
            // Once the set was used (and the waiting keys sorted in), the
            // old entry of "k07" may go: the index points at the new one.
            fixture.parts[part].sort_in();
            for entry in batch {
                fixture.entries.insert(entry.key().to_owned(), entry);
            }
            let mut expected: Vec<String> = fixture
                .entries
                .keys()
                .filter(|k| part_of(k) == part || extra.contains(k))
                .cloned()
                .collect();
            expected.sort();
            assert_eq!(fixture.parts[part].keys(), expected, "{more}");
            let at = fixture.parts[part].find(b"k07").expect("k07");
            assert_eq!(fixture.parts[part].keys[at].key(), "k07");
            assert_eq!(
                fixture.parts[part].keys[at].key().as_ptr(),
                fixture.entries["k07"].key().as_ptr(),
                "{more}"
            );
        }
    }

    #[test]
    fn a_rebuilt_set_equals_one_built_key_by_key() {
        let mut fixture = Fixture::new(&["b", "a", "abcdefgh", "abcdefgh1", "abcdefgh0", "", "é"]);
        for part in &mut fixture.parts {
            let mut rebuilt = Ordered::default();
            let refs = part.keys.iter().rev().copied().collect();
            rebuilt.rebuild(refs);
            assert_eq!(rebuilt.keys(), part.keys());
        }
    }

    /// A model test: random inserts, removes, moves, walks and counts
    /// against a `BTreeSet`, with keys from a small alphabet so prefixes
    /// and cursors often meet real keys.
    #[test]
    fn agrees_with_a_btreeset_model() {
        let mut rng = fastrand::Rng::with_seed(19);
        let mut fixture = Fixture::new(&[]);
        let mut model: BTreeSet<String> = BTreeSet::new();
        let random_key = |rng: &mut fastrand::Rng, max_len: usize| -> String {
            (0..rng.usize(0..=max_len))
                .map(|_| ['a', 'b', 'c', '/'][rng.usize(0..4)])
                .collect()
        };
        for step in 0..6_000 {
            match rng.u8(0..10) {
                0..=3 => {
                    let key = random_key(&mut rng, 6);
                    fixture.insert(&key);
                    model.insert(key);
                }
                4 => {
                    if rng.bool() {
                        fixture.grow(&random_key(&mut rng, 6));
                    } else {
                        let keys: Vec<String> = (0..rng.usize(0..40))
                            .map(|_| random_key(&mut rng, 6))
                            .collect();
                        fixture.insert_batch(&keys);
                        model.extend(keys);
                    }
                }
                5..=6 => {
                    let key = random_key(&mut rng, 6);
                    fixture.remove(&key);
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
                        fixture.walk(&prefix, after.as_deref(), take),
                        expected,
                        "step {step}: prefix {prefix:?} after {after:?} take {take}"
                    );
                }
                _ => {
                    let prefix = random_key(&mut rng, 3);
                    let expected = model.iter().filter(|k| k.starts_with(&prefix)).count();
                    assert_eq!(fixture.count(&prefix), expected, "step {step}: {prefix:?}");
                }
            }
        }
    }
}
