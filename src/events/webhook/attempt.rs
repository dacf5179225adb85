//! One delivery attempt: the signed POST of an event to a subscriber, and
//! what its answer means (acknowledged, gone, or retry, perhaps after a
//! `Retry-After`). Knows HTTP, not ordering or schedules.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use sha2::Sha256;

use super::super::feed::FeedEvent;
use super::super::subscriptions::ActiveSubscription;

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

/// POSTs `event` to the subscriber once.
pub(super) async fn attempt(
    client: &reqwest::Client,
    sub: &ActiveSubscription,
    event: &FeedEvent,
) -> Outcome {
    let id = webhook_id(event);
    let body = event.payload().clone();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string();
    let mut request = client
        .post(&sub.def.callback_url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", &timestamp);
    if let Some(key) = &sub.signing_key {
        request = request.header("webhook-signature", sign(key, &id, &timestamp, &body));
    }
    match request.body(body).send().await {
        Ok(response) => {
            let status = response.status();
            if status.is_success() {
                Outcome::Acknowledged
            } else if status == StatusCode::GONE {
                Outcome::Gone
            } else {
                let retry_after = (status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE)
                    .then(|| response.headers().get("retry-after"))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
                Outcome::Retry {
                    why: format!("HTTP {status}"),
                    retry_after,
                }
            }
        }
        Err(e) => Outcome::Retry {
            why: error_text(&e),
            retry_after: None,
        },
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
