//! One delivery attempt: the signed POST of an event to a subscriber, and
//! what its answer means (acknowledged, gone, or retry, perhaps after a
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
use super::http1::{Conn, Endpoint, Headers, post};

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
}

/// The `webhook-id` of an event: the same for every attempt and after a
/// restart, since it is derived from the revision alone.
pub(super) fn webhook_id(event: &FeedEvent) -> String {
    format!("evt_{}", event.version())
}

/// How an attempt reaches the subscriber: the pool's own HTTP/1.1 client
/// for plain `http://` callbacks, reqwest (TLS, credentials) otherwise.
pub(super) enum Transport {
    /// [`http1`], with the connection to use if one is idle.
    Plain(Arc<Endpoint>, Option<Conn>),
    /// The pool's reqwest client.
    Reqwest(reqwest::Client),
}

/// POSTs `event` to the subscriber once, within `timeout`. Returns the
/// outcome and, for [`Transport::Plain`], the connection if it may carry
/// the next attempt.
pub(super) async fn attempt(
    transport: Transport,
    timeout: Duration,
    sub: &ActiveSubscription,
    event: &FeedEvent,
) -> (Outcome, Option<Conn>) {
    let id = webhook_id(event);
    let body = event.payload();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut stamp = itoa::Buffer::new();
    let stamp = stamp.format(timestamp);
    let signature = sub
        .signing_key
        .as_ref()
        .map(|key| sign(key, &id, stamp, body));
    match transport {
        Transport::Plain(endpoint, conn) => {
            let headers = Headers {
                id: &id,
                timestamp,
                signature: signature.as_deref(),
            };
            match tokio::time::timeout(timeout, post(&endpoint, conn, &headers, body)).await {
                Ok((Ok(answer), conn)) => (
                    outcome(
                        StatusCode::from_u16(answer.status).ok(),
                        answer.status,
                        answer.retry_after,
                    ),
                    conn,
                ),
                Ok((Err(why), _)) => (
                    Outcome::Retry {
                        why,
                        retry_after: None,
                    },
                    None,
                ),
                Err(_) => (
                    Outcome::Retry {
                        why: format!("no answer within {timeout:?}"),
                        retry_after: None,
                    },
                    None,
                ),
            }
        }
        Transport::Reqwest(client) => {
            let mut request = client
                .post(&sub.def.callback_url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", stamp);
            if let Some(signature) = signature {
                request = request.header("webhook-signature", signature);
            }
            let sent = match request.body(body.clone()).send().await {
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
            };
            (sent, None)
        }
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
