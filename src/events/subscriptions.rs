//! Webhook subscriptions: their definition, their delivery state (the
//! durable cursor, failed events, lost events, disabled), the registry that
//! matches events to them, and the control documents that make all of it
//! durable (logged in the WAL as `Record::Meta`, written into snapshots).
//!
//! Every control document is applied by [`Registry::apply`], on the one
//! apply path of the log (the WAL writer, recovery, or at once without a
//! log), and each is idempotent: a snapshot's documents and the log after
//! it may both hold the same change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a subscription listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Exactly one key.
    Key(String),
    /// Every key that starts with this prefix (`""`: every key).
    Prefix(String),
}

impl Target {
    /// Whether a change of `key` concerns this target.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Target::Key(k) => k == key,
            Target::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// A webhook subscription as stored and logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `sub_…`, stable for the subscription's life.
    pub id: String,
    /// The key or prefix.
    #[serde(flatten)]
    pub target: Target,
    /// Absolute http(s) URL events are POSTed to.
    pub callback_url: String,
    /// HMAC secret for `webhook-signature` (never shown by the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RFC 3339 UTC creation time.
    pub created_at: String,
}

/// A durable change of the subscription set or of one subscription's
/// delivery state, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionOp {
    /// Add (or keep) a subscription.
    Subscribe(Subscription),
    /// Remove the subscription with this id.
    Unsubscribe {
        /// The subscription's id.
        id: String,
    },
    /// Delivery moved on: every event up to `cursor` was delivered or
    /// given up on (the cursor only grows).
    Progress {
        /// The subscription's id.
        id: String,
        /// The revision delivered up to, in order.
        cursor: u64,
        /// Unix ms of the last 2xx.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_success_at_ms: Option<u64>,
        /// Unix ms since when attempts fail with no 2xx.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failing_since_ms: Option<u64>,
        /// The last failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_error: Option<String>,
    },
    /// An event's attempts ran out.
    Failed {
        /// The subscription's id.
        id: String,
        /// The event's revision.
        revision: u64,
        /// Its key.
        key: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
    /// Failed events that `recover` sent again with a 2xx.
    Recovered {
        /// The subscription's id.
        id: String,
        /// Their revisions.
        revisions: Vec<u64>,
    },
    /// Events the subscription lacked were dropped with the log: `through`
    /// is the newest dropped revision, `lost_events` the new total.
    Lost {
        /// The subscription's id.
        id: String,
        /// The newest revision dropped.
        through: u64,
        /// Events lost so far, in total.
        lost_events: u64,
    },
    /// No 2xx for `--webhook-disable-after`: delivery stops.
    Disable {
        /// The subscription's id.
        id: String,
    },
    /// Delivery resumes from the cursor.
    Enable {
        /// The subscription's id.
        id: String,
    },
}

/// An event whose attempts ran out, kept until `recover` delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedEvent {
    /// The event's revision.
    pub revision: u64,
    /// Its key.
    pub key: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
}

/// The durable delivery state of one subscription: what the log says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryState {
    /// Every event up to this revision was delivered or given up on.
    pub cursor: u64,
    /// Unix ms of the last 2xx.
    pub last_success_at_ms: Option<u64>,
    /// Unix ms since when attempts fail with no 2xx.
    pub failing_since_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Delivery is stopped until `enable`.
    pub disabled: bool,
    /// Events dropped with the log before the subscription had them.
    pub lost_events: u64,
    /// Failed events by revision.
    pub failed: BTreeMap<u64, FailedEvent>,
}

impl DeliveryState {
    /// `active`, `failing` or `disabled`.
    pub fn status(&self) -> &'static str {
        if self.disabled {
            "disabled"
        } else if self.failing_since_ms.is_some() {
            "failing"
        } else {
            "active"
        }
    }
}

impl SubscriptionOp {
    /// The JSON control document for the WAL or a snapshot.
    pub fn to_doc(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A live subscription: its definition, its signing key, its durable
/// delivery state, and what its delivery task shares with the rest.
#[derive(Debug)]
pub struct ActiveSubscription {
    /// The definition.
    pub def: Subscription,
    /// The HMAC key derived from the secret (`whsec_` prefix: base64).
    pub signing_key: Option<Vec<u8>>,
    removed: AtomicBool,
    /// What the log says; changed only by [`Registry::apply`]. A std mutex:
    /// held for a field update or a copy, never across I/O or an await.
    state: Mutex<DeliveryState>,
    /// The next revision the delivery task reads. Held by the task while it
    /// reads and by log retention while it counts what it drops, so that an
    /// event is either read or counted lost, never both nor neither.
    pub read_next: Mutex<u64>,
    /// Events read and not yet delivered or given up (the task's window).
    pub pending: AtomicU64,
    /// The subscription's events after those read, as far as the task has
    /// counted them (while its window is full or it is stopped).
    pub unread: AtomicU64,
    /// Failed events that `recover` asked to send again, for the task.
    pub recover_requests: Mutex<Vec<u64>>,
    /// Wakes the delivery task after a control change (recover, enable,
    /// removal).
    pub wake: tokio::sync::Notify,
}

impl ActiveSubscription {
    fn new(def: Subscription) -> ActiveSubscription {
        let signing_key = def.secret.as_deref().map(signing_key);
        ActiveSubscription {
            def,
            signing_key,
            removed: AtomicBool::new(false),
            state: Mutex::new(DeliveryState::default()),
            read_next: Mutex::new(1),
            pending: AtomicU64::new(0),
            unread: AtomicU64::new(0),
            recover_requests: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Whether the subscription is gone.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// A copy of the durable delivery state.
    pub fn state(&self) -> DeliveryState {
        self.lock_state().clone()
    }

    /// Whether delivery is stopped until `enable`.
    pub fn is_disabled(&self) -> bool {
        self.lock_state().disabled
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, DeliveryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a delivery-state document to this subscription.
    fn apply(&self, op: SubscriptionOp) {
        let mut st = self.lock_state();
        match op {
            SubscriptionOp::Subscribe(_) | SubscriptionOp::Unsubscribe { .. } => {}
            SubscriptionOp::Progress {
                cursor,
                last_success_at_ms,
                failing_since_ms,
                last_error,
                ..
            } => {
                st.cursor = st.cursor.max(cursor);
                st.last_success_at_ms = last_success_at_ms.max(st.last_success_at_ms);
                st.failing_since_ms = failing_since_ms;
                if last_error.is_some() {
                    st.last_error = last_error;
                }
            }
            SubscriptionOp::Failed {
                revision,
                key,
                attempts,
                last_error,
                ..
            } => {
                st.failed.insert(
                    revision,
                    FailedEvent {
                        revision,
                        key,
                        attempts,
                        last_error,
                    },
                );
            }
            SubscriptionOp::Recovered { revisions, .. } => {
                for revision in revisions {
                    st.failed.remove(&revision);
                }
            }
            SubscriptionOp::Lost {
                through,
                lost_events,
                ..
            } => {
                st.cursor = st.cursor.max(through);
                st.lost_events = st.lost_events.max(lost_events);
            }
            SubscriptionOp::Disable { .. } => st.disabled = true,
            SubscriptionOp::Enable { .. } => {
                st.disabled = false;
                st.failing_since_ms = None;
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Control documents that recreate the delivery state (for snapshots).
    fn state_docs(&self, out: &mut Vec<Bytes>) {
        let st = self.state();
        let id = &self.def.id;
        out.push(
            SubscriptionOp::Progress {
                id: id.clone(),
                cursor: st.cursor,
                last_success_at_ms: st.last_success_at_ms,
                failing_since_ms: st.failing_since_ms,
                last_error: st.last_error.clone(),
            }
            .to_doc(),
        );
        if st.lost_events > 0 {
            out.push(
                SubscriptionOp::Lost {
                    id: id.clone(),
                    through: st.cursor,
                    lost_events: st.lost_events,
                }
                .to_doc(),
            );
        }
        for failed in st.failed.into_values() {
            out.push(
                SubscriptionOp::Failed {
                    id: id.clone(),
                    revision: failed.revision,
                    key: failed.key,
                    attempts: failed.attempts,
                    last_error: failed.last_error,
                }
                .to_doc(),
            );
        }
        if st.disabled {
            out.push(SubscriptionOp::Disable { id: id.clone() }.to_doc());
        }
    }
}

/// The HMAC key of a secret: the base64 after `whsec_` when it decodes,
/// else the secret's raw UTF-8 bytes.
pub fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// All subscriptions. Read on every change (to match), written rarely.
#[derive(Default)]
pub struct Registry {
    subs: RwLock<Vec<Arc<ActiveSubscription>>>,
    /// How many `subs` holds, set under its write lock: what every change
    /// reads ([`Registry::is_empty`]) without taking the lock.
    live: AtomicUsize,
    /// Bumped whenever a subscription comes or goes, so the delivery pool
    /// notices without being told.
    generation: AtomicU64,
}

impl Registry {
    /// Applies a logged control document.
    ///
    /// # Errors
    ///
    /// The document is not a subscription operation.
    pub fn apply_doc(&self, doc: &[u8]) -> Result<(), String> {
        let op: SubscriptionOp =
            serde_json::from_slice(doc).map_err(|e| format!("bad subscription record: {e}"))?;
        self.apply(op);
        Ok(())
    }

    /// Applies an operation. Idempotent, so replay over a snapshot is safe;
    /// an operation on a subscription that is gone is ignored.
    pub fn apply(&self, op: SubscriptionOp) {
        let id = match &op {
            SubscriptionOp::Subscribe(def) => {
                let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
                if !subs.iter().any(|s| s.def.id == def.id) {
                    subs.push(Arc::new(ActiveSubscription::new(def.clone())));
                    self.live.store(subs.len(), Ordering::Release);
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                return;
            }
            SubscriptionOp::Unsubscribe { id } => {
                let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
                subs.retain(|s| {
                    let keep = s.def.id != *id;
                    if !keep {
                        s.removed.store(true, Ordering::Release);
                        s.wake.notify_one();
                    }
                    keep
                });
                self.live.store(subs.len(), Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
                return;
            }
            SubscriptionOp::Progress { id, .. }
            | SubscriptionOp::Failed { id, .. }
            | SubscriptionOp::Recovered { id, .. }
            | SubscriptionOp::Lost { id, .. }
            | SubscriptionOp::Disable { id, .. }
            | SubscriptionOp::Enable { id } => id.clone(),
        };
        if let Some(sub) = self.active(&id) {
            sub.apply(op);
        }
    }

    /// Changes whenever a subscription comes or goes.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The live subscription with this id.
    pub fn active(&self, id: &str) -> Option<Arc<ActiveSubscription>> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        subs.iter().find(|s| s.def.id == id).cloned()
    }

    /// Every live subscription, oldest first.
    pub fn all(&self) -> Vec<Arc<ActiveSubscription>> {
        self.subs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces every subscription with those of the control documents
    /// `docs` (a cluster member installing a snapshot).
    ///
    /// # Errors
    ///
    /// A document is not a subscription operation; nothing changed then.
    pub fn replace(&self, docs: &[Bytes]) -> Result<(), String> {
        let ops = docs
            .iter()
            .map(|doc| {
                serde_json::from_slice::<SubscriptionOp>(doc)
                    .map_err(|e| format!("bad subscription record: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        for old in std::mem::take(&mut *subs) {
            old.removed.store(true, Ordering::Release);
            old.wake.notify_one();
        }
        self.live.store(0, Ordering::Release);
        drop(subs);
        self.generation.fetch_add(1, Ordering::AcqRel);
        for op in ops {
            self.apply(op);
        }
        Ok(())
    }

    /// The subscriptions a change of `key` goes to.
    pub fn matching(&self, key: &str) -> Vec<Arc<ActiveSubscription>> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        subs.iter()
            .filter(|s| s.def.target.matches(key))
            .cloned()
            .collect()
    }

    /// Whether there is any subscription at all (a cheap check per change).
    pub fn is_empty(&self) -> bool {
        self.live.load(Ordering::Acquire) == 0
    }

    /// The subscription with this target and URL, if any.
    pub fn find(&self, target: &Target, callback_url: &str) -> Option<Subscription> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        subs.iter()
            .find(|s| &s.def.target == target && s.def.callback_url == callback_url)
            .map(|s| s.def.clone())
    }

    /// The subscription with this id, if any.
    pub fn get(&self, id: &str) -> Option<Subscription> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        subs.iter().find(|s| s.def.id == id).map(|s| s.def.clone())
    }

    /// Every subscription, oldest first.
    pub fn list(&self) -> Vec<Subscription> {
        let subs = self.subs.read().unwrap_or_else(|e| e.into_inner());
        subs.iter().map(|s| s.def.clone()).collect()
    }

    /// Control documents that recreate the current set and each one's
    /// delivery state (for snapshots).
    pub fn docs(&self) -> Vec<Bytes> {
        let mut docs = Vec::new();
        for sub in self.all() {
            docs.push(SubscriptionOp::Subscribe(sub.def.clone()).to_doc());
            sub.state_docs(&mut docs);
        }
        docs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, target: Target) -> Subscription {
        Subscription {
            id: id.into(),
            target,
            callback_url: "http://127.0.0.1:9/hook".into(),
            secret: Some("s".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn docs_round_trip_and_replay_idempotently() {
        let registry = Registry::default();
        let op = SubscriptionOp::Subscribe(sub("sub_1", Target::Prefix("a:".into())));
        let doc = op.to_doc();
        assert_eq!(
            std::str::from_utf8(&doc).expect("utf8"),
            r#"{"subscribe":{"id":"sub_1","prefix":"a:","callback_url":"http://127.0.0.1:9/hook","secret":"s","created_at":"2026-01-01T00:00:00Z"}}"#
        );
        registry.apply_doc(&doc).expect("apply");
        registry.apply_doc(&doc).expect("apply twice");
        assert_eq!(registry.list().len(), 1);
        assert_eq!(registry.matching("a:1").len(), 1);
        assert!(registry.matching("b:1").is_empty());
        let active = registry.matching("a:1").remove(0);
        registry.apply(SubscriptionOp::Progress {
            id: "sub_1".into(),
            cursor: 7,
            last_success_at_ms: Some(5),
            failing_since_ms: None,
            last_error: None,
        });
        registry.apply(SubscriptionOp::Failed {
            id: "sub_1".into(),
            revision: 4,
            key: "a:1".into(),
            attempts: 3,
            last_error: "HTTP 500".into(),
        });
        registry.apply(SubscriptionOp::Disable { id: "sub_1".into() });
        // A snapshot's documents rebuild the same state.
        let copy = Registry::default();
        for doc in registry.docs() {
            copy.apply_doc(&doc).expect("apply");
        }
        let state = copy.active("sub_1").expect("sub").state();
        assert_eq!(state, registry.active("sub_1").expect("sub").state());
        assert_eq!(
            (state.cursor, state.status(), state.failed.len()),
            (7, "disabled", 1)
        );
        // The cursor only grows, also when an older record is replayed.
        registry.apply(SubscriptionOp::Progress {
            id: "sub_1".into(),
            cursor: 3,
            last_success_at_ms: None,
            failing_since_ms: None,
            last_error: None,
        });
        assert_eq!(active.state().cursor, 7);
        assert!(!registry.is_empty());
        registry.apply(SubscriptionOp::Unsubscribe { id: "sub_1".into() });
        assert!(registry.is_empty());
        assert!(active.is_removed(), "in-flight deliveries see the removal");
        // A snapshot's install replaces them all, or with none.
        assert!(!copy.is_empty());
        copy.replace(&registry.docs()).expect("replace");
        assert!(copy.is_empty());
        copy.replace(&[doc]).expect("replace");
        assert!(!copy.is_empty());
        assert!(registry.apply_doc(b"{\"nope\":1}").is_err());
    }

    #[test]
    fn key_targets_match_exactly() {
        assert!(Target::Key("a".into()).matches("a"));
        assert!(!Target::Key("a".into()).matches("ab"));
        assert!(Target::Prefix(String::new()).matches("anything"));
    }

    #[test]
    fn whsec_secrets_are_base64() {
        assert_eq!(signing_key("whsec_aGVsbG8="), b"hello".to_vec());
        assert_eq!(signing_key("plain"), b"plain".to_vec());
        assert_eq!(
            signing_key("whsec_!!notbase64"),
            b"whsec_!!notbase64".to_vec()
        );
    }
}
