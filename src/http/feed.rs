//! Handlers of the live feed (SPEC §6): `GET /events` as Server-Sent Events
//! and `GET /ws` as WebSocket text messages, both over a
//! [`Subscription`] of the database's feed. They own the wire formats only:
//! ordering, replay and cutting off slow clients live in `events::feed`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use crate::events::feed::{FeedEvent, FeedItem, Reset, Subscription, TryNext};

/// An idle SSE stream gets a `: keepalive` comment, and an idle WebSocket a
/// ping, this often, so proxies keep it open and dead peers are noticed.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// SSE frames are gathered into one body chunk up to about this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// A WebSocket send that makes no progress for this long ends the
/// connection: the peer stopped reading.
const WS_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// WebSocket close code for a client cut off for falling behind (1008,
/// policy violation).
const WS_CLOSE_LAGGED: u16 = 1008;

/// WebSocket close code when the server shuts down (1001, going away).
const WS_CLOSE_GOING_AWAY: u16 = 1001;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedQuery {
    #[serde(default)]
    prefix: String,
    since: Option<u64>,
}

fn query(q: Result<Query<FeedQuery>, QueryRejection>) -> Result<FeedQuery, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {}", e.body_text())))
}

/// `since`, or else the `Last-Event-ID` an `EventSource` sends when it
/// reconnects.
fn since(q: &FeedQuery, headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if q.since.is_some() {
        return Ok(q.since);
    }
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "Last-Event-ID must be a revision number; got {value:?}"
            ))
        })
}

/// `GET /events?prefix=p&since=REV`.
pub(super) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let since = since(&q, &headers)?;
    let sub = state.db.feed().subscribe(&q.prefix, since);
    let stream = futures_util::stream::unfold(Some(sub), |sub| async move {
        let mut sub = sub?;
        let (chunk, more) = next_chunk(&mut sub).await;
        let sub = more.then_some(sub);
        chunk.map(|c| (Ok::<_, std::convert::Infallible>(c), sub))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-like proxies not to hold frames back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The next body chunk: every frame ready now (up to [`CHUNK_BYTES`]), or
/// a keepalive comment after [`HEARTBEAT`] of silence. The flag says
/// whether the stream goes on after it.
async fn next_chunk(sub: &mut Subscription) -> (Option<Bytes>, bool) {
    let mut buf = BytesMut::new();
    loop {
        match sub.try_next() {
            TryNext::Item(item) => {
                write_sse(&mut buf, &item);
                if buf.len() >= CHUNK_BYTES {
                    return (Some(buf.freeze()), true);
                }
            }
            TryNext::Ended => return ((!buf.is_empty()).then(|| buf.freeze()), false),
            TryNext::Empty if !buf.is_empty() => return (Some(buf.freeze()), true),
            TryNext::Empty => {
                if tokio::time::timeout(HEARTBEAT, sub.wait()).await.is_err() {
                    return (Some(Bytes::from_static(b": keepalive\n\n")), true);
                }
            }
        }
    }
}

/// Appends one SSE frame: `id`, `event` and `data` for a change, `event:
/// reset` with a JSON reason for a reset.
fn write_sse(buf: &mut BytesMut, item: &FeedItem) {
    match item {
        FeedItem::Event(event) => {
            buf.put_slice(b"id: ");
            buf.put_slice(itoa::Buffer::new().format(event.version()).as_bytes());
            buf.put_slice(b"\nevent: ");
            buf.put_slice(event.change.kind.as_str().as_bytes());
            buf.put_slice(b"\n");
            write_data(buf, event.payload());
        }
        FeedItem::Reset(reset) => {
            buf.put_slice(b"event: reset\n");
            write_data(buf, &reset_json(reset));
        }
    }
    buf.put_slice(b"\n");
}

/// `data:` lines. A stored value may hold line breaks (JSON whitespace,
/// never inside a string), and SSE ends a line at any of CR, LF and CRLF,
/// so each line goes on a `data:` line of its own; the client joins them
/// with LF, which is still the same JSON.
fn write_data(buf: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        buf.put_slice(b"data: ");
        buf.put_slice(&rest[..end]);
        buf.put_slice(b"\n");
        if end == rest.len() {
            return;
        }
        let skip = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// The JSON of a reset: `{"event":"reset","reason",...,"message"}`.
fn reset_json(reset: &Reset) -> Vec<u8> {
    let mut doc = serde_json::json!({
        "event": "reset",
        "reason": reset.reason(),
        "message": reset.message(),
    });
    match *reset {
        Reset::NotRetained {
            since,
            oldest_retained,
        } => {
            doc["since"] = since.into();
            doc["oldest_retained"] = oldest_retained.into();
        }
        Reset::Ahead { since, revision } => {
            doc["since"] = since.into();
            doc["revision"] = revision.into();
        }
        Reset::Lagged { buffer } => doc["buffer"] = buffer.into(),
    }
    doc.to_string().into_bytes()
}

/// `GET /ws?prefix=p&since=REV`.
pub(super) async fn ws(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FeedQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let since = since(&q, &headers)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::InvalidRequest(format!("not a WebSocket handshake: {}", e.body_text()))
    })?;
    // Subscribed before the handshake answer, so a client that got its
    // 101 sees every change made after that.
    let sub = state.db.feed().subscribe(&q.prefix, since);
    Ok(upgrade.on_upgrade(move |socket| stream_ws(socket, sub)))
}

/// Sends the subscription's items as text messages until it ends, the
/// client closes, or a send makes no progress for [`WS_SEND_TIMEOUT`].
async fn stream_ws(mut socket: WebSocket, mut sub: Subscription) {
    let close = loop {
        let item = tokio::select! {
            incoming = socket.recv() => match incoming {
                // Pings are answered by the socket itself; text from the
                // client has no meaning here.
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            next = tokio::time::timeout(HEARTBEAT, sub.next()) => match next {
                Ok(Some(item)) => item,
                Ok(None) => break (WS_CLOSE_GOING_AWAY, "the server is shutting down"),
                Err(_) => {
                    if !send(&mut socket, Message::Ping(Bytes::new())).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let text = match &item {
            FeedItem::Event(event) => text(event),
            FeedItem::Reset(reset) => {
                Utf8Bytes::try_from(reset_json(reset)).unwrap_or_else(|_| Utf8Bytes::from(""))
            }
        };
        if !send(&mut socket, Message::Text(text)).await {
            return;
        }
        if let FeedItem::Reset(Reset::Lagged { .. }) = item {
            break (WS_CLOSE_LAGGED, "lagged: the client fell too far behind");
        }
    };
    let (code, reason) = close;
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    send(&mut socket, Message::Close(Some(frame))).await;
}

fn text(event: &FeedEvent) -> Utf8Bytes {
    // Payloads are built from UTF-8 keys and validated JSON, so this
    // cannot fail; an empty message would be the sign of a bug.
    Utf8Bytes::try_from(event.payload().clone()).unwrap_or_else(|_| Utf8Bytes::from(""))
}

/// Sends one message; false when the connection is over.
async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(data: &str, expected: &str) {
        let mut buf = BytesMut::new();
        write_data(&mut buf, data.as_bytes());
        assert_eq!(std::str::from_utf8(&buf).expect("utf-8"), expected);
    }

    #[test]
    fn data_lines() {
        check(r#"{"a":1}"#, "data: {\"a\":1}\n");
        check("{\n\"a\": 1\n}", "data: {\ndata: \"a\": 1\ndata: }\n");
        check("{\r\n\"a\":\r1}", "data: {\ndata: \"a\":\ndata: 1}\n");
        check("1\n", "data: 1\ndata: \n");
        check("", "data: \n");
    }

    #[test]
    fn reset_frames_are_json() {
        let mut buf = BytesMut::new();
        write_sse(
            &mut buf,
            &FeedItem::Reset(Reset::NotRetained {
                since: 3,
                oldest_retained: 10,
            }),
        );
        let text = std::str::from_utf8(&buf).expect("utf-8");
        let data = text
            .strip_prefix("event: reset\ndata: ")
            .and_then(|t| t.strip_suffix("\n\n"))
            .expect("one reset frame");
        let doc: serde_json::Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(doc["reason"], "not_retained");
        assert_eq!(doc["oldest_retained"], 10);
    }
}
