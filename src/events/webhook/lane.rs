//! One subscription's delivery task: reads the subscription's events from
//! the log (the feed's ring, or the disk behind it) after its durable
//! cursor, delivers them with retries, and logs its progress.
//!
//! Ordering: the events of one key wait in a queue of their own and only
//! its head is ever attempted, so a later version goes out only after the
//! earlier one was acknowledged or given up on; different keys go out side
//! by side (up to [`MAX_IN_FLIGHT`]), the heads due at once pipelined in
//! batches on one connection each; what a connection left unanswered is
//! due again first, without an attempt counted. The cursor is the revision before
//! the oldest event not yet finished, so after a crash delivery resumes
//! with nothing skipped, at the cost of sending again what was in flight.
//!
//! Back-off: while the subscription's receiver fails, the back-off is the
//! subscription's, not each key's ([`Backoff`]). After a failed attempt no
//! attempt starts until the back-off step ends (the failed attempt's own
//! pause on the retry schedule, or the receiver's `Retry-After`); then one
//! probe goes, the due event with the fewest attempts. If it fails, every
//! other event that was due by then is charged the same failed attempt (and
//! given up on after its last one, as if it had been sent), and the next
//! step begins; the first 2xx ends the back-off. So a dead receiver costs
//! one attempt per step, however many keys have events due, and no event
//! is attempted (or charged) before its own schedule says.
//!
//! Memory: at most about `--webhook-window-events` (4,096) events are held
//! (plus one read batch); a subscriber that does not keep up leaves the
//! rest in the log, where they cost no memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Sleep;

use super::attempt::{Outcome, attempt_pipelined, attempt_reqwest};
use super::http1::{Conn, Endpoint, IDLE_TIMEOUT};
use super::{PoolShared, USER_AGENT};
use crate::events::feed::{FeedEvent, ReadAfter};
use crate::events::subscriptions::{ActiveSubscription, SubscriptionOp};

/// Changes read from the log at a time.
const READ_BATCH: usize = 1024;

/// Attempts in flight per subscription at once (each for another key).
pub(super) const MAX_IN_FLIGHT: usize = 64;

/// Requests pipelined on one connection at most: the events due at once go
/// out in batches of up to this many, each batch on a connection of its
/// own.
const PIPELINE_DEPTH: usize = 16;

/// The cursor is logged whenever it moved, at most this often (and at once
/// on a change of status). Each record rides the next group commit with no
/// fsync of its own, so after a `kill -9` a restart re-sends about what was
/// in flight, plus what was acknowledged in the last few milliseconds.
const PROGRESS_EVERY: Duration = Duration::from_millis(10);

/// How often a stopped (disabled, gone) task looks at its state again.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// While its window is full (or it is stopped), a task counts the events it
/// has not read yet, for `pending`, at most this often.
const COUNT_EVERY: Duration = Duration::from_millis(20);

/// Read batches a task counts at most per look.
const COUNT_BATCHES: usize = 16;

/// A batch of attempts in flight (pipelined on one connection), and when
/// over, each revision's outcome, whether the receiver stalled on the
/// pipeline and the connection if it may be used again.
type Attempt = Pin<Box<dyn Future<Output = Finished> + Send>>;

/// A batch of attempts that is over.
struct Finished {
    outcomes: Vec<(u64, Outcome)>,
    stalled: bool,
    conn: Option<Conn>,
}

/// An event read and not yet finished.
struct Pending {
    event: Arc<FeedEvent>,
    attempts: u32,
    /// Sent again by `recover`: older than the cursor, so not counted in it.
    recovery: bool,
    read_at: Instant,
}

/// The subscription's back-off while its receiver fails.
struct Backoff {
    /// No attempt starts before this.
    until: Instant,
    /// The probe in flight.
    probe: Option<u64>,
    /// The last probe that failed: the next one tries another event if
    /// there is one, so one event its receiver rejects does not hold the
    /// others back.
    last_probe: Option<u64>,
}

pub(super) struct Lane {
    sub: Arc<ActiveSubscription>,
    shared: Arc<PoolShared>,
    /// The pool's epoch it was started under; it ends when that changes.
    epoch: u64,
    /// Every event up to here is delivered or given up on.
    cursor: u64,
    window: BTreeMap<u64, Pending>,
    /// Revisions of each key's events in the window, oldest first, by the
    /// key's hash; only the head is ever attempted. Two keys with one hash
    /// share a queue: their events then wait for each other, which keeps
    /// each key's order.
    by_key: HashMap<u64, VecDeque<u64>, foldhash::fast::RandomState>,
    key_hasher: foldhash::fast::RandomState,
    /// Heads due now.
    ready: VecDeque<u64>,
    /// Heads waiting for their next attempt.
    timers: BTreeSet<(Instant, u64)>,
    in_flight: FuturesUnordered<Attempt>,
    /// Events in the batches in flight.
    in_flight_events: usize,
    /// Requests pipelined per connection: [`PIPELINE_DEPTH`], or 1 once
    /// the receiver stalled on a pipeline.
    depth: usize,
    /// The receiver, for the pool's own HTTP/1.1 client (`None`: reqwest).
    endpoint: Option<Arc<Endpoint>>,
    /// Its idle keep-alive connections, the one used last at the back.
    idle: VecDeque<Conn>,
    /// Set while the receiver fails.
    backoff: Option<Backoff>,
    /// Events in the window that count in the cursor.
    n_pending: usize,
    /// The last revision read into the window, as this task left it (log
    /// retention and [`Lane::clear`] move it).
    read_through: u64,
    /// Counted through this revision so far, for `pending` (never behind
    /// `read_through`).
    counted_through: u64,
    /// The subscription's events after `read_through` up to
    /// `counted_through`: its backlog not yet read.
    unread: u64,
    counted_at: Instant,
    last_success_at_ms: Option<u64>,
    failing_since_ms: Option<u64>,
    last_error: Option<String>,
    logged_cursor: u64,
    logged_at: Instant,
    /// Runs out [`PROGRESS_EVERY`] after `logged_at` (kept, not made anew
    /// on every turn of the loop).
    progress_timer: Pin<Box<Sleep>>,
    /// Runs out [`COUNT_EVERY`] after `counted_at`.
    count_timer: Pin<Box<Sleep>>,
    /// A status change that is to be logged at once.
    state_changed: bool,
    /// Recovered events delivered, to be logged.
    recovered: Vec<u64>,
    /// The Disable record is submitted but may not be applied yet.
    disabling: bool,
    /// The receiver answered 410; the subscription is being removed.
    gone: bool,
}

impl Lane {
    pub(super) fn new(sub: Arc<ActiveSubscription>, shared: Arc<PoolShared>, epoch: u64) -> Lane {
        let state = sub.state();
        *sub.read_next.lock().unwrap_or_else(|e| e.into_inner()) = state.cursor + 1;
        sub.unread.store(0, Ordering::Relaxed);
        let endpoint = Endpoint::for_url(&sub.def.callback_url, USER_AGENT).map(Arc::new);
        let now = Instant::now();
        Lane {
            epoch,
            endpoint,
            idle: VecDeque::new(),
            progress_timer: Box::pin(tokio::time::sleep_until((now + PROGRESS_EVERY).into())),
            count_timer: Box::pin(tokio::time::sleep_until((now + COUNT_EVERY).into())),
            sub,
            shared,
            cursor: state.cursor,
            window: BTreeMap::new(),
            by_key: HashMap::default(),
            key_hasher: foldhash::fast::RandomState::default(),
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            in_flight: FuturesUnordered::new(),
            in_flight_events: 0,
            depth: PIPELINE_DEPTH,
            backoff: None,
            n_pending: 0,
            read_through: state.cursor,
            counted_through: state.cursor,
            unread: 0,
            counted_at: now,
            last_success_at_ms: state.last_success_at_ms,
            failing_since_ms: state.failing_since_ms,
            last_error: state.last_error,
            logged_cursor: state.cursor,
            logged_at: now,
            state_changed: false,
            recovered: Vec::new(),
            disabling: false,
            gone: false,
        }
    }

    pub(super) async fn run(mut self, mut latest: watch::Receiver<u64>) {
        loop {
            if self.sub.is_removed() {
                self.sub.pending.store(0, Ordering::Relaxed);
                self.sub.unread.store(0, Ordering::Relaxed);
                return;
            }
            if self.shared.is_stopping() {
                self.log_progress(true);
                return;
            }
            if self.shared.epoch() != self.epoch {
                // Delivery moved (this member stopped leading): the next
                // deliverer starts from the replicated cursor.
                return;
            }
            let disabled = self.sub.is_disabled();
            if disabled {
                self.disabling = false;
            }
            if disabled || self.disabling || self.gone {
                self.clear();
                self.log_progress(true);
                self.count_ahead();
                let _ = tokio::time::timeout(IDLE_CHECK, self.sub.wake.notified()).await;
                continue;
            }
            self.take_recover_requests();
            let newest = *latest.borrow();
            self.fill(newest);
            let has_room = self.n_pending < self.shared.config.window;
            if !has_room && self.counted_at.elapsed() >= COUNT_EVERY {
                self.count_ahead();
            }
            self.start_due();
            self.advance_cursor();
            self.check_disable();
            self.log_progress(false);
            let next_timer = self.next_wake();
            let unlogged = self.cursor != self.logged_cursor || !self.recovered.is_empty();
            // A full window stops reading; the newer events are counted
            // instead, at most every COUNT_EVERY.
            let count_due = !has_room && self.counted_through < newest;
            // Idle connections are closed here once the task is quiet; while
            // it is busy, when one is taken.
            let idle_expiry = self
                .idle
                .front()
                .filter(|_| self.in_flight.is_empty())
                .map(|c| c.idle_since + IDLE_TIMEOUT);
            tokio::select! {
                Some(finished) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.finish_with(finished);
                    // Every other attempt that is over too, before the rest
                    // of the loop runs again.
                    while let Some(Some(finished)) = self.in_flight.next().now_or_never() {
                        self.finish_with(finished);
                    }
                }
                () = sleep_until(next_timer), if next_timer.is_some() => {}
                changed = latest.changed(), if has_room || !count_due => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = &mut self.count_timer, if count_due => {}
                () = self.sub.wake.notified() => {}
                () = &mut self.progress_timer, if unlogged => {}
                () = sleep_until(idle_expiry), if idle_expiry.is_some() => {
                    self.close_expired();
                }
            }
        }
    }

    /// Reads the subscription's next events from the log into the window
    /// (`newest`: the newest revision the dispatcher has passed on; nothing
    /// is read past it, and the feed is not asked while nothing is new).
    fn fill(&mut self, newest: u64) {
        let sub = Arc::clone(&self.sub);
        while self.n_pending < self.shared.config.window {
            let mut read_next = sub.read_next.lock().unwrap_or_else(|e| e.into_inner());
            let after = *read_next - 1;
            if after == self.read_through && after >= newest {
                return;
            }
            if after != self.read_through {
                self.count_from(after);
            }
            let target = &sub.def.target;
            match self
                .shared
                .source
                .read_after_matching(after, READ_BATCH, |key| target.matches(key))
            {
                ReadAfter::Events { events, through } => {
                    let mut matched = 0;
                    for event in events {
                        if sub.def.target.matches(&event.change.key) {
                            self.admit(event, false);
                            matched += 1;
                        }
                    }
                    let through = through.max(after);
                    *read_next = through + 1;
                    self.read(through, matched);
                    if through <= after {
                        return;
                    }
                }
                ReadAfter::Gone { floor } => {
                    // Only without a log on disk (or after a crash in the
                    // middle of dropping segments) is this reached: the
                    // events are not there to be counted one by one, so the
                    // revisions are counted (an upper bound).
                    let n = floor.saturating_sub(after);
                    *read_next = floor + 1;
                    drop(read_next);
                    self.count_from(floor.max(after));
                    let lost_events = self.sub.state().lost_events + n;
                    tracing::warn!(subscription = %self.sub.def.id, first = after + 1, last = floor, "webhook events lost: no longer retained");
                    self.shared
                        .stats
                        .dropped
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    self.shared.log.append(SubscriptionOp::Lost {
                        id: self.sub.def.id.clone(),
                        through: floor,
                        lost_events,
                    });
                }
            }
        }
    }

    /// Notes that the events up to `through` were read, `matched` of them
    /// the subscription's: those already counted leave the unread backlog.
    fn read(&mut self, through: u64, matched: u64) {
        if through >= self.counted_through {
            self.count_from(through);
        } else {
            self.read_through = through;
            self.unread = self.unread.saturating_sub(matched);
            self.sub.unread.store(self.unread, Ordering::Relaxed);
        }
    }

    /// Starts counting the unread backlog over after `revision`, the last
    /// one read.
    fn count_from(&mut self, revision: u64) {
        self.read_through = revision;
        self.counted_through = revision;
        self.unread = 0;
        self.sub.unread.store(0, Ordering::Relaxed);
    }

    /// Counts the subscription's events that the task has not read yet (its
    /// window is full, or it is stopped), from where it counted last: in the
    /// feed's ring, one batch at a time and never while holding the feed's
    /// lock longer than a read, or, for revisions older than the ring, one
    /// per revision (exact for a subscription to every key, an upper bound
    /// for one to some keys). `pending` is then a sum of two counters.
    fn count_ahead(&mut self) {
        self.counted_at = Instant::now();
        self.count_timer
            .as_mut()
            .reset((self.counted_at + COUNT_EVERY).into());
        let sub = Arc::clone(&self.sub);
        // Held so that log retention does not move the reading point while
        // counting.
        let read_next = sub.read_next.lock().unwrap_or_else(|e| e.into_inner());
        if *read_next - 1 != self.read_through {
            self.count_from(*read_next - 1);
        }
        let source = &self.shared.source;
        let head = source.delivered();
        let ring_floor = source.ring_floor();
        if self.counted_through < ring_floor.min(head) {
            self.unread += ring_floor.min(head) - self.counted_through;
            self.counted_through = ring_floor.min(head);
        }
        for _ in 0..COUNT_BATCHES {
            if self.counted_through >= head {
                break;
            }
            let target = &sub.def.target;
            match source
                .read_after_matching(self.counted_through, READ_BATCH, |key| target.matches(key))
            {
                ReadAfter::Events { events, through } => {
                    self.unread += events
                        .iter()
                        .filter(|e| sub.def.target.matches(&e.change.key))
                        .count() as u64;
                    if through <= self.counted_through {
                        break;
                    }
                    self.counted_through = through;
                }
                ReadAfter::Gone { floor } => {
                    self.unread += floor.saturating_sub(self.counted_through);
                    self.counted_through = self.counted_through.max(floor);
                }
            }
        }
        drop(read_next);
        self.sub.unread.store(self.unread, Ordering::Relaxed);
    }

    fn admit(&mut self, event: Arc<FeedEvent>, recovery: bool) {
        let revision = event.version();
        if self.window.contains_key(&revision) {
            return;
        }
        let hash = self.key_hasher.hash_one(&*event.change.key);
        let queue = self.by_key.entry(hash).or_default();
        queue.push_back(revision);
        if queue.len() == 1 {
            self.ready.push_back(revision);
        }
        self.window.insert(
            revision,
            Pending {
                event,
                attempts: 0,
                recovery,
                read_at: Instant::now(),
            },
        );
        if !recovery {
            self.n_pending += 1;
            self.sub
                .pending
                .store(self.n_pending as u64, Ordering::Relaxed);
        }
    }

    /// When the loop has to look at the timers again: the first timer, or,
    /// while backing off, the end of the step (never while a probe is out).
    fn next_wake(&self) -> Option<Instant> {
        let first = self.timers.first().map(|(at, _)| *at);
        match &self.backoff {
            None => first,
            Some(b) if b.probe.is_some() => None,
            Some(b) if !self.ready.is_empty() => Some(b.until),
            Some(b) => first.map(|at| at.max(b.until)),
        }
    }

    /// Moves the heads whose timer ran out to `ready`.
    fn take_due(&mut self, now: Instant) {
        while let Some(&(at, revision)) = self.timers.first()
            && at <= now
        {
            self.timers.pop_first();
            self.ready.push_back(revision);
        }
    }

    /// Starts attempts for the heads that are due, up to the limit; while
    /// backing off, one probe once the step is over.
    fn start_due(&mut self) {
        let now = Instant::now();
        self.take_due(now);
        if let Some(backoff) = &self.backoff {
            if backoff.probe.is_some() || now < backoff.until {
                return;
            }
            if let Some(revision) = self.pick_probe() {
                if let Some(b) = &mut self.backoff {
                    b.probe = Some(revision);
                }
                self.send(&[revision]);
            }
            return;
        }
        while self.in_flight_events < MAX_IN_FLIGHT && !self.ready.is_empty() {
            let room = MAX_IN_FLIGHT - self.in_flight_events;
            let depth = if self.endpoint.is_some() {
                self.depth
            } else {
                1
            };
            let n = depth.min(room).min(self.ready.len());
            let batch: Vec<u64> = self.ready.drain(..n).collect();
            self.send(&batch);
        }
    }

    /// Takes the probe out of `ready`: the due head with the fewest
    /// attempts, then the oldest, other than the last probe that failed.
    fn pick_probe(&mut self) -> Option<u64> {
        let last = self.backoff.as_ref().and_then(|b| b.last_probe);
        let mut best: Option<(usize, (bool, u32, u64))> = None;
        for (i, &revision) in self.ready.iter().enumerate() {
            let Some(pending) = self.window.get(&revision) else {
                continue;
            };
            let rank = (Some(revision) == last, pending.attempts, revision);
            if best.is_none_or(|(_, b)| rank < b) {
                best = Some((i, rank));
            }
        }
        let (i, _) = best?;
        self.ready.remove(i)
    }

    /// Starts attempts of `revisions` (each the head of its key): pipelined
    /// on one connection to a plain `http://` receiver, else one at a time
    /// through reqwest.
    fn send(&mut self, revisions: &[u64]) {
        let events: Vec<(u64, Arc<FeedEvent>)> = revisions
            .iter()
            .filter_map(|&r| self.window.get(&r).map(|p| (r, Arc::clone(&p.event))))
            .collect();
        if events.is_empty() {
            return;
        }
        self.in_flight_events += events.len();
        let sub = Arc::clone(&self.sub);
        let timeout = self.shared.config.timeout;
        match self.endpoint.clone() {
            Some(endpoint) => {
                self.close_expired();
                let conn = self.idle.pop_back();
                self.in_flight.push(Box::pin(async move {
                    let (revisions, events): (Vec<u64>, Vec<Arc<FeedEvent>>) =
                        events.into_iter().unzip();
                    let done = attempt_pipelined(&endpoint, conn, timeout, &sub, &events).await;
                    Finished {
                        outcomes: revisions.into_iter().zip(done.outcomes).collect(),
                        stalled: done.stalled,
                        conn: done.conn,
                    }
                }));
            }
            None => {
                let client = self.shared.client.clone();
                for (revision, event) in events {
                    let sub = Arc::clone(&sub);
                    let client = client.clone();
                    self.in_flight.push(Box::pin(async move {
                        let outcome = attempt_reqwest(&client, &sub, &event).await;
                        Finished {
                            outcomes: vec![(revision, outcome)],
                            stalled: false,
                            conn: None,
                        }
                    }));
                }
            }
        }
    }

    /// Closes the idle connections unused for [`IDLE_TIMEOUT`].
    fn close_expired(&mut self) {
        while self
            .idle
            .front()
            .is_some_and(|c| c.idle_since.elapsed() >= IDLE_TIMEOUT)
        {
            self.idle.pop_front();
        }
    }

    /// Keeps the connection of a batch that is over, then counts its
    /// outcomes; what the connection left unanswered is due again first,
    /// in its order.
    fn finish_with(&mut self, finished: Finished) {
        self.in_flight_events -= finished.outcomes.len();
        if let Some(mut conn) = finished.conn {
            conn.idle_since = Instant::now();
            self.idle.push_back(conn);
        }
        if finished.stalled && self.depth > 1 {
            tracing::warn!(subscription = %self.sub.def.id, url = %self.sub.def.callback_url, "the receiver stopped answering pipelined requests: sending one request per connection at a time from now on");
            self.depth = 1;
        }
        let mut unanswered = Vec::new();
        for (revision, outcome) in finished.outcomes {
            if matches!(outcome, Outcome::Unanswered) {
                if self.window.contains_key(&revision) {
                    unanswered.push(revision);
                }
            } else {
                self.finish(revision, outcome);
            }
        }
        for revision in unanswered.into_iter().rev() {
            if let Some(b) = &mut self.backoff
                && b.probe == Some(revision)
            {
                b.probe = None;
            }
            self.ready.push_front(revision);
        }
    }

    fn finish(&mut self, revision: u64, outcome: Outcome) {
        let stats = &self.shared.stats;
        let was_probe = self
            .backoff
            .as_ref()
            .is_some_and(|b| b.probe == Some(revision));
        let Some(pending) = self.window.get(&revision) else {
            if was_probe && let Some(b) = &mut self.backoff {
                b.probe = None;
            }
            return;
        };
        match outcome {
            Outcome::Acknowledged => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.latency_micros.fetch_add(
                    u64::try_from(pending.read_at.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                if pending.recovery {
                    self.recovered.push(revision);
                }
                self.last_success_at_ms = Some(now_ms());
                if self.failing_since_ms.take().is_some() {
                    self.state_changed = true;
                }
                // The receiver answers: the back-off is over.
                self.backoff = None;
                self.done(revision);
            }
            // Handled by `finish_with`.
            Outcome::Unanswered => {}
            Outcome::Gone => {
                stats.gone.fetch_add(1, Ordering::Relaxed);
                tracing::info!(subscription = %self.sub.def.id, url = %self.sub.def.callback_url, "receiver answered 410 Gone: removing the subscription");
                self.gone = true;
                (self.shared.on_gone)(&self.sub.def.id);
            }
            Outcome::Retry { why, retry_after } => {
                if self.failing_since_ms.is_none() {
                    self.failing_since_ms = Some(now_ms());
                    self.state_changed = true;
                }
                let attempts = pending.attempts + 1;
                let now = Instant::now();
                // A failed probe stands for the other events due now.
                let due = if was_probe {
                    self.take_due(now);
                    std::mem::take(&mut self.ready)
                } else {
                    VecDeque::new()
                };
                self.charge(revision, &why, retry_after);
                for other in due {
                    self.charge(other, &why, retry_after);
                }
                // The step lasts as long as the failed attempt's own pause
                // (an attempt started before the back-off began leaves it).
                if self.backoff.is_none() || was_probe {
                    let pause =
                        retry_after.unwrap_or_else(|| self.shared.config.schedule.delay(attempts));
                    self.backoff = Some(Backoff {
                        until: now + pause,
                        probe: None,
                        last_probe: was_probe.then_some(revision),
                    });
                }
                self.last_error = Some(why);
            }
        }
    }

    /// Counts a failed attempt of `revision`: gives it up after the last
    /// one, else times its next attempt.
    fn charge(&mut self, revision: u64, why: &str, retry_after: Option<Duration>) {
        let stats = &self.shared.stats;
        let Some(pending) = self.window.get_mut(&revision) else {
            return;
        };
        pending.attempts += 1;
        let attempts = pending.attempts;
        if attempts >= self.shared.config.schedule.attempts() {
            let key = pending.event.change.key.to_string();
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subscription = %self.sub.def.id, url = %self.sub.def.callback_url, event = revision, %key, "gave up on a webhook event after {attempts} attempts: {why}");
            self.shared.log.append(SubscriptionOp::Failed {
                id: self.sub.def.id.clone(),
                revision,
                key,
                attempts,
                last_error: why.to_owned(),
            });
            self.done(revision);
        } else {
            stats.retried.fetch_add(1, Ordering::Relaxed);
            let pause = retry_after.unwrap_or_else(|| self.shared.config.schedule.delay(attempts));
            tracing::debug!(subscription = %self.sub.def.id, event = revision, attempts, ?pause, "webhook attempt failed: {why}");
            self.timers.insert((Instant::now() + pause, revision));
        }
    }

    /// Removes a finished event; the next one of its key becomes due.
    fn done(&mut self, revision: u64) {
        let Some(pending) = self.window.remove(&revision) else {
            return;
        };
        if !pending.recovery {
            self.n_pending -= 1;
            self.sub
                .pending
                .store(self.n_pending as u64, Ordering::Relaxed);
        }
        let hash = self.key_hasher.hash_one(&*pending.event.change.key);
        if let Some(queue) = self.by_key.get_mut(&hash) {
            queue.retain(|&r| r != revision);
            match queue.front() {
                Some(&next) => self.ready.push_back(next),
                None => {
                    self.by_key.remove(&hash);
                }
            }
        }
    }

    /// The cursor: just before the oldest event not finished, or the last
    /// revision read.
    fn advance_cursor(&mut self) {
        let read_next = *self.sub.read_next.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = self
            .window
            .iter()
            .find(|(_, p)| !p.recovery)
            .map(|(&r, _)| r);
        let cursor = oldest.map_or(read_next - 1, |r| r - 1);
        self.cursor = self.cursor.max(cursor);
    }

    /// Disables the subscription after `--webhook-disable-after` with no
    /// 2xx while events were due.
    fn check_disable(&mut self) {
        let Some(since) = self.failing_since_ms else {
            return;
        };
        let limit = u64::try_from(self.shared.config.disable_after.as_millis()).unwrap_or(u64::MAX);
        if self.n_pending == 0 || now_ms().saturating_sub(since) < limit {
            return;
        }
        tracing::warn!(subscription = %self.sub.def.id, url = %self.sub.def.callback_url, "no 2xx for {:?} while events were due: disabling the subscription", self.shared.config.disable_after);
        self.log_progress(true);
        self.shared.log.append(SubscriptionOp::Disable {
            id: self.sub.def.id.clone(),
        });
        self.disabling = true;
    }

    /// Logs the cursor and status (through the normal group commit; nothing
    /// waits for it) when they changed, at most every [`PROGRESS_EVERY`]
    /// unless `now` or the status changed.
    fn log_progress(&mut self, now: bool) {
        if !self.recovered.is_empty() {
            self.shared.log.append(SubscriptionOp::Recovered {
                id: self.sub.def.id.clone(),
                revisions: std::mem::take(&mut self.recovered),
            });
        }
        let moved = self.cursor != self.logged_cursor;
        if !(self.state_changed || moved && (now || self.logged_at.elapsed() >= PROGRESS_EVERY)) {
            return;
        }
        self.shared.log.append(SubscriptionOp::Progress {
            id: self.sub.def.id.clone(),
            cursor: self.cursor,
            last_success_at_ms: self.last_success_at_ms,
            failing_since_ms: self.failing_since_ms,
            last_error: self.last_error.clone(),
        });
        self.logged_cursor = self.cursor;
        self.logged_at = Instant::now();
        self.progress_timer
            .as_mut()
            .reset((self.logged_at + PROGRESS_EVERY).into());
        self.state_changed = false;
    }

    /// Forgets everything read: delivery resumes from the cursor.
    fn clear(&mut self) {
        // Resumed delivery starts a new failing period, if any.
        self.failing_since_ms = None;
        if self.window.is_empty() && self.in_flight.is_empty() {
            return;
        }
        self.window.clear();
        self.by_key.clear();
        self.ready.clear();
        self.timers.clear();
        self.in_flight = FuturesUnordered::new();
        self.in_flight_events = 0;
        self.backoff = None;
        self.n_pending = 0;
        self.sub.pending.store(0, Ordering::Relaxed);
        *self.sub.read_next.lock().unwrap_or_else(|e| e.into_inner()) = self.cursor + 1;
    }

    /// Puts the failed events that `recover` asked for back in the window.
    fn take_recover_requests(&mut self) {
        let revisions = std::mem::take(
            &mut *self
                .sub
                .recover_requests
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut gone = Vec::new();
        for revision in revisions {
            match self.shared.source.read_after(revision - 1, 1) {
                ReadAfter::Events { events, .. }
                    if events.first().is_some_and(|e| e.version() == revision) =>
                {
                    if let Some(event) = events.into_iter().next() {
                        self.admit(event, true);
                    }
                }
                _ => gone.push(revision),
            }
        }
        if !gone.is_empty() {
            let n = gone.len() as u64;
            tracing::warn!(subscription = %self.sub.def.id, events = n, "failed webhook events to recover are no longer retained: counted as lost");
            self.shared.stats.dropped.fetch_add(n, Ordering::Relaxed);
            let state = self.sub.state();
            self.shared.log.append(SubscriptionOp::Recovered {
                id: self.sub.def.id.clone(),
                revisions: gone,
            });
            self.shared.log.append(SubscriptionOp::Lost {
                id: self.sub.def.id.clone(),
                through: state.cursor,
                lost_events: state.lost_events + n,
            });
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
