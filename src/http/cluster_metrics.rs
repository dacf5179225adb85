//! A cluster member's Raft figures on `/metrics` (SPEC §10): read from
//! [`Cluster::stats`] at scrape time, like the database's figures; a
//! single server registers none of them.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use super::metrics::{counter, gauge};
use crate::raft::Cluster;

/// Every role a member can be in, for the `raft_role` state set.
const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

/// Reads a member's Raft figures at scrape time.
pub(super) struct RaftCollector {
    cluster: Arc<Cluster>,
}

impl RaftCollector {
    pub(super) fn new(cluster: Arc<Cluster>) -> RaftCollector {
        RaftCollector { cluster }
    }
}

impl std::fmt::Debug for RaftCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftCollector")
    }
}

/// One gauge with a label `label` per row; nothing when there is no row.
fn labelled_gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    rows: &[(String, u64)],
) -> std::fmt::Result {
    if rows.is_empty() {
        return Ok(());
    }
    let kind = ConstGauge::new(0u64).metric_type();
    let mut family = e.encode_descriptor(name, help, None, kind)?;
    for (value_label, value) in rows {
        let labels = [(label, value_label.as_str())];
        ConstGauge::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RaftCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        let s = self.cluster.stats();
        gauge(e, "raft_node_id", "This member's node id", s.node_id)?;
        let roles: Vec<(String, u64)> = ROLES
            .iter()
            .map(|r| (r.to_string(), u64::from(*r == s.role)))
            .collect();
        labelled_gauge(
            e,
            "raft_role",
            "1 for this member's role now, 0 for the others",
            "role",
            &roles,
        )?;
        gauge(e, "raft_term", "The current Raft term", s.term)?;
        gauge(
            e,
            "raft_leader_id",
            "The leader's node id as this member knows it (0: none)",
            s.leader_id.unwrap_or(0),
        )?;
        gauge(
            e,
            "raft_last_log_index",
            "The last index in this member's Raft log",
            s.last_log_index,
        )?;
        gauge(
            e,
            "raft_committed_index",
            "The last committed log index this member knows of",
            s.committed,
        )?;
        gauge(
            e,
            "raft_applied_index",
            "The last log index applied to this member's database",
            s.applied,
        )?;
        gauge(
            e,
            "raft_snapshot_index",
            "The last log index in this member's newest snapshot (0: none)",
            s.snapshot_index,
        )?;
        if let Some(ms) = s.quorum_ack_age_ms {
            gauge(
                e,
                "raft_quorum_ack_age_seconds",
                "On the leader: time since a quorum last acknowledged it",
                ms as f64 / 1e3,
            )?;
        }
        counter(
            e,
            "raft_leader_changes",
            "Changes of leader this member saw since start (to none included)",
            s.leader_changes,
        )?;
        counter(
            e,
            "raft_snapshots_installed",
            "Snapshots installed from the leader since start",
            s.snapshots_installed,
        )?;
        let matched: Vec<(String, u64)> = s
            .followers
            .iter()
            .map(|f| (f.id.to_string(), f.matched.unwrap_or(0)))
            .collect();
        labelled_gauge(
            e,
            "raft_follower_matched_index",
            "On the leader: the last log index each other member is known to hold",
            "follower",
            &matched,
        )?;
        let lag: Vec<(String, u64)> = s
            .followers
            .iter()
            .map(|f| (f.id.to_string(), f.lag))
            .collect();
        labelled_gauge(
            e,
            "raft_follower_lag_entries",
            "On the leader: log entries each other member is not known to hold",
            "follower",
            &lag,
        )
    }
}
