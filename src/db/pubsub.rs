//! Subscriptions on the database: durable webhook subscriptions (logged
//! like keys), the listener that feeds the delivery pool, and in-process
//! subscribers for library users.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{TrySendError, bounded};

use super::{Db, DbError, Inner};
use crate::events::subscriptions::{Subscription, SubscriptionOp, Target};
use crate::events::webhook::DeliveryStats;
use crate::events::{EventHub, Listener};
use crate::store::ChangeEvent;
use crate::wal::Record;

/// Capacity of an in-process subscriber's queue.
const LOCAL_QUEUE: usize = 65_536;

/// Lets the delivery pool, created before the database, remove a
/// subscription whose receiver answered 410 Gone.
#[derive(Default, Clone)]
pub(super) struct GoneSlot(Arc<OnceLock<Weak<Inner>>>);

impl GoneSlot {
    pub(super) fn set(&self, inner: &Arc<Inner>) {
        let _ = self.0.set(Arc::downgrade(inner));
    }

    pub(super) fn callback(&self) -> crate::events::webhook::OnGone {
        let slot = self.clone();
        Arc::new(move |id: &str| {
            let Some(inner) = slot.0.get().and_then(Weak::upgrade) else {
                return;
            };
            // Off the delivery runtime: logging the removal may wait on disk.
            let id = id.to_string();
            std::thread::spawn(move || {
                if let Err(e) = inner.unsubscribe_by_id(&id) {
                    tracing::error!(subscription = %id, "could not remove a gone subscription: {e}");
                }
            });
        })
    }
}

/// The hub listener that hands matching events to the delivery pool.
pub(super) fn webhook_listener(inner: &Arc<Inner>) -> Listener {
    let registry = Arc::clone(&inner.registry);
    let pool = Arc::clone(&inner.pool);
    Arc::new(move |event: &Arc<ChangeEvent>| {
        if registry.is_empty() {
            return;
        }
        let subs = registry.matching(&event.key);
        if !subs.is_empty() {
            pool.enqueue(Arc::clone(event), subs);
        }
    })
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

    /// Counters of webhook delivery.
    pub fn delivery_stats(&self) -> &DeliveryStats {
        self.inner.pool.stats()
    }

    /// Events waiting between the write path and the delivery lanes.
    pub fn delivery_queue_depth(&self) -> usize {
        self.inner.pool.queue_depth()
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
        let listener: Listener = Arc::new(move |event: &Arc<ChangeEvent>| {
            if target.matches(&event.key)
                && let Err(TrySendError::Full(_)) = tx.try_send(Arc::clone(event))
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
