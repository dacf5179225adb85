//! The database's background threads: the expiry loop and the snapshot
//! scheduler. Each holds only a weak reference, so dropping the last `Db`
//! ends them, and each stops at once when told to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::{DbError, Inner};

/// Stop signal and thread handles.
#[derive(Default)]
pub(super) struct Background {
    /// Dropping the sender wakes and stops every thread.
    stop: Mutex<Option<Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Background {
    /// Signals every thread to stop and waits for them, unless called from
    /// one of them (a thread dropping the last `Db`).
    pub(super) fn stop(&self) {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

pub(super) fn start(inner: &Arc<Inner>) -> Result<(), DbError> {
    let (tx, rx) = bounded::<()>(0);
    *inner
        .background
        .stop
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let mut threads = Vec::new();
    // On a cluster member the leader proposes expiries through the log.
    if !inner.replica {
        threads.push(spawn("dododb-expiry", inner, rx.clone(), expiry_loop)?);
    }
    if inner.dir.is_some() {
        threads.push(spawn("dododb-snapshot", inner, rx, snapshot_loop)?);
    }
    *inner
        .background
        .threads
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = threads;
    Ok(())
}

fn spawn(
    name: &str,
    inner: &Arc<Inner>,
    stop: Receiver<()>,
    body: fn(Weak<Inner>, Receiver<()>),
) -> Result<JoinHandle<()>, DbError> {
    let weak = Arc::downgrade(inner);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(weak, stop))
        .map_err(|e| DbError::Storage(format!("cannot start thread {name}: {e}")))
}

/// Sleeps `pause` unless told to stop; returns false when stopping.
fn pause(stop: &Receiver<()>, pause: Duration) -> bool {
    matches!(stop.recv_timeout(pause), Err(RecvTimeoutError::Timeout))
}

fn expiry_loop(weak: Weak<Inner>, stop: Receiver<()>) {
    loop {
        let interval = match weak.upgrade() {
            Some(inner) => {
                // Keep going while whole batches come back: a backlog.
                while inner.expire_due() == 10_000 {}
                inner.config.cleanup_interval
            }
            None => return,
        };
        if !pause(&stop, interval) {
            return;
        }
    }
}

fn snapshot_loop(weak: Weak<Inner>, stop: Receiver<()>) {
    let mut last = Instant::now();
    loop {
        if !pause(&stop, Duration::from_millis(250)) {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        let timer_due = inner
            .config
            .snapshot_interval
            .is_some_and(|every| last.elapsed() >= every);
        let wal_bytes = inner.wal.as_ref().map_or(0, |w| {
            w.stats().bytes_since_rotation.load(Ordering::Relaxed)
        });
        // An import writes its whole export to the log in one go: a
        // snapshot (or several) in the middle would take the cores it runs
        // on, so the one its size calls for comes when it is done.
        let size_due = wal_bytes >= inner.config.snapshot_wal_bytes
            && inner.imports.load(Ordering::Acquire) == 0;
        if (timer_due || size_due) && !inner.closed.load(Ordering::Acquire) {
            if let Err(e) = inner.snapshot() {
                tracing::error!("scheduled snapshot failed: {e}");
            }
            last = Instant::now();
        }
    }
}
