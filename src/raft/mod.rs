//! Replication on openraft (SPEC §10): a cluster member's database is the
//! Raft state machine, its WAL is the Raft log, and this module is the
//! only one that knows openraft. `http/` routes writes, reads and the
//! `/cluster` and `/raft` routes to [`Cluster`]; the database is written
//! only through its replica apply path, in log order.
//!
//! Layout of a member's data directory: `raft/` holds the log segments
//! (`wal-*.log`, the WAL format with `Record::Raft` items) and the
//! snapshots (`raft-snapshot-<index>-<term>-<n>.json`, the snapshot format
//! with the Raft metadata as a control document).
//!
//! Invariant: only the leader proposes; a member that is not the leader
//! answers a write with [`ClusterError::NotLeader`] (or `NoLeader`), so a
//! partitioned old leader cannot acknowledge anything: its proposals never
//! commit without a majority.

// openraft's storage traits return its `StorageError` (224 bytes); the
// helpers beside them return the same type rather than boxing it twice.
#![allow(clippy::result_large_err)]

mod import;
mod log_store;
pub mod network;
mod read_batch;
mod state_machine;
mod stats;
pub mod txn;
pub mod types;
mod write_batch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, SnapshotPolicy};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Storage};
use crate::db::{Db, DbError, MetaLog, now_ms};
pub use state_machine::SnapshotFile;
pub use stats::{FollowerStats, RaftStats};
use types::Raft;
pub use types::{Command, Condition, ImportEntry, Member, Reply};

/// Why the cluster could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// This member is not the leader; the leader's client URL.
    #[error("this node is not the leader; the leader is at {leader_url}")]
    NotLeader {
        /// The leader's client URL.
        leader_url: String,
    },
    /// There is no leader right now.
    #[error("the cluster has no leader right now")]
    NoLeader,
    /// The request makes no sense (bad members, unknown node).
    #[error("{0}")]
    Invalid(String),
    /// The log or the network failed; nothing was acknowledged.
    #[error("{0}")]
    Unavailable(String),
    /// The database refused the write.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// How a member runs: its id and how others reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// `--node-id`.
    pub node_id: u64,
    /// `--advertise-url`: where clients are redirected to reach this node.
    pub advertise_url: String,
    /// Where other members reach this node's Raft RPC (`--raft-listen`),
    /// when it is not the HTTP listener.
    pub raft_url: Option<String>,
    /// A snapshot is built every this many applied writes.
    pub snapshot_logs: u64,
    /// Raft heartbeat interval (`--raft-heartbeat-ms`).
    pub heartbeat: Duration,
    /// The election timeout range's lower end (the upper is twice it;
    /// `--raft-election-ms`).
    pub election_timeout: Duration,
    /// The address Raft calls to other members leave from (the HTTP
    /// listener's IP when it is a specific one).
    pub local_ip: Option<std::net::IpAddr>,
}

/// The answer of `GET /cluster/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The leader's id, if known.
    pub leader_id: Option<u64>,
    /// The leader's client URL, if known.
    pub leader_url: Option<String>,
    /// The current term.
    pub term: u64,
    /// Every member by id: its URL and whether it votes.
    pub members: BTreeMap<String, MemberStatus>,
    /// The last committed log index this node knows of.
    pub committed: u64,
    /// The last log index applied to this node's database.
    pub applied: u64,
}

/// One member in [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its client URL.
    pub url: String,
    /// Whether it votes (a learner does not).
    pub voter: bool,
}

/// A running cluster member.
pub struct Cluster {
    raft: Raft,
    node_id: u64,
    db: Db,
    log: log_store::LogStore,
    machine: state_machine::StateMachine,
    /// Read-index rounds on this node as the leader (quorum heartbeats).
    leader_reads: Arc<read_batch::ReadBatch>,
    /// Read-index rounds on this node as a follower (a call to the leader).
    follower_reads: Arc<read_batch::ReadBatch>,
    /// Counters openraft does not keep.
    counters: stats::Counters,
    /// Writes proposed on this node as the leader, batched into entries.
    writes: write_batch::WriteBatch,
}

impl Cluster {
    /// Opens the member's data (snapshot and log under `<data-dir>/raft`),
    /// starts Raft and the leader's expiry loop, and returns the database
    /// the HTTP layer serves with the cluster around it.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Invalid`] without a data directory;
    /// [`ClusterError::Db`] when the data cannot be opened.
    pub async fn start(
        config: Config,
        settings: ClusterSettings,
    ) -> Result<(Db, Arc<Cluster>), ClusterError> {
        if settings.election_timeout <= settings.heartbeat {
            return Err(ClusterError::Invalid(format!(
                "--raft-election-ms ({} ms) must be more than --raft-heartbeat-ms ({} ms)",
                settings.election_timeout.as_millis(),
                settings.heartbeat.as_millis()
            )));
        }
        let Storage::Dir(data_dir) = &config.storage else {
            return Err(ClusterError::Invalid(
                "a cluster member needs a data directory (not --in-memory)".into(),
            ));
        };
        let dir: PathBuf = data_dir.join("raft");
        let lock = crate::db::lock_dir(data_dir)?;
        // A single server's data would be silently ignored: refuse it.
        let single_wal = crate::wal::segment::list(data_dir).is_ok_and(|s| !s.is_empty());
        let single_snapshots = crate::snapshot::list(data_dir).is_ok_and(|s| !s.is_empty());
        if single_wal || single_snapshots {
            return Err(ClusterError::Invalid(format!(
                "{} holds a single server's data; a cluster member needs a data directory of its own",
                data_dir.display()
            )));
        }
        let storage = |e: &dyn std::fmt::Display| ClusterError::Db(DbError::Storage(e.to_string()));
        let open_dir = dir.clone();
        let fsync = config.fsync;
        let (mut recovered, log) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&open_dir).map_err(|e| storage(&e))?;
            let recovered = state_machine::recover(&open_dir)?;
            let log = log_store::LogStore::open(&open_dir, fsync).map_err(|e| storage(&e))?;
            Ok::<_, ClusterError>((recovered, log))
        })
        .await
        .map_err(|e| storage(&e))??;
        let token = config.auth_token.clone();
        let retain = config.snapshot_retain;
        let current = recovered.take_current();
        let applied = std::mem::take(&mut recovered.applied);
        let db = Db::open_replica(config, recovered.store, &recovered.docs, lock)?;
        let machine = state_machine::StateMachine::new(
            db.clone(),
            dir,
            retain,
            applied,
            current,
            settings.snapshot_logs,
        );
        let network =
            network::Network::new(token, settings.local_ip).map_err(ClusterError::Unavailable)?;
        let election_ms = u64::try_from(settings.election_timeout.as_millis()).unwrap_or(1000);
        let raft_config = openraft::Config {
            cluster_name: "dododb".into(),
            heartbeat_interval: u64::try_from(settings.heartbeat.as_millis()).unwrap_or(100),
            election_timeout_min: election_ms,
            election_timeout_max: election_ms * 2,
            // Snapshots follow applied writes (`snapshot_when_due`): an
            // entry may carry a batch of them.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: (settings.snapshot_logs / 10).min(1000),
            install_snapshot_timeout: 10_000,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        let raft = Raft::new(
            settings.node_id,
            Arc::new(raft_config),
            network.clone(),
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
        let leader_reads = {
            let raft = raft.clone();
            let node_id = settings.node_id;
            read_batch::ReadBatch::new(move || leader_read_index(raft.clone(), node_id))
        };
        let follower_reads = {
            let (raft, network) = (raft.clone(), network.clone());
            let node_id = settings.node_id;
            read_batch::ReadBatch::new(move || {
                remote_read_index(raft.clone(), network.clone(), node_id)
            })
        };
        let writes = write_batch::WriteBatch::start(raft.clone(), log.flushed());
        let cluster = Arc::new(Cluster {
            raft,
            node_id: settings.node_id,
            db: db.clone(),
            log,
            machine,
            leader_reads,
            follower_reads,
            counters: stats::Counters::default(),
            writes,
        });
        db.set_meta_log(Arc::new(MetaProposer {
            cluster: Arc::downgrade(&cluster),
            runtime: tokio::runtime::Handle::current(),
        }));
        tokio::spawn(watch_leadership(Arc::downgrade(&cluster)));
        tokio::spawn(expire_as_leader(Arc::downgrade(&cluster)));
        tokio::spawn(snapshot_when_due(Arc::downgrade(&cluster)));
        Ok((db, cluster))
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The leader's id and member record, if there is one.
    pub fn leader(&self) -> Option<(u64, Member)> {
        leader_of(&self.raft)
    }

    fn not_leader(&self) -> ClusterError {
        not_leader(&self.raft, self.node_id)
    }

    /// Proposes `command` and returns what applying it gave, once a
    /// majority has it in its log and this leader applied it. Concurrent
    /// writes share log entries (`raft/write_batch.rs`).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotLeader`] / [`ClusterError::NoLeader`] on a
    /// member that does not lead; [`ClusterError::Unavailable`] when the
    /// log failed or leadership was lost before the entry committed.
    pub async fn write(&self, command: Command) -> Result<Reply, ClusterError> {
        if self.raft.metrics().borrow().current_leader != Some(self.node_id) {
            return Err(self.not_leader());
        }
        self.writes.write(command).await
    }

    /// Returns once this node's database reflects every write acknowledged
    /// before the call (read index: the leader confirms its leadership
    /// with a quorum; a follower asks the leader for that index; either
    /// waits until it has applied it). Concurrent reads share one round
    /// (`raft/read_batch.rs`).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoLeader`] or [`ClusterError::Unavailable`] when
    /// the leader cannot be confirmed in time.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let leader = self.raft.metrics().borrow().current_leader;
        let index = match leader {
            Some(id) if id == self.node_id => self.leader_reads.index().await?,
            Some(_) => self.follower_reads.index().await?,
            None => return Err(ClusterError::NoLeader),
        };
        if self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .is_some_and(|l| l.index >= index)
        {
            return Ok(());
        }
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Unavailable(format!("this node did not catch up: {e}")))
    }

    /// On the leader: the log index a linearizable read must wait for
    /// (`POST /raft/read-index` from a follower). Concurrent calls share
    /// one round.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotLeader`] / [`ClusterError::NoLeader`] when this
    /// node cannot confirm it leads.
    pub async fn read_index(&self) -> Result<u64, ClusterError> {
        self.leader_reads.index().await
    }

    /// Makes this (uninitialized) node the first member of a group with
    /// `members`, then waits until a leader is elected.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Invalid`] when this node is not among `members` or
    /// the group was initialized already; [`ClusterError::Unavailable`]
    /// when no leader is elected in time.
    pub async fn init(&self, members: BTreeMap<u64, Member>) -> Result<(), ClusterError> {
        if !members.contains_key(&self.node_id) {
            return Err(ClusterError::Invalid(format!(
                "members must include this node (id {})",
                self.node_id
            )));
        }
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        self.raft
            .wait(Some(Duration::from_secs(15)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Unavailable(format!("no leader was elected: {e}")))
    }

    /// Adds node `id` as a learner; returns once it has caught up.
    ///
    /// # Errors
    ///
    /// As [`Cluster::write`].
    pub async fn add_learner(&self, id: u64, member: Member) -> Result<(), ClusterError> {
        self.raft
            .add_learner(id, member, true)
            .await
            .map(|_| ())
            .map_err(client_write_error)
    }

    /// Makes exactly `voters` the voting members (joint consensus); other
    /// members are removed.
    ///
    /// # Errors
    ///
    /// As [`Cluster::write`]; [`ClusterError::Invalid`] for an unknown id.
    pub async fn change_voters(&self, voters: BTreeSet<u64>) -> Result<(), ClusterError> {
        if voters.is_empty() {
            return Err(ClusterError::Invalid("voters must not be empty".into()));
        }
        let known = self.members();
        if let Some(unknown) = voters
            .iter()
            .find(|id| !known.contains_key(&id.to_string()))
        {
            return Err(ClusterError::Invalid(format!(
                "node {unknown} is not a member; add it with POST /cluster/learners first"
            )));
        }
        self.raft
            .change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), false)
            .await
            .map_err(client_write_error)?;
        // Members that are neither voters nor wanted as learners go.
        let stale: BTreeSet<u64> = self
            .members()
            .into_iter()
            .filter_map(|(id, m)| (!m.voter).then(|| id.parse().ok()).flatten())
            .filter(|id| !voters.contains(id))
            .collect();
        if !stale.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(stale), false)
                .await
                .map_err(client_write_error)?;
        }
        Ok(())
    }

    fn members(&self) -> BTreeMap<String, MemberStatus> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, m)| {
                (
                    id.to_string(),
                    MemberStatus {
                        url: m.url.clone(),
                        voter: voters.contains(id),
                    },
                )
            })
            .collect()
    }

    /// This node's view of the group.
    pub fn status(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        let role = stats::role_name(metrics.state);
        let leader_url = self.leader().map(|(_, m)| m.url);
        Status {
            node_id: self.node_id,
            role: role.into(),
            leader_id: metrics.current_leader,
            leader_url,
            term: metrics.current_term,
            members: self.members(),
            committed: self.log.committed().map_or(0, |l| l.index),
            applied: metrics.last_applied.map_or(0, |l| l.index),
        }
    }

    /// This member's Raft figures (`/system/stats`, `/metrics`).
    pub fn stats(&self) -> RaftStats {
        let committed = self.log.committed().map_or(0, |l| l.index);
        stats::collect(
            &self.raft,
            committed,
            self.machine.installed(),
            &self.counters,
        )
    }

    /// Builds a snapshot of everything applied so far and returns it once
    /// it is on disk (`POST /system/snapshot` on a member).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when it is not written in time.
    pub async fn snapshot(&self) -> Result<SnapshotFile, ClusterError> {
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        let unavailable = |e: &dyn std::fmt::Display| {
            ClusterError::Unavailable(format!("the snapshot was not written: {e}"))
        };
        if applied == 0 {
            return Err(ClusterError::Invalid(
                "nothing to snapshot yet: the group has no entries".into(),
            ));
        }
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| unavailable(&e))?;
        self.raft
            .wait(Some(Duration::from_secs(60)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "a snapshot",
            )
            .await
            .map_err(|e| unavailable(&e))?;
        self.machine
            .current()
            .ok_or_else(|| unavailable(&"no snapshot on disk"))
    }

    /// The Raft handle, for the RPC routes.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops Raft and syncs the log (the database is closed by its owner).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!("Raft did not stop cleanly: {e}");
        }
        let log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
    }
}

/// A failed proposal or membership change as a [`ClusterError`].
fn client_write_error(e: RaftError<u64, ClientWriteError<u64, Member>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => match f.leader_node {
            Some(member) => ClusterError::NotLeader {
                leader_url: member.url,
            },
            None => ClusterError::NoLeader,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::Invalid(e.to_string())
        }
        RaftError::Fatal(e) => ClusterError::Unavailable(e.to_string()),
    }
}

/// Heartbeat rounds a read index tries to confirm leadership with before
/// it gives up (`503`).
const READ_INDEX_TRIES: u32 = 5;

/// The leader's id and member record in `raft`'s view, if there is one.
fn leader_of(raft: &Raft) -> Option<(u64, Member)> {
    let metrics = raft.metrics().borrow().clone();
    let id = metrics.current_leader?;
    let member = metrics
        .membership_config
        .membership()
        .get_node(&id)
        .cloned()?;
    Some((id, member))
}

/// The error for a write or read-index call on member `node_id`, which
/// does not lead.
fn not_leader(raft: &Raft, node_id: u64) -> ClusterError {
    match leader_of(raft) {
        Some((id, member)) if id != node_id => ClusterError::NotLeader {
            leader_url: member.url,
        },
        _ => ClusterError::NoLeader,
    }
}

/// One read-index round on the leader `node_id`: the index a read that
/// arrived before the call must wait for.
async fn leader_read_index(raft: Raft, node_id: u64) -> Result<u64, ClusterError> {
    // openraft confirms leadership with one heartbeat round whose
    // answers must come within the heartbeat interval. On a loaded
    // machine a round can miss that, which says nothing about who
    // leads: each try is a fresh confirmation, so trying again is safe.
    let mut tries = 1;
    loop {
        match raft.get_read_log_id().await {
            Ok((read, _applied)) => return Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                if tries == READ_INDEX_TRIES {
                    return Err(ClusterError::Unavailable(format!(
                        "could not confirm leadership with a quorum ({tries} tries): {e}"
                    )));
                }
                tries += 1;
            }
            Err(RaftError::APIError(_)) => return Err(not_leader(&raft, node_id)),
            Err(RaftError::Fatal(e)) => return Err(ClusterError::Unavailable(e.to_string())),
        }
    }
}

/// One read-index round on follower `node_id`: asks the leader it knows
/// of (`POST /raft/read-index`).
async fn remote_read_index(
    raft: Raft,
    network: network::Network,
    node_id: u64,
) -> Result<u64, ClusterError> {
    let (leader, member) = match leader_of(&raft) {
        Some((id, _)) if id == node_id => {
            // It became the leader since the reads arrived: a round of its
            // own is as good.
            return leader_read_index(raft, node_id).await;
        }
        Some(leader) => leader,
        None => return Err(ClusterError::NoLeader),
    };
    let url = format!(
        "{}/raft/read-index",
        member.raft_base().trim_end_matches('/')
    );
    let mut request = network
        .client()
        .post(&url)
        .timeout(Duration::from_secs(5))
        .header(network::TARGET_HEADER, leader.to_string());
    if let Some(bearer) = network.bearer() {
        request = request.header(reqwest::header::AUTHORIZATION, bearer);
    }
    let unavailable = |e: &dyn std::fmt::Display| {
        ClusterError::Unavailable(format!("read index from the leader: {e}"))
    };
    let response = request.send().await.map_err(|e| unavailable(&e))?;
    if !response.status().is_success() {
        return Err(unavailable(&response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| unavailable(&e))?;
    let answer: ReadIndex = serde_json::from_slice(&bytes).map_err(|e| unavailable(&e))?;
    Ok(answer.index)
}

/// The answer of `POST /raft/read-index`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReadIndex {
    /// The log index a linearizable read waits for.
    pub index: u64,
}

/// Logs subscription changes through the cluster (called from a blocking
/// thread of the HTTP layer).
struct MetaProposer {
    cluster: std::sync::Weak<Cluster>,
    runtime: tokio::runtime::Handle,
}

impl MetaLog for MetaProposer {
    fn log_meta(&self, doc: Bytes) -> Result<(), DbError> {
        let Some(cluster) = self.cluster.upgrade() else {
            return Err(DbError::Unavailable("the cluster is stopping".into()));
        };
        let doc = String::from_utf8_lossy(&doc).into_owned();
        self.runtime
            .block_on(cluster.write(Command::Meta { doc }))
            .map(|_| ())
            .map_err(|e| DbError::Unavailable(e.to_string()))
    }

    fn submit_meta(&self, doc: Bytes) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let doc = String::from_utf8_lossy(&doc).into_owned();
        self.runtime.spawn(async move {
            if let Err(e) = cluster.write(Command::Meta { doc }).await {
                tracing::debug!("webhook delivery progress not logged: {e}");
            }
        });
    }
}

/// Turns webhook delivery on while this node leads, off otherwise, and
/// counts the changes of leader it sees. It watches the server metrics, which change with leadership and
/// membership only, not with every log entry.
async fn watch_leadership(cluster: std::sync::Weak<Cluster>) {
    let Some(mut metrics) = cluster.upgrade().map(|c| c.raft.server_metrics()) else {
        return;
    };
    let mut known = None;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let leader = metrics.borrow().current_leader;
        if leader != known {
            known = leader;
            c.counters.leader_changes.fetch_add(1, Relaxed);
        }
        c.db.set_delivering(leader == Some(c.node_id));
        drop(c);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Asks openraft for a snapshot every `--raft-snapshot-logs` applied
/// writes, on every member; ends when Raft stops.
async fn snapshot_when_due(cluster: std::sync::Weak<Cluster>) {
    let Some((machine, mut metrics)) = cluster
        .upgrade()
        .map(|c| (c.machine.clone(), c.raft.server_metrics()))
    else {
        return;
    };
    loop {
        tokio::select! {
            () = machine.snapshot_due() => {}
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        // openraft ignores the call while a snapshot is being built; that
        // one holds most of these writes anyway.
        machine.restart_count();
        let Some(c) = cluster.upgrade() else { return };
        if c.raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// On the leader, proposes the expiry of every key whose TTL ran out.
async fn expire_as_leader(cluster: std::sync::Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let interval = c.db.config().cleanup_interval;
        if c.raft.metrics().borrow().current_leader == Some(c.node_id) {
            let at_ms = now_ms();
            for key in c.db.due_expirations(at_ms, 1000) {
                let command = Command::Expire {
                    key: key.into(),
                    at_ms,
                };
                if c.write(command).await.is_err() {
                    break;
                }
            }
        }
        drop(c);
        tokio::time::sleep(interval).await;
    }
}
