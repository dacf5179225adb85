//! `GET /metrics` in the Prometheus (OpenMetrics) text format, and the one
//! middleware that records every request: a count and a latency histogram
//! per route template (`/kv/{key}`, never the raw path), method and status
//! class, plus a debug-level log line.
//!
//! Database, feed, webhook and (on a cluster member) Raft figures are not
//! recorded as they happen:
//! [`DbCollector`] reads the counters the engine keeps anyway
//! ([`Db::stats`], the feed's and the delivery pool's) at scrape time.
//! Recording a request costs a route lookup, two clock reads, one atomic
//! increment and one short histogram lock: each template, method and
//! status class caches its series after its first request, so the hot path
//! neither hashes labels nor locks the families.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::ROUTES;
use super::error::ApiError;
use super::exposition::{Format, to_prometheus_text};
use crate::db::Db;

/// Upper bounds of the request latency buckets, in seconds: 100 µs to 5 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The registry behind `/metrics` and the request recorder that feeds it.
pub(super) struct Metrics {
    registry: Registry,
    requests: Arc<RequestMetrics>,
}

impl Metrics {
    /// Metrics of `db` and of the requests recorded by [`Metrics::layer`].
    /// On a cluster member, `cluster`'s Raft figures too.
    pub(super) fn new(db: Db, cluster: Option<Arc<crate::raft::Cluster>>) -> Metrics {
        let mut registry = Registry::with_prefix("dododb");
        let requests = Arc::new(RequestMetrics::default());
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status class",
            requests.count.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by method, route template and status class",
            requests.latency.clone(),
        );
        registry.register_collector(Box::new(DbCollector { db }));
        if let Some(cluster) = cluster {
            registry.register_collector(Box::new(super::cluster_metrics::RaftCollector::new(
                cluster,
            )));
        }
        Metrics { registry, requests }
    }

    /// The middleware that records every request; it wraps the whole
    /// application and finds the route template itself.
    /// `enabled: false` only forwards requests (a benchmark hook).
    pub(super) fn layer(&self, enabled: bool) -> RecordLayer {
        RecordLayer {
            metrics: enabled.then(|| Arc::clone(&self.requests)),
        }
    }

    /// Requests answered since start, over every route, method and status
    /// (what `/system/stats` reports): the sum of the cached series, so the
    /// hot path pays nothing more for it.
    pub(super) fn requests_answered(&self) -> u64 {
        self.requests
            .cache
            .iter()
            .flatten()
            .filter_map(OnceLock::get)
            .map(|series| series.count.get())
            .sum()
    }

    /// The scrape answer, in `format`.
    pub(super) fn render(&self, format: Format) -> Response {
        let mut text = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            return ApiError::Internal(format!("cannot encode metrics: {e}")).into_response();
        }
        if format == Format::PrometheusText {
            text = to_prometheus_text(&text);
        }
        let mut response = text.into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, format.content_type());
        response
    }
}

/// The per-request families. Both share one label set.
struct RequestMetrics {
    count: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Finds a request's route template from its raw path, as the router
    /// does: both are built from [`ROUTES`], so they agree.
    routes: matchit::Router<usize>,
    /// Index to template; the last one is `unmatched`.
    templates: Vec<&'static str>,
    /// The series of every template, method and status class, looked up in
    /// the families on first use and reused after, so the hot path hashes
    /// no labels and takes no map lock.
    cache: Box<[[OnceLock<Series>; N_STATUS_CLASSES]]>,
}

const N_STATUS_CLASSES: usize = 5;

/// The methods that get a label of their own; the rest are `other`.
const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "other",
];

impl Default for RequestMetrics {
    fn default() -> Self {
        let mut templates: Vec<&'static str> = Vec::new();
        let mut routes = matchit::Router::new();
        for route in ROUTES {
            if !templates.contains(&route.path()) {
                // Every template is valid: the router was built from them.
                let _ = routes.insert(route.path(), templates.len());
                templates.push(route.path());
            }
        }
        templates.push("unmatched");
        let cache = (0..templates.len() * METHOD_LABELS.len())
            .map(|_| Default::default())
            .collect();
        RequestMetrics {
            count: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            routes,
            templates,
            cache,
        }
    }
}

impl RequestMetrics {
    /// The cache slot of a request: its route template and method.
    fn slot(&self, method: &Method, path: &str) -> usize {
        let route = self
            .routes
            .at(path)
            .map_or(self.templates.len() - 1, |m| *m.value);
        route * METHOD_LABELS.len() + method_index(method)
    }

    /// Counts one answered request of `slot` that took `elapsed`; returns
    /// its method and route labels.
    fn record(&self, slot: usize, status: StatusCode, elapsed: Duration) -> (&str, &str) {
        let method = METHOD_LABELS[slot % METHOD_LABELS.len()];
        let route = self.templates[slot / METHOD_LABELS.len()];
        let (class, index) = status_class(status);
        self.cache[slot][index]
            .get_or_init(|| {
                let labels = RequestLabels {
                    method,
                    route,
                    status: class,
                };
                Series {
                    count: self.count.get_or_create_owned(&labels),
                    latency: self.latency.get_or_create_owned(&labels),
                }
            })
            .record(elapsed.as_secs_f64());
        (method, route)
    }
}

/// One label set's counter and histogram (shared with the families, so
/// recording into them shows up in the scrape).
struct Series {
    count: Counter,
    latency: Histogram,
}

impl Series {
    fn record(&self, seconds: f64) {
        self.count.inc();
        self.latency.observe(seconds);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: &'static str,
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::PUT => 2,
        Method::POST => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The status class label and its index in a cache row, 1xx to 5xx.
fn status_class(status: StatusCode) -> (&'static str, usize) {
    match status.as_u16() / 100 {
        1 => ("1xx", 0),
        2 => ("2xx", 1),
        3 => ("3xx", 2),
        4 => ("4xx", 3),
        _ => ("5xx", 4),
    }
}

/// Wraps the whole application (not each route: `Router::layer` would box
/// the service and its future once per route and request) in a [`Record`].
#[derive(Clone)]
pub(super) struct RecordLayer {
    metrics: Option<Arc<RequestMetrics>>,
}

impl<S> tower_layer::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Records the request `inner` answers once its response head is ready.
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    metrics: Option<Arc<RequestMetrics>>,
}

impl<S, B> tower_service::Service<Request> for Record<S>
where
    S: tower_service::Service<Request, Response = axum::http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let target = self.metrics.as_ref().map(|metrics| {
            let slot = metrics.slot(request.method(), request.uri().path());
            (Arc::clone(metrics), slot)
        });
        // The raw path is kept for the debug log only when it is on.
        let uri = tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().clone());
        RecordFuture {
            inner: self.inner.call(request),
            started,
            target,
            uri,
        }
    }
}

pin_project! {
    /// The future of a [`Record`]ed request.
    pub struct RecordFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        // Where the figures go, and the request's cache slot there.
        target: Option<(Arc<RequestMetrics>, usize)>,
        uri: Option<Uri>,
    }
}

impl<F, B, E> Future for RecordFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some((metrics, slot))) = (&result, this.target.as_ref()) {
            let elapsed = this.started.elapsed();
            let status = response.status();
            let (method, route) = metrics.record(*slot, status, elapsed);
            tracing::debug!(
                method,
                route,
                path = this.uri.as_ref().map(|u| u.path()),
                status = status.as_u16(),
                micros = elapsed.as_micros() as u64,
                "request"
            );
        }
        Poll::Ready(result)
    }
}

/// Reads the database's, the feed's and the delivery pool's counters at
/// scrape time.
struct DbCollector {
    db: Db,
}

impl std::fmt::Debug for DbCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbCollector")
    }
}

pub(super) fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

pub(super) fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn micros_to_secs(micros: u64) -> f64 {
    micros as f64 / 1e6
}

impl Collector for DbCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        encode_store_metrics(&self.db, e)?;
        encode_feed_metrics(&self.db, e)?;
        encode_webhook_metrics(&self.db, e)
    }
}

/// Keys, revision, WAL and snapshots, from [`Db::stats`].
fn encode_store_metrics(db: &Db, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let s = db.stats();
    gauge(e, "keys", "Keys stored now", s.keys as u64)?;
    gauge(e, "revision", "The last revision handed out", s.revision)?;
    gauge(
        e,
        "uptime_seconds",
        "Seconds since the database opened",
        s.uptime_secs,
    )?;
    counter(
        e,
        "expired_keys",
        "Keys removed by expiry since start",
        s.expired_keys,
    )?;
    counter(
        e,
        "wal_appends",
        "WAL records appended since start",
        s.wal_appends,
    )?;
    counter(
        e,
        "wal_batches",
        "WAL batches written since start (one write each)",
        s.wal_batches,
    )?;
    counter(e, "wal_bytes", "WAL bytes written since start", s.wal_bytes)?;
    gauge(
        e,
        "wal_bytes_since_snapshot",
        "WAL bytes written since the last snapshot",
        s.wal_bytes_since_snapshot,
    )?;
    counter(
        e,
        "wal_fsyncs",
        "WAL fdatasync calls since start",
        s.wal_fsyncs,
    )?;
    counter(
        e,
        "wal_fsync_seconds",
        "Time spent in WAL fdatasync since start",
        micros_to_secs(s.wal_fsync_micros),
    )?;
    gauge(
        e,
        "wal_poisoned",
        "1 when a failed write made the WAL refuse writes",
        u64::from(s.wal_poisoned.is_some()),
    )?;
    counter(e, "snapshots", "Snapshots written since start", s.snapshots)?;
    counter(
        e,
        "snapshot_seconds",
        "Time spent writing snapshots since start",
        micros_to_secs(s.snapshot_micros),
    )?;
    let last = s.last_snapshot.as_ref();
    gauge(
        e,
        "last_snapshot_seconds",
        "Duration of the last snapshot (0 before the first)",
        last.map_or(0.0, |l| l.duration.as_secs_f64()),
    )?;
    gauge(
        e,
        "last_snapshot_bytes",
        "Size of the last snapshot file (0 before the first)",
        last.map_or(0, |l| l.bytes),
    )?;
    gauge(
        e,
        "last_snapshot_keys",
        "Entries in the last snapshot (0 before the first)",
        last.map_or(0, |l| l.keys),
    )?;
    gauge(
        e,
        "last_snapshot_timestamp_seconds",
        "Unix time the last snapshot finished (0 before the first)",
        last.map_or(0.0, |l| l.finished_at_ms as f64 / 1e3),
    )
}

/// Live feed clients and throughput.
fn encode_feed_metrics(db: &Db, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let f = db.feed().stats();
    gauge(
        e,
        "feed_clients",
        "Live feed clients connected now",
        f.clients,
    )?;
    counter(
        e,
        "feed_subscriptions",
        "Live feed subscriptions opened since start",
        f.subscriptions,
    )?;
    counter(
        e,
        "feed_clients_cut_off",
        "Live feed clients disconnected for falling behind",
        f.cut_off,
    )?;
    counter(
        e,
        "feed_events",
        "Changes streamed through the live feed",
        f.events,
    )?;
    gauge(
        e,
        "feed_retained_events",
        "Changes kept for since= resumes",
        f.retained as u64,
    )?;
    counter(
        e,
        "feed_skipped_revisions",
        "Revisions taken but never applied, skipped by the feed",
        f.skipped_revisions,
    )
}

/// Webhook subscriptions and deliveries, from the delivery pool.
fn encode_webhook_metrics(db: &Db, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let d = db.delivery_stats();
    gauge(
        e,
        "webhook_subscriptions",
        "Webhook subscriptions now",
        db.subscriptions().len() as u64,
    )?;
    gauge(
        e,
        "webhook_queue_depth",
        "Hints (new revisions) waiting between the write path and the delivery pool",
        db.delivery_queue_depth() as u64,
    )?;
    gauge(
        e,
        "webhook_in_flight",
        "Events not yet delivered or given up on, over every subscription (each subscription's pending)",
        db.delivery_in_flight(),
    )?;
    counter(
        e,
        "webhook_delivered",
        "Events acknowledged with a 2xx",
        d.delivered.load(Relaxed),
    )?;
    counter(
        e,
        "webhook_retried",
        "Delivery attempts that failed and were retried",
        d.retried.load(Relaxed),
    )?;
    counter(
        e,
        "webhook_failed",
        "Events given up on after the last attempt",
        d.failed.load(Relaxed),
    )?;
    counter(
        e,
        "webhook_dropped",
        "Events lost: dropped with the log (beyond --event-retention-bytes) before their subscription had them",
        d.dropped.load(Relaxed),
    )?;
    counter(
        e,
        "webhook_gone",
        "Subscriptions removed because the receiver answered 410 Gone",
        d.gone.load(Relaxed),
    )?;
    counter(
        e,
        "webhook_delivery_latency_seconds",
        "Sum of enqueue-to-2xx times of delivered events (divide by webhook_delivered_total)",
        micros_to_secs(d.latency_micros.load(Relaxed)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_indexes_match_their_labels() {
        for (index, label) in METHOD_LABELS.iter().enumerate() {
            let method = Method::from_bytes(label.as_bytes()).expect("a method name");
            assert_eq!(METHOD_LABELS[method_index(&method)], *label);
            assert_eq!(method_index(&method), index);
        }
        let unusual = Method::from_bytes(b"PURGE").expect("a method name");
        assert_eq!(METHOD_LABELS[method_index(&unusual)], "other");
    }

    #[test]
    fn requests_find_their_route_template() {
        let metrics = RequestMetrics::default();
        let route_of = |path: &str| {
            let slot = metrics.slot(&Method::GET, path);
            metrics.templates[slot / METHOD_LABELS.len()]
        };
        assert_eq!(route_of("/kv/a%2Fb"), "/kv/{key}");
        assert_eq!(route_of("/kv/count"), "/kv/count");
        assert_eq!(route_of("/kv/a/meta"), "/kv/{key}/meta");
        assert_eq!(route_of("/kv"), "/kv");
        assert_eq!(route_of("/kv/"), "unmatched");
        assert_eq!(route_of("/nowhere"), "unmatched");
    }
}
