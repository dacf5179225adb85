//! A member's Raft figures for `/system/stats` and `/metrics`: role, term,
//! leader, log, commit and apply positions from openraft's metrics, each
//! follower's matched index and lag on the leader, and the counters
//! openraft does not keep (leader changes seen; the state machine counts
//! the snapshots it installed).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use openraft::ServerState;
use serde::Serialize;

use super::types::Raft;

/// Counters this member keeps beside openraft's metrics, since start.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Times the leader this member follows (or is) changed, a change to
    /// "no leader" included.
    pub leader_changes: AtomicU64,
}

/// One follower or learner as the leader sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FollowerStats {
    /// Its node id.
    pub id: u64,
    /// The last log index the leader knows it holds (`None` before the
    /// first answer).
    pub matched: Option<u64>,
    /// Entries the leader has that it is not known to hold.
    pub lag: u64,
}

/// This member's Raft figures at one moment.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RaftStats {
    /// This node's id.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: &'static str,
    /// The current term.
    pub term: u64,
    /// The leader's id, if known.
    pub leader_id: Option<u64>,
    /// The last index in this member's log.
    pub last_log_index: u64,
    /// The last committed index this member knows of.
    pub committed: u64,
    /// The last index applied to this member's database.
    pub applied: u64,
    /// The last index covered by this member's newest snapshot.
    pub snapshot_index: u64,
    /// How long ago a quorum last acknowledged this leader, in ms (leader
    /// only, once a quorum answered).
    pub quorum_ack_age_ms: Option<u64>,
    /// Times the leader this member knows changed since start.
    pub leader_changes: u64,
    /// Snapshots installed from a leader since start.
    pub snapshots_installed: u64,
    /// On the leader: every other member, by id; empty elsewhere.
    pub followers: Vec<FollowerStats>,
}

/// The name of `state` in `/cluster/status` and the figures.
pub(super) fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The figures of `raft`, with `committed` from the log store,
/// `snapshots_installed` from the state machine and the member's own
/// `counters`.
pub(super) fn collect(
    raft: &Raft,
    committed: u64,
    snapshots_installed: u64,
    counters: &Counters,
) -> RaftStats {
    let m = raft.metrics().borrow().clone();
    let last_log_index = m.last_log_index.unwrap_or(0);
    let followers = m
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != m.id)
        .map(|(id, matched)| {
            let matched = matched.map(|l| l.index);
            FollowerStats {
                id: *id,
                matched,
                lag: last_log_index.saturating_sub(matched.unwrap_or(0)),
            }
        })
        .collect();
    RaftStats {
        node_id: m.id,
        role: role_name(m.state),
        term: m.current_term,
        leader_id: m.current_leader,
        last_log_index,
        committed,
        applied: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        quorum_ack_age_ms: m.millis_since_quorum_ack,
        leader_changes: counters.leader_changes.load(Relaxed),
        snapshots_installed,
        followers,
    }
}
