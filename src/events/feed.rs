//! The live feed engine behind `GET /events` and `GET /ws` (SPEC §6): an
//! [`EventHub`](super::EventHub) listener that puts changes in version
//! order, keeps the newest ones in a ring for `since=` resumes, and fans
//! them out to subscribers through bounded per-client queues.
//!
//! It owns no sockets and knows nothing of HTTP; `http::feed` turns a
//! [`Subscription`] into SSE frames or WebSocket messages.
//!
//! Invariant: [`Feed::listener`] runs on the write path, so it only takes
//! short non-async locks and never waits for a client. A client whose queue
//! is full is cut off (its queue is freed and it gets a
//! [`Reset::Lagged`]); writers and the other clients never notice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::payload::encode_payload;
use super::ring::Ring;
use super::{Applied, ChangeEvent, Listener};

/// Events a client may have queued before it is cut off for falling
/// behind. Its reader takes the whole queue at once, so a client holds at
/// most twice this many.
pub const CLIENT_BUFFER_EVENTS: usize = 4096;

/// How long a missing revision is waited for before the feed asks whether
/// it may still come. Revisions are taken before changes reach the WAL, so
/// two writers can hand over their changes out of version order; the gap
/// usually closes within microseconds, but a change whose commit is slow (a
/// disk under pressure) may take longer. The feed gives up on a revision
/// only once no change is in flight ([`Feed::watch_in_flight`]): then it
/// was refused (a poisoned WAL, a closing database) and never arrives.
const GAP_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether a change that took a revision may still arrive.
type InFlight = Box<dyn Fn() -> bool + Send + Sync>;

/// One change as the feed hands it out, with its payload encoded once (by
/// the first client that needs it, never on the write path).
#[derive(Debug)]
pub struct FeedEvent {
    /// The change.
    pub change: Arc<ChangeEvent>,
    payload: OnceLock<Bytes>,
}

impl FeedEvent {
    /// Wraps a change; its payload is encoded when first asked for.
    pub fn new(change: Arc<ChangeEvent>) -> FeedEvent {
        FeedEvent {
            change,
            payload: OnceLock::new(),
        }
    }

    /// The change's revision, which is also its SSE `id`.
    pub fn version(&self) -> u64 {
        self.change.version
    }

    /// The SPEC §5 payload JSON.
    pub fn payload(&self) -> &Bytes {
        self.payload.get_or_init(|| encode_payload(&self.change))
    }
}

/// Changes older than the ring, read back from the log on disk (the
/// database provides it when it has a data directory).
pub trait Backfill: Send + Sync {
    /// Revisions up to this one are not retained any more.
    fn floor(&self) -> u64;

    /// The changes after `after` up to `through`, at most `max` of them, in
    /// revision order, and the revision read through.
    ///
    /// # Errors
    ///
    /// The newest revision that is gone, when changes after `after` are.
    fn read(
        &self,
        after: u64,
        through: u64,
        max: usize,
    ) -> Result<(Vec<Arc<ChangeEvent>>, u64), u64>;
}

/// What [`Feed::read_after`] found.
#[derive(Debug)]
pub enum ReadAfter {
    /// The changes after the asked revision, in order, and the revision
    /// they reach (every change up to `through` was considered).
    Events {
        /// The changes.
        events: Vec<Arc<FeedEvent>>,
        /// The revision read through.
        through: u64,
    },
    /// Changes after the asked revision are retained neither in memory nor
    /// on disk; revisions up to `floor` are gone.
    Gone {
        /// The newest revision that is gone.
        floor: u64,
    },
}

/// Changes a disk backfill reads at a time.
const BACKFILL_BATCH: usize = 1024;

/// Why a subscription starts over or ends instead of carrying on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Changes after `since` were dropped from the ring (or happened before
    /// this server started); the subscription goes on live.
    NotRetained {
        /// The revision the client asked to resume after.
        since: u64,
        /// The oldest revision that can still be replayed.
        oldest_retained: u64,
    },
    /// `since` is newer than every change this server has made (a client
    /// of another or a restored database); the subscription goes on live.
    Ahead {
        /// The revision the client asked to resume after.
        since: u64,
        /// The newest revision the feed has seen.
        revision: u64,
    },
    /// The client fell `buffer` events behind and was cut off; the
    /// subscription ends after this.
    Lagged {
        /// The queue size it overflowed.
        buffer: usize,
    },
}

impl Reset {
    /// A short name for the reason (`not_retained`, `ahead`, `lagged`).
    pub fn reason(&self) -> &'static str {
        match self {
            Reset::NotRetained { .. } => "not_retained",
            Reset::Ahead { .. } => "ahead",
            Reset::Lagged { .. } => "lagged",
        }
    }

    /// A sentence for people reading the stream.
    pub fn message(&self) -> String {
        match self {
            Reset::NotRetained {
                since,
                oldest_retained,
            } => format!(
                "changes after revision {since} are no longer retained (the oldest is \
                 {oldest_retained}); reload the keys, then follow the live changes"
            ),
            Reset::Ahead { since, revision } => format!(
                "revision {since} is newer than this server's newest ({revision}); reload \
                 the keys, then follow the live changes"
            ),
            Reset::Lagged { buffer } => format!(
                "the client fell more than {buffer} changes behind and was disconnected; \
                 reconnect with since=<last id>"
            ),
        }
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// The next matching change, in version order.
    Event(Arc<FeedEvent>),
    /// The stream starts over ([`Reset::NotRetained`], [`Reset::Ahead`],
    /// always first) or ends ([`Reset::Lagged`], always last).
    Reset(Reset),
}

/// The answer of [`Subscription::try_next`].
#[derive(Debug, Clone)]
pub enum TryNext {
    /// An item is ready.
    Item(FeedItem),
    /// Nothing yet; [`Subscription::wait`] until there may be.
    Empty,
    /// The subscription is over (cut off, or the feed closed).
    Ended,
}

/// Counters of the feed, for `/metrics` and `/system/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedStats {
    /// Subscribers connected now.
    pub clients: u64,
    /// Subscriptions opened since start.
    pub subscriptions: u64,
    /// Subscribers cut off for falling behind since start.
    pub cut_off: u64,
    /// Changes that went through the feed since start.
    pub events: u64,
    /// Changes in the ring now.
    pub retained: usize,
    /// The oldest revision in the ring, if any.
    pub oldest_retained: Option<u64>,
    /// Revisions given up on (taken but never applied) since start.
    pub skipped_revisions: u64,
}

/// The live feed: register [`Feed::listener`] with the hub, then
/// [`Feed::subscribe`] per client.
pub struct Feed {
    shared: Arc<Shared>,
    /// Skips revisions that never arrive; stopped and joined on drop.
    gap_thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// Taken on the write path for every change (a push and a few queue
    /// appends) and briefly by subscribe and unsubscribe: a std mutex,
    /// because it is never held across an await or any I/O. Lock order:
    /// this, then a client's queue.
    state: Mutex<State>,
    /// Wakes the gap thread when a gap opens or the feed is dropped.
    gap_wakeup: Condvar,
    retained: usize,
    client_buffer: usize,
    subscriptions: AtomicU64,
    cut_off: AtomicU64,
    events: AtomicU64,
    skipped: AtomicU64,
    /// Asked before a missing revision is given up on.
    in_flight: OnceLock<InFlight>,
    /// Where changes older than the ring are read from, if anywhere.
    backfill: OnceLock<Arc<dyn Backfill>>,
}

struct State {
    /// The newest delivered changes, ascending by version.
    ring: Ring,
    /// For each change in the ring, the event last built from it (for a
    /// client or by [`FeedReader::read_after_matching`]) while any reader
    /// still holds it: readers of the same change share one event and so
    /// one payload encoding, however many webhook subscriptions read it.
    built: VecDeque<Weak<FeedEvent>>,
    /// The newest revision that can no longer be replayed: the last one
    /// evicted from the ring, or the revision the feed started at.
    floor: u64,
    /// The revision to deliver next.
    next: u64,
    /// Changes that arrived before a lower revision, by version.
    pending: BTreeMap<u64, Arc<ChangeEvent>>,
    /// When the gap at `next` was first seen.
    gap_since: Option<Instant>,
    clients: Vec<Arc<Client>>,
    /// No new subscribers; every subscription has ended.
    closed: bool,
    /// Tells the gap thread to exit.
    stopping: bool,
}

/// One subscriber as the write path sees it.
struct Client {
    prefix: Box<str>,
    /// Only changes after this revision are for this client.
    after: u64,
    /// Filled by the write path, emptied at once by the reader. A std
    /// mutex: both sides hold it for a push or a swap only.
    queue: Mutex<ClientQueue>,
    wake: Notify,
}

#[derive(Default)]
struct ClientQueue {
    events: VecDeque<Arc<FeedEvent>>,
    end: Option<End>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Lagged,
    Closed,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Feed {
    /// A feed that keeps the last `retained` changes and continues after
    /// `revision` (the store's revision when the database opened: older
    /// changes cannot be replayed).
    ///
    /// # Errors
    ///
    /// The feed's thread cannot be started.
    pub fn new(retained: usize, revision: u64) -> std::io::Result<Feed> {
        Feed::with_client_buffer(retained, revision, CLIENT_BUFFER_EVENTS)
    }

    /// [`Feed::new`] with `client_buffer` events per client instead of
    /// [`CLIENT_BUFFER_EVENTS`].
    ///
    /// # Errors
    ///
    /// As [`Feed::new`].
    pub fn with_client_buffer(
        retained: usize,
        revision: u64,
        client_buffer: usize,
    ) -> std::io::Result<Feed> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                ring: Ring::with_capacity(retained.clamp(1, 1024)),
                built: VecDeque::with_capacity(retained.clamp(1, 1024)),
                floor: revision,
                next: revision + 1,
                pending: BTreeMap::new(),
                gap_since: None,
                clients: Vec::new(),
                closed: false,
                stopping: false,
            }),
            gap_wakeup: Condvar::new(),
            retained: retained.max(1),
            client_buffer: client_buffer.max(1),
            subscriptions: AtomicU64::new(0),
            cut_off: AtomicU64::new(0),
            events: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            in_flight: OnceLock::new(),
            backfill: OnceLock::new(),
        });
        let for_thread = Arc::clone(&shared);
        let gap_thread = std::thread::Builder::new()
            .name("dododb-feed".into())
            .spawn(move || for_thread.skip_gaps())?;
        Ok(Feed {
            shared,
            gap_thread: Some(gap_thread),
        })
    }

    /// Makes the feed wait for a missing revision for as long as
    /// `in_flight` says a change that took a revision may still arrive
    /// (the store's count of changes not yet applied or aborted), instead
    /// of giving up after [`GAP_TIMEOUT`]. Set once, before changes flow.
    pub fn watch_in_flight(&self, in_flight: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.shared.in_flight.set(Box::new(in_flight));
    }

    /// Lets resumes and [`Feed::read_after`] reach changes older than the
    /// ring through `backfill` (set once, before any client subscribes).
    pub fn set_backfill(&self, backfill: Arc<dyn Backfill>) {
        let _ = self.shared.backfill.set(backfill);
    }

    /// A handle that reads the feed by revision (for webhook delivery).
    pub fn reader(&self) -> FeedReader {
        FeedReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The hub listener that feeds this feed. It takes the feed's lock and
    /// each matching client's queue lock briefly, and never blocks on a
    /// client.
    pub fn listener(&self) -> Listener {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |change: &Applied<'_>| shared.accept(change))
    }

    /// Opens a subscription to changes of keys starting with `prefix`.
    ///
    /// Without `since` it starts with the next change. With `since` it
    /// first replays the retained changes after that revision, then goes on
    /// live: the ring is read and the client registered under the lock the
    /// write path takes, so nothing is missed or repeated at the seam. If
    /// changes after `since` are no longer retained, or `since` is newer
    /// than any change, the first item is a [`Reset`] and it goes on live.
    pub fn subscribe(&self, prefix: &str, since: Option<u64>) -> Subscription {
        let shared = &self.shared;
        let mut st = lock(&shared.state);
        let delivered = st.next - 1;
        let newest = st
            .pending
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(delivered);
        let mut local = VecDeque::new();
        let mut start = None;
        let mut backfill = None;
        let mut after = delivered;
        match since {
            None => {}
            Some(since) if since > newest => {
                start = Some(Reset::Ahead {
                    since,
                    revision: newest,
                });
            }
            Some(since) if since < st.floor => {
                match shared.backfill.get() {
                    Some(disk) if since >= disk.floor() => {
                        // Older than the ring but on disk: the disk part
                        // first, then the whole ring, then live.
                        backfill = Some((Arc::clone(disk), since, st.floor));
                        local.extend(retained(&st.ring, 0, prefix));
                    }
                    disk => {
                        start = Some(Reset::NotRetained {
                            since,
                            oldest_retained: disk.map_or(st.floor, |d| d.floor()) + 1,
                        });
                    }
                }
            }
            Some(since) => {
                local.extend(retained(&st.ring, st.ring.first_after(since), prefix));
                // `since` may lie among the pending changes: those up to it
                // are not for this client when they are delivered.
                after = since.max(delivered);
            }
        }
        let client = Arc::new(Client {
            prefix: Box::from(prefix),
            after,
            queue: Mutex::new(ClientQueue::default()),
            wake: Notify::new(),
        });
        if st.closed {
            lock(&client.queue).end = Some(End::Closed);
        } else {
            st.clients.push(Arc::clone(&client));
            shared.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        drop(st);
        Subscription {
            shared: Arc::clone(shared),
            client,
            start,
            backfill: backfill.map(|(disk, after, through)| Backfilling {
                disk,
                after,
                through,
                prefix: Box::from(prefix),
                buffered: VecDeque::new(),
            }),
            local,
            ended: false,
        }
    }

    /// Ends every subscription and refuses new ones (they end at once).
    /// The server calls this on shutdown so long-lived streams let the
    /// graceful shutdown finish.
    pub fn close(&self) {
        let mut st = lock(&self.shared.state);
        st.closed = true;
        for client in st.clients.drain(..) {
            let was_empty = {
                let mut queue = lock(&client.queue);
                queue.end = Some(End::Closed);
                queue.events.is_empty()
            };
            if was_empty {
                client.wake.notify_one();
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> FeedStats {
        let shared = &self.shared;
        let st = lock(&shared.state);
        FeedStats {
            clients: st.clients.len() as u64,
            subscriptions: shared.subscriptions.load(Ordering::Relaxed),
            cut_off: shared.cut_off.load(Ordering::Relaxed),
            events: shared.events.load(Ordering::Relaxed),
            retained: st.ring.len(),
            oldest_retained: st.ring.oldest(),
            skipped_revisions: shared.skipped.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.gap_wakeup.notify_all();
        if let Some(thread) = self.gap_thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Takes one applied change from the hub (on the write path).
    fn accept(&self, change: &Applied<'_>) {
        let mut st = lock(&self.state);
        let version = change.version;
        if version == st.next {
            self.deliver(&mut st, change);
            self.deliver_pending(&mut st);
        } else if version > st.next {
            st.pending.insert(version, Arc::clone(change.event()));
            if st.gap_since.is_none() {
                st.gap_since = Some(Instant::now());
                self.gap_wakeup.notify_one();
            }
        } else {
            // Its revision was given up on after GAP_TIMEOUT: delivering it
            // now would break the order every client relies on.
            drop(st);
            tracing::warn!(
                version,
                key = %change.key,
                "live feed: a change arrived after its revision was skipped; not streamed"
            );
        }
    }

    /// Delivers the pending changes that now follow in order, and notes
    /// whether a gap remains.
    fn deliver_pending(&self, st: &mut State) {
        while let Some(change) = st.pending.remove(&st.next) {
            self.deliver(st, &Applied::of(&change));
        }
        st.gap_since = if st.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
    }

    /// Appends the change that is next in version order to the ring and to
    /// every matching client's queue; cuts off clients whose queue is full.
    /// The ring copies the bytes it keeps, so the change is made an owned
    /// event only when some client is connected.
    fn deliver(&self, st: &mut State, change: &Applied<'_>) {
        st.next = change.version + 1;
        st.ring.push(change);
        st.built.push_back(Weak::new());
        if st.ring.len() > self.retained
            && let Some(evicted) = st.ring.pop_front()
        {
            st.built.pop_front();
            st.floor = evicted;
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        if st.clients.is_empty() {
            return;
        }
        let event = Arc::new(FeedEvent::new(Arc::clone(change.event())));
        if let Some(slot) = st.built.back_mut() {
            *slot = Arc::downgrade(&event);
        }
        st.clients.retain(|client| {
            if event.version() <= client.after || !event.change.key.starts_with(&*client.prefix) {
                return true;
            }
            let mut queue = lock(&client.queue);
            if queue.end.is_some() {
                return false;
            }
            if queue.events.len() >= self.client_buffer {
                // Free what it holds now: a client that stopped reading
                // must not pin old values.
                queue.events = VecDeque::new();
                queue.end = Some(End::Lagged);
                drop(queue);
                client.wake.notify_one();
                self.cut_off.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let was_empty = queue.events.is_empty();
            queue.events.push_back(Arc::clone(&event));
            drop(queue);
            // The reader takes the whole queue at once, so only the first
            // event after it emptied the queue needs to wake it.
            if was_empty {
                client.wake.notify_one();
            }
            true
        });
    }

    /// The gap thread: gives up on a missing revision after GAP_TIMEOUT so
    /// the changes after it are not held back forever.
    fn skip_gaps(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.stopping {
                return;
            }
            let Some(since) = st.gap_since else {
                st = self.gap_wakeup.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let waited = since.elapsed();
            if waited < GAP_TIMEOUT {
                st = self
                    .gap_wakeup
                    .wait_timeout(st, GAP_TIMEOUT - waited)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let Some(&resume) = st.pending.keys().next() else {
                st.gap_since = None;
                continue;
            };
            // A change in flight may be the missing one, committing slowly:
            // wait for it. Its apply takes this lock, so it cannot slip in
            // between this check and the skip below.
            if self.in_flight.get().is_some_and(|still| still()) {
                st.gap_since = Some(Instant::now());
                continue;
            }
            let missing = st.next..resume;
            tracing::warn!(
                first = missing.start,
                last = missing.end - 1,
                "live feed: revisions were taken but never applied; going on without them"
            );
            self.skipped
                .fetch_add(missing.end - missing.start, Ordering::Relaxed);
            st.next = resume;
            self.deliver_pending(&mut st);
        }
    }
}

/// The retained changes from position `from` on under `prefix`, as events
/// for a reader.
fn retained<'a>(
    ring: &'a Ring,
    from: usize,
    prefix: &'a str,
) -> impl Iterator<Item = Arc<FeedEvent>> + 'a {
    ring.events_in(from..ring.len(), move |key| key.starts_with(prefix))
        .map(|c| Arc::new(FeedEvent::new(Arc::new(c))))
}

/// Reads the feed by revision: the ring, or the disk behind it.
#[derive(Clone)]
pub struct FeedReader {
    shared: Arc<Shared>,
}

impl FeedReader {
    /// The newest revision the feed has passed on, in order.
    pub fn delivered(&self) -> u64 {
        lock(&self.shared.state).next - 1
    }

    /// The newest revision no longer in the ring (older ones are read
    /// from disk, if anywhere).
    pub fn ring_floor(&self) -> u64 {
        lock(&self.shared.state).floor
    }

    /// The changes after `after`, at most `max`, in revision order: from
    /// the ring when it reaches back that far, else from the disk.
    pub fn read_after(&self, after: u64, max: usize) -> ReadAfter {
        self.read_after_matching(after, max, |_| true)
    }

    /// [`FeedReader::read_after`], keeping only the changes whose key
    /// `matches`: of the `max` changes read, those that do not match are
    /// not copied out of the ring. `through` is as if all were returned.
    pub fn read_after_matching(
        &self,
        after: u64,
        max: usize,
        matches: impl Fn(&str) -> bool,
    ) -> ReadAfter {
        let mut st = lock(&self.shared.state);
        let delivered = st.next - 1;
        if after >= st.floor {
            let from = st.ring.first_after(after);
            let to = from.saturating_add(max).min(st.ring.len());
            let st = &mut *st;
            let mut events = Vec::new();
            for at in from..to {
                if !st.ring.key_at(at).is_some_and(&matches) {
                    continue;
                }
                let event = match st.built[at].upgrade() {
                    Some(event) => event,
                    None => {
                        let Some(change) = st.ring.event_at(at) else {
                            continue;
                        };
                        let event = Arc::new(FeedEvent::new(Arc::new(change)));
                        st.built[at] = Arc::downgrade(&event);
                        event
                    }
                };
                events.push(event);
            }
            let through = match st.ring.version_at(to.wrapping_sub(1)) {
                Some(last) if to > from && to - from == max => last,
                _ => delivered.max(after),
            };
            return ReadAfter::Events { events, through };
        }
        let ring_floor = st.floor;
        drop(st);
        let Some(disk) = self.shared.backfill.get() else {
            return ReadAfter::Gone { floor: ring_floor };
        };
        match disk.read(after, ring_floor, max) {
            Ok((changes, through)) => ReadAfter::Events {
                events: changes
                    .into_iter()
                    .filter(|c| matches(&c.key))
                    .map(|c| Arc::new(FeedEvent::new(c)))
                    .collect(),
                through,
            },
            Err(floor) => ReadAfter::Gone { floor },
        }
    }
}

/// The part of a resume that is read from disk.
struct Backfilling {
    disk: Arc<dyn Backfill>,
    /// Read through this revision so far.
    after: u64,
    /// The ring's floor when the client subscribed: the ring had the rest.
    through: u64,
    prefix: Box<str>,
    buffered: VecDeque<Arc<FeedEvent>>,
}

impl Backfilling {
    /// The next change from disk; `Err` with a reset if the disk lost them
    /// meanwhile; `Ok(None)` once the disk part is over.
    fn next(&mut self) -> Result<Option<Arc<FeedEvent>>, Reset> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(Some(event));
            }
            if self.after >= self.through {
                return Ok(None);
            }
            match self.disk.read(self.after, self.through, BACKFILL_BATCH) {
                Ok((changes, through)) => {
                    self.after = through.max(self.after + 1);
                    self.buffered.extend(
                        changes
                            .into_iter()
                            .filter(|c| c.key.starts_with(&*self.prefix))
                            .map(|c| Arc::new(FeedEvent::new(c))),
                    );
                }
                Err(floor) => {
                    let since = self.after;
                    self.after = self.through;
                    return Err(Reset::NotRetained {
                        since,
                        oldest_retained: floor + 1,
                    });
                }
            }
        }
    }
}

/// One client's view of the feed. Dropping it unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
    client: Arc<Client>,
    /// A reset to report before anything else.
    start: Option<Reset>,
    /// Changes older than the ring, still to be read from disk.
    backfill: Option<Backfilling>,
    /// Replayed changes, then batches taken from the client's queue.
    local: VecDeque<Arc<FeedEvent>>,
    ended: bool,
}

impl Subscription {
    /// The next item if one is ready, without waiting.
    pub fn try_next(&mut self) -> TryNext {
        if self.ended {
            return TryNext::Ended;
        }
        if let Some(reset) = self.start.take() {
            return TryNext::Item(FeedItem::Reset(reset));
        }
        if let Some(disk) = &mut self.backfill {
            match disk.next() {
                Ok(Some(event)) => return TryNext::Item(FeedItem::Event(event)),
                Ok(None) => self.backfill = None,
                Err(reset) => {
                    self.backfill = None;
                    return TryNext::Item(FeedItem::Reset(reset));
                }
            }
        }
        if let Some(event) = self.local.pop_front() {
            return TryNext::Item(FeedItem::Event(event));
        }
        let end = {
            let mut queue = lock(&self.client.queue);
            if !queue.events.is_empty() {
                std::mem::swap(&mut queue.events, &mut self.local);
                None
            } else {
                queue.end
            }
        };
        if let Some(event) = self.local.pop_front() {
            return TryNext::Item(FeedItem::Event(event));
        }
        match end {
            None => TryNext::Empty,
            Some(End::Closed) => {
                self.ended = true;
                TryNext::Ended
            }
            Some(End::Lagged) => {
                self.ended = true;
                TryNext::Item(FeedItem::Reset(Reset::Lagged {
                    buffer: self.shared.client_buffer,
                }))
            }
        }
    }

    /// Waits until [`Subscription::try_next`] may have something. Cancel
    /// safe; it may return early.
    pub async fn wait(&self) {
        if self.ended || self.start.is_some() || self.backfill.is_some() || !self.local.is_empty() {
            return;
        }
        self.client.wake.notified().await;
    }

    /// The next item, waiting for it; `None` once the subscription is over.
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            match self.try_next() {
                TryNext::Item(item) => return Some(item),
                TryNext::Ended => return None,
                TryNext::Empty => self.wait().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = lock(&self.shared.state);
        st.clients.retain(|c| !Arc::ptr_eq(c, &self.client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChangeKind;

    fn change(version: u64, key: &str) -> Arc<ChangeEvent> {
        Arc::new(ChangeEvent {
            key: Box::from(key),
            kind: ChangeKind::Update,
            old_value: None,
            new_value: Some(Bytes::from_static(b"1")),
            version,
            timestamp_ms: 1_700_000_000_000,
        })
    }

    fn push(feed: &Feed, versions: impl IntoIterator<Item = u64>) {
        let listener = feed.listener();
        for v in versions {
            listener(&Applied::of(&change(v, &format!("k{v}"))));
        }
    }

    /// Everything ready now: versions, resets, and whether it ended.
    fn drain(sub: &mut Subscription) -> (Vec<u64>, Vec<Reset>, bool) {
        let (mut versions, mut resets) = (Vec::new(), Vec::new());
        loop {
            match sub.try_next() {
                TryNext::Item(FeedItem::Event(e)) => versions.push(e.version()),
                TryNext::Item(FeedItem::Reset(r)) => resets.push(r),
                TryNext::Empty => return (versions, resets, false),
                TryNext::Ended => return (versions, resets, true),
            }
        }
    }

    fn check(
        feed: &Feed,
        prefix: &str,
        since: Option<u64>,
        expected: (Vec<u64>, Vec<Reset>, bool),
    ) {
        let mut sub = feed.subscribe(prefix, since);
        assert_eq!(
            drain(&mut sub),
            expected,
            "prefix {prefix:?} since {since:?}"
        );
    }

    fn read(reader: &FeedReader, after: u64, prefix: &str) -> Vec<Arc<FeedEvent>> {
        match reader.read_after_matching(after, 100, |k| k.starts_with(prefix)) {
            ReadAfter::Events { events, .. } => events,
            ReadAfter::Gone { floor } => panic!("gone through {floor}"),
        }
    }

    /// Webhook subscriptions reading the same changes get one event each,
    /// shared, so its payload is encoded once; each still gets only its
    /// own keys, and a change read again after every reader let go of it
    /// comes back the same.
    #[test]
    fn readers_of_a_change_share_its_event_and_payload() {
        let feed = Feed::new(100, 0).expect("feed");
        let listener = feed.listener();
        for v in 1..=6 {
            let key = if v % 2 == 0 { "a/" } else { "b/" };
            listener(&Applied::of(&change(v, &format!("{key}{v}"))));
        }
        let reader = feed.reader();
        let all = read(&reader, 0, "");
        let a = read(&reader, 0, "a/");
        let b = read(&reader, 2, "b/");
        let versions =
            |events: &[Arc<FeedEvent>]| events.iter().map(|e| e.version()).collect::<Vec<_>>();
        assert_eq!(versions(&all), [1, 2, 3, 4, 5, 6]);
        assert_eq!(versions(&a), [2, 4, 6]);
        assert_eq!(versions(&b), [3, 5]);
        for event in a.iter().chain(&b) {
            let same = &all[usize::try_from(event.version()).expect("small") - 1];
            assert!(Arc::ptr_eq(event, same), "revision {}", event.version());
            assert!(std::ptr::eq(
                event.payload().as_ptr(),
                same.payload().as_ptr()
            ));
        }
        let payload: serde_json::Value = serde_json::from_slice(a[1].payload()).expect("json");
        assert_eq!(
            (payload["key"].as_str(), payload["version"].as_u64()),
            (Some("a/4"), Some(4))
        );
        let first = all[0].payload().clone();
        drop((all, a, b));
        let again = read(&reader, 0, "");
        assert_eq!(versions(&again), [1, 2, 3, 4, 5, 6]);
        assert_eq!(again[0].payload(), &first);
    }

    #[test]
    fn replays_after_since_then_goes_live() {
        let feed = Feed::new(10, 0).expect("feed");
        push(&feed, 1..=5);
        check(&feed, "", Some(0), (vec![1, 2, 3, 4, 5], vec![], false));
        check(&feed, "", Some(3), (vec![4, 5], vec![], false));
        check(&feed, "", Some(5), (vec![], vec![], false));
        check(&feed, "", None, (vec![], vec![], false));
        check(&feed, "k2", Some(0), (vec![2], vec![], false));
        let mut sub = feed.subscribe("", Some(3));
        push(&feed, 6..=7);
        assert_eq!(drain(&mut sub), (vec![4, 5, 6, 7], vec![], false));
    }

    #[test]
    fn since_outside_the_ring_resets() {
        let feed = Feed::new(3, 10).expect("feed");
        check(
            &feed,
            "",
            Some(9),
            (
                vec![],
                vec![Reset::NotRetained {
                    since: 9,
                    oldest_retained: 11,
                }],
                false,
            ),
        );
        check(&feed, "", Some(10), (vec![], vec![], false));
        push(&feed, 11..=15);
        check(&feed, "", Some(12), (vec![13, 14, 15], vec![], false));
        check(
            &feed,
            "",
            Some(11),
            (
                vec![],
                vec![Reset::NotRetained {
                    since: 11,
                    oldest_retained: 13,
                }],
                false,
            ),
        );
        check(
            &feed,
            "",
            Some(16),
            (
                vec![],
                vec![Reset::Ahead {
                    since: 16,
                    revision: 15,
                }],
                false,
            ),
        );
        assert_eq!(feed.stats().oldest_retained, Some(13));
    }

    #[test]
    fn out_of_order_changes_are_delivered_in_version_order() {
        let feed = Feed::new(100, 0).expect("feed");
        let mut live = feed.subscribe("", None);
        push(&feed, [2, 3]);
        assert_eq!(drain(&mut live), (vec![], vec![], false));
        // Resuming inside the pending range: nothing replayed, and the
        // pending changes up to `since` are not repeated.
        let mut resumed = feed.subscribe("", Some(2));
        push(&feed, [1, 5, 4]);
        assert_eq!(drain(&mut live), (vec![1, 2, 3, 4, 5], vec![], false));
        assert_eq!(drain(&mut resumed), (vec![3, 4, 5], vec![], false));
    }

    #[tokio::test]
    async fn a_revision_that_never_arrives_is_skipped() {
        let feed = Feed::new(100, 0).expect("feed");
        let mut sub = feed.subscribe("", None);
        push(&feed, [1, 3, 4]);
        let mut got = Vec::new();
        while got.len() < 3 {
            match sub.next().await {
                Some(FeedItem::Event(e)) => got.push(e.version()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, vec![1, 3, 4]);
        assert_eq!(feed.stats().skipped_revisions, 1);
        // A straggler after the skip is not streamed out of order.
        push(&feed, [2, 5]);
        assert_eq!(drain(&mut sub).0, vec![5]);
    }

    #[test]
    fn a_full_client_is_cut_off_and_others_keep_up() {
        let feed = Feed::with_client_buffer(100, 0, 4).expect("feed");
        let mut slow = feed.subscribe("", None);
        let mut fast = feed.subscribe("", None);
        let mut seen = Vec::new();
        for v in 1..=10 {
            push(&feed, [v]);
            seen.extend(drain(&mut fast).0);
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert_eq!(
            drain(&mut slow),
            (vec![], vec![Reset::Lagged { buffer: 4 }], true)
        );
        let stats = feed.stats();
        assert_eq!((stats.clients, stats.cut_off, stats.events), (1, 1, 10));
    }

    #[test]
    fn unsubscribe_and_close() {
        let feed = Feed::new(10, 0).expect("feed");
        let sub = feed.subscribe("", None);
        let mut other = feed.subscribe("a", None);
        assert_eq!(feed.stats().clients, 2);
        drop(sub);
        assert_eq!(feed.stats().clients, 1);
        feed.close();
        assert_eq!(drain(&mut other), (vec![], vec![], true));
        let mut late = feed.subscribe("", None);
        assert_eq!(drain(&mut late), (vec![], vec![], true));
        assert_eq!(feed.stats().clients, 0);
    }

    #[tokio::test]
    async fn next_waits_for_a_change() {
        let feed = Feed::new(10, 0).expect("feed");
        let mut sub = feed.subscribe("", None);
        let listener = feed.listener();
        let writer = std::thread::spawn(move || {
            for v in 1..=3 {
                listener(&Applied::of(&change(v, "k")));
            }
        });
        let mut got = Vec::new();
        while got.len() < 3 {
            match sub.next().await {
                Some(FeedItem::Event(e)) => got.push(e.version()),
                other => panic!("unexpected {other:?}"),
            }
        }
        writer.join().expect("writer");
        assert_eq!(got, vec![1, 2, 3]);
        let payload: serde_json::Value =
            serde_json::from_slice(feed.subscribe("", Some(2)).local[0].payload())
                .expect("payload is JSON");
        assert_eq!(payload["id"], "evt_3");
    }
}
