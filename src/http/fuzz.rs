//! Fuzzing entry points for the request parsers of this module (see
//! `fuzz/` and [`crate::fuzz`]): each takes arbitrary bytes, must never
//! panic, and asserts what the rest of the server relies on.

use axum::body::Bytes;
use axum::http::Uri;

use super::{kv, pubsub};
use crate::value;

/// Key percent-decoding and JSON validation, as `PUT /kv/{key}` runs them:
/// the first line of `data` is the raw path segment, the rest the body.
///
/// # Panics
///
/// When a decoded key is not what the path said, or a value that passed
/// validation cannot be read back by serde_json (recovery, export and
/// webhooks depend on that).
pub fn key_and_value(data: &[u8]) {
    let (segment, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut path = b"/kv/".to_vec();
    path.extend_from_slice(segment);
    if let Ok(uri) = Uri::try_from(path) {
        for suffix in ["", "/meta", "/exists"] {
            if let Ok(key) = kv::key_of(&uri, suffix) {
                let raw = &uri.path()["/kv/".len()..uri.path().len() - suffix.len()];
                assert!(key.len() <= raw.len(), "decoding never grows a key");
            }
        }
    }
    if value::validate(body).is_ok() {
        let reread: Result<serde::de::IgnoredAny, _> = serde_json::from_slice(body);
        assert!(
            reread.is_ok(),
            "validated value is unreadable by serde_json: {reread:?}"
        );
    }
}

/// The `POST /pubsub/subscribe` and `/unsubscribe` body parsers, with the
/// callback URL check the database applies after them.
///
/// # Panics
///
/// Never on purpose; the parsers must refuse bad input with an error.
pub fn subscription_body(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    if let Ok((_, url, _)) = pubsub::subscribe_request(body.clone()) {
        let _ = crate::db::check_callback_url(&url);
    }
    let _ = pubsub::unsubscribe_request(body);
}
