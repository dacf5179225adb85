//! Command-line parsing: the `serve` and `repair` subcommands, their flags
//! and environment variables, turned into a [`Config`]; and the client
//! subcommands, whose arguments live in `client::args`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use dododb::config::{AuthToken, Config, FsyncPolicy, Storage};
use dododb::events::webhook::RetrySchedule;
use dododb::raft::ClusterSettings;

use crate::client::Remote;
use crate::client::args::{
    ClusterArgs, Connect, CountArgs, DelArgs, ExportArgs, GetArgs, ImportArgs, LsArgs, MgetArgs,
    MsetArgs, PutArgs, SubEnableArgs, SubRecoverArgs, SubsArgs, SubscribeArgs, TxnArgs, WatchArgs,
};

/// DodoDB: an in-memory JSON key-value database and pub/sub service.
#[derive(Parser, Debug)]
#[command(name = "dododb", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `serve`, which is the default subcommand.
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once per run: the size of the `serve` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Truncate a damaged WAL at its first bad record, after printing what
    /// will be lost.
    Repair(RepairArgs),
    /// Print a key's value from a running server (exit 1 if absent).
    Get(Remote<GetArgs>),
    /// Store a JSON value (argument, @file, or stdin) on a running server.
    Put(Remote<PutArgs>),
    /// Delete a key on a running server (exit 1 if absent).
    Del(Remote<DelArgs>),
    /// List a running server's keys, one a line.
    Ls(Remote<LsArgs>),
    /// Print how many keys a running server holds.
    Count(Remote<CountArgs>),
    /// Follow a running server's live feed; reconnects and resumes.
    Watch(Remote<WatchArgs>),
    /// Subscribe a webhook URL on a running server.
    Subscribe(Remote<SubscribeArgs>),
    /// List a running server's webhook subscriptions with their status.
    Subs(Remote<SubsArgs>),
    /// Send a subscription's failed events from a revision on again.
    SubRecover(Remote<SubRecoverArgs>),
    /// Make a disabled subscription active again.
    SubEnable(Remote<SubEnableArgs>),
    /// Run a transaction (a JSON document from a file or stdin) on a running
    /// server; exit 1 when its failure branch ran.
    Txn(Remote<TxnArgs>),
    /// Read several keys of a running server at one instant.
    Mget(Remote<MgetArgs>),
    /// Write several keys of a running server in one transaction.
    Mset(Remote<MsetArgs>),
    /// Import an export file into a running server (checked whole first).
    Import(Remote<ImportArgs>),
    /// Print every entry of a running server in the export format.
    Export(Remote<ExportArgs>),
    /// Build a data directory from an export file, offline (no server);
    /// refuses a non-empty directory unless --force.
    Restore(RestoreArgs),
    /// Manage a Raft cluster through one of its members: init, add,
    /// remove, status.
    Cluster(Remote<ClusterArgs>),
    /// An interactive shell against a running server, with history.
    #[command(name = "cli")]
    Shell(Connect),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, env = "DODODB_LISTEN", default_value = "127.0.0.1:8888")]
    pub listen: SocketAddr,
    /// Where the WAL and snapshots live (created if missing).
    #[arg(long, env = "DODODB_DATA_DIR", default_value = "./dododb-data")]
    pub data_dir: PathBuf,
    /// No disk at all; nothing survives a restart.
    #[arg(long, env = "DODODB_IN_MEMORY")]
    pub in_memory: bool,
    /// When the WAL is forced to disk: always, everysec or never.
    #[arg(long, env = "DODODB_FSYNC", default_value = "always")]
    pub fsync: FsyncPolicy,
    /// Seconds between timed snapshots; 0 disables them.
    #[arg(long, env = "DODODB_SNAPSHOT_INTERVAL", default_value_t = 300)]
    pub snapshot_interval: u64,
    /// Snapshots kept on disk.
    #[arg(long, env = "DODODB_SNAPSHOT_RETAIN", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_retain: u64,
    /// Also snapshot once the WAL since the last snapshot is this large.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub snapshot_wal_bytes: u64,
    /// Keys without their own TTL expire this many seconds after their last write.
    #[arg(long, env = "DODODB_RETENTION_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_secs: Option<u64>,
    /// How often the expiry loop runs, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub cleanup_interval_ms: u64,
    /// Longest accepted key, in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_key_bytes: u64,
    /// Largest accepted value, in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_value_bytes: u64,
    /// Operations in one `POST /txn` (success and failure together).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_txn_ops: u64,
    /// Largest body of one `POST /txn`, in bytes (each value still within --max-value-bytes).
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_txn_bytes: u64,
    /// Per-attempt timeout of a webhook delivery, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_timeout_secs: u64,
    /// Delays between the attempts of a webhook event, each ±20% jitter
    /// (units ms, s, m, h, d).
    #[arg(long, default_value = "5s,5m,30m,2h,5h,10h,10h", value_parser = parse_schedule, conflicts_with = "webhook_max_attempts")]
    pub webhook_retry_schedule: Schedule,
    /// Older form of the schedule: this many attempts, the delay doubling
    /// from 0.5 s (at most a minute).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_max_attempts: Option<u32>,
    /// A subscription with no 2xx this long while events were due is
    /// disabled (units ms, s, m, h, d).
    #[arg(long, default_value = "5d", value_parser = parse_duration)]
    pub webhook_disable_after: Duration,
    /// Log kept on disk for lagging subscriptions and feed resumes, in bytes.
    #[arg(long, default_value_t = 1 << 30)]
    pub event_retention_bytes: u64,
    /// Events a webhook delivery task holds in memory (tests shrink it).
    #[arg(long, default_value_t = 4096, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub webhook_window_events: u64,
    /// Changes kept in memory for `GET /events?since=` (tests shrink it).
    #[arg(long, default_value_t = 10_000, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub feed_retained_events: u64,
    /// What /system/version reports (default: the crate version).
    #[arg(long, env = "DODODB_SERVER_VERSION")]
    pub server_version: Option<String>,
    /// Every route but GET /system/alive then needs `Authorization: Bearer TOKEN`.
    #[arg(long, env = "DODODB_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<AuthToken>,
    /// A request still running after this many seconds gets 503.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_secs: u64,
    /// Requests in progress beyond this are shed with 503 at once.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_concurrent_requests: u64,
    /// A connection that sends no complete request head for this many
    /// seconds is closed (against slowloris clients; also ends idle
    /// keep-alive connections).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// Allow browser calls from this origin (`*` for any).
    #[arg(long)]
    pub cors_origin: Option<String>,
    /// A TOML file with the same settings (flag names without `--`, `-` as
    /// `_`); flags beat environment variables, which beat the file.
    #[arg(long, env = "DODODB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run as member N of a Raft cluster (a positive integer, never reused).
    #[arg(long, env = "DODODB_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: Option<u64>,
    /// Where other members reach this node's Raft RPC (default: the HTTP
    /// listener, under /raft/).
    #[arg(long, env = "DODODB_RAFT_LISTEN", requires = "node_id")]
    pub raft_listen: Option<SocketAddr>,
    /// The client URL other members redirect to (default: http://<--listen>).
    #[arg(long, env = "DODODB_ADVERTISE_URL", requires = "node_id")]
    pub advertise_url: Option<String>,
    /// Build a Raft snapshot every this many applied writes.
    #[arg(long, default_value_t = 100_000, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_snapshot_logs: u64,
    /// Raft heartbeat interval, in milliseconds (the leader's heartbeats,
    /// and the deadline of a read-index round).
    #[arg(long, env = "DODODB_RAFT_HEARTBEAT_MS", default_value_t = 100, requires = "node_id", value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_heartbeat_ms: u64,
    /// A follower that hears no heartbeat for a random time between this
    /// many milliseconds and twice it starts an election (must be more
    /// than --raft-heartbeat-ms).
    #[arg(long, env = "DODODB_RAFT_ELECTION_MS", default_value_t = 500, requires = "node_id", value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_election_ms: u64,
}

/// A parsed `--webhook-retry-schedule`.
#[derive(Debug, Clone)]
pub struct Schedule(Vec<Duration>);

fn parse_schedule(text: &str) -> Result<Schedule, String> {
    dododb::events::webhook::schedule::parse(text).map(Schedule)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 30s, 5m or 5d: {e}"))?;
    if d.is_zero() {
        return Err("must be longer than 0".into());
    }
    Ok(d)
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// The data directory to repair.
    #[arg(long, env = "DODODB_DATA_DIR", default_value = "./dododb-data")]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The data directory to build.
    #[arg(long, env = "DODODB_DATA_DIR", default_value = "./dododb-data")]
    pub data_dir: PathBuf,
    /// The export file (from `dododb export` or `GET /system/export`).
    pub file: PathBuf,
    /// Restore into a directory that already holds data: every key it
    /// holds is deleted first.
    #[arg(long)]
    pub force: bool,
    /// Longest accepted key, in bytes (as the server's flag).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_key_bytes: u64,
    /// Largest accepted value, in bytes (as the server's flag).
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_value_bytes: u64,
}

impl ServeArgs {
    /// The cluster settings, when `--node-id` makes this a member; `addr`
    /// is the bound HTTP address and `raft_addr` the bound Raft one.
    pub fn cluster_settings(
        &self,
        addr: SocketAddr,
        raft_addr: Option<SocketAddr>,
    ) -> Option<ClusterSettings> {
        let node_id = self.node_id?;
        Some(ClusterSettings {
            node_id,
            advertise_url: self
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{addr}")),
            raft_url: raft_addr.map(|a| format!("http://{a}")),
            snapshot_logs: self.raft_snapshot_logs,
            heartbeat: Duration::from_millis(self.raft_heartbeat_ms),
            election_timeout: Duration::from_millis(self.raft_election_ms),
            local_ip: Some(addr.ip()).filter(|ip| !ip.is_unspecified()),
        })
    }

    /// The database configuration these flags describe.
    pub fn to_config(&self) -> Config {
        let storage = if self.in_memory {
            Storage::InMemory
        } else {
            Storage::Dir(self.data_dir.clone())
        };
        let defaults = Config::default();
        Config {
            storage,
            fsync: self.fsync,
            snapshot_interval: (self.snapshot_interval > 0)
                .then(|| Duration::from_secs(self.snapshot_interval)),
            snapshot_retain: usize::try_from(self.snapshot_retain).unwrap_or(usize::MAX),
            snapshot_wal_bytes: self.snapshot_wal_bytes,
            retention: self.retention_secs.map(Duration::from_secs),
            cleanup_interval: Duration::from_millis(self.cleanup_interval_ms),
            max_key_bytes: usize::try_from(self.max_key_bytes).unwrap_or(usize::MAX),
            max_value_bytes: usize::try_from(self.max_value_bytes).unwrap_or(usize::MAX),
            max_txn_ops: usize::try_from(self.max_txn_ops).unwrap_or(usize::MAX),
            max_txn_bytes: usize::try_from(self.max_txn_bytes).unwrap_or(usize::MAX),
            server_version: self
                .server_version
                .clone()
                .unwrap_or(defaults.server_version),
            webhook_timeout: Duration::from_secs(self.webhook_timeout_secs),
            webhook_retry_schedule: match self.webhook_max_attempts {
                Some(attempts) => RetrySchedule::doubling(attempts).delays().to_vec(),
                None => self.webhook_retry_schedule.0.clone(),
            },
            webhook_disable_after: self.webhook_disable_after,
            event_retention_bytes: self.event_retention_bytes,
            webhook_window_events: usize::try_from(self.webhook_window_events)
                .unwrap_or(usize::MAX),
            feed_retained_events: usize::try_from(self.feed_retained_events).unwrap_or(usize::MAX),
            auth_token: self.auth_token.clone(),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_concurrent_requests: usize::try_from(self.max_concurrent_requests)
                .unwrap_or(usize::MAX),
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            cors_origin: self.cors_origin.clone(),
            ..defaults
        }
    }
}
