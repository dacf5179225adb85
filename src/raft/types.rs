//! The types the Raft group agrees on: the command a log entry carries,
//! the reply its application gives, and what a member is (its URLs).
//! Everything here is plain serde data; nothing does I/O.

use serde::{Deserialize, Serialize};

use super::txn::{LoggedTxn, TxnReply};
use crate::db::WriteResult;
use crate::store::Precondition;

/// A member of the group: where clients and other members reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its client URL (`--advertise-url`), where followers redirect writes.
    pub url: String,
    /// Its Raft RPC base URL; `url` when it serves Raft on its HTTP listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_url: Option<String>,
}

impl Member {
    /// Where its Raft RPC routes (`/raft/...`) live.
    pub fn raft_base(&self) -> &str {
        self.raft_url.as_deref().unwrap_or(&self.url)
    }
}

/// The condition a write puts on the key's current state, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// No condition.
    None,
    /// The key exists at this version.
    Version(u64),
    /// The key exists at one of these versions.
    VersionIn(Vec<u64>),
    /// The key is absent.
    Absent,
    /// The key exists.
    Exists,
}

impl From<Precondition> for Condition {
    fn from(p: Precondition) -> Self {
        match p {
            Precondition::None => Condition::None,
            Precondition::IfVersion(v) => Condition::Version(v),
            Precondition::IfVersionIn(vs) => Condition::VersionIn(vs.into_vec()),
            Precondition::IfAbsent => Condition::Absent,
            Precondition::IfExists => Condition::Exists,
        }
    }
}

impl From<Condition> for Precondition {
    fn from(c: Condition) -> Self {
        match c {
            Condition::None => Precondition::None,
            Condition::Version(v) => Precondition::IfVersion(v),
            Condition::VersionIn(vs) => Precondition::IfVersionIn(vs.into_boxed_slice()),
            Condition::Absent => Precondition::IfAbsent,
            Condition::Exists => Precondition::IfExists,
        }
    }
}

/// One write, as a single log entry. Its outcome (precondition, revision,
/// expiry) is decided when it is applied, from `at_ms`, the leader's clock
/// when it was proposed: every member applies the same entries in the same
/// order and reaches the same state. A transaction will be one more
/// variant holding all its operations, so it stays one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `PUT /kv/{key}`; `value` is the JSON text exactly as sent.
    Put {
        /// The key.
        key: String,
        /// The value's JSON text.
        value: String,
        /// Unix ms of expiry, 0 for never.
        expires_at_ms: u64,
        /// `If-Match` / `If-None-Match`.
        condition: Condition,
        /// When it was proposed (Unix ms).
        at_ms: u64,
    },
    /// `DELETE /kv/{key}`.
    Delete {
        /// The key.
        key: String,
        /// `If-Match`.
        condition: Condition,
        /// When it was proposed (Unix ms).
        at_ms: u64,
    },
    /// The leader found the key's TTL run out at `at_ms`.
    Expire {
        /// The key.
        key: String,
        /// When it was proposed (Unix ms).
        at_ms: u64,
    },
    /// `POST /kv/clear`: every key under `prefix` live at `at_ms`.
    Clear {
        /// The prefix ("" for all).
        prefix: String,
        /// When it was proposed (Unix ms).
        at_ms: u64,
    },
    /// `POST /txn`: checked on the leader, its compares decided and its
    /// branch run when applied, at `at_ms`.
    Txn {
        /// The transaction.
        txn: LoggedTxn,
        /// When it was proposed (Unix ms).
        at_ms: u64,
    },
    /// `POST /system/import`: one batch of an export's checked entries,
    /// written as puts; those whose expiry has passed at `at_ms` are left
    /// out, the same on every member.
    Import {
        /// The entries, in the export's order.
        entries: Vec<ImportEntry>,
        /// When it was proposed (Unix ms).
        at_ms: u64,
    },
    /// A subscription change: its control document (JSON text).
    Meta {
        /// The document.
        doc: String,
    },
    /// Writes of concurrent clients that the leader logged as one entry
    /// (`raft/write_batch.rs`), applied one after another in this order;
    /// each is decided on its own, as if it were an entry of its own.
    /// Never nested.
    Batch(Vec<Command>),
}

/// One entry of an imported batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportEntry {
    /// The key.
    pub key: String,
    /// The value's JSON text.
    pub value: String,
    /// Unix ms of expiry, 0 for never (`--retention` already applied by
    /// the leader).
    pub expires_at_ms: u64,
}

impl Command {
    /// About how many bytes it carries (keys, values, documents): what the
    /// log reader counts to keep one append RPC small.
    pub fn weight(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len(),
            Command::Delete { key, .. } | Command::Expire { key, .. } => key.len(),
            Command::Clear { prefix, .. } => prefix.len(),
            Command::Txn { txn, .. } => txn.weight(),
            Command::Import { entries, .. } => {
                entries.iter().map(|e| e.key.len() + e.value.len()).sum()
            }
            Command::Meta { doc } => doc.len(),
            Command::Batch(commands) => commands.iter().map(Command::weight).sum(),
        }
    }

    /// How many writes it carries (a batch's, an import's entries), which
    /// is what snapshots are counted in.
    pub fn writes(&self) -> u64 {
        match self {
            Command::Import { entries, .. } => entries.len() as u64,
            Command::Batch(commands) => commands.iter().map(Command::writes).sum(),
            _ => 1,
        }
    }
}

/// What applying a command gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A blank or membership entry, a subscription change, or an expiry.
    #[default]
    Done,
    /// A put took `version`.
    Written {
        /// The key's new version.
        version: u64,
        /// Whether the key was new.
        created: bool,
    },
    /// A delete took `version`.
    Deleted {
        /// The revision of the delete.
        version: u64,
    },
    /// A clear removed `n` keys.
    Cleared {
        /// How many.
        n: usize,
    },
    /// A transaction ran.
    Txn(TxnReply),
    /// An import batch was written.
    Imported {
        /// Entries written.
        imported: u64,
        /// Entries left out because their expiry had passed.
        expired: u64,
        /// The revision after the batch.
        revision: u64,
    },
    /// The key did not exist.
    NotFound,
    /// The condition did not hold; the key's version then, if any.
    PreconditionFailed {
        /// The key's version, `None` when absent.
        current: Option<u64>,
    },
    /// The replies of a [`Command::Batch`], in its order.
    Batch(Vec<Reply>),
}

impl From<WriteResult> for Reply {
    fn from(w: WriteResult) -> Self {
        Reply::Written {
            version: w.version,
            created: w.created,
        }
    }
}

openraft::declare_raft_types!(
    /// The Raft types of DodoDB: u64 node ids, [`Member`] nodes, commands
    /// and replies above, and snapshots as files (streamed in chunks).
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = u64,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

/// A log entry of this group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of this group.
pub type LogId = openraft::LogId<u64>;
/// The Raft handle of this group.
pub type Raft = openraft::Raft<TypeConfig>;
/// A storage failure as openraft wants it.
pub type StorageError = openraft::StorageError<u64>;
