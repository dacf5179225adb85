//! Webhook subscriptions: their definition, the registry that matches
//! events to them, and the control documents that make them durable (logged
//! in the WAL as `Record::Meta`, written into snapshots).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

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

/// A durable change of the subscription set, as logged.
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
}

impl SubscriptionOp {
    /// The JSON control document for the WAL or a snapshot.
    pub fn to_doc(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A live subscription: its definition, its signing key, and whether it
/// was removed (in-flight deliveries check this before each attempt).
#[derive(Debug)]
pub struct ActiveSubscription {
    /// The definition.
    pub def: Subscription,
    /// The HMAC key derived from the secret (`whsec_` prefix: base64).
    pub signing_key: Option<Vec<u8>>,
    removed: AtomicBool,
}

impl ActiveSubscription {
    fn new(def: Subscription) -> ActiveSubscription {
        let signing_key = def.secret.as_deref().map(signing_key);
        ActiveSubscription {
            def,
            signing_key,
            removed: AtomicBool::new(false),
        }
    }

    /// Whether the subscription is gone.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
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

    /// Applies an operation. Idempotent, so replay over a snapshot is safe.
    pub fn apply(&self, op: SubscriptionOp) {
        let mut subs = self.subs.write().unwrap_or_else(|e| e.into_inner());
        match op {
            SubscriptionOp::Subscribe(def) => {
                if !subs.iter().any(|s| s.def.id == def.id) {
                    subs.push(Arc::new(ActiveSubscription::new(def)));
                }
            }
            SubscriptionOp::Unsubscribe { id } => {
                subs.retain(|s| {
                    let keep = s.def.id != id;
                    if !keep {
                        s.removed.store(true, Ordering::Release);
                    }
                    keep
                });
            }
        }
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
        self.subs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
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

    /// Control documents that recreate the current set (for snapshots).
    pub fn docs(&self) -> Vec<Bytes> {
        self.list()
            .into_iter()
            .map(|def| SubscriptionOp::Subscribe(def).to_doc())
            .collect()
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
        registry.apply(SubscriptionOp::Unsubscribe { id: "sub_1".into() });
        assert!(registry.is_empty());
        assert!(active.is_removed(), "in-flight deliveries see the removal");
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
