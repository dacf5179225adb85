//! A transaction as one Raft log entry: the serde form of a checked
//! transaction (its compares and both branches, values as JSON text) and
//! of what applying it gave, with the conversions to and from the store's
//! types. Plain data; nothing does I/O.

use serde::{Deserialize, Serialize};

use crate::db::{CheckedTxn, TxnResult};
use crate::store::{Compare, Condition, Entry, OpResult, TxnOp, copy_value};

/// A checked transaction, as logged. Expiry times were computed on the
/// leader when it was proposed; its compares are decided when it is
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedTxn {
    /// The compares, all of which must hold.
    pub compare: Vec<LoggedCompare>,
    /// What runs when they do.
    pub success: Vec<LoggedOp>,
    /// What runs when one does not.
    pub failure: Vec<LoggedOp>,
}

impl LoggedTxn {
    /// About how many bytes it carries (keys and values).
    pub fn weight(&self) -> usize {
        let op = |op: &LoggedOp| match op {
            LoggedOp::Put { key, value, .. } => key.len() + value.len(),
            LoggedOp::Delete { key } | LoggedOp::Get { key } => key.len(),
        };
        let compares: usize = self.compare.iter().map(|c| c.key.len() + 16).sum();
        compares
            + self
                .success
                .iter()
                .chain(&self.failure)
                .map(op)
                .sum::<usize>()
    }
}

/// One compare of a logged transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedCompare {
    /// The key compared.
    pub key: String,
    /// What must hold.
    pub holds: Compared,
}

/// What a compare asks of its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compared {
    /// The key is at this version (0: absent).
    Version(u64),
    /// The key exists or not.
    Exists(bool),
    /// The key holds a document equal to this JSON text.
    Value(String),
}

/// One operation of a logged branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoggedOp {
    /// Store a validated document.
    Put {
        /// The key.
        key: String,
        /// The document's JSON text.
        value: String,
        /// Unix ms of expiry, 0 for never.
        expires_at_ms: u64,
    },
    /// Remove a key (nothing happens if absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
}

/// What applying a transaction gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReply {
    /// Whether every compare held.
    pub succeeded: bool,
    /// The revision after its last write, or the current one.
    pub revision: u64,
    /// One result per operation of the branch that ran.
    pub results: Vec<LoggedResult>,
}

/// The result of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoggedResult {
    /// A put took `version`.
    Put {
        /// The key's new version.
        version: u64,
        /// Whether the key was new.
        created: bool,
    },
    /// A delete took `version`, if the key existed.
    Delete {
        /// The delete's revision.
        version: Option<u64>,
    },
    /// A get found this entry, if any.
    Get(Option<LoggedEntry>),
}

/// An entry a get found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEntry {
    /// The document's JSON text.
    pub value: String,
    /// The key's version.
    pub version: u64,
    /// Unix ms of expiry, 0 for never.
    pub expires_at_ms: u64,
}

/// Stored documents are validated JSON, hence UTF-8.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl From<CheckedTxn> for LoggedTxn {
    fn from(txn: CheckedTxn) -> Self {
        let ops = |ops: Vec<TxnOp>| {
            ops.into_iter()
                .map(|op| match op {
                    TxnOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => LoggedOp::Put {
                        key: key.into(),
                        value: text(&value),
                        expires_at_ms,
                    },
                    TxnOp::Delete { key } => LoggedOp::Delete { key: key.into() },
                    TxnOp::Get { key } => LoggedOp::Get { key: key.into() },
                })
                .collect()
        };
        LoggedTxn {
            compare: txn
                .compare
                .into_iter()
                .map(|c| LoggedCompare {
                    key: c.key.into(),
                    holds: match c.compare {
                        Compare::Version(v) => Compared::Version(v),
                        Compare::Exists(e) => Compared::Exists(e),
                        Compare::Value(doc) => Compared::Value(text(&doc)),
                    },
                })
                .collect(),
            success: ops(txn.success),
            failure: ops(txn.failure),
        }
    }
}

impl From<LoggedTxn> for CheckedTxn {
    fn from(txn: LoggedTxn) -> Self {
        let ops = |ops: Vec<LoggedOp>| {
            ops.into_iter()
                .map(|op| match op {
                    LoggedOp::Put {
                        key,
                        value,
                        expires_at_ms,
                    } => TxnOp::Put {
                        key: key.into_boxed_str(),
                        value: copy_value(value.as_bytes()),
                        expires_at_ms,
                    },
                    LoggedOp::Delete { key } => TxnOp::Delete {
                        key: key.into_boxed_str(),
                    },
                    LoggedOp::Get { key } => TxnOp::Get {
                        key: key.into_boxed_str(),
                    },
                })
                .collect()
        };
        CheckedTxn {
            compare: txn
                .compare
                .into_iter()
                .map(|c| Condition {
                    key: c.key.into_boxed_str(),
                    compare: match c.holds {
                        Compared::Version(v) => Compare::Version(v),
                        Compared::Exists(e) => Compare::Exists(e),
                        Compared::Value(doc) => Compare::Value(copy_value(doc.as_bytes())),
                    },
                })
                .collect(),
            success: ops(txn.success),
            failure: ops(txn.failure),
        }
    }
}

impl From<TxnResult> for TxnReply {
    fn from(r: TxnResult) -> Self {
        TxnReply {
            succeeded: r.succeeded,
            revision: r.revision,
            results: r
                .results
                .into_iter()
                .map(|result| match result {
                    OpResult::Put { version, created } => LoggedResult::Put { version, created },
                    OpResult::Delete { version } => LoggedResult::Delete { version },
                    OpResult::Get(entry) => LoggedResult::Get(entry.map(|e| LoggedEntry {
                        value: text(&e.value),
                        version: e.version,
                        expires_at_ms: e.expires_at_ms,
                    })),
                })
                .collect(),
        }
    }
}

impl From<TxnReply> for TxnResult {
    fn from(r: TxnReply) -> Self {
        TxnResult {
            succeeded: r.succeeded,
            revision: r.revision,
            results: r
                .results
                .into_iter()
                .map(|result| match result {
                    LoggedResult::Put { version, created } => OpResult::Put { version, created },
                    LoggedResult::Delete { version } => OpResult::Delete { version },
                    LoggedResult::Get(entry) => OpResult::Get(entry.map(|e| Entry {
                        value: copy_value(e.value.as_bytes()),
                        version: e.version,
                        expires_at_ms: e.expires_at_ms,
                    })),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_survives_its_log_form() {
        let checked = CheckedTxn {
            compare: vec![
                Condition {
                    key: "a".into(),
                    compare: Compare::Version(3),
                },
                Condition {
                    key: "b".into(),
                    compare: Compare::Value(copy_value(br#"{"x":[1,2]}"#)),
                },
                Condition {
                    key: "c".into(),
                    compare: Compare::Exists(false),
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: "a".into(),
                    value: copy_value("\"é\"".as_bytes()),
                    expires_at_ms: 99,
                },
                TxnOp::Delete { key: "b".into() },
            ],
            failure: vec![TxnOp::Get { key: "a".into() }],
        };
        let logged = LoggedTxn::from(checked.clone());
        let text = serde_json::to_string(&logged).expect("JSON");
        let back: LoggedTxn = serde_json::from_str(&text).expect("read back");
        assert_eq!(CheckedTxn::from(back), checked);
    }

    #[test]
    fn a_result_survives_its_reply_form() {
        let result = TxnResult {
            succeeded: false,
            revision: 7,
            results: vec![
                OpResult::Put {
                    version: 6,
                    created: true,
                },
                OpResult::Delete { version: None },
                OpResult::Get(Some(Entry {
                    value: copy_value(b"[1]"),
                    version: 5,
                    expires_at_ms: 0,
                })),
                OpResult::Get(None),
            ],
        };
        assert_eq!(TxnResult::from(TxnReply::from(result.clone())), result);
    }
}
