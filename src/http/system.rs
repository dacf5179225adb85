//! Handlers of the `/system` routes (SPEC §7).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::db::{DbError, ImportMode};

use super::error::ApiError;
use super::{AppState, json, rfc3339_ms};

pub(super) async fn alive() -> Response {
    json(StatusCode::OK, &json!({"alive": true}))
}

pub(super) async fn version(State(state): State<AppState>) -> Response {
    json(
        StatusCode::OK,
        &json!({"version": state.db.config().server_version}),
    )
}

#[derive(Serialize)]
struct StatsAnswer {
    keys: usize,
    revision: u64,
    uptime_secs: u64,
    storage: &'static str,
    fsync: &'static str,
    wal: WalStats,
    last_snapshot: Option<LastSnapshot>,
    snapshots: u64,
    expired_keys: u64,
    subscriptions: usize,
    webhooks: WebhookStats,
    feed: FeedStats,
    http: HttpStats,
    /// On a cluster member only: its Raft figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<crate::raft::RaftStats>,
}

#[derive(Serialize)]
struct HttpStats {
    requests: u64,
}

#[derive(Serialize)]
struct FeedStats {
    clients: u64,
    subscriptions: u64,
    cut_off: u64,
    events: u64,
    retained: usize,
    oldest_retained: Option<u64>,
}

#[derive(Serialize)]
struct WebhookStats {
    queue_depth: usize,
    in_flight: u64,
    delivered: u64,
    retried: u64,
    failed: u64,
    dropped: u64,
}

#[derive(Serialize)]
struct WalStats {
    bytes: u64,
    bytes_since_snapshot: u64,
    appends: u64,
    batches: u64,
    fsyncs: u64,
    fsync_micros: u64,
    poisoned: Option<String>,
}

#[derive(Serialize)]
struct LastSnapshot {
    file: String,
    revision: u64,
    keys: u64,
    bytes: u64,
    duration_ms: u64,
    finished_at: String,
}

pub(super) async fn stats(State(state): State<AppState>) -> Response {
    let db = &state.db;
    let s = db.stats();
    let in_memory = matches!(db.config().storage, crate::config::Storage::InMemory);
    json(
        StatusCode::OK,
        &StatsAnswer {
            keys: s.keys,
            revision: s.revision,
            uptime_secs: s.uptime_secs,
            storage: if in_memory { "memory" } else { "disk" },
            fsync: db.config().fsync.as_str(),
            wal: WalStats {
                bytes: s.wal_bytes,
                bytes_since_snapshot: s.wal_bytes_since_snapshot,
                appends: s.wal_appends,
                batches: s.wal_batches,
                fsyncs: s.wal_fsyncs,
                fsync_micros: s.wal_fsync_micros,
                poisoned: s.wal_poisoned,
            },
            last_snapshot: s.last_snapshot.map(|l| LastSnapshot {
                file: l.file.display().to_string(),
                revision: l.revision,
                keys: l.keys,
                bytes: l.bytes,
                duration_ms: u64::try_from(l.duration.as_millis()).unwrap_or(u64::MAX),
                finished_at: rfc3339_ms(l.finished_at_ms),
            }),
            snapshots: s.snapshots,
            expired_keys: s.expired_keys,
            subscriptions: db.subscriptions().len(),
            webhooks: webhook_stats(db),
            feed: feed_stats(db),
            http: HttpStats {
                requests: state.metrics.requests_answered(),
            },
            cluster: state.cluster.as_ref().map(|c| c.stats()),
        },
    )
}

fn webhook_stats(db: &crate::Db) -> WebhookStats {
    use std::sync::atomic::Ordering::Relaxed;
    let d = db.delivery_stats();
    WebhookStats {
        queue_depth: db.delivery_queue_depth(),
        in_flight: db.delivery_in_flight(),
        delivered: d.delivered.load(Relaxed),
        retried: d.retried.load(Relaxed),
        failed: d.failed.load(Relaxed),
        dropped: d.dropped.load(Relaxed),
    }
}

fn feed_stats(db: &crate::Db) -> FeedStats {
    let f = db.feed().stats();
    FeedStats {
        clients: f.clients,
        subscriptions: f.subscriptions,
        cut_off: f.cut_off,
        events: f.events,
        retained: f.retained,
        oldest_retained: f.oldest_retained,
    }
}

pub(super) async fn snapshot(
    State(state): State<AppState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    if let Some(cluster) = &state.cluster {
        let file = cluster
            .snapshot()
            .await
            .map_err(|e| super::cluster::cluster_error(e, &uri))?;
        let bytes = std::fs::metadata(&file.path).map_or(0, |m| m.len());
        return Ok(json(
            StatusCode::OK,
            &json!({
                "revision": file.revision,
                "keys": file.keys,
                "bytes": bytes,
                "file": file.path.display().to_string(),
            }),
        ));
    }
    let db = state.db.clone();
    let info = tokio::task::spawn_blocking(move || db.snapshot())
        .await
        .map_err(|e| ApiError::Internal(format!("snapshot task failed: {e}")))??;
    Ok(json(
        StatusCode::OK,
        &json!({
            "revision": info.revision,
            "keys": info.keys,
            "bytes": info.bytes,
            "file": info.file.display().to_string(),
        }),
    ))
}

/// A `Write` that hands filled chunks to the response body stream.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

pub(super) async fn export(State(state): State<AppState>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let db = state.db.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::new(),
        };
        if let Err(e) = db.export(&mut out) {
            tracing::warn!("export stopped: {e}");
        }
    });
    // Fused: a body wrapper (gzip) may poll again after the end, and a
    // bare `unfold` panics then.
    let stream =
        futures_util::StreamExt::fuse(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
    let mut response = Response::new(Body::from_stream(stream));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportQuery {
    mode: Option<String>,
}

/// An import's refusal, which may come before its body was read to the
/// end: it closes the connection.
fn closing(e: ApiError) -> Response {
    let mut response = e.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `POST /system/import`: the body is streamed to a blocking task that
/// checks every line and spools the entries; only a wholly good export is
/// then applied. A refusal may come before the body is read to its end, so
/// it closes the connection.
pub(super) async fn import(
    State(state): State<AppState>,
    uri: Uri,
    q: Result<Query<ImportQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let q = q
        .map(|Query(q)| q)
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {}", e.body_text())))?;
    let mode = match q.mode.as_deref() {
        None | Some("merge") => ImportMode::Merge,
        Some("replace") => ImportMode::Replace,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "mode must be merge or replace; got {other:?}"
            )));
        }
    };
    // On a member only the leader imports, through the log; a follower
    // redirects before reading the body.
    let cluster = state.cluster.clone();
    if let Some(Err(e)) = cluster.as_ref().map(|c| c.check_leader()) {
        return Ok(closing(super::cluster::cluster_error(e, &uri)));
    }
    let db = state.db.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    // Set only once the whole body has arrived. A body cut short (the
    // client went away, or ran out of time) must not be applied as if it
    // were all there: plain lines have no trailer to notice the cut.
    let body_complete = Arc::new(AtomicBool::new(false));
    let complete = Arc::clone(&body_complete);
    let runtime = tokio::runtime::Handle::current();
    let checker = tokio::task::spawn_blocking(move || {
        let mut spool = db.import_spool().map_err(ApiError::from)?;
        while let Some(chunk) = rx.blocking_recv() {
            spool.push(&chunk).map_err(ApiError::from)?;
        }
        if !complete.load(Ordering::Acquire) {
            return Err(ApiError::from(DbError::InvalidRequest(
                "the body did not arrive whole; nothing was imported".into(),
            )));
        }
        let spooled = spool.finish().map_err(ApiError::from)?;
        let metas = spooled.metas;
        let done = match &cluster {
            Some(cluster) => cluster
                .import_blocking(&spooled, mode, &runtime)
                .map_err(|e| super::cluster::cluster_error(e, &uri))?,
            None => db.apply_import(spooled, mode)?,
        };
        Ok::<_, ApiError>((done, metas))
    });
    // The request deadline covers the upload only (admission leaves this
    // route alone): once the body is whole, applying it is not cut short,
    // so an answer never says "not done" about an import that goes on.
    let timeout = state.db.config().request_timeout;
    let read = tokio::time::timeout(timeout, forward_body(body, &tx)).await;
    if let Ok(Ok(())) = read {
        body_complete.store(true, Ordering::Release);
    }
    drop(tx);
    let outcome = checker
        .await
        .map_err(|e| ApiError::Internal(format!("import task failed: {e}")))?;
    match read {
        Err(_) => {
            return Err(ApiError::Unavailable(format!(
                "the body did not arrive within {} s (--request-timeout-secs); nothing was imported",
                timeout.as_secs()
            )));
        }
        Ok(Err(e)) => {
            return Err(ApiError::InvalidRequest(format!(
                "could not read the body: {e}; nothing was imported"
            )));
        }
        Ok(Ok(())) => {}
    }
    match outcome {
        Ok((done, metas)) => Ok(json(
            StatusCode::OK,
            &json!({
                "imported": done.imported,
                "revision": done.revision,
                "expired": done.expired,
                "skipped_subscriptions": metas,
            }),
        )),
        Err(e) => Ok(closing(e)),
    }
}

/// Streams the request body to the import's checker. Ends early, without
/// an error, when the checker stopped (a bad line: its error says why).
async fn forward_body(
    body: Body,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<(), axum::Error> {
    let mut body = body.into_data_stream();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        if tx.send(chunk?).await.is_err() {
            break;
        }
    }
    Ok(())
}
