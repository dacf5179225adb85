//! The group commit of the log. Writers enqueue encoded records under their
//! key's lock; a whole batch is then appended with one write and applied in
//! log order, and exactly the writers it carried are woken.
//!
//! Who commits a batch depends on the fsync policy. Under `always` a named
//! thread does, because its fdatasync would stall an async worker; it
//! yields once before taking a batch, so that a worker sharing its core
//! enqueues what it has ready and one fdatasync carries it all. It hands
//! each written batch to a second thread that applies the batches in log
//! order, so the write and fdatasync of the next batch overlap the apply of
//! the one before (a large transaction or an import batch takes about as
//! long to apply as to sync). Under
//! `never` and `everysec` the waiting writer itself does, after yielding
//! once so that the other requests ready on its worker enqueue first: one
//! write(2) then carries many records with no thread hop at all. The thread
//! still rotates segments, syncs once a second (`everysec`) and commits
//! anything a vanished writer left queued.
//!
//! Invariant: a record is applied only after it was written (and synced,
//! under `always`), and batches are applied in log order; a failed write or
//! sync poisons the log for good, truncates the file back to the last good
//! write, and fails every writer waiting on a record after it (those before
//! it are applied and acknowledged), so nothing unacknowledged is ever
//! half-applied.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::faults::Faults;
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

/// Records waiting for the writer thread, and requests to it.
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

/// A batch taken from the queue and written, or refused (`ok` false).
struct Written {
    records: Vec<Record>,
    last_seq: u64,
    ok: bool,
}

/// What the writer thread hands the applying thread (under `always`), in
/// log order.
enum ToApply {
    Batch(Written),
    /// Rotations to answer once everything before them is applied.
    Rotated(
        Vec<std::sync::mpsc::Sender<Result<u64, WalError>>>,
        Result<u64, WalError>,
    ),
}

/// Batches written and waiting for the applying thread, at most: none, so
/// the writer hands a batch over only once the one before is applied. It
/// is then at most one batch ahead, and the records queued meanwhile go
/// into one write and fdatasync (a deeper queue made an import's syncs
/// half again as many, and smaller).
const APPLY_QUEUE: usize = 0;

/// The open segment file and what is known about it.
struct LogFile {
    file: File,
    segment: u64,
    /// Bytes of the segment that were written completely.
    file_len: u64,
    policy: FsyncPolicy,
    /// Written since the last fdatasync.
    unsynced: bool,
    last_sync: Instant,
    /// The queue's previous buffer, kept for its capacity.
    spare: Vec<u8>,
}

struct Shared {
    /// The data directory the segments live in.
    dir: PathBuf,
    /// Guards the queue; held only to enqueue or to swap the batch out,
    /// never across I/O.
    queue: Mutex<Queue>,
    work: Condvar,
    /// Guards the file. Held to write one batch (and sync it under
    /// `always`; under `never`/`everysec` also to apply it) or to rotate.
    /// Never taken while holding a shard lock, `queue` or `sink`; `queue`
    /// and `sink` may be taken under it.
    log: Mutex<LogFile>,
    /// Applies what was written: under `always` only the applying thread
    /// takes it, otherwise whoever commits a batch, under `log`.
    sink: Mutex<Box<dyn BatchSink>>,
    /// Pairs with `done` so blocking waiters cannot miss a wake-up.
    done_lock: Mutex<()>,
    done: Condvar,
    /// Async writers waiting for their sequence number, woken one by one.
    waiters: Mutex<Vec<(u64, Waker)>>,
    /// The last record applied (so durable and visible).
    durable_seq: AtomicU64,
    /// The last record written (and synced under `always`): a record up to
    /// it is applied even once the log is poisoned, so its writer waits.
    written_seq: AtomicU64,
    poisoned: OnceLock<String>,
    stats: WalStats,
    policy: FsyncPolicy,
    /// Injected failures (tests only; see `faults.rs`).
    faults: Faults,
}

fn relock<T>(result: std::sync::LockResult<MutexGuard<'_, T>>) -> MutexGuard<'_, T> {
    result.unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        relock(self.queue.lock())
    }

    fn lock_log(&self) -> MutexGuard<'_, LogFile> {
        relock(self.log.lock())
    }

    fn check(&self, seq: u64) -> Option<Result<(), WalError>> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Some(Ok(()));
        }
        let why = self.poisoned.get()?;
        // Written before the failure: it is being applied.
        (self.written_seq.load(Ordering::Acquire) < seq)
            .then(|| Err(WalError::Poisoned(why.clone())))
    }

    /// Wakes the writers whose records are now durable (all of them once
    /// the log is poisoned). A writer whose batch is still on its way stays
    /// asleep: waking every waiter per batch costs a task poll each, which
    /// at 256 connections is most of a core.
    fn wake_waiters(&self) {
        // Under `never`/`everysec` every writer commits or checks for itself
        // and never sleeps on these: skip two lock round trips per batch.
        if self.policy != FsyncPolicy::Always {
            return;
        }
        let durable = self.durable_seq.load(Ordering::Acquire);
        let all = self.poisoned.get().is_some();
        let ready: Vec<Waker> = relock(self.waiters.lock())
            .extract_if(.., |(seq, _)| all || *seq <= durable)
            .map(|(_, waker)| waker)
            .collect();
        for waker in ready {
            waker.wake();
        }
        let _guard = relock(self.done_lock.lock());
        self.done.notify_all();
    }

    /// Refuses all further writes and cuts the file back to the last write
    /// that was fully accepted, so a restart does not resurrect writes that
    /// were refused.
    fn poison(&self, log: &mut LogFile, why: String) {
        tracing::error!(
            segment = log.segment,
            "{why}; refusing writes until restart"
        );
        if let Err(e) = log
            .file
            .set_len(log.file_len)
            .and_then(|()| log.file.sync_all())
        {
            tracing::error!("could not cut the WAL back after a failed write: {e}");
        }
        let _ = self.poisoned.set(why);
    }

    /// Takes everything queued and commits it as one batch: written, synced
    /// under `always`, applied in order, its writers woken.
    fn commit_queued(&self, log: &mut LogFile) {
        if let Some(batch) = self.write_queued(log) {
            self.apply(batch);
        }
    }

    /// Takes everything queued and writes it as one batch (synced under
    /// `always`); the caller applies it with [`Shared::apply`], batches in
    /// the order they were written.
    fn write_queued(&self, log: &mut LogFile) -> Option<Written> {
        let (buf, records, last_seq) = {
            let mut queue = self.lock_queue();
            if queue.records.is_empty() {
                return None;
            }
            let buf = std::mem::replace(&mut queue.buf, std::mem::take(&mut log.spare));
            (buf, std::mem::take(&mut queue.records), queue.last_seq)
        };
        let ok = self.write(log, &buf, records.len()).is_ok();
        if ok {
            self.written_seq.store(last_seq, Ordering::Release);
        }
        let mut buf = buf;
        buf.clear();
        log.spare = buf;
        Some(Written {
            records,
            last_seq,
            ok,
        })
    }

    /// Applies a written batch (or forgets a refused one) and wakes its
    /// writers.
    fn apply(&self, batch: Written) {
        {
            let mut sink = relock(self.sink.lock());
            if batch.ok {
                sink.durable(batch.records);
                self.durable_seq.store(batch.last_seq, Ordering::Release);
            } else {
                sink.failed(batch.records);
            }
        }
        self.wake_waiters();
    }

    /// Appends `bytes` holding `n_records` records; syncs under `always`.
    fn write(&self, log: &mut LogFile, bytes: &[u8], n_records: usize) -> Result<(), WalError> {
        if let Some(why) = self.poisoned.get() {
            return Err(WalError::Poisoned(why.clone()));
        }
        // A failed or partial write (a full disk) leaves a torn tail for
        // `poison` to cut.
        let written = self.faults.append(&mut log.file, bytes);
        let synced = match (&written, log.policy) {
            (Ok(()), FsyncPolicy::Always) => self.timed_sync(&log.file),
            (Ok(()), _) => {
                log.unsynced = true;
                Ok(())
            }
            (Err(_), _) => Ok(()),
        };
        if let Err(e) = written.and(synced) {
            let why = format!("WAL append failed: {e}");
            self.poison(log, why.clone());
            return Err(WalError::Poisoned(why));
        }
        log.file_len += bytes.len() as u64;
        let stats = &self.stats;
        stats.appends.fetch_add(n_records as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        stats
            .bytes_since_rotation
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// fdatasync of `file`, counted in the stats when it succeeds.
    fn timed_sync(&self, file: &File) -> std::io::Result<()> {
        let started = Instant::now();
        self.faults.sync(file)?;
        self.stats.record_fsync(started.elapsed());
        Ok(())
    }

    fn sync_or_poison(&self, log: &mut LogFile) {
        match self.timed_sync(&log.file) {
            Ok(()) => {
                log.unsynced = false;
                log.last_sync = Instant::now();
            }
            Err(e) => self.poison(log, format!("WAL fsync failed: {e}")),
        }
    }

    /// Creates the segment after the current one. Called by the writer
    /// thread (the only one that rotates) before it takes the log lock:
    /// creating a file syncs the directory, which can wait behind the disk.
    fn create_next_segment(&self) -> Result<(u64, File), WalError> {
        // A poisoned log takes no new segment (it would stay behind empty).
        if let Some(why) = self.poisoned.get() {
            return Err(WalError::Poisoned(why.clone()));
        }
        let next = self.stats.segment.load(Ordering::Relaxed) + 1;
        let file = segment::create(&self.dir, next).map_err(|e| WalError::io(&self.dir, e))?;
        Ok((next, file))
    }

    /// Continues the log in the new segment `next`; returns the closed
    /// segment's file when it still has to be synced. Everything queued
    /// before was committed by the caller, under the same lock.
    fn switch_segment(
        &self,
        log: &mut LogFile,
        next: u64,
        file: File,
    ) -> Result<Option<File>, WalError> {
        if let Some(why) = self.poisoned.get() {
            return Err(WalError::Poisoned(why.clone()));
        }
        let closed = std::mem::replace(&mut log.file, file);
        // Under `always` every batch was synced already.
        let needs_sync = log.unsynced || log.policy != FsyncPolicy::Always;
        log.unsynced = false;
        log.segment = next;
        log.file_len = 0;
        self.stats.segment.store(next, Ordering::Relaxed);
        self.stats.bytes_since_rotation.store(0, Ordering::Relaxed);
        Ok(needs_sync.then_some(closed))
    }

    /// Syncs the segment being closed before the switch, without holding
    /// the log lock: under `never` it may hold tens of MiB the OS has not
    /// written yet, and writers waiting that long for the lock made the
    /// latency spikes of every snapshot. The switch then syncs only what
    /// was appended meanwhile.
    fn presync_current(&self) -> Result<(), WalError> {
        let file = self.lock_log().file.try_clone();
        match file {
            Ok(file) => self.sync_segment(&file),
            Err(e) => self.sync_failed(&e),
        }
    }

    /// Syncs a segment file other than through the log's own handle. A
    /// failure poisons the log like any failed sync.
    fn sync_segment(&self, file: &File) -> Result<(), WalError> {
        match self.timed_sync(file) {
            Ok(()) => Ok(()),
            Err(e) => self.sync_failed(&e),
        }
    }

    fn sync_failed(&self, e: &std::io::Error) -> Result<(), WalError> {
        let why = format!("WAL fsync of a closed segment failed: {e}");
        tracing::error!("{why}; refusing writes until restart");
        let _ = self.poisoned.set(why.clone());
        self.wake_waiters();
        Err(WalError::Poisoned(why))
    }
}

/// Handle to the log: the queue, the committing writers and the thread.
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
        WalWriter::start_with_faults(dir, segment, policy, sink, Faults::from_env())
    }

    /// [`WalWriter::start`] with the given injected faults.
    ///
    /// # Errors
    ///
    /// As [`WalWriter::start`].
    pub(crate) fn start_with_faults(
        dir: PathBuf,
        segment: u64,
        policy: FsyncPolicy,
        sink: Box<dyn BatchSink>,
        faults: Faults,
    ) -> Result<WalWriter, WalError> {
        let file = segment::create(&dir, segment).map_err(|e| WalError::io(&dir, e))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            dir,
            log: Mutex::new(LogFile {
                file,
                segment,
                file_len: 0,
                policy,
                unsynced: false,
                last_sync: Instant::now(),
                spare: Vec::new(),
            }),
            sink: Mutex::new(sink),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            waiters: Mutex::new(Vec::new()),
            durable_seq: AtomicU64::new(0),
            written_seq: AtomicU64::new(0),
            poisoned: OnceLock::new(),
            stats: WalStats::default(),
            policy,
            faults,
        });
        shared.stats.segment.store(segment, Ordering::Relaxed);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dododb-wal".into())
            .spawn(move || run_thread(&thread_shared))
            .map_err(|e| WalError::Io(format!("cannot start the WAL writer: {e}")))?;
        Ok(WalWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Whether writers commit their own batches (`never`, `everysec`)
    /// rather than the thread (`always`).
    fn writers_commit(&self) -> bool {
        self.shared.policy != FsyncPolicy::Always
    }

    /// Enqueues a record and returns the sequence number to wait for.
    /// Called under the key's shard lock: enqueue order is log order.
    ///
    /// # Errors
    ///
    /// [`WalError::Poisoned`] once a write or sync has failed,
    /// [`WalError::Closed`] once the log is closing.
    pub fn submit(&self, record: Record) -> Result<u64, WalError> {
        self.submit_with(|| record)
    }

    /// Test hook (`DODODB_TEST_WAL_STALL_MS`): a transaction writing a
    /// `stall…` key waits after taking its revisions and before it is
    /// queued, so changes with later revisions reach the log first.
    pub fn stall_for<'k>(&self, mut keys: impl Iterator<Item = &'k str>) {
        if let Some(stall) = self.shared.faults.stall
            && keys.any(|key| key.starts_with("stall"))
        {
            // On a runtime worker, hand its queued tasks to another worker
            // first: a plain sleep would also hold up the tasks parked
            // behind it (the accept loop among them), which no slow disk
            // does to writes that do not share the stalled shard.
            let sleep = || std::thread::sleep(stall);
            match tokio::runtime::Handle::try_current() {
                Ok(runtime)
                    if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(sleep)
                }
                _ => sleep(),
            }
        }
    }

    /// [`WalWriter::submit`] of the record `make` builds under the queue
    /// lock, once the log has agreed to take it: what `make` numbers there
    /// (a change's version) is numbered in log order.
    ///
    /// # Errors
    ///
    /// As [`WalWriter::submit`]; `make` was not called then.
    pub fn submit_with(&self, make: impl FnOnce() -> Record) -> Result<u64, WalError> {
        if let Some(why) = self.shared.poisoned.get() {
            return Err(WalError::Poisoned(why.clone()));
        }
        let mut queue = self.shared.lock_queue();
        if queue.closing {
            return Err(WalError::Closed);
        }
        let record = make();
        encode(&record, &mut queue.buf);
        queue.records.push(record);
        queue.last_seq += 1;
        let seq = queue.last_seq;
        // Under `never`/`everysec` the writer commits it: no futex wake-up.
        if queue.writer_idle && !self.writers_commit() {
            queue.writer_idle = false;
            self.shared.work.notify_one();
        }
        Ok(seq)
    }

    /// The sequence number of the last record submitted: waiting for it
    /// waits for everything submitted so far.
    pub fn last_seq(&self) -> u64 {
        self.shared.lock_queue().last_seq
    }

    /// Commits what is queued unless record `seq` is already durable.
    fn commit_for(&self, seq: u64) -> Result<(), WalError> {
        if let Some(result) = self.shared.check(seq) {
            return result;
        }
        let mut log = self.shared.lock_log();
        // Another writer may have committed it while this one waited.
        if let Some(result) = self.shared.check(seq) {
            return result;
        }
        self.shared.commit_queued(&mut log);
        drop(log);
        self.shared.check(seq).unwrap_or(Err(WalError::Closed))
    }

    /// Blocks until record `seq` is durable (per the fsync policy) and applied.
    ///
    /// # Errors
    ///
    /// [`WalError::Poisoned`] when its batch could not be written.
    pub fn wait_blocking(&self, seq: u64) -> Result<(), WalError> {
        if self.writers_commit() {
            return self.commit_for(seq);
        }
        let mut guard = relock(self.shared.done_lock.lock());
        loop {
            if let Some(result) = self.shared.check(seq) {
                return result;
            }
            guard = relock(self.shared.done.wait(guard));
        }
    }

    /// Waits until record `seq` is durable (per the fsync policy) and applied.
    ///
    /// # Errors
    ///
    /// [`WalError::Poisoned`] when its batch could not be written.
    pub async fn wait(&self, seq: u64) -> Result<(), WalError> {
        if self.writers_commit() {
            // Let the other requests ready on this worker enqueue theirs
            // first, so that one write carries them all.
            tokio::task::yield_now().await;
            return self.commit_for(seq);
        }
        std::future::poll_fn(|cx| {
            if let Some(result) = self.shared.check(seq) {
                return Poll::Ready(result);
            }
            relock(self.shared.waiters.lock()).push((seq, cx.waker().clone()));
            // Checked again after registering: the writer publishes
            // `durable_seq` before it takes the waiter list, so a batch that
            // finished in between is seen here rather than missed.
            match self.shared.check(seq) {
                Some(result) => Poll::Ready(result),
                None => Poll::Pending,
            }
        })
        .await
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
        let thread = relock(self.thread.lock()).take();
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

/// The writer thread: writes batches under `always` (a second thread,
/// started here, applies them); under every policy rotates, syncs each
/// second under `everysec`, and commits what writers that went away before
/// committing left in the queue.
fn run_thread(shared: &Shared) {
    if shared.policy != FsyncPolicy::Always {
        return write_loop(shared, None);
    }
    std::thread::scope(|scope| {
        let (to_apply, applying) = crossbeam_channel::bounded::<ToApply>(APPLY_QUEUE);
        let applier = std::thread::Builder::new()
            .name("dododb-wal-apply".into())
            .spawn_scoped(scope, move || {
                for item in applying {
                    match item {
                        ToApply::Batch(batch) => shared.apply(batch),
                        ToApply::Rotated(replies, result) => {
                            for reply in replies {
                                let _ = reply.send(result.clone());
                            }
                        }
                    }
                }
            });
        match applier {
            Ok(_) => write_loop(shared, Some(&to_apply)),
            Err(e) => {
                // Applied by the writer thread itself then, as under the
                // other policies.
                tracing::error!("no WAL apply thread ({e}); the writer applies");
                write_loop(shared, None);
            }
        }
        // Dropping the sender ends the applying thread once it has applied
        // everything; the scope waits for it.
    });
    shared.wake_waiters();
}

/// The writer thread's loop; written batches go to `to_apply` when given,
/// else are applied at once.
fn write_loop(shared: &Shared, to_apply: Option<&crossbeam_channel::Sender<ToApply>>) {
    let writers_commit = shared.policy != FsyncPolicy::Always;
    loop {
        let mut ticked = false;
        let (rotations, closing) = {
            let mut queue = shared.lock_queue();
            loop {
                let has_batch =
                    queue.records.len() >= shared.faults.batch_min.max(1) && !writers_commit;
                if has_batch || !queue.rotations.is_empty() || queue.closing {
                    break;
                }
                queue.writer_idle = true;
                let (q, timed_out) = relock_timeout(shared.work.wait_timeout(queue, tick(shared)));
                queue = q;
                if timed_out && writers_commit {
                    ticked = true;
                    break;
                }
            }
            queue.writer_idle = false;
            (std::mem::take(&mut queue.rotations), queue.closing)
        };
        let next_segment = (!rotations.is_empty()).then(|| shared.create_next_segment());
        // A segment must be durable before the next one takes a record:
        // otherwise a power cut can keep records of the next one while the
        // tail of this one is lost, a hole no replay can tell from damage.
        // Most of it is synced here, without the lock.
        let next_segment = next_segment.map(|created| {
            let created = created?;
            if writers_commit {
                shared.presync_current()?;
            }
            Ok(created)
        });
        if !writers_commit {
            // Woken by the first record, the thread would sync that one
            // alone while the requests right behind it wait a whole fsync.
            // Yielding once lets a worker that shares this core enqueue
            // what it has ready, so one fsync carries them all.
            std::thread::yield_now();
        }
        let mut log = shared.lock_log();
        let mut written = shared.write_queued(&mut log);
        if to_apply.is_none()
            && let Some(batch) = written.take()
        {
            shared.apply(batch);
        }
        if log.policy == FsyncPolicy::EverySec
            && log.unsynced
            && (ticked || log.last_sync.elapsed() >= Duration::from_secs(1))
        {
            shared.sync_or_poison(&mut log);
        }
        // One rotation serves every request that is waiting for one.
        // The rest of the closed segment is synced under the lock, before
        // any record reaches the new one.
        let switched = next_segment.map(|created| {
            let (next, file) = created?;
            if let Some(closed) = shared.switch_segment(&mut log, next, file)? {
                shared.sync_segment(&closed)?;
            }
            Ok::<_, WalError>(next)
        });
        if closing && log.unsynced {
            shared.sync_or_poison(&mut log);
        }
        drop(log);
        match to_apply {
            // In log order: the batch, then the rotation (answered once
            // every record of the old segment is applied).
            Some(to_apply) => {
                if let Some(batch) = written {
                    let _ = to_apply.send(ToApply::Batch(batch));
                }
                if let Some(result) = switched {
                    let _ = to_apply.send(ToApply::Rotated(rotations, result));
                }
            }
            None => {
                if let Some(result) = switched {
                    for reply in rotations {
                        let _ = reply.send(result.clone());
                    }
                }
            }
        }
        if closing {
            shared.wake_waiters();
            return;
        }
    }
}

/// How long the idle thread sleeps: a second when writers commit (to sync
/// under `everysec` and to pick up what vanished writers left queued).
fn tick(shared: &Shared) -> Duration {
    if shared.policy == FsyncPolicy::Always {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(1)
    }
}

fn relock_timeout<'a, T>(
    result: std::sync::LockResult<(MutexGuard<'a, T>, std::sync::WaitTimeoutResult)>,
) -> (MutexGuard<'a, T>, bool) {
    let (guard, timeout) = result.unwrap_or_else(|e| e.into_inner());
    (guard, timeout.timed_out())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wal::replay::segment_tests::{put, versions};

    /// A sink that remembers what it applied and what it dropped.
    #[derive(Clone, Default)]
    struct Seen {
        applied: Arc<Mutex<Vec<u64>>>,
        failed: Arc<Mutex<Vec<u64>>>,
    }

    fn version_of(record: &Record) -> u64 {
        match record {
            Record::Change(c) => c.version,
            Record::Txn(changes) => changes.last().map_or(0, |c| c.version),
            Record::Puts(batch) => batch.last_version(),
            Record::Meta(_) | Record::Raft(_) => 0,
        }
    }

    impl BatchSink for Seen {
        fn durable(&mut self, records: Vec<Record>) {
            relock(self.applied.lock()).extend(records.iter().map(version_of));
        }
        fn failed(&mut self, records: Vec<Record>) {
            relock(self.failed.lock()).extend(records.iter().map(version_of));
        }
    }

    fn start(dir: &std::path::Path, policy: FsyncPolicy, faults: Faults) -> (WalWriter, Seen) {
        let seen = Seen::default();
        let wal = WalWriter::start_with_faults(
            dir.to_path_buf(),
            1,
            policy,
            Box::new(seen.clone()),
            faults,
        )
        .expect("start");
        (wal, seen)
    }

    /// Submits records `versions` together, then waits for each.
    fn batch(wal: &WalWriter, versions: std::ops::Range<u64>) -> Vec<Result<(), WalError>> {
        let seqs: Vec<u64> = versions
            .map(|v| wal.submit(put(v)).expect("submit"))
            .collect();
        seqs.into_iter().map(|s| wal.wait_blocking(s)).collect()
    }

    fn segment_len(dir: &std::path::Path, n: u64) -> u64 {
        std::fs::metadata(segment::path(dir, n))
            .expect("meta")
            .len()
    }

    #[test]
    fn concurrent_writers_are_applied_in_log_order_under_every_policy() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::EverySec,
            FsyncPolicy::Never,
        ] {
            let tmp = tempfile::tempdir().expect("tmp");
            let (wal, seen) = start(tmp.path(), policy, Faults::with(None, None, None));
            let wal = Arc::new(wal);
            let threads: Vec<_> = (0..4u64)
                .map(|t| {
                    let wal = Arc::clone(&wal);
                    std::thread::spawn(move || {
                        for i in 0..50 {
                            let seq = wal.submit(put(1 + t * 50 + i)).expect("submit");
                            wal.wait_blocking(seq).expect("durable");
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("writer");
            }
            wal.close();
            let applied = relock(seen.applied.lock()).clone();
            assert_eq!(applied.len(), 200, "{policy:?}");
            let (on_disk, _) = versions(tmp.path()).expect("replay");
            assert_eq!(
                on_disk, applied,
                "{policy:?}: the log holds what was applied, in order"
            );
            let stats = wal.stats();
            assert_eq!(stats.appends.load(Ordering::Relaxed), 200);
            if policy == FsyncPolicy::Always {
                assert_eq!(
                    stats.fsyncs.load(Ordering::Relaxed),
                    stats.batches.load(Ordering::Relaxed),
                    "one fdatasync per batch"
                );
            }
        }
    }

    #[test]
    fn a_failed_fsync_fails_every_writer_of_its_batch_and_cuts_the_file_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut faults = Faults::with(None, None, Some(2));
        faults.batch_min = 5;
        let (wal, seen) = start(tmp.path(), FsyncPolicy::Always, faults);
        assert!(batch(&wal, 1..6).iter().all(Result::is_ok));
        let good_len = segment_len(tmp.path(), 1);
        let results = batch(&wal, 6..11);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(WalError::Poisoned(why)) if why.contains("FAIL_SYNC"))),
            "{results:?}"
        );
        assert_eq!(*relock(seen.failed.lock()), vec![6, 7, 8, 9, 10]);
        assert_eq!(*relock(seen.applied.lock()), vec![1, 2, 3, 4, 5]);
        assert_eq!(segment_len(tmp.path(), 1), good_len, "cut back");
        assert!(matches!(wal.submit(put(11)), Err(WalError::Poisoned(_))));
        assert!(wal.poisoned().is_some());
        wal.close();
        let (on_disk, report) = versions(tmp.path()).expect("replay");
        assert_eq!(on_disk, vec![1, 2, 3, 4, 5]);
        assert_eq!(report.truncated_bytes, 0);
    }

    /// A sink that holds its first batch until told to go on.
    struct Gated {
        seen: Seen,
        /// Set once the first batch is in `durable`; then the gate opens.
        entered: Arc<(Mutex<(bool, bool)>, Condvar)>,
    }

    impl BatchSink for Gated {
        fn durable(&mut self, records: Vec<Record>) {
            let (state, changed) = &*self.entered;
            let mut state = relock(state.lock());
            state.0 = true;
            changed.notify_all();
            while !state.1 {
                state = relock(changed.wait(state));
            }
            drop(state);
            self.seen.durable(records);
        }
        fn failed(&mut self, records: Vec<Record>) {
            self.seen.failed(records);
        }
    }

    #[test]
    fn a_batch_written_before_a_failed_sync_is_applied_and_acknowledged() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut faults = Faults::with(None, None, Some(2));
        faults.batch_min = 5;
        let seen = Seen::default();
        let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let sink = Gated {
            seen: seen.clone(),
            entered: Arc::clone(&gate),
        };
        let wal = WalWriter::start_with_faults(
            tmp.path().to_path_buf(),
            1,
            FsyncPolicy::Always,
            Box::new(sink),
            faults,
        )
        .expect("start");
        let first: Vec<u64> = (1..6)
            .map(|v| wal.submit(put(v)).expect("submit"))
            .collect();
        // The first batch is written and synced, and held in its apply.
        {
            let (state, changed) = &*gate;
            let mut state = relock(state.lock());
            while !state.0 {
                state = relock(changed.wait(state));
            }
        }
        // The second one's sync fails while the first is being applied.
        let second: Vec<u64> = (6..11)
            .map(|v| wal.submit(put(v)).expect("submit"))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while wal.poisoned().is_none() {
            assert!(Instant::now() < deadline, "the second batch never failed");
            std::thread::yield_now();
        }
        {
            let (state, changed) = &*gate;
            relock(state.lock()).1 = true;
            changed.notify_all();
        }
        for seq in first {
            assert!(wal.wait_blocking(seq).is_ok(), "record {seq} was written");
        }
        for seq in second {
            assert!(matches!(wal.wait_blocking(seq), Err(WalError::Poisoned(_))));
        }
        // Its writers may hear of the failure before the applying thread
        // has forgotten the batch; closing waits for that thread.
        wal.close();
        assert_eq!(*relock(seen.applied.lock()), vec![1, 2, 3, 4, 5]);
        assert_eq!(*relock(seen.failed.lock()), vec![6, 7, 8, 9, 10]);
    }

    #[test]
    fn a_failed_write_fails_its_batch_and_leaves_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (wal, seen) = start(
            tmp.path(),
            FsyncPolicy::Never,
            Faults::with(None, Some(2), None),
        );
        assert!(batch(&wal, 1..4).iter().all(Result::is_ok));
        let results = batch(&wal, 4..7);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(WalError::Poisoned(why)) if why.contains("FAIL_WRITE"))),
            "{results:?}"
        );
        assert_eq!(*relock(seen.failed.lock()), vec![4, 5, 6]);
        wal.close();
        assert_eq!(versions(tmp.path()).expect("replay").0, vec![1, 2, 3]);
    }

    #[test]
    fn a_disk_that_fills_mid_batch_leaves_no_torn_tail() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut one = Vec::new();
        encode(&put(1), &mut one);
        let first_batch = 3 * one.len() as u64;
        let (wal, seen) = start(
            tmp.path(),
            FsyncPolicy::Never,
            Faults::with(Some(first_batch + 20), None, None),
        );
        assert!(batch(&wal, 1..4).iter().all(Result::is_ok));
        let results = batch(&wal, 4..8);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(WalError::Poisoned(why)) if why.contains("no space"))),
            "{results:?}"
        );
        assert_eq!(*relock(seen.failed.lock()), vec![4, 5, 6, 7]);
        assert_eq!(
            segment_len(tmp.path(), 1),
            first_batch,
            "the partial write is cut"
        );
        wal.close();
        let (on_disk, report) = versions(tmp.path()).expect("replay");
        assert_eq!(on_disk, vec![1, 2, 3]);
        assert_eq!(report.truncated_bytes, 0);
    }

    #[test]
    fn rotation_syncs_the_old_segment_before_the_new_one_takes_records() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (wal, _) = start(
            tmp.path(),
            FsyncPolicy::Never,
            Faults::with(None, None, None),
        );
        assert!(batch(&wal, 1..3).iter().all(Result::is_ok));
        let syncs_before = wal.stats().fsyncs.load(Ordering::Relaxed);
        assert_eq!(wal.rotate().expect("rotate"), 2);
        assert!(
            wal.stats().fsyncs.load(Ordering::Relaxed) > syncs_before,
            "the closed segment was synced"
        );
        assert!(batch(&wal, 3..4).iter().all(Result::is_ok));
        wal.close();
        assert_eq!(segment::list(tmp.path()).expect("list"), vec![1, 2]);
        let mut first = Vec::new();
        crate::wal::replay(tmp.path(), 2, |r| first.push(version_of(&r))).expect("replay");
        assert_eq!(first, vec![3], "segment 2 holds only what came after");
        assert_eq!(versions(tmp.path()).expect("replay").0, vec![1, 2, 3]);
    }

    #[test]
    fn a_failed_sync_of_the_closed_segment_fails_the_rotation_and_poisons() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (wal, _) = start(
            tmp.path(),
            FsyncPolicy::Never,
            Faults::with(None, None, Some(1)),
        );
        assert!(batch(&wal, 1..3).iter().all(Result::is_ok));
        assert!(matches!(wal.rotate(), Err(WalError::Poisoned(_))));
        assert!(matches!(wal.submit(put(3)), Err(WalError::Poisoned(_))));
    }
}
