//! Retention of the log: which WAL segments may be deleted, and the count
//! of the events a subscription still lacked when they go (`lost_events`).
//!
//! Snapshots alone do not decide: the log is also kept for lagging
//! subscriptions and feed resumes, up to `--event-retention-bytes` (newest
//! segments first). Before a segment goes, every subscription whose reader
//! has not passed it is charged with the matching events it held, and that
//! is logged and synced first, so a crash cannot lose the count. A segment
//! holding a change that is still in the feed's ring and that a subscription
//! has not read yet stays (with every later one): it is not lost while the
//! reader can take it from memory, so it must not vanish with the ring.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::{DbError, Inner};
use crate::events::subscriptions::SubscriptionOp;
use crate::wal::{LogReader, Record, segment};

/// The revision before the oldest one on disk in `dir` at start-up:
/// nothing was ever dropped while segment 1 is there.
pub(super) fn initial_floor(reader: &LogReader, dir: &Path, revision: u64) -> u64 {
    let Ok(segments) = segment::list(dir) else {
        return revision;
    };
    if segments.first().is_none_or(|&n| n == 1) {
        return 0;
    }
    for n in segments {
        if let Ok(Some(first)) = reader.first_revision(n, false) {
            return first - 1;
        }
    }
    revision
}

impl Inner {
    /// Deletes the WAL segments before `keep_from` (the oldest kept
    /// snapshot's) that fall outside the retention budget, after charging
    /// the subscriptions that still lacked their events.
    pub(super) fn prune_wal(&self, keep_from: u64) -> Result<(), DbError> {
        let (Some(dir), Some(reader), Some(wal)) = (&self.dir, &self.log_reader, &self.wal) else {
            return Ok(());
        };
        let io = |e: std::io::Error| DbError::Unavailable(format!("{}: {e}", dir.display()));
        let segments = segment::list(dir).map_err(io)?;
        let mut kept_bytes = 0u64;
        let mut doomed = Vec::new();
        for &n in segments.iter().rev() {
            kept_bytes += std::fs::metadata(segment::path(dir, n)).map_or(0, |m| m.len());
            if n < keep_from && kept_bytes > self.config.event_retention_bytes {
                doomed.push(n);
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        doomed.sort_unstable();
        // Every reader waits while its share is counted: an event is either
        // read before this or counted lost here, never both nor neither.
        let subs = self.registry.all();
        let mut readers: Vec<_> = subs
            .iter()
            .map(|s| s.read_next.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        // Events still in the feed's ring are read from there, not disk, so
        // they are not lost; but once the ring moves on they are on disk
        // only. A segment holding one that a subscription has not read yet
        // therefore stays, with every newer one, or that event would be
        // neither read nor counted. Segments go oldest first up to it.
        let in_memory_from = self.feed.reader().ring_floor() + 1;
        let mut lost = vec![0u64; subs.len()];
        let mut through = reader.floor();
        let mut dropped = 0;
        for &n in &doomed {
            let mut in_ring = false;
            let mut segment_lost = vec![0u64; subs.len()];
            let mut segment_through = through;
            crate::wal::reader::scan(dir, n, 0, &mut |record| {
                let changes = record.into_changes().unwrap_or_default();
                for change in changes {
                    segment_through = segment_through.max(change.version);
                    for (i, sub) in subs.iter().enumerate() {
                        if change.version >= *readers[i] && sub.def.target.matches(&change.key) {
                            if change.version >= in_memory_from {
                                in_ring = true;
                                return false;
                            }
                            segment_lost[i] += 1;
                        }
                    }
                }
                true
            })
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
            if in_ring {
                break;
            }
            for (total, more) in lost.iter_mut().zip(segment_lost) {
                *total += more;
            }
            through = segment_through;
            dropped += 1;
        }
        doomed.truncate(dropped);
        if doomed.is_empty() {
            return Ok(());
        }
        let dropped_through = through;
        let mut last_seq = None;
        for (i, sub) in subs.iter().enumerate() {
            if *readers[i] <= dropped_through {
                *readers[i] = dropped_through + 1;
            }
            if lost[i] == 0 {
                continue;
            }
            tracing::warn!(subscription = %sub.def.id, events = lost[i], through = dropped_through, "webhook events lost: the log that held them is beyond --event-retention-bytes");
            self.pool
                .stats()
                .dropped
                .fetch_add(lost[i], Ordering::Relaxed);
            let op = SubscriptionOp::Lost {
                id: sub.def.id.clone(),
                through: dropped_through,
                lost_events: sub.state().lost_events + lost[i],
            };
            last_seq = Some(
                wal.submit(Record::Meta(op.to_doc()))
                    .map_err(|e| DbError::Unavailable(e.to_string()))?,
            );
        }
        if let Some(seq) = last_seq {
            wal.wait_blocking(seq)
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
        }
        reader.raise_floor(through);
        readers.clear();
        for &n in &doomed {
            let path = segment::path(dir, n);
            std::fs::remove_file(&path).map_err(io)?;
        }
        segment::sync_dir(dir).map_err(io)?;
        tracing::info!(
            segments = doomed.len(),
            through,
            "dropped WAL segments beyond the retention budget"
        );
        Ok(())
    }
}
