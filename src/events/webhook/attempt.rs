//! Delivery attempts: the signed POSTs of events to a subscriber (several
//! pipelined on one connection, or one through reqwest), and what each
//! answer means (acknowledged, gone, or retry, perhaps after a
//! `Retry-After`). Knows HTTP, not ordering or schedules.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;

use super::super::feed::FeedEvent;
use super::super::subscriptions::ActiveSubscription;
use super::http1::{Conn, Endpoint, Headers, pipeline, write_request};

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What one attempt came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// A 2xx.
    Acknowledged,
    /// 410 Gone: the subscription is to be removed.
    Gone,
    /// Anything else: try again later (`retry_after` when the receiver said
    /// when, with 429 or 503).
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    /// Pipelined after a request that was answered, on a connection that
    /// then ended (or stalled) before this one's answer: it goes out again
    /// and no attempt is counted (the receiver may have had it: at least
    /// once).
    Unanswered,
}

/// The `webhook-id` of an event: the same for every attempt and after a
/// restart, since it is derived from the revision alone.
fn write_webhook_id(id: &mut String, event: &FeedEvent) {
    id.clear();
    id.push_str("evt_");
    id.push_str(itoa::Buffer::new().format(event.version()));
}

/// What a pipelined attempt came to, per event (the HTTP side of it is
/// [`super::http1::Pipelined`]).
pub(super) struct PipelineOutcomes {
    /// One outcome per event, in order.
    pub(super) outcomes: Vec<Outcome>,
    /// The receiver answered some of the requests and then nothing within
    /// the timeout: it may not read pipelined requests.
    pub(super) stalled: bool,
    /// The connection, if it may carry the next attempts.
    pub(super) conn: Option<Conn>,
}

/// POSTs `events` (each of another key) to the subscriber's plain
/// `http://` endpoint, pipelined on one connection (`conn` if one is idle,
/// else a new one), each answer within `timeout`. If no answer came at
/// all, the first event is charged the failure and the others are
/// [`Outcome::Unanswered`]; after an answer, every event left without one
/// is.
pub(super) async fn attempt_pipelined(
    endpoint: &Endpoint,
    conn: Option<Conn>,
    timeout: Duration,
    sub: &ActiveSubscription,
    events: &[Arc<FeedEvent>],
) -> PipelineOutcomes {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut stamp = itoa::Buffer::new();
    let stamp = stamp.format(timestamp);
    let mut requests = Vec::with_capacity(events.len() * 512);
    let mut id = String::with_capacity(24);
    for event in events {
        write_webhook_id(&mut id, event);
        let body = event.payload();
        let signature = sub
            .signing_key
            .as_ref()
            .map(|key| sign(key, &id, stamp, body));
        let headers = Headers {
            id: &id,
            timestamp,
            signature: signature.as_deref(),
        };
        write_request(&mut requests, endpoint, &headers, body);
    }
    let done = pipeline(endpoint, conn, &requests, events.len(), timeout).await;
    let answered = done.answers.len();
    let mut outcomes: Vec<Outcome> = done
        .answers
        .iter()
        .map(|a| outcome(StatusCode::from_u16(a.status).ok(), a.status, a.retry_after))
        .collect();
    if answered < events.len() {
        if answered == 0 {
            outcomes.push(Outcome::Retry {
                why: done.error.unwrap_or_else(|| "no answer".to_owned()),
                retry_after: None,
            });
        }
        outcomes.resize_with(events.len(), || Outcome::Unanswered);
    }
    PipelineOutcomes {
        outcomes,
        stalled: done.stalled,
        conn: done.conn,
    }
}

/// POSTs `event` to the subscriber once through reqwest (`https://`,
/// credentials in the URL); the client's own timeout applies.
pub(super) async fn attempt_reqwest(
    client: &reqwest::Client,
    sub: &ActiveSubscription,
    event: &FeedEvent,
) -> Outcome {
    let mut id = String::new();
    write_webhook_id(&mut id, event);
    let body = event.payload();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut stamp = itoa::Buffer::new();
    let stamp = stamp.format(timestamp);
    let mut request = client
        .post(&sub.def.callback_url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", stamp);
    if let Some(key) = &sub.signing_key {
        request = request.header("webhook-signature", sign(key, &id, stamp, body));
    }
    match request.body(body.clone()).send().await {
        Ok(response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            outcome(Some(status), status.as_u16(), retry_after)
        }
        Err(e) => Outcome::Retry {
            why: error_text(&e),
            retry_after: None,
        },
    }
}

/// What an answer with this status means; `Retry-After` (seconds) counts
/// with 429 and 503 only.
fn outcome(status: Option<StatusCode>, code: u16, retry_after: Option<u64>) -> Outcome {
    match status {
        Some(status) if status.is_success() => Outcome::Acknowledged,
        Some(StatusCode::GONE) => Outcome::Gone,
        _ => {
            let honoured = status == Some(StatusCode::TOO_MANY_REQUESTS)
                || status == Some(StatusCode::SERVICE_UNAVAILABLE);
            Outcome::Retry {
                why: status.map_or_else(|| format!("HTTP {code}"), |s| format!("HTTP {s}")),
                retry_after: retry_after
                    .filter(|_| honoured)
                    .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER)),
            }
        }
    }
}

/// A reqwest error with its causes, which say what really happened
/// (connection refused, timed out).
fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
        let key = super::super::super::subscriptions::signing_key(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
