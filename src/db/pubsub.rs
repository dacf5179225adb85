//! Subscriptions on the database: durable webhook subscriptions (logged
//! like keys), the listener that feeds the delivery pool, and in-process
//! subscribers for library users.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{TrySendError, bounded};

use super::log_source::InnerSlot;
use super::{Db, DbError, Inner};
use crate::events::subscriptions::{
    DeliveryState, FailedEvent, Subscription, SubscriptionOp, Target,
};
use crate::events::webhook::DeliveryStats;
use crate::events::{Applied, EventHub, Listener};
use crate::store::ChangeEvent;
use crate::wal::Record;

/// Capacity of an in-process subscriber's queue.
const LOCAL_QUEUE: usize = 65_536;

/// What the pool calls when a receiver answers 410 Gone: the subscription
/// is removed (off the delivery runtime: logging the removal waits on disk).
pub(super) fn on_gone(slot: InnerSlot) -> crate::events::webhook::OnGone {
    Arc::new(move |id: &str| {
        let Some(inner) = slot.get() else {
            return;
        };
        let id = id.to_string();
        std::thread::spawn(move || {
            if let Err(e) = inner.unsubscribe_by_id(&id) {
                tracing::error!(subscription = %id, "could not remove a gone subscription: {e}");
            }
        });
    })
}

/// The hub listener that hints the delivery pool: only the revision goes
/// on its queue; the events themselves are read back from the log.
pub(super) fn webhook_listener(inner: &Arc<Inner>) -> Listener {
    let registry = Arc::clone(&inner.registry);
    let pool = Arc::clone(&inner.pool);
    Arc::new(move |change: &Applied<'_>| {
        if !registry.is_empty() {
            pool.hint(change.version);
        }
    })
}

/// A webhook subscription with its delivery state (SPEC §5).
#[derive(Debug, Clone)]
pub struct SubscriptionStatus {
    /// The definition.
    pub def: Subscription,
    /// The durable delivery state: cursor, failed and lost events, status.
    pub state: DeliveryState,
    /// Events after the cursor not yet delivered or given up on (see
    /// [`crate::events::webhook::DeliveryPool::pending`]).
    pub pending: u64,
}

/// What `unsubscribe` is asked to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsubscribe {
    /// The subscription with this id.
    Id(String),
    /// The subscription with this target and callback URL.
    Target(Target, String),
}

impl Inner {
    /// Logs a subscription change and applies it (through the WAL writer
    /// when there is a data directory, so it is as durable as a key).
    fn log_subscription_op(&self, op: SubscriptionOp) -> Result<(), DbError> {
        if self.replica {
            return match self.meta_log.get() {
                Some(log) => log.log_meta(op.to_doc()),
                None => Err(DbError::Unavailable(
                    "the cluster is not running yet".into(),
                )),
            };
        }
        match &self.wal {
            Some(wal) => {
                let seq = wal
                    .submit(Record::Meta(op.to_doc()))
                    .map_err(|e| DbError::Unavailable(e.to_string()))?;
                wal.wait_blocking(seq)
                    .map_err(|e| DbError::Unavailable(e.to_string()))
            }
            None => {
                self.registry.apply(op);
                Ok(())
            }
        }
    }

    pub(super) fn unsubscribe_by_id(&self, id: &str) -> Result<bool, DbError> {
        let _one_at_a_time = self
            .subscribe_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.registry.get(id).is_none() {
            return Ok(false);
        }
        self.log_subscription_op(SubscriptionOp::Unsubscribe { id: id.to_string() })?;
        Ok(true)
    }
}

/// An in-process subscription; dropping it unsubscribes.
pub struct EventSubscription {
    hub: Weak<EventHub>,
    listener_id: u64,
    thread: Option<JoinHandle<()>>,
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(self.listener_id);
        }
        // The listener held the only sender: the thread drains and ends.
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl Db {
    /// Subscribes `callback_url` to changes of `target`; events are POSTed
    /// as webhooks (SPEC §5). Returns the subscription and whether it is
    /// new: the same target and URL again returns the existing one.
    ///
    /// # Errors
    ///
    /// [`DbError::InvalidRequest`] for a URL that is not absolute http(s) or
    /// a bad key, [`DbError::Unavailable`] when the log refuses writes.
    pub fn subscribe_webhook(
        &self,
        target: Target,
        callback_url: &str,
        secret: Option<String>,
    ) -> Result<(Subscription, bool), DbError> {
        check_callback_url(callback_url)?;
        if let Target::Key(key) = &target {
            self.inner
                .check_key(key)
                .map_err(|e| DbError::InvalidRequest(e.to_string()))?;
        }
        let inner = &self.inner;
        let _one_at_a_time = inner
            .subscribe_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = inner.registry.find(&target, callback_url) {
            return Ok((existing, false));
        }
        let subscription = Subscription {
            id: format!("sub_{:016x}", fastrand::u64(..)),
            target,
            callback_url: callback_url.to_string(),
            secret,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        inner.log_subscription_op(SubscriptionOp::Subscribe(subscription.clone()))?;
        Ok((subscription, true))
    }

    /// Removes a webhook subscription; returns whether one existed.
    ///
    /// # Errors
    ///
    /// [`DbError::Unavailable`] when the log refuses writes.
    pub fn unsubscribe_webhook(&self, which: &Unsubscribe) -> Result<bool, DbError> {
        let id = match which {
            Unsubscribe::Id(id) => id.clone(),
            Unsubscribe::Target(target, url) => match self.inner.registry.find(target, url) {
                Some(sub) => sub.id,
                None => return Ok(false),
            },
        };
        self.inner.unsubscribe_by_id(&id)
    }

    /// Every webhook subscription, oldest first (secrets included: callers
    /// showing them to users must strip them).
    pub fn subscriptions(&self) -> Vec<Subscription> {
        self.inner.registry.list()
    }

    /// Every webhook subscription with its delivery state, oldest first.
    pub fn subscription_statuses(&self) -> Vec<SubscriptionStatus> {
        self.inner
            .registry
            .all()
            .iter()
            .map(|sub| SubscriptionStatus {
                def: sub.def.clone(),
                state: sub.state(),
                pending: self.inner.pool.pending(sub),
            })
            .collect()
    }

    /// One webhook subscription with its delivery state.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`] when there is no such subscription.
    pub fn subscription_status(&self, id: &str) -> Result<SubscriptionStatus, DbError> {
        let sub = self.inner.registry.active(id).ok_or(DbError::NotFound)?;
        Ok(SubscriptionStatus {
            def: sub.def.clone(),
            state: sub.state(),
            pending: self.inner.pool.pending(&sub),
        })
    }

    /// Up to `limit` failed events of a subscription with revisions after
    /// `after`, oldest first, and the revision to continue after, if more.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`] when there is no such subscription.
    pub fn failed_events(
        &self,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<FailedEvent>, Option<u64>), DbError> {
        let sub = self.inner.registry.active(id).ok_or(DbError::NotFound)?;
        let state = sub.state();
        let from = after.map_or(0, |a| a.saturating_add(1));
        let mut page: Vec<FailedEvent> = state
            .failed
            .range(from..)
            .take(limit + 1)
            .map(|(_, f)| f.clone())
            .collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().map_or(0, |f| f.revision)
        });
        Ok((page, next))
    }

    /// Sends the failed events of a subscription from revision `since` on
    /// again; returns how many. Each leaves the failed list once a 2xx
    /// acknowledges it, or stays there with its new attempts.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`] when there is no such subscription.
    pub fn recover(&self, id: &str, since: u64) -> Result<usize, DbError> {
        let sub = self.inner.registry.active(id).ok_or(DbError::NotFound)?;
        let revisions: Vec<u64> = sub.state().failed.range(since..).map(|(&r, _)| r).collect();
        let n = revisions.len();
        sub.recover_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(revisions);
        sub.wake.notify_one();
        Ok(n)
    }

    /// Makes a disabled subscription active again; delivery resumes from
    /// its cursor. Returns once that is logged.
    ///
    /// # Errors
    ///
    /// [`DbError::NotFound`] when there is no such subscription,
    /// [`DbError::Unavailable`] when the log refuses writes.
    pub fn enable(&self, id: &str) -> Result<SubscriptionStatus, DbError> {
        self.inner.registry.active(id).ok_or(DbError::NotFound)?;
        self.inner
            .log_subscription_op(SubscriptionOp::Enable { id: id.to_string() })?;
        self.subscription_status(id)
    }

    /// Counters of webhook delivery.
    pub fn delivery_stats(&self) -> &DeliveryStats {
        self.inner.pool.stats()
    }

    /// Hints waiting between the write path and the delivery pool.
    pub fn delivery_queue_depth(&self) -> usize {
        self.inner.pool.queue_depth()
    }

    /// Events read from the log and not yet delivered or given up on.
    pub fn delivery_in_flight(&self) -> u64 {
        self.inner.pool.in_flight()
    }

    /// Calls `callback` for every change of `target`, in order, on a thread
    /// of its own (writes never wait for it). Dropping the returned handle
    /// unsubscribes. If the callback falls more than 65,536 events behind,
    /// further events are dropped and counted in
    /// [`DeliveryStats::dropped`].
    pub fn subscribe(
        &self,
        target: Target,
        mut callback: impl FnMut(&ChangeEvent) + Send + 'static,
    ) -> EventSubscription {
        let (tx, rx) = bounded::<Arc<ChangeEvent>>(LOCAL_QUEUE);
        let pool = Arc::clone(&self.inner.pool);
        let listener: Listener = Arc::new(move |change: &Applied<'_>| {
            if target.matches(change.key)
                && let Err(TrySendError::Full(_)) = tx.try_send(Arc::clone(change.event()))
            {
                pool.stats().dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
        let listener_id = self.inner.hub.add(listener);
        let thread = std::thread::Builder::new()
            .name("dododb-subscriber".into())
            .spawn(move || {
                for event in rx {
                    callback(&event);
                }
            })
            .ok();
        EventSubscription {
            hub: Arc::downgrade(&self.inner.hub),
            listener_id,
            thread,
        }
    }
}

/// A callback URL must be an absolute http or https URL with a host.
pub(crate) fn check_callback_url(url: &str) -> Result<(), DbError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| DbError::InvalidRequest(format!("callback_url {url:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(DbError::InvalidRequest(format!(
            "callback_url must be an absolute http or https URL; got {url:?}"
        )));
    }
    Ok(())
}
