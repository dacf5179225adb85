//! The change records the store produces: what the WAL logs, what replay
//! applies, and what subscribers and the live feed receive.

use bytes::Bytes;

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
