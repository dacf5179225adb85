//! The webhook delivery pool: a bounded crossbeam queue filled on the write
//! path, drained by a dispatcher thread into per-subscription lanes that
//! run on the pool's own tokio runtime (never the HTTP workers) and share
//! one keep-alive reqwest client.
//!
//! Ordering: events of one key always go to the same lane of a subscriber
//! (lane = hash(key) % LANES) and a lane delivers one event at a time,
//! retries included, so a subscriber sees each key's events in version
//! order. Lanes of different subscribers never wait for each other, so a
//! dead or slow subscriber delays only itself.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;
use tokio::sync::mpsc;

use super::payload::encode_payload;
use super::subscriptions::ActiveSubscription;
use crate::store::ChangeEvent;

/// Parallel ordered lanes per subscriber.
const LANES: usize = 8;
/// Events waiting per lane before new ones are dropped (a dead subscriber
/// must not grow memory without bound).
const LANE_CAPACITY: usize = 4096;

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts before an event is given up on.
    pub max_attempts: u32,
    /// Capacity of the queue between the write path and the dispatcher.
    pub queue_capacity: usize,
    /// First retry delay; doubles per attempt.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(5),
            max_attempts: 8,
            queue_capacity: 65_536,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Counters of the pool, for `/metrics` and `/system/stats`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Events acknowledged with a 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed and were retried.
    pub retried: AtomicU64,
    /// Events given up on after the last attempt.
    pub failed: AtomicU64,
    /// Events dropped because a queue was full or the subscription went away.
    pub dropped: AtomicU64,
    /// Events accepted into the pool and not yet finished.
    pub in_flight: AtomicU64,
    /// Sum of delivery latencies (enqueue to 2xx), microseconds.
    pub latency_micros: AtomicU64,
    /// Subscriptions removed because they answered 410 Gone.
    pub gone: AtomicU64,
}

/// One event for some subscribers, as queued on the write path.
struct Fanout {
    event: Arc<ChangeEvent>,
    subs: Vec<Arc<ActiveSubscription>>,
    queued_at: Instant,
}

/// One event for one subscriber lane.
struct Job {
    id: Arc<str>,
    key: Box<str>,
    body: Bytes,
    queued_at: Instant,
}

/// Called with a subscription id when its receiver answers 410 Gone.
pub type OnGone = Arc<dyn Fn(&str) + Send + Sync>;

/// Handle to the pool.
pub struct DeliveryPool {
    tx: Sender<Fanout>,
    stats: Arc<DeliveryStats>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl DeliveryPool {
    /// Starts the dispatcher thread and the delivery runtime.
    ///
    /// # Errors
    ///
    /// A thread or the HTTP client cannot be created.
    pub fn start(config: DeliveryConfig, on_gone: OnGone) -> Result<DeliveryPool, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dododb-webhook")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the webhook runtime: {e}"))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .no_proxy()
            .user_agent(concat!("DodoDB-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (tx, rx) = bounded(config.queue_capacity);
        let stats = Arc::new(DeliveryStats::default());
        let dispatcher = Dispatcher {
            rx,
            handle: runtime.handle().clone(),
            lanes: HashMap::new(),
            shared: Arc::new(LaneShared {
                client,
                config,
                stats: Arc::clone(&stats),
                on_gone,
            }),
            hasher: foldhash::fast::FixedState::default(),
        };
        let thread = std::thread::Builder::new()
            .name("dododb-webhook-dispatch".into())
            .spawn(move || dispatcher.run())
            .map_err(|e| format!("cannot start the webhook dispatcher: {e}"))?;
        Ok(DeliveryPool {
            tx,
            stats,
            dispatcher: Mutex::new(Some(thread)),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Queues `event` for `subs` without waiting. A full queue drops it
    /// (counted and logged); the write that caused it still succeeds.
    pub fn enqueue(&self, event: Arc<ChangeEvent>, subs: Vec<Arc<ActiveSubscription>>) {
        let n = subs.len() as u64;
        let fanout = Fanout {
            event,
            subs,
            queued_at: Instant::now(),
        };
        self.stats.in_flight.fetch_add(n, Ordering::Relaxed);
        if let Err(TrySendError::Full(f) | TrySendError::Disconnected(f)) = self.tx.try_send(fanout)
        {
            self.stats.in_flight.fetch_sub(n, Ordering::Relaxed);
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::warn!(key = %f.event.key, version = f.event.version, subscribers = n, "webhook queue full: event dropped");
        }
    }

    /// Events waiting in the queue between the write path and the lanes.
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// The pool's counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Stops accepting events and shuts the runtime down (pending retries
    /// are abandoned; delivery is at least once, not exactly once).
    pub fn stop(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
        let thread = self
            .dispatcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(thread);
    }
}

impl Drop for DeliveryPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every lane task shares.
struct LaneShared {
    client: reqwest::Client,
    config: DeliveryConfig,
    stats: Arc<DeliveryStats>,
    on_gone: OnGone,
}

struct Dispatcher {
    rx: Receiver<Fanout>,
    handle: tokio::runtime::Handle,
    /// Lanes per subscription id.
    lanes: HashMap<String, Vec<mpsc::Sender<Job>>>,
    shared: Arc<LaneShared>,
    hasher: foldhash::fast::FixedState,
}

impl Dispatcher {
    fn run(mut self) {
        while let Ok(fanout) = self.rx.recv() {
            let body = encode_payload(&fanout.event);
            let id: Arc<str> = Arc::from(format!("evt_{}", fanout.event.version));
            let lane = (self.hasher.hash_one(&fanout.event.key) as usize) % LANES;
            for sub in fanout.subs {
                let job = Job {
                    id: Arc::clone(&id),
                    key: fanout.event.key.clone(),
                    body: body.clone(),
                    queued_at: fanout.queued_at,
                };
                self.route(sub, lane, job);
            }
            self.lanes.retain(|_, lanes| !lanes[0].is_closed());
        }
    }

    fn route(&mut self, sub: Arc<ActiveSubscription>, lane: usize, job: Job) {
        let stats = &self.shared.stats;
        if sub.is_removed() {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let lanes = self.lanes.entry(sub.def.id.clone()).or_insert_with(|| {
            (0..LANES)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(LANE_CAPACITY);
                    self.handle
                        .spawn(run_lane(Arc::clone(&sub), rx, Arc::clone(&self.shared)));
                    tx
                })
                .collect()
        });
        if let Err(e) = lanes[lane].try_send(job) {
            stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            tracing::warn!(subscription = %sub.def.id, key = %job.key, event = %job.id, "subscriber backlog full: event dropped");
        }
    }
}

/// Delivers a lane's events one at a time, in order, until the
/// subscription is removed.
async fn run_lane(
    sub: Arc<ActiveSubscription>,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<LaneShared>,
) {
    while let Some(job) = rx.recv().await {
        let stats = &shared.stats;
        match deliver(&sub, &job, &shared).await {
            Delivery::Acknowledged => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.latency_micros.fetch_add(
                    u64::try_from(job.queued_at.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
            }
            Delivery::GaveUp(why) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subscription = %sub.def.id, url = %sub.def.callback_url, event = %job.id, key = %job.key, "gave up on a webhook event: {why}");
            }
            Delivery::Gone => {
                stats.gone.fetch_add(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(subscription = %sub.def.id, url = %sub.def.callback_url, "receiver answered 410 Gone: removing the subscription");
                (shared.on_gone)(&sub.def.id);
            }
            Delivery::Unsubscribed => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if sub.is_removed() {
            // Count what is still queued for a subscription that is gone.
            rx.close();
            while let Ok(_job) = rx.try_recv() {
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    }
}

enum Delivery {
    Acknowledged,
    GaveUp(String),
    Gone,
    Unsubscribed,
}

async fn deliver(sub: &ActiveSubscription, job: &Job, shared: &LaneShared) -> Delivery {
    let config = &shared.config;
    let mut attempt = 1;
    loop {
        if sub.is_removed() {
            return Delivery::Unsubscribed;
        }
        let (outcome, retry_after) = attempt_once(sub, job, &shared.client).await;
        match outcome {
            Ok(()) => return Delivery::Acknowledged,
            Err(Failure::Gone) => return Delivery::Gone,
            Err(Failure::Retryable(why)) if attempt >= config.max_attempts => {
                return Delivery::GaveUp(format!("{attempt} attempts, last: {why}"));
            }
            Err(Failure::Retryable(why)) => {
                shared.stats.retried.fetch_add(1, Ordering::Relaxed);
                let pause = retry_after.unwrap_or_else(|| backoff(config, attempt));
                tracing::debug!(subscription = %sub.def.id, event = %job.id, attempt, ?pause, "webhook attempt failed: {why}");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
        }
    }
}

enum Failure {
    Retryable(String),
    Gone,
}

/// The delay before attempt `attempt + 1`: base × 2^(attempt-1), capped,
/// with ±20% jitter so many failing events do not retry in lockstep.
pub fn backoff(config: &DeliveryConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(config.backoff_max);
    capped.mul_f64(0.8 + fastrand::f64() * 0.4)
}

async fn attempt_once(
    sub: &ActiveSubscription,
    job: &Job,
    client: &reqwest::Client,
) -> (Result<(), Failure>, Option<Duration>) {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let mut request = client
        .post(&sub.def.callback_url)
        .header("content-type", "application/json")
        .header("webhook-id", &*job.id)
        .header("webhook-timestamp", &timestamp);
    if let Some(key) = &sub.signing_key {
        request = request.header(
            "webhook-signature",
            sign(key, &job.id, &timestamp, &job.body),
        );
    }
    match request.body(job.body.clone()).send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                (Ok(()), None)
            } else if status == StatusCode::GONE {
                (Err(Failure::Gone), None)
            } else {
                let retry_after = if status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE
                {
                    response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|secs| Duration::from_secs(secs.min(3600)))
                } else {
                    None
                };
                (
                    Err(Failure::Retryable(format!("HTTP {status}"))),
                    retry_after,
                )
            }
        }
        Err(e) => (Err(Failure::Retryable(e.to_string())), None),
    }
}

/// The Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")).
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let key =
            super::super::subscriptions::signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let config = DeliveryConfig::default();
        for (attempt, nominal_ms) in [
            (1u32, 500u64),
            (2, 1000),
            (3, 2000),
            (4, 4000),
            (10, 60_000),
            (40, 60_000),
        ] {
            let got = backoff(&config, attempt).as_millis() as u64;
            assert!(
                got >= nominal_ms * 8 / 10 && got <= nominal_ms * 12 / 10,
                "attempt {attempt}: {got} ms"
            );
        }
    }
}
