//! The change records the store produces: what the WAL logs, what replay
//! applies, and what subscribers and the live feed receive.

use std::cell::OnceCell;
use std::sync::Arc;

use bytes::Bytes;

use super::value_copy::copy_value;

/// What kind of change happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A PUT: the key now holds a new value.
    Update,
    /// A DELETE, or the key was removed by a clear.
    Delete,
    /// The key's TTL ran out.
    Expire,
}

impl ChangeKind {
    /// The name used in event payloads (`update`, `delete`, `expire`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Update => "update",
            ChangeKind::Delete => "delete",
            ChangeKind::Expire => "expire",
        }
    }
}

/// One change to one key, before it is applied: the unit that is logged and
/// replayed. `value` is `Some` exactly for [`ChangeKind::Update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key that changed.
    pub key: Box<str>,
    /// What happened.
    pub kind: ChangeKind,
    /// The new value (updates only).
    pub value: Option<Bytes>,
    /// The revision this change took; the key's new version.
    pub version: u64,
    /// Unix milliseconds at which the new value expires, 0 for never.
    pub expires_at_ms: u64,
    /// Unix milliseconds at which the change was made.
    pub timestamp_ms: u64,
    /// The value this change replaced, as subscribers see it (`None` when
    /// the key did not exist, or in a record logged before old values
    /// were). Logged with the change so that an event re-read from the log
    /// is the event that was emitted.
    pub old_value: Option<Bytes>,
}

/// A change after it was applied, with the value it replaced: what
/// subscribers, webhooks and the live feed see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The key that changed.
    pub key: Box<str>,
    /// What happened.
    pub kind: ChangeKind,
    /// The value before the change (`None` if the key did not exist).
    pub old_value: Option<Bytes>,
    /// The value after the change (`None` for deletes and expiries).
    pub new_value: Option<Bytes>,
    /// The revision the change took.
    pub version: u64,
    /// Unix milliseconds at which the change was made.
    pub timestamp_ms: u64,
}

/// A change as it is applied, lent to the event hub's listeners on the
/// write path: the key and the values are borrowed from the change and
/// from the entry it replaces, so a change that no listener keeps costs
/// no allocation (the live feed's ring copies the bytes it retains). A
/// listener that keeps the change asks for [`Applied::event`], which is
/// built once and shared by every listener of the change.
#[derive(Debug)]
pub struct Applied<'a> {
    /// The key that changed.
    pub key: &'a str,
    /// What happened.
    pub kind: ChangeKind,
    /// The value before the change (`None` if the key did not exist).
    pub old_value: Option<&'a [u8]>,
    /// The value after the change (`None` for deletes and expiries).
    pub new_value: Option<&'a [u8]>,
    /// The revision the change took.
    pub version: u64,
    /// Unix milliseconds at which the change was made.
    pub timestamp_ms: u64,
    /// The new value as the change holds it, shared by the owned event
    /// instead of copied, when the change holds one.
    new_shared: Option<&'a Bytes>,
    /// The owned event, once a listener asked for it.
    event: OnceCell<Arc<ChangeEvent>>,
}

impl<'a> Applied<'a> {
    /// A change whose new value, if any, is `new_value`, and whose old
    /// value was `old_value`.
    pub fn new(
        key: &'a str,
        kind: ChangeKind,
        old_value: Option<&'a [u8]>,
        new_value: Option<&'a [u8]>,
        version: u64,
        timestamp_ms: u64,
    ) -> Applied<'a> {
        Applied {
            key,
            kind,
            old_value,
            new_value,
            version,
            timestamp_ms,
            new_shared: None,
            event: OnceCell::new(),
        }
    }

    /// The change with `shared` as the buffer its owned event shares for
    /// the new value (the same bytes as `new_value`), instead of a copy.
    #[must_use]
    pub fn sharing(mut self, shared: Option<&'a Bytes>) -> Applied<'a> {
        debug_assert!(shared.is_none_or(|v| Some(&v[..]) == self.new_value));
        self.new_shared = shared;
        self
    }

    /// The view of an event that is already owned (a change that waited
    /// for an earlier revision, a test's event).
    pub fn of(event: &'a Arc<ChangeEvent>) -> Applied<'a> {
        Applied {
            key: &event.key,
            kind: event.kind,
            old_value: event.old_value.as_deref(),
            new_value: event.new_value.as_deref(),
            version: event.version,
            timestamp_ms: event.timestamp_ms,
            new_shared: event.new_value.as_ref(),
            event: OnceCell::from(Arc::clone(event)),
        }
    }

    /// The change as an owned event, for a listener that keeps it: built
    /// by the first listener that asks (the old value copied, the new one
    /// shared when the change holds it in a buffer, else copied), and the
    /// same event for every later one.
    pub fn event(&self) -> &Arc<ChangeEvent> {
        self.event.get_or_init(|| {
            Arc::new(ChangeEvent {
                key: Box::from(self.key),
                kind: self.kind,
                old_value: self.old_value.map(copy_value),
                new_value: match self.new_shared {
                    Some(shared) => Some(shared.clone()),
                    None => self.new_value.map(copy_value),
                },
                version: self.version,
                timestamp_ms: self.timestamp_ms,
            })
        })
    }
}
