//! Plain configuration data for a [`crate::Db`] and the HTTP server.
//!
//! Everything here is checked once, at start-up, by [`Config::validate`]; the
//! rest of the crate trusts these values. No I/O happens in this module.

use std::path::PathBuf;
use std::time::Duration;

/// When the write-ahead log is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// A write is acknowledged only after its log record is on disk
    /// (concurrent writers share one fdatasync: group commit).
    #[default]
    Always,
    /// The log is written before the write is acknowledged and forced to
    /// disk at most once a second: a power loss can lose up to a second.
    EverySec,
    /// The log is written before the write is acknowledged; the OS decides
    /// when it reaches the disk.
    Never,
}

impl FsyncPolicy {
    /// The spelling used by the `--fsync` flag.
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::Never => "never",
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!(
                "unknown fsync policy {other:?} (expected always, everysec or never)"
            )),
        }
    }
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// No files at all: nothing survives a restart.
    InMemory,
    /// A write-ahead log and snapshots in this directory.
    Dir(PathBuf),
}

/// The bearer token of `--auth-token`. Its `Debug` never shows the
/// token, so a logged or printed configuration cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> AuthToken {
        AuthToken(token.into())
    }

    /// The token itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl std::str::FromStr for AuthToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err("the token must not be empty".into())
        } else {
            Ok(AuthToken(s.to_string()))
        }
    }
}

/// Every setting of a database and its server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the WAL and snapshots live, or no disk at all.
    pub storage: Storage,
    /// When WAL records are forced to disk.
    pub fsync: FsyncPolicy,
    /// Time between timed snapshots; `None` disables them.
    pub snapshot_interval: Option<Duration>,
    /// How many snapshots are kept on disk.
    pub snapshot_retain: usize,
    /// Snapshot once the WAL written since the last snapshot is this large.
    pub snapshot_wal_bytes: u64,
    /// Keys without their own TTL expire this long after their last write.
    pub retention: Option<Duration>,
    /// How often the expiry loop looks for expired keys.
    pub cleanup_interval: Duration,
    /// Longest accepted key, in bytes.
    pub max_key_bytes: usize,
    /// Largest accepted value (request body), in bytes.
    pub max_value_bytes: usize,
    /// Operations in one transaction (`success` and `failure` together).
    pub max_txn_ops: usize,
    /// Largest body of one `POST /txn`, in bytes.
    pub max_txn_bytes: usize,
    /// What `/system/version` reports.
    pub server_version: String,
    /// Changes kept in memory for `GET /events?since=`.
    pub feed_retained_events: usize,
    /// Per-attempt timeout of a webhook delivery.
    pub webhook_timeout: Duration,
    /// Delays between the attempts of a webhook event (one per retry).
    pub webhook_retry_schedule: Vec<Duration>,
    /// A subscription with no 2xx this long while events were due is
    /// disabled.
    pub webhook_disable_after: Duration,
    /// Log kept on disk for lagging subscriptions and feed resumes; older
    /// segments are dropped (never silently: see `lost_events`).
    pub event_retention_bytes: u64,
    /// Events a webhook delivery task holds in memory; the rest wait in the
    /// log.
    pub webhook_window_events: usize,
    /// Capacity of the hint queue between writes and the webhook pool.
    pub webhook_queue_capacity: usize,
    /// When set, every route but `GET /system/alive` needs
    /// `Authorization: Bearer <token>`.
    pub auth_token: Option<AuthToken>,
    /// A request whose response head is not ready by then gets `503`
    /// (the live feed's streams are exempt).
    pub request_timeout: Duration,
    /// Requests in progress beyond this are shed with `503` at once.
    pub max_concurrent_requests: usize,
    /// A connection that has not sent a complete request head this long
    /// after it opened (or after its previous response) is closed.
    pub header_read_timeout: Duration,
    /// The origin browsers may call from (`*` for any); `None` sends no
    /// CORS headers.
    pub cors_origin: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            storage: Storage::Dir(PathBuf::from("./dododb-data")),
            fsync: FsyncPolicy::Always,
            snapshot_interval: Some(Duration::from_secs(300)),
            snapshot_retain: 2,
            snapshot_wal_bytes: 64 * 1024 * 1024,
            retention: None,
            cleanup_interval: Duration::from_millis(100),
            max_key_bytes: 1024,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 1000,
            max_txn_bytes: 16 * 1024 * 1024,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            feed_retained_events: 10_000,
            webhook_timeout: Duration::from_secs(5),
            webhook_retry_schedule: [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
                .map(Duration::from_secs)
                .to_vec(),
            webhook_disable_after: Duration::from_secs(5 * 24 * 3600),
            event_retention_bytes: 1 << 30,
            webhook_window_events: 4096,
            webhook_queue_capacity: 65_536,
            auth_token: None,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 4096,
            header_read_timeout: Duration::from_secs(30),
            cors_origin: None,
        }
    }
}

impl Config {
    /// A configuration that keeps everything in memory (no files).
    pub fn in_memory() -> Self {
        Config {
            storage: Storage::InMemory,
            ..Config::default()
        }
    }

    /// A configuration that persists to `dir` with the default settings.
    pub fn with_dir(dir: impl Into<PathBuf>) -> Self {
        Config {
            storage: Storage::Dir(dir.into()),
            ..Config::default()
        }
    }

    /// Checks the limits for values that cannot work.
    ///
    /// # Errors
    ///
    /// Returns a sentence naming the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_key_bytes == 0 {
            return Err("max-key-bytes must be at least 1".into());
        }
        if self.max_value_bytes == 0 {
            return Err("max-value-bytes must be at least 1".into());
        }
        if self.max_txn_ops == 0 {
            return Err("max-txn-ops must be at least 1".into());
        }
        if self.max_txn_bytes == 0 {
            return Err("max-txn-bytes must be at least 1".into());
        }
        if self.snapshot_retain == 0 {
            return Err("snapshot-retain must be at least 1".into());
        }
        if self.cleanup_interval.is_zero() {
            return Err("cleanup-interval-ms must be at least 1".into());
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            return Err("retention-secs must be at least 1".into());
        }
        if self.webhook_timeout.is_zero() {
            return Err("webhook-timeout-secs must be at least 1".into());
        }
        if self.webhook_window_events == 0 {
            return Err("a webhook delivery task must hold at least 1 event".into());
        }
        if self.webhook_disable_after.is_zero() {
            return Err("webhook-disable-after must be longer than 0".into());
        }
        if self.webhook_queue_capacity == 0 {
            return Err("the webhook queue needs room for at least 1 event".into());
        }
        if self.request_timeout.is_zero() {
            return Err("request-timeout-secs must be at least 1".into());
        }
        if self.max_concurrent_requests == 0 {
            return Err("max-concurrent-requests must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() {
            return Err("header-read-timeout-secs must be at least 1".into());
        }
        if let Some(origin) = &self.cors_origin
            && origin != "*"
            && !is_origin(origin)
        {
            return Err(format!(
                "cors-origin must be * or an origin like https://app.example.com; got {origin:?}"
            ));
        }
        if self.feed_retained_events == 0 {
            return Err("feed retention must hold at least 1 event".into());
        }
        Ok(())
    }
}

/// Whether `text` is a serialized origin: `http` or `https`, `://`, and a
/// host with an optional port, nothing after it.
fn is_origin(text: &str) -> bool {
    let host = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    host.is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug() {
        let config = Config {
            auth_token: Some(AuthToken::new("s3cret-token")),
            ..Config::in_memory()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret-token"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn origins_are_checked() {
        for good in ["http://localhost:3000", "https://app.example.com"] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://",
            "https://a.com/path",
            "ftp://x",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
