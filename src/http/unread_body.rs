//! Request bodies the app answered without reading (SPEC §3). An early
//! answer (401, 404, 405, 413, a shed 503) leaves the rest of the client's
//! body on the connection. Left alone, hyper then closes the connection
//! after the answer without saying so, and a pooled client that already
//! sent its next request on it finds it gone.
//!
//! So the body the app drops unread comes back here: a rest of known
//! length up to [`MAX_DRAIN_BYTES`] is read and thrown away after the
//! answer went out, within the header read timeout, and the connection
//! stays usable. Any other rest (unknown length, too large, or one the
//! client will only send when asked, `Expect: 100-continue`) is not read,
//! and the answer says `Connection: close`. Go's net/http draws the same
//! line (256 KiB, `maxPostHandlerReadBytes`).
//!
//! A request without a body, like every GET, passes through untouched.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};

/// The largest unread rest that is read and discarded to keep the
/// connection; a larger one costs more than a new connection does.
const MAX_DRAIN_BYTES: u64 = 256 * 1024;

/// What to do with a rest the app did not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Read and discard it after the answer; keep the connection.
    Drain,
    /// Leave it; the answer says `Connection: close`.
    Close,
}

/// `remaining`: the bytes still to come, when the length is known.
/// `awaits_continue`: the client sent `Expect: 100-continue` and was never
/// asked for the body, so it may never send it.
fn verdict(remaining: Option<u64>, awaits_continue: bool) -> Verdict {
    match remaining {
        Some(n) if n <= MAX_DRAIN_BYTES && !awaits_continue => Verdict::Drain,
        _ => Verdict::Close,
    }
}

/// A body the app dropped before its end.
struct Unread {
    body: Incoming,
    /// Whether the app asked for any of it (which sends `100 Continue`).
    polled: bool,
}

/// Where a dropped, unfinished body is handed back.
type Slot = Arc<Mutex<Option<Unread>>>;

/// Gives `request` to the app with its body watched; the [`Watch`] settles
/// the answer once the app has made it. `None` for a request without a
/// body, which costs nothing more.
pub(super) fn watch(request: Request<Incoming>) -> (Request<Body>, Option<Watch>) {
    if request.body().is_end_stream() {
        return (request.map(Body::new), None);
    }
    let expects_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let slot = Slot::default();
    let watch = Watch {
        slot: Arc::clone(&slot),
        expects_continue,
    };
    let request = request.map(|body| {
        Body::new(Watched {
            body: Some(body),
            slot,
            finished: false,
            polled: false,
        })
    });
    (request, Some(watch))
}

/// The app's side of a watched body.
struct Watched {
    body: Option<Incoming>,
    slot: Slot,
    finished: bool,
    polled: bool,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        this.polled = true;
        let frame = Pin::new(body).poll_frame(cx);
        // The end, or a broken body (the connection is gone then anyway).
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.finished = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.is_end_stream() {
            return;
        }
        if let Some(body) = self.body.take() {
            let unread = Unread {
                body,
                polled: self.polled,
            };
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(unread);
        }
    }
}

/// The server's side of a watched body.
pub(super) struct Watch {
    slot: Slot,
    expects_continue: bool,
}

impl Watch {
    /// Once the app answered: drains what it left unread (in a task of its
    /// own, bounded by `drain_timeout`), or marks `response` as the last
    /// on its connection.
    /// Returns whether the connection closes with the body unread.
    pub(super) fn settle(self, response: &mut Response<Body>, drain_timeout: Duration) -> bool {
        let unread = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Read to its end, or still held by the app (then dropping it later
        // lets hyper close the connection, as before).
        let Some(Unread { body, polled }) = unread else {
            return false;
        };
        let remaining = body.size_hint().exact();
        match verdict(remaining, self.expects_continue && !polled) {
            Verdict::Drain => {
                tokio::spawn(drain(body, drain_timeout));
                false
            }
            Verdict::Close => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                // Dropped unread: hyper stops reading and closes after the
                // answer, and the connection lingers (`linger`).
                drop(body);
                true
            }
        }
    }
}

/// Reads `body` to its end and discards it; a client that stalls is cut
/// off after `timeout` (dropping the body closes the connection).
async fn drain(mut body: Incoming, timeout: Duration) {
    let to_end = std::future::poll_fn(|cx| {
        loop {
            match std::task::ready!(Pin::new(&mut body).poll_frame(cx)) {
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return Poll::Ready(()),
            }
        }
    });
    if tokio::time::timeout(timeout, to_end).await.is_err() {
        tracing::debug!("a client did not send the rest of an unread body in time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(remaining: Option<u64>, awaits_continue: bool, expected: Verdict) {
        assert_eq!(
            verdict(remaining, awaits_continue),
            expected,
            "{remaining:?} {awaits_continue}"
        );
    }

    #[test]
    fn small_known_rests_are_drained_and_others_close() {
        check(Some(0), false, Verdict::Drain);
        check(Some(1), false, Verdict::Drain);
        check(Some(MAX_DRAIN_BYTES), false, Verdict::Drain);
        check(Some(MAX_DRAIN_BYTES + 1), false, Verdict::Close);
        check(Some(u64::MAX), false, Verdict::Close);
        // Chunked: no length to bound the read by.
        check(None, false, Verdict::Close);
        // Never asked for: the client may wait for a 100 that never comes.
        check(Some(1), true, Verdict::Close);
        check(None, true, Verdict::Close);
    }
}
