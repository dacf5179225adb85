//! Change events and their fan-out to in-process listeners (the webhook
//! queue, the live feed, library subscribers).
//!
//! Invariant: `emit` runs on the write path (under a key's shard lock or on
//! the WAL writer thread), so every listener must return at once: push to a
//! bounded queue or ring and never block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use crate::store::{ChangeEvent, ChangeKind};

/// A listener called for every applied change.
pub type Listener = Arc<dyn Fn(&Arc<ChangeEvent>) + Send + Sync>;

/// The single point every applied change passes through.
#[derive(Default)]
pub struct EventHub {
    /// Read on every change, written only when listeners come and go.
    listeners: RwLock<Vec<(u64, Listener)>>,
    /// Lets a change skip building its shared event when nobody listens.
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

    /// Hands `event` to every listener.
    pub fn emit(&self, event: ChangeEvent) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let event = Arc::new(event);
        let listeners = self.listeners.read().unwrap_or_else(|e| e.into_inner());
        for (_, listener) in listeners.iter() {
            listener(&event);
        }
    }
}

pub mod feed;
pub mod payload;
mod ring;
pub mod subscriptions;
pub mod webhook;
