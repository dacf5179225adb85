//! The group-commit writer: one named thread that appends whole batches of
//! records with one write and (under `--fsync always`) one fdatasync, then
//! hands the batch to the database to apply and wakes every waiting writer.
//!
//! Invariant: a record is applied only after its batch was written (and
//! synced, under `always`); a failed write or sync poisons the log for
//! good, truncates the file back to the last good batch, and fails every
//! waiting writer, so nothing unacknowledged is ever half-applied.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{Record, encode};
use super::{WalError, WalStats, segment};
use crate::config::FsyncPolicy;

/// What the writer does with a batch once it is on disk, or once it failed.
pub trait BatchSink: Send + 'static {
    /// The batch is in the log: apply it, in order.
    fn durable(&mut self, records: Vec<Record>);
    /// The batch could not be logged: forget it.
    fn failed(&mut self, records: Vec<Record>);
}

/// Records waiting for the writer, and requests to it.
#[derive(Default)]
struct Queue {
    buf: Vec<u8>,
    records: Vec<Record>,
    /// Sequence number of the last record enqueued.
    last_seq: u64,
    /// The writer is parked on `work` and must be woken.
    writer_idle: bool,
    rotations: Vec<std::sync::mpsc::Sender<Result<u64, WalError>>>,
    closing: bool,
}

struct Shared {
    /// Guards the queue; held only to enqueue or to swap the batch out,
    /// never across I/O.
    queue: Mutex<Queue>,
    work: Condvar,
    /// Pairs with `done` so blocking waiters cannot miss a wake-up.
    done_lock: Mutex<()>,
    done: Condvar,
    notify: tokio::sync::Notify,
    durable_seq: AtomicU64,
    poisoned: OnceLock<String>,
    stats: WalStats,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, seq: u64) -> Option<Result<(), WalError>> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            Some(Ok(()))
        } else {
            self.poisoned
                .get()
                .map(|why| Err(WalError::Poisoned(why.clone())))
        }
    }

    fn wake_waiters(&self) {
        self.notify.notify_waiters();
        let _guard = self.done_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.done.notify_all();
    }
}

/// Handle to the writer thread.
pub struct WalWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WalWriter {
    /// Starts the writer appending to a new segment `segment` in `dir`.
    ///
    /// # Errors
    ///
    /// The segment cannot be created or the thread cannot be spawned.
    pub fn start(
        dir: PathBuf,
        segment: u64,
        policy: FsyncPolicy,
        sink: Box<dyn BatchSink>,
    ) -> Result<WalWriter, WalError> {
        let file = segment::create(&dir, segment).map_err(|e| WalError::io(&dir, e))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            durable_seq: AtomicU64::new(0),
            poisoned: OnceLock::new(),
            stats: WalStats::default(),
        });
        shared.stats.segment.store(segment, Ordering::Relaxed);
        // Fault injection for the disk-full tests, like the snapshot crash
        // hook in `db`: the log behaves as if the disk held only this many
        // more bytes.
        let space_left = std::env::var("DODODB_TEST_WAL_SPACE_BYTES")
            .ok()
            .and_then(|s| s.parse().ok());
        let mut state = WriterState {
            shared: Arc::clone(&shared),
            dir,
            file,
            segment,
            file_len: 0,
            policy,
            sink,
            unsynced: false,
            last_sync: Instant::now(),
            space_left,
        };
        let thread = std::thread::Builder::new()
            .name("dododb-wal".into())
            .spawn(move || state.run())
            .map_err(|e| WalError::Io(format!("cannot start the WAL writer: {e}")))?;
        Ok(WalWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Enqueues a record and returns the sequence number to wait for.
    /// Called under the key's shard lock: enqueue order is log order.
    ///
    /// # Errors
    ///
    /// [`WalError::Poisoned`] once a write or sync has failed.
    pub fn submit(&self, record: Record) -> Result<u64, WalError> {
        if let Some(why) = self.shared.poisoned.get() {
            return Err(WalError::Poisoned(why.clone()));
        }
        let mut queue = self.shared.lock_queue();
        if queue.closing {
            return Err(WalError::Closed);
        }
        encode(&record, &mut queue.buf);
        queue.records.push(record);
        queue.last_seq += 1;
        let seq = queue.last_seq;
        if queue.writer_idle {
            queue.writer_idle = false;
            self.shared.work.notify_one();
        }
        Ok(seq)
    }

    /// Blocks until record `seq` is durable (per the fsync policy) and applied.
    ///
    /// # Errors
    ///
    /// [`WalError::Poisoned`] when its batch could not be written.
    pub fn wait_blocking(&self, seq: u64) -> Result<(), WalError> {
        let mut guard = self
            .shared
            .done_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(result) = self.shared.check(seq) {
                return result;
            }
            guard = self
                .shared
                .done
                .wait(guard)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits until record `seq` is durable (per the fsync policy) and applied.
    ///
    /// # Errors
    ///
    /// [`WalError::Poisoned`] when its batch could not be written.
    pub async fn wait(&self, seq: u64) -> Result<(), WalError> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a wake-up in between is not lost.
            notified.as_mut().enable();
            if let Some(result) = self.shared.check(seq) {
                return result;
            }
            notified.await;
        }
    }

    /// Closes the current segment (synced) and continues in a new one.
    /// Every record of the old segments is applied when this returns.
    ///
    /// # Errors
    ///
    /// The log is poisoned or closed, or the new segment cannot be created.
    pub fn rotate(&self) -> Result<u64, WalError> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut queue = self.shared.lock_queue();
            if queue.closing {
                return Err(WalError::Closed);
            }
            queue.rotations.push(tx);
            queue.writer_idle = false;
            self.shared.work.notify_one();
        }
        rx.recv().unwrap_or(Err(WalError::Closed))
    }

    /// Why the log refuses writes, if it does.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.get().cloned()
    }

    /// Counters of the log.
    pub fn stats(&self) -> &WalStats {
        &self.shared.stats
    }

    /// Writes and syncs what is queued, then stops the thread.
    pub fn close(&self) {
        {
            let mut queue = self.shared.lock_queue();
            queue.closing = true;
            self.shared.work.notify_one();
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the WAL writer thread panicked");
        }
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        self.close();
    }
}

/// Everything the writer thread owns.
struct WriterState {
    shared: Arc<Shared>,
    dir: PathBuf,
    file: File,
    segment: u64,
    file_len: u64,
    policy: FsyncPolicy,
    sink: Box<dyn BatchSink>,
    unsynced: bool,
    last_sync: Instant,
    /// Bytes the (simulated) disk still takes; `None`: no limit.
    space_left: Option<u64>,
}

impl WriterState {
    fn run(&mut self) {
        let mut spare = Vec::new();
        loop {
            let (mut buf, records, last_seq, rotations, closing) = {
                let mut queue = self.shared.lock_queue();
                while queue.records.is_empty() && queue.rotations.is_empty() && !queue.closing {
                    queue.writer_idle = true;
                    let timeout = self.sync_due_in();
                    let (q, _) = self
                        .shared
                        .work
                        .wait_timeout(queue, timeout)
                        .unwrap_or_else(|e| e.into_inner());
                    queue = q;
                    if self.unsynced && self.last_sync.elapsed() >= Duration::from_secs(1) {
                        break;
                    }
                }
                queue.writer_idle = false;
                let buf = std::mem::replace(&mut queue.buf, std::mem::take(&mut spare));
                (
                    buf,
                    std::mem::take(&mut queue.records),
                    queue.last_seq,
                    std::mem::take(&mut queue.rotations),
                    queue.closing,
                )
            };
            if !records.is_empty() {
                self.commit(&buf, records, last_seq);
            }
            if self.policy == FsyncPolicy::EverySec
                && self.unsynced
                && self.last_sync.elapsed() >= Duration::from_secs(1)
            {
                self.sync_or_poison();
            }
            for reply in rotations {
                let _ = reply.send(self.rotate());
            }
            buf.clear();
            spare = buf;
            if closing {
                if self.unsynced {
                    self.sync_or_poison();
                }
                self.shared.wake_waiters();
                return;
            }
        }
    }

    fn sync_due_in(&self) -> Duration {
        if self.policy == FsyncPolicy::EverySec && self.unsynced {
            Duration::from_secs(1).saturating_sub(self.last_sync.elapsed())
        } else {
            Duration::from_secs(3600)
        }
    }

    fn commit(&mut self, buf: &[u8], records: Vec<Record>, last_seq: u64) {
        if self.shared.poisoned.get().is_some() {
            self.sink.failed(records);
            self.shared.wake_waiters();
            return;
        }
        let written = self.append(buf);
        let stats = &self.shared.stats;
        let synced = match (&written, self.policy) {
            (Ok(()), FsyncPolicy::Always) => {
                let started = Instant::now();
                let result = self.file.sync_data();
                stats.record_fsync(started.elapsed());
                result
            }
            (Ok(()), _) => {
                self.unsynced = true;
                Ok(())
            }
            (Err(_), _) => Ok(()),
        };
        if let Err(e) = written.and(synced) {
            self.poison(format!("WAL append failed: {e}"));
            self.sink.failed(records);
            self.shared.wake_waiters();
            return;
        }
        self.file_len += buf.len() as u64;
        stats
            .appends
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        stats
            .bytes_since_rotation
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.sink.durable(records);
        self.shared.durable_seq.store(last_seq, Ordering::Release);
        self.shared.wake_waiters();
    }

    /// Writes `buf` at the end of the segment. Under the disk-full hook, a
    /// batch larger than the space left is written only in part and fails
    /// the way a full disk does, leaving a torn tail for `poison` to cut.
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let Some(left) = self.space_left else {
            return self.file.write_all(buf);
        };
        let fits = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.file.write_all(&buf[..fits])?;
        self.space_left = Some(left - fits as u64);
        if fits < buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (DODODB_TEST_WAL_SPACE_BYTES)",
            ));
        }
        Ok(())
    }

    fn sync_or_poison(&mut self) {
        let started = Instant::now();
        match self.file.sync_data() {
            Ok(()) => {
                self.shared.stats.record_fsync(started.elapsed());
                self.unsynced = false;
                self.last_sync = Instant::now();
            }
            Err(e) => self.poison(format!("WAL fsync failed: {e}")),
        }
    }

    /// Refuses all further writes and cuts the file back to the last batch
    /// that was fully accepted, so a restart does not resurrect writes that
    /// were refused.
    fn poison(&mut self, why: String) {
        tracing::error!(
            segment = self.segment,
            "{why}; refusing writes until restart"
        );
        if let Err(e) = self
            .file
            .set_len(self.file_len)
            .and_then(|()| self.file.sync_all())
        {
            tracing::error!("could not cut the WAL back after a failed write: {e}");
        }
        let _ = self.shared.poisoned.set(why);
    }

    fn rotate(&mut self) -> Result<u64, WalError> {
        if let Some(why) = self.shared.poisoned.get() {
            return Err(WalError::Poisoned(why.clone()));
        }
        if self.unsynced || self.policy != FsyncPolicy::Always {
            self.file
                .sync_data()
                .map_err(|e| WalError::io(&self.dir, e))?;
            self.unsynced = false;
        }
        let next = self.segment + 1;
        self.file = segment::create(&self.dir, next).map_err(|e| WalError::io(&self.dir, e))?;
        self.segment = next;
        self.file_len = 0;
        self.shared.stats.segment.store(next, Ordering::Relaxed);
        self.shared
            .stats
            .bytes_since_rotation
            .store(0, Ordering::Relaxed);
        Ok(next)
    }
}
