//! The live feed's retained changes, packed: a small fixed-size record per
//! change and its key and values' bytes one after another in one buffer.
//!
//! The feed keeps the last `--feed-retained-events` changes (10,000 by
//! default) for `since=` resumes. Held as shared change events, each cost
//! four allocations that lived for 10,000 changes among the store's
//! long-lived entries; packed, a change on its way to the ring allocates
//! nothing, and the events are rebuilt only for the rare reader that asks
//! for retained changes.
//!
//! Invariant: records are in ascending version order (the feed appends in
//! order); each record's bytes start where the previous record's end.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Applied, ChangeEvent, ChangeKind};

/// Dead bytes in front of the buffer's live part are dropped once they
/// are at least this many and at least as many as the live bytes: each
/// byte is moved at most about once.
const COMPACT_AT: usize = 64 * 1024;

/// One retained change, without its bytes.
#[derive(Debug, Clone, Copy)]
struct Record {
    version: u64,
    timestamp_ms: u64,
    /// Where the key starts, counted from the first byte ever appended.
    start: u64,
    key_len: u32,
    /// The old value's length; `u32::MAX` when there was none.
    old_len: u32,
    /// The new value's length; `u32::MAX` for deletes and expiries.
    new_len: u32,
    kind: ChangeKind,
}

/// A value's length, or the mark for none.
const NONE: u32 = u32::MAX;

fn len_of(value: Option<&[u8]>) -> u32 {
    value.map_or(NONE, |v| {
        u32::try_from(v.len())
            .ok()
            .filter(|&n| n != NONE)
            .expect("values are shorter than 4 GiB")
    })
}

fn span(len: u32) -> usize {
    if len == NONE { 0 } else { len as usize }
}

impl Record {
    fn bytes(&self) -> usize {
        self.key_len as usize + span(self.old_len) + span(self.new_len)
    }
}

/// The retained changes, oldest first.
#[derive(Debug, Default)]
pub(super) struct Ring {
    records: VecDeque<Record>,
    /// The records' bytes; those before `head` belong to evicted records.
    bytes: Vec<u8>,
    head: usize,
    /// Bytes dropped from the front of `bytes` so far: a record's bytes
    /// are at `start - dropped`.
    dropped: u64,
}

impl Ring {
    /// An empty ring with room for `records` changes before it grows.
    pub(super) fn with_capacity(records: usize) -> Ring {
        Ring {
            records: VecDeque::with_capacity(records),
            ..Ring::default()
        }
    }

    /// Changes retained.
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// The oldest retained change's version.
    pub(super) fn oldest(&self) -> Option<u64> {
        self.records.front().map(|r| r.version)
    }

    /// Appends a change; its version must be above every retained one.
    pub(super) fn push(&mut self, change: &Applied<'_>) {
        let record = Record {
            version: change.version,
            timestamp_ms: change.timestamp_ms,
            start: self.dropped + self.bytes.len() as u64,
            key_len: u32::try_from(change.key.len()).expect("keys are shorter than 4 GiB"),
            old_len: len_of(change.old_value),
            new_len: len_of(change.new_value),
            kind: change.kind,
        };
        self.bytes.extend_from_slice(change.key.as_bytes());
        for value in [change.old_value, change.new_value].into_iter().flatten() {
            self.bytes.extend_from_slice(value);
        }
        self.records.push_back(record);
    }

    /// Drops the oldest change; returns its version.
    pub(super) fn pop_front(&mut self) -> Option<u64> {
        let record = self.records.pop_front()?;
        self.head += record.bytes();
        if self.head >= COMPACT_AT && self.head >= self.bytes.len() - self.head {
            self.bytes.drain(..self.head);
            self.dropped += self.head as u64;
            self.head = 0;
            // Values far larger than usual must not stay reserved after
            // they left the ring.
            if self.bytes.capacity() > 4 * self.bytes.len().max(COMPACT_AT) {
                self.bytes.shrink_to(2 * self.bytes.len());
            }
        }
        Some(record.version)
    }

    /// The position of the first change after revision `after`.
    pub(super) fn first_after(&self, after: u64) -> usize {
        self.records.partition_point(|r| r.version <= after)
    }

    fn at(&self, record: &Record) -> usize {
        // The offset is within `bytes`, which is far below usize::MAX.
        (record.start - self.dropped) as usize
    }

    fn key_of(&self, record: &Record) -> &str {
        let at = self.at(record);
        let key = &self.bytes[at..at + record.key_len as usize];
        // The key was a `str` when it was appended, and the slice covers
        // exactly its bytes.
        std::str::from_utf8(key).expect("a retained key is UTF-8")
    }

    /// The version of the change at position `at`.
    pub(super) fn version_at(&self, at: usize) -> Option<u64> {
        self.records.get(at).map(|r| r.version)
    }

    /// The key of the change at position `at`.
    pub(super) fn key_at(&self, at: usize) -> Option<&str> {
        self.records.get(at).map(|r| self.key_of(r))
    }

    /// The change at position `at`, rebuilt.
    pub(super) fn event_at(&self, at: usize) -> Option<ChangeEvent> {
        self.records.get(at).map(|r| self.event(r))
    }

    /// The changes at positions `range` whose key passes `keep`, rebuilt,
    /// oldest first.
    pub(super) fn events_in(
        &self,
        range: std::ops::Range<usize>,
        keep: impl Fn(&str) -> bool,
    ) -> impl Iterator<Item = ChangeEvent> {
        let range = range.start.min(self.len())..range.end.min(self.len());
        self.records
            .range(range)
            .filter(move |r| keep(self.key_of(r)))
            .map(|r| self.event(r))
    }

    fn event(&self, record: &Record) -> ChangeEvent {
        let mut at = self.at(record) + record.key_len as usize;
        let mut value = |len: u32| {
            (len != NONE).then(|| {
                let bytes = Bytes::copy_from_slice(&self.bytes[at..at + len as usize]);
                at += len as usize;
                bytes
            })
        };
        let old_value = value(record.old_len);
        let new_value = value(record.new_len);
        ChangeEvent {
            key: Box::from(self.key_of(record)),
            kind: record.kind,
            old_value,
            new_value,
            version: record.version,
            timestamp_ms: record.timestamp_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{COMPACT_AT, Ring};
    use crate::events::{Applied, ChangeEvent, ChangeKind};
    use bytes::Bytes;

    fn change(version: u64, key: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> ChangeEvent {
        ChangeEvent {
            key: Box::from(key),
            kind: match new {
                Some(_) => ChangeKind::Update,
                None if version.is_multiple_of(2) => ChangeKind::Delete,
                None => ChangeKind::Expire,
            },
            old_value: old.map(Bytes::copy_from_slice),
            new_value: new.map(Bytes::copy_from_slice),
            version,
            timestamp_ms: 1_000 + version,
        }
    }

    #[test]
    fn changes_come_back_as_they_went_in() {
        let mut ring = Ring::with_capacity(4);
        let changes = [
            change(3, "a", None, Some(b"{}")),
            change(4, "", Some(b"1"), None),
            change(5, "é/ü", None, None),
            change(9, "a/b", Some(b""), Some(b"[1,2]")),
        ];
        for c in &changes {
            ring.push(&Applied::of(&Arc::new(c.clone())));
        }
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.oldest(), Some(3));
        let all: Vec<ChangeEvent> = ring.events_in(0..usize::MAX, |_| true).collect();
        assert_eq!(all, changes);
        let keys: Vec<Box<str>> = ring.events_in(1..4, |_| true).map(|e| e.key).collect();
        assert_eq!(keys, ["", "é/ü", "a/b"].map(Box::from));
        let under_a: Vec<u64> = ring
            .events_in(0..usize::MAX, |k| k.starts_with('a'))
            .map(|e| e.version)
            .collect();
        assert_eq!(under_a, [3, 9]);
        assert_eq!(ring.first_after(0), 0);
        assert_eq!(ring.first_after(4), 2);
        assert_eq!(ring.first_after(8), 3);
        assert_eq!(ring.first_after(9), 4);
        assert_eq!(ring.pop_front(), Some(3));
        assert_eq!(ring.oldest(), Some(4));
        assert_eq!(
            ring.events_in(0..usize::MAX, |_| true).collect::<Vec<_>>(),
            changes[1..]
        );
    }

    /// Many times the compaction threshold passes through a ring of 100:
    /// the retained changes always read back intact, and the buffer holds
    /// at most about twice their bytes.
    #[test]
    fn a_long_run_through_a_small_ring_reads_back_and_stays_small() {
        let mut ring = Ring::with_capacity(100);
        let value = |v: u64| {
            format!(
                "{{\"n\":{v},\"pad\":\"{}\"}}",
                "x".repeat((v % 300) as usize)
            )
        };
        for v in 1..=20_000u64 {
            let new = value(v);
            let old = v.is_multiple_of(3).then(|| value(v - 1));
            let change = Arc::new(change(
                v,
                &format!("k{v}"),
                old.as_deref().map(str::as_bytes),
                Some(new.as_bytes()),
            ));
            ring.push(&Applied::of(&change));
            if ring.len() > 100 {
                assert_eq!(ring.pop_front(), Some(v - 100));
            }
            if v.is_multiple_of(997) {
                let back: Vec<ChangeEvent> = ring.events_in(0..usize::MAX, |_| true).collect();
                assert_eq!(back.len(), 100);
                for (e, v) in back.iter().zip(v - 99..) {
                    assert_eq!(&*e.key, format!("k{v}"));
                    assert_eq!(e.new_value.as_deref(), Some(value(v).as_bytes()));
                    let old = v.is_multiple_of(3).then(|| value(v - 1));
                    assert_eq!(e.old_value.as_deref(), old.as_deref().map(str::as_bytes));
                }
                let live: usize = back
                    .iter()
                    .map(|e| {
                        e.key.len()
                            + e.old_value.as_ref().map_or(0, |b| b.len())
                            + e.new_value.as_ref().map_or(0, |b| b.len())
                    })
                    .sum();
                assert!(
                    ring.bytes.len() <= 2 * live.max(COMPACT_AT) + 1024,
                    "{} for {live}",
                    ring.bytes.len()
                );
            }
        }
        assert!(ring.dropped > 0, "the buffer was compacted");
    }
}
