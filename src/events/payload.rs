//! The JSON payload of a change event, shared by webhooks and the live
//! feed: `{"id","key","event","old_value","new_value","version","timestamp"}`
//! with the stored documents embedded as JSON, byte for byte.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use crate::store::ChangeEvent;

/// Encodes `event` as its payload. The stored values are valid JSON, so
/// they are copied in verbatim instead of being parsed and re-encoded.
pub fn encode_payload(event: &ChangeEvent) -> Bytes {
    let value_len = |v: &Option<Bytes>| v.as_ref().map_or(4, Bytes::len);
    let mut out = Vec::with_capacity(
        128 + event.key.len() + value_len(&event.old_value) + value_len(&event.new_value),
    );
    out.extend_from_slice(b"{\"id\":\"evt_");
    out.extend_from_slice(itoa::Buffer::new().format(event.version).as_bytes());
    out.extend_from_slice(b"\",\"key\":");
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &*event.key);
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(event.kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"old_value\":");
    out.extend_from_slice(event.old_value.as_deref().unwrap_or(b"null"));
    out.extend_from_slice(b",\"new_value\":");
    out.extend_from_slice(event.new_value.as_deref().unwrap_or(b"null"));
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(itoa::Buffer::new().format(event.version).as_bytes());
    out.extend_from_slice(b",\"timestamp\":\"");
    let at = UNIX_EPOCH + Duration::from_millis(event.timestamp_ms);
    out.extend_from_slice(humantime::format_rfc3339_millis(at).to_string().as_bytes());
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChangeKind;

    #[test]
    fn payload_embeds_values_as_json() {
        let event = ChangeEvent {
            key: Box::from("demo \"value\""),
            kind: ChangeKind::Update,
            old_value: Some(Bytes::from_static(b"{\"stage\": 2}")),
            new_value: Some(Bytes::from_static(b" [3] ")),
            version: 42,
            timestamp_ms: 1_735_732_800_250,
        };
        let payload = encode_payload(&event);
        let parsed: serde_json::Value = serde_json::from_slice(&payload).expect("valid JSON");
        assert_eq!(
            parsed,
            serde_json::json!({
                "id": "evt_42", "key": "demo \"value\"", "event": "update",
                "old_value": {"stage": 2}, "new_value": [3], "version": 42,
                "timestamp": "2025-01-01T12:00:00.250Z"
            })
        );
        let deleted = ChangeEvent {
            kind: ChangeKind::Delete,
            new_value: None,
            ..event
        };
        let parsed: serde_json::Value =
            serde_json::from_slice(&encode_payload(&deleted)).expect("valid JSON");
        assert_eq!(parsed["new_value"], serde_json::Value::Null);
        assert_eq!(parsed["event"], "delete");
    }
}
