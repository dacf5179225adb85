//! A cluster member's log of applied changes, `<data-dir>/events/`: the
//! Raft log holds commands, not changes, so a member keeps the changes its
//! apply path emits in WAL segments of their own, which the feed reads back
//! (through [`LogBackfill`]) for a `since` older than its ring, as a single
//! server reads its WAL.
//!
//! It is derived data: written by one thread fed from the event hub (the
//! apply path only queues), flushed to the OS but never synced, and rebuilt
//! from nothing when it cannot continue the state. At start-up the revisions
//! the Raft log re-applies that are already in it are not logged again; if
//! the state starts past its end (a snapshot newer than the log) or a
//! snapshot is installed, it starts over and its floor rises to the
//! snapshot's revision, so a resume from before reads as a reset. Segments
//! beyond `--event-retention-bytes` are deleted, oldest first, after the
//! floor is raised past them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::log_source::LogBackfill;
use crate::events::feed::Backfill;
use crate::events::{Applied, ChangeEvent, Listener};
use crate::store::Change;
use crate::wal::reader::scan;
use crate::wal::record::encode;
use crate::wal::{LogReader, Record, segment};

/// How long a read waits for the writer to reach revisions already applied.
const CATCH_UP: Duration = Duration::from_secs(5);

/// What the writer thread is handed, in apply order.
enum Op {
    Change(Arc<ChangeEvent>),
    /// A snapshot at this revision replaced the state: start over.
    Reset(u64),
}

/// The member's change log: its reader, the writer's queue and how far the
/// writer has got.
pub(super) struct EventLog {
    reader: Arc<LogReader>,
    queue: Sender<Op>,
    /// Revisions up to this one are in the log or will never be.
    written: Arc<(Mutex<u64>, Condvar)>,
    /// Re-applied revisions up to this one were logged before a restart.
    logged: u64,
}

impl EventLog {
    /// Opens the log in `<data_dir>/events` for a state at `revision`,
    /// keeping at most about `retention_bytes` of it.
    ///
    /// # Errors
    ///
    /// The directory cannot be read or written.
    pub(super) fn open(
        data_dir: &Path,
        revision: u64,
        retention_bytes: u64,
    ) -> std::io::Result<Arc<EventLog>> {
        let dir = data_dir.join("events");
        std::fs::create_dir_all(&dir)?;
        let segments = segment::list(&dir)?;
        let reader = LogReader::new(dir.clone(), 0);
        let mut last = None;
        for &n in segments.iter().rev() {
            scan(&dir, n, 0, &mut |record| {
                if let Record::Change(change) = record {
                    last = Some(change.version);
                }
                true
            })
            .map_err(std::io::Error::other)?;
            if last.is_some() {
                break;
            }
        }
        let mut first = None;
        for &n in &segments {
            first = reader
                .first_revision(n, true)
                .map_err(std::io::Error::other)?;
            if first.is_some() {
                break;
            }
        }
        let next = segments.last().map_or(1, |n| n + 1);
        let (floor, logged) = match (first, last) {
            (Some(first), Some(last)) if last >= revision => (first - 1, last),
            _ => {
                // Nothing it holds continues this state.
                for &n in &segments {
                    std::fs::remove_file(segment::path(&dir, n))?;
                }
                (revision, revision)
            }
        };
        reader.raise_floor(floor);
        let mut sizes = VecDeque::new();
        for &n in &segments {
            if let Ok(meta) = std::fs::metadata(segment::path(&dir, n)) {
                sizes.push_back((n, meta.len()));
            }
        }
        let reader = Arc::new(reader);
        let written = Arc::new((Mutex::new(logged), Condvar::new()));
        let (queue, ops) = channel();
        let mut writer = Writer {
            file: BufWriter::new(segment::create(&dir, next)?),
            dir,
            segment: next,
            len: 0,
            last: logged,
            segments: sizes,
            segment_bytes: (retention_bytes / 8).clamp(64 << 10, 64 << 20),
            retention_bytes,
            reader: Arc::clone(&reader),
            written: Arc::clone(&written),
            buf: Vec::new(),
        };
        std::thread::Builder::new()
            .name("dododb-events".into())
            .spawn(move || writer.run(&ops))?;
        Ok(Arc::new(EventLog {
            reader,
            queue,
            written,
            logged,
        }))
    }

    /// The hub listener that queues each applied change not yet logged.
    pub(super) fn listener(self: &Arc<Self>) -> Listener {
        let log = Arc::clone(self);
        Arc::new(move |change: &Applied<'_>| {
            if change.version > log.logged {
                let _ = log.queue.send(Op::Change(Arc::clone(change.event())));
            }
        })
    }

    /// The state was replaced by a snapshot at `revision`: what came before
    /// is not retained any more.
    pub(super) fn reset(&self, revision: u64) {
        self.reader.raise_floor(revision);
        let _ = self.queue.send(Op::Reset(revision));
    }

    /// The feed's reader of this log.
    pub(super) fn backfill(self: &Arc<Self>) -> Arc<dyn Backfill> {
        Arc::new(MemberBackfill {
            log: Arc::clone(self),
            inner: LogBackfill(Arc::clone(&self.reader)),
        })
    }

    /// Waits (a bounded time) until the writer has reached `revision`.
    fn wait_written(&self, revision: u64) {
        let (lock, cond) = &*self.written;
        let deadline = Instant::now() + CATCH_UP;
        let mut written = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *written < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(revision, "the event log is behind the applied changes");
                return;
            }
            written = cond
                .wait_timeout(written, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// [`LogBackfill`] over the member's log, which is written a little after
/// the change is applied: a read first lets the writer get there.
struct MemberBackfill {
    log: Arc<EventLog>,
    inner: LogBackfill,
}

impl Backfill for MemberBackfill {
    fn floor(&self) -> u64 {
        self.inner.floor()
    }

    fn read(
        &self,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<(Vec<Arc<ChangeEvent>>, u64), u64> {
        self.log
            .wait_written(through.min(after.saturating_add(max as u64)));
        self.inner.read(after, through, max)
    }
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    file: BufWriter<File>,
    segment: u64,
    len: u64,
    /// The revision of the last change written.
    last: u64,
    /// The closed segments and their sizes, oldest first.
    segments: VecDeque<(u64, u64)>,
    segment_bytes: u64,
    retention_bytes: u64,
    reader: Arc<LogReader>,
    written: Arc<(Mutex<u64>, Condvar)>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(&mut self, ops: &Receiver<Op>) {
        while let Ok(op) = ops.recv() {
            let mut reached = self.apply(op);
            while let Ok(op) = ops.try_recv() {
                reached = self.apply(op).or(reached);
            }
            if let Err(e) = self.file.flush() {
                self.failed(&e, reached.unwrap_or(0));
            }
            if let Some(reached) = reached {
                let (lock, cond) = &*self.written;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) = reached;
                cond.notify_all();
            }
        }
    }

    /// Logs one op; returns the revision it reaches.
    fn apply(&mut self, op: Op) -> Option<u64> {
        match op {
            Op::Change(event) => {
                let version = event.version;
                if let Err(e) = self.append(&event) {
                    self.failed(&e, version);
                }
                Some(version)
            }
            Op::Reset(revision) => {
                if let Err(e) = self.start_over() {
                    self.failed(&e, revision);
                }
                Some(revision)
            }
        }
    }

    fn append(&mut self, event: &ChangeEvent) -> std::io::Result<()> {
        if self.len >= self.segment_bytes {
            self.rotate()?;
            self.prune()?;
        }
        self.buf.clear();
        encode(
            &Record::Change(Change {
                key: event.key.clone(),
                kind: event.kind,
                value: event.new_value.clone(),
                version: event.version,
                expires_at_ms: 0,
                timestamp_ms: event.timestamp_ms,
                old_value: event.old_value.clone(),
            }),
            &mut self.buf,
        );
        self.file.write_all(&self.buf)?;
        self.len += self.buf.len() as u64;
        self.last = event.version;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let next = self.segment + 1;
        let file = segment::create(&self.dir, next)?;
        self.segments.push_back((self.segment, self.len));
        self.file = BufWriter::new(file);
        self.segment = next;
        self.len = 0;
        Ok(())
    }

    /// Deletes the oldest closed segments beyond the retention budget.
    fn prune(&mut self) -> std::io::Result<()> {
        let mut total = self.len + self.segments.iter().map(|s| s.1).sum::<u64>();
        while total > self.retention_bytes
            && let Some(&(n, len)) = self.segments.front()
        {
            // The segment after it starts right after its last revision.
            let next = self.segments.get(1).map_or(self.segment, |s| s.0);
            let through = match self.reader.first_revision(next, false) {
                Ok(Some(first)) => first - 1,
                _ => self.last,
            };
            self.reader.raise_floor(through);
            std::fs::remove_file(segment::path(&self.dir, n))?;
            self.segments.pop_front();
            total -= len;
        }
        Ok(())
    }

    /// Deletes every segment and continues in a new one.
    fn start_over(&mut self) -> std::io::Result<()> {
        self.rotate()?;
        for (n, _) in self.segments.drain(..) {
            std::fs::remove_file(segment::path(&self.dir, n))?;
        }
        Ok(())
    }

    /// A change could not be logged: the ones up to it read as gone.
    fn failed(&mut self, e: &std::io::Error, version: u64) {
        tracing::error!("cannot log applied changes in {}: {e}", self.dir.display());
        self.reader.raise_floor(version);
        let _ = self.rotate();
    }
}
