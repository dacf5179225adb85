//! The webhook delivery pool (SPEC §5): durable, log-driven delivery.
//!
//! The log is the source of truth for events. Each subscription has a
//! durable cursor (the revision delivered or given up on up to, in order),
//! logged as a control record through the normal group commit and carried
//! in snapshots. A delivery task per subscription ([`lane`]) re-reads the
//! events after its cursor from the feed's ring of recent changes or from
//! the retained log on disk, never from a queue that a crash empties.
//!
//! The write path only puts a hint ("changes up to revision R exist") on a
//! bounded crossbeam queue; a dispatcher thread drains it and wakes the
//! tasks, which run on the pool's own tokio runtime (never the HTTP
//! workers): `http://` callbacks through the pool's own pipelining HTTP/1.1
//! client ([`http1`]), `https://` ones through one shared keep-alive
//! reqwest client. A lost hint loses
//! nothing: the dispatcher also looks at the feed on a short tick.

mod attempt;
mod http1;
mod lane;
pub mod schedule;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use tokio::sync::watch;

pub use attempt::sign;
pub use schedule::RetrySchedule;

use super::feed::FeedReader;
use super::subscriptions::{ActiveSubscription, Registry, SubscriptionOp};

/// How often the dispatcher looks at the feed and the registry even when
/// no hint came (a hint may have been dropped on a full queue).
const TICK: Duration = Duration::from_millis(100);

/// How long the dispatcher lets hints gather after the first one before
/// it wakes the tasks.
const COALESCE: Duration = Duration::from_millis(1);

/// The `user-agent` of every attempt.
const USER_AGENT: &str = concat!("DodoDB-Webhooks/", env!("CARGO_PKG_VERSION"));

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Delays between attempts.
    pub schedule: RetrySchedule,
    /// A subscription with no 2xx this long while events were due is
    /// disabled.
    pub disable_after: Duration,
    /// Capacity of the hint queue between the write path and the pool.
    pub queue_capacity: usize,
    /// Events each task holds in memory before reading pauses.
    pub window: usize,
}

/// Counters of the pool, for `/metrics` and `/system/stats`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events acknowledged with a 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events given up on after the last attempt.
    pub failed: AtomicU64,
    /// Events dropped with the log before their subscription had them
    /// (`lost_events`), since start.
    pub dropped: AtomicU64,
    /// Sum of delivery latencies (read from the log to 2xx), microseconds.
    pub latency_micros: AtomicU64,
    /// Subscriptions removed because they answered 410 Gone.
    pub gone: AtomicU64,
    /// Hints dropped on a full queue (harmless: the tick covers them).
    pub hints_dropped: AtomicU64,
}

/// Called with a subscription id when its receiver answers 410 Gone.
pub type OnGone = Arc<dyn Fn(&str) + Send + Sync>;

/// Where the pool logs subscription state (the database's WAL, or the
/// registry at once without a log). It must not wait for the disk.
pub trait ControlLog: Send + Sync {
    /// Logs `op` through the normal group commit, without waiting.
    fn append(&self, op: SubscriptionOp);
}

/// What the dispatcher and every task share.
pub(crate) struct PoolShared {
    client: reqwest::Client,
    config: DeliveryConfig,
    stats: Arc<DeliveryStats>,
    on_gone: OnGone,
    source: FeedReader,
    log: Arc<dyn ControlLog>,
    stopping: AtomicBool,
    /// Whether this pool delivers: always on a single server; on a cluster
    /// member only while it leads.
    active: AtomicBool,
    /// Bumped on every change of `active`: a task started under another
    /// epoch ends, and the dispatcher starts new ones from the cursors.
    epoch: AtomicU64,
}

impl PoolShared {
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Handle to the pool.
pub struct DeliveryPool {
    hints: Sender<u64>,
    shared: Arc<PoolShared>,
    registry: Arc<Registry>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl DeliveryPool {
    /// Starts the dispatcher thread and the delivery runtime; a task is
    /// started for every subscription of `registry`, now and later.
    ///
    /// # Errors
    ///
    /// A thread or the HTTP client cannot be created.
    pub fn start(
        config: DeliveryConfig,
        registry: Arc<Registry>,
        source: FeedReader,
        log: Arc<dyn ControlLog>,
        on_gone: OnGone,
    ) -> Result<DeliveryPool, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dododb-webhook")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the webhook runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy()
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (hints, rx) = bounded(config.queue_capacity);
        let shared = Arc::new(PoolShared {
            client,
            config,
            stats: Arc::new(DeliveryStats::default()),
            on_gone,
            source,
            log,
            stopping: AtomicBool::new(false),
            active: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
        });
        let (latest_tx, _) = watch::channel(0u64);
        let dispatcher = Dispatcher {
            rx,
            handle: runtime.handle().clone(),
            shared: Arc::downgrade(&shared),
            registry: Arc::clone(&registry),
            latest: latest_tx,
            started: HashSet::new(),
            generation: u64::MAX,
            epoch: 0,
        };
        let thread = std::thread::Builder::new()
            .name("dododb-webhook-dispatch".into())
            .spawn(move || dispatcher.run())
            .map_err(|e| format!("cannot start the webhook dispatcher: {e}"))?;
        Ok(DeliveryPool {
            hints,
            shared,
            registry,
            dispatcher: Mutex::new(Some(thread)),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Tells the pool that changes up to `revision` exist. Never waits: a
    /// full queue drops the hint, which loses nothing.
    pub fn hint(&self, revision: u64) {
        if self.hints.try_send(revision).is_err() {
            self.shared
                .stats
                .hints_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Turns delivery on or off (a cluster member delivers only while it
    /// leads). Off, every task ends; on again, each subscription's task
    /// starts over from its durable cursor, so what the last deliverer had
    /// in flight goes out again (at least once, in per-key order).
    pub fn set_active(&self, on: bool) {
        if self.shared.active.swap(on, Ordering::AcqRel) != on {
            self.shared.epoch.fetch_add(1, Ordering::AcqRel);
            for sub in self.registry.all() {
                sub.wake.notify_one();
            }
        }
    }

    /// Hints waiting in the queue between the write path and the pool.
    pub fn queue_depth(&self) -> usize {
        self.hints.len()
    }

    /// Events not yet delivered or given up on, over every subscription
    /// (see [`DeliveryPool::pending`]).
    pub fn in_flight(&self) -> u64 {
        self.registry.all().iter().map(|s| self.pending(s)).sum()
    }

    /// The backlog of `sub`: its events after the cursor that were neither
    /// delivered nor given up on. Two counters its delivery task keeps: the
    /// events read into its window, and those not read yet, which it counts
    /// as they come while its window is full (in the feed's ring of recent
    /// changes, or, for revisions older than the ring, one per revision:
    /// exact for a subscription to every key, an upper bound for one to
    /// some keys). Nothing is scanned here, and no lock of the write path
    /// is taken.
    pub fn pending(&self, sub: &ActiveSubscription) -> u64 {
        sub.pending.load(Ordering::Relaxed) + sub.unread.load(Ordering::Relaxed)
    }

    /// The pool's counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.shared.stats
    }

    /// Stops the tasks (each logs its cursor first) and the runtime. What
    /// was not delivered stays in the log and goes out after a restart.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        for sub in self.registry.all() {
            sub.wake.notify_one();
        }
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(runtime) = runtime {
            // The tasks see `stopping` at once and log their cursor.
            std::thread::sleep(Duration::from_millis(20));
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
        let thread = self
            .dispatcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for DeliveryPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Drains hints, wakes the tasks and starts a task per new subscription.
struct Dispatcher {
    rx: Receiver<u64>,
    handle: tokio::runtime::Handle,
    shared: Weak<PoolShared>,
    registry: Arc<Registry>,
    /// The newest revision the feed has passed on; tasks watch it.
    latest: watch::Sender<u64>,
    /// Subscriptions with a task.
    started: HashSet<String>,
    generation: u64,
    /// The pool's epoch the tasks in `started` run under.
    epoch: u64,
}

impl Dispatcher {
    fn run(mut self) {
        loop {
            match self.rx.recv_timeout(TICK) {
                Ok(_) => {
                    // Let the hints of the next moment gather, so that the
                    // tasks wake once for a burst of writes, not per write
                    // (and writers meanwhile only push to the queue: no one
                    // is waiting on it to be woken).
                    std::thread::sleep(COALESCE);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            while self.rx.try_recv().is_ok() {}
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            if shared.is_stopping() {
                return;
            }
            let delivered = shared.source.delivered();
            self.latest.send_if_modified(|latest| {
                let newer = delivered > *latest;
                *latest = (*latest).max(delivered);
                newer
            });
            let epoch = shared.epoch();
            if epoch != self.epoch {
                // The tasks of the last epoch end by themselves.
                self.epoch = epoch;
                self.started.clear();
                self.generation = u64::MAX;
            }
            if !shared.active.load(Ordering::Acquire) {
                continue;
            }
            let generation = self.registry.generation();
            if generation != self.generation {
                self.generation = generation;
                self.start_tasks(&shared);
            }
        }
    }

    fn start_tasks(&mut self, shared: &Arc<PoolShared>) {
        let subs = self.registry.all();
        self.started
            .retain(|id| subs.iter().any(|s| s.def.id == *id));
        // A task's timers belong to the pool's runtime.
        let _runtime = self.handle.enter();
        for sub in subs {
            if self.started.insert(sub.def.id.clone()) {
                let lane = lane::Lane::new(sub, Arc::clone(shared), self.epoch);
                self.handle.spawn(lane.run(self.latest.subscribe()));
            }
        }
    }
}
