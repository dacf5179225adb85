//! Change events and their fan-out to in-process listeners (the webhook
//! queue, the live feed, library subscribers).
//!
//! Invariant: `emit` runs on the write path (under a key's shard lock or on
//! the WAL writer thread), so every listener must return at once: push to a
//! bounded queue or ring and never block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use crate::store::{Applied, ChangeEvent, ChangeKind};

/// A listener called for every applied change, with the change borrowed:
/// one that keeps it takes [`Applied::event`].
pub type Listener = Arc<dyn Fn(&Applied<'_>) + Send + Sync>;

/// The single point every applied change passes through.
#[derive(Default)]
pub struct EventHub {
    /// Read on every change, written only when listeners come and go.
    listeners: RwLock<Vec<(u64, Listener)>>,
    /// Lets a change skip the listeners' lock when nobody listens.
    any: AtomicBool,
    next_id: AtomicU64,
}

impl EventHub {
    /// Registers `listener`; returns an id for [`EventHub::remove`].
    pub fn add(&self, listener: Listener) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut listeners = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        listeners.push((id, listener));
        self.any.store(true, Ordering::Release);
        id
    }

    /// Unregisters the listener with this id.
    pub fn remove(&self, id: u64) {
        let mut listeners = self.listeners.write().unwrap_or_else(|e| e.into_inner());
        listeners.retain(|(i, _)| *i != id);
        self.any.store(!listeners.is_empty(), Ordering::Release);
    }

    /// Hands `change` to every listener.
    pub fn emit(&self, change: &Applied<'_>) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        for (_, listener) in listeners.iter() {
            listener(change);
        }
    }
}

pub mod feed;
pub mod payload;
mod ring;
pub mod subscriptions;
pub mod webhook;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;

    /// Listeners that keep a change share one event, built once, whose
    /// new value is the change's own buffer; a listener that keeps
    /// nothing never makes one.
    #[test]
    fn listeners_that_keep_a_change_share_one_event() {
        let hub = EventHub::default();
        let kept: Arc<Mutex<Vec<Arc<ChangeEvent>>>> = Arc::default();
        for _ in 0..2 {
            let kept = Arc::clone(&kept);
            hub.add(Arc::new(move |change: &Applied<'_>| {
                kept.lock().expect("lock").push(Arc::clone(change.event()));
            }));
        }
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        hub.add(Arc::new(move |change: &Applied<'_>| {
            counter.store(change.version, Ordering::Relaxed);
        }));
        let new = Bytes::from(b"{\"a\":1}".to_vec());
        let change = Applied::new("k", ChangeKind::Update, Some(b"7"), Some(&new), 9, 1_000)
            .sharing(Some(&new));
        hub.emit(&change);
        let kept = kept.lock().expect("lock");
        assert_eq!(kept.len(), 2);
        assert!(Arc::ptr_eq(&kept[0], &kept[1]), "one event for both");
        let event = &kept[0];
        assert_eq!(&*event.key, "k");
        assert_eq!(event.old_value.as_deref(), Some(&b"7"[..]));
        assert_eq!(
            event.new_value.as_deref().map(<[u8]>::as_ptr),
            Some(new.as_ptr())
        );
        assert_eq!((event.version, event.timestamp_ms), (9, 1_000));
        assert_eq!(seen.load(Ordering::Relaxed), 9);
    }
}
