//! The clap types of the client commands (`get`, `put`, `del`, `ls`,
//! `count`, `watch`, `subscribe`, `txn`, `mget`, `mset`, `import`,
//! `export`, `subs`, `sub-recover`, `sub-enable`), shared by the command line and the
//! interactive shell so both accept the same words. Parsing only: no I/O.

use clap::{Args, Subcommand};

/// Where the server is and how to authenticate to it.
#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Base URL of the server.
    #[arg(long, env = "DODODB_URL", default_value = "http://127.0.0.1:8888")]
    pub url: String,
    /// Bearer token, for a server started with --auth-token.
    #[arg(long, env = "DODODB_AUTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// A client command with its connection flags, as `dododb get ...` takes it.
#[derive(Args, Debug, Clone)]
pub struct Remote<T: Args> {
    /// The server.
    #[command(flatten)]
    pub connect: Connect,
    /// What to do there.
    #[command(flatten)]
    pub args: T,
}

/// One request against a running server.
#[derive(Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// Print a key's value (exit 1 if it does not exist).
    Get(GetArgs),
    /// Store a JSON value under a key.
    #[command(visible_alias = "set")]
    Put(PutArgs),
    /// Delete a key (exit 1 if it does not exist).
    #[command(visible_alias = "delete")]
    Del(DelArgs),
    /// List keys, one a line, in ascending byte order.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Print how many keys there are.
    Count(CountArgs),
    /// Follow the live feed, one event a line; reconnects and resumes.
    Watch(WatchArgs),
    /// Subscribe a webhook URL to a key or a prefix.
    Subscribe(SubscribeArgs),
    /// Run a transaction: a JSON document (`{"compare", "success",
    /// "failure"}`) from a file or stdin (exit 1 when the failure branch ran).
    Txn(TxnArgs),
    /// Read several keys at one instant; prints `{key: value}` of those
    /// that exist.
    Mget(MgetArgs),
    /// Write several keys at once (one transaction): `mset K1 V1 K2 V2 ...`.
    Mset(MsetArgs),
    /// Import an export file (every line is checked before anything is
    /// written).
    Import(ImportArgs),
    /// Write every entry to standard output in the export format (a backup).
    Export(ExportArgs),
    /// List the webhook subscriptions with their delivery status.
    Subs(SubsArgs),
    /// Send a subscription's failed events from a revision on again.
    SubRecover(SubRecoverArgs),
    /// Make a disabled subscription active again (resumes from its cursor).
    SubEnable(SubEnableArgs),
    /// Manage a Raft cluster: init, add, remove, status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `subs`.
#[derive(Args, Debug, Clone)]
pub struct SubsArgs {}

/// `sub-recover ID --since REV`.
#[derive(Args, Debug, Clone)]
pub struct SubRecoverArgs {
    /// The subscription's id.
    pub id: String,
    /// Failed events from this revision on are sent again.
    #[arg(long)]
    pub since: u64,
}

/// `sub-enable ID`.
#[derive(Args, Debug, Clone)]
pub struct SubEnableArgs {
    /// The subscription's id.
    pub id: String,
}

/// `import FILE [--replace]`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The export file, or `-` to read standard input.
    pub file: String,
    /// Delete every key first (`?mode=replace`).
    #[arg(long)]
    pub replace: bool,
}

/// `export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {}

/// `txn [FILE]`.
#[derive(Args, Debug, Clone)]
pub struct TxnArgs {
    /// The transaction document, or `-` (or nothing) to read standard input.
    pub file: Option<String>,
}

/// `mget KEY...`.
#[derive(Args, Debug, Clone)]
pub struct MgetArgs {
    /// The keys.
    #[arg(required = true)]
    pub keys: Vec<String>,
}

/// `mset KEY VALUE [KEY VALUE]...`.
#[derive(Args, Debug, Clone)]
pub struct MsetArgs {
    /// Keys and values, alternating; quote a JSON value with spaces.
    #[arg(required = true, num_args = 2.., value_names = ["KEY", "VALUE"])]
    pub pairs: Vec<String>,
    /// Expire the keys this many seconds after the write.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: Option<u64>,
}

/// `cluster init|add|remove|status`.
#[derive(Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Make the running members one group (`--url` names one of them).
    Init(InitArgs),
    /// Add a running node: first as a learner, then as a voter.
    Add(AddArgs),
    /// Remove a member from the group.
    Remove(RemoveArgs),
    /// Show this node's view of the group.
    Status,
}

/// `dododb cluster ...` on the command line.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ClusterCommand,
}

/// `cluster init ID=URL...`.
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Every member as `ID=URL`, for example `1=http://127.0.0.1:8881`.
    #[arg(required = true)]
    pub members: Vec<String>,
}

/// `cluster add ID URL [--learner]`.
#[derive(Args, Debug, Clone)]
pub struct AddArgs {
    /// The new node's `--node-id`.
    pub id: u64,
    /// Its client URL.
    pub url: String,
    /// Leave it a learner (it does not vote).
    #[arg(long)]
    pub learner: bool,
}

/// `cluster remove ID`.
#[derive(Args, Debug, Clone)]
pub struct RemoveArgs {
    /// The member to remove.
    pub id: u64,
}

/// `get KEY`.
#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// The key.
    pub key: String,
}

/// `put KEY [VALUE] [--ttl SECS] [--if-version N | --if-absent]`.
#[derive(Args, Debug, Clone)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The JSON value, `@path` to read a file, or `-` (or nothing) to read
    /// standard input.
    pub value: Option<String>,
    /// Expire the key this many seconds after the write.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: Option<u64>,
    /// Write only if the key is at this version (exit 1 otherwise).
    #[arg(long, conflicts_with = "if_absent")]
    pub if_version: Option<u64>,
    /// Write only if the key does not exist (exit 1 otherwise).
    #[arg(long)]
    pub if_absent: bool,
}

/// `del KEY [--if-version N]`.
#[derive(Args, Debug, Clone)]
pub struct DelArgs {
    /// The key.
    pub key: String,
    /// Delete only if the key is at this version (exit 1 otherwise).
    #[arg(long)]
    pub if_version: Option<u64>,
}

/// `ls [--prefix P]`.
#[derive(Args, Debug, Clone)]
pub struct LsArgs {
    /// Only keys that start with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

/// `count [--prefix P]`.
#[derive(Args, Debug, Clone)]
pub struct CountArgs {
    /// Only keys that start with this.
    #[arg(long)]
    pub prefix: Option<String>,
}

/// `watch [--prefix P] [--since REV]`.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Only changes of keys that start with this.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Replay the retained changes after this revision first (default: the
    /// server's revision when the watch starts).
    #[arg(long)]
    pub since: Option<u64>,
}

/// `subscribe (--key K | --prefix P) --callback URL [--secret S]`.
#[derive(Args, Debug, Clone)]
pub struct SubscribeArgs {
    /// Changes of this key.
    #[arg(long, required_unless_present = "prefix", conflicts_with = "prefix")]
    pub key: Option<String>,
    /// Changes of every key under this prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// The webhook URL events are POSTed to (`--url` names the server).
    #[arg(long, alias = "callback-url")]
    pub callback: String,
    /// Signs each delivery (Standard Webhooks HMAC-SHA256).
    #[arg(long)]
    pub secret: Option<String>,
}
