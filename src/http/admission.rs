//! What a request must pass before a handler runs: size limits on its URI
//! and headers, the bearer token, a free concurrency slot, and a deadline.
//!
//! All four live in one middleware so the hot path pays for one wrapper,
//! not four. Refusals are ordinary [`ApiError`] envelopes; nothing here
//! touches the database.
//!
//! Invariant: a refused request never reaches a handler, so it changed
//! nothing. A request that times out was already running and may have
//! changed something: its 503 says the answer did not come in time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use super::error::ApiError;
use crate::config::Config;

/// The shortest URI limit; it grows with `--max-key-bytes` so that any
/// valid key still fits fully percent-encoded.
const MIN_URI_BYTES: usize = 8 * 1024;

/// The most header bytes (names and values) a request may carry.
pub(super) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The rules, shared by every route's copy of the middleware.
struct Rules {
    /// SHA-256 of the token: comparing digests takes the same time
    /// whatever the length or content of the guess.
    token_digest: Option<[u8; 32]>,
    slots: Arc<Semaphore>,
    request_timeout: Duration,
    max_uri_bytes: usize,
    max_body_bytes: usize,
    max_txn_bytes: usize,
}

/// How large a request's body may be.
#[derive(Clone, Copy)]
enum BodyLimit {
    /// At most this many bytes; the flag that sets it, for the message.
    Bytes(usize, &'static str),
    /// Streamed to disk by its handler (`POST /system/import`).
    Unlimited,
}

impl Rules {
    fn check(&self, req: &Request) -> Result<(), ApiError> {
        let uri_bytes = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if uri_bytes > self.max_uri_bytes {
            return Err(ApiError::UriTooLong(format!(
                "the request target is {uri_bytes} bytes; at most {} are accepted",
                self.max_uri_bytes
            )));
        }
        let header_bytes: usize = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(ApiError::HeadersTooLarge(format!(
                "the headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            )));
        }
        if let Some(expected) = &self.token_digest
            && !is_open(req)
            && !bearer_matches(req, expected)
        {
            return Err(ApiError::Unauthorized);
        }
        // A body announced larger than the limit is refused before a byte
        // of it is read; one without a length (chunked) is cut off by the
        // body limit once it passes the limit.
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let BodyLimit::Bytes(max, flag) = self.body_limit(req)
            && announced.is_some_and(|n| n > max as u64)
        {
            return Err(ApiError::PayloadTooLarge(format!(
                "request body is larger than {flag}"
            )));
        }
        Ok(())
    }

    /// The body limit of the request's route: a transaction has its own,
    /// an import streams any size, everything else takes one value.
    fn body_limit(&self, req: &Request) -> BodyLimit {
        match req.uri().path() {
            "/txn" => BodyLimit::Bytes(self.max_txn_bytes, "--max-txn-bytes"),
            "/system/import" => BodyLimit::Unlimited,
            path if path.starts_with("/raft/") => BodyLimit::Bytes(
                RAFT_BODY_BYTES
                    .max(self.max_body_bytes)
                    .max(self.max_txn_bytes),
                "the Raft RPC limit",
            ),
            _ => BodyLimit::Bytes(self.max_body_bytes, "--max-value-bytes"),
        }
    }
}

/// The largest body Raft RPC between cluster members may carry: a batch
/// of log entries, each up to `--max-value-bytes`, or a snapshot chunk.
const RAFT_BODY_BYTES: usize = 256 << 20;

/// `GET /system/alive` answers without a token, for health checkers, and
/// so do the console's files (they hold no data; the page asks for the
/// token and sends it with each API call).
fn is_open(req: &Request) -> bool {
    let path = req.uri().path();
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && (path == "/system/alive" || super::ui::is_console_path(path))
}

fn bearer_matches(req: &Request, expected: &[u8; 32]) -> bool {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let Some((scheme, token)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let presented: [u8; 32] = Sha256::digest(token).into();
    presented.ct_eq(expected).into()
}

/// Requests the deadline leaves alone: live feed streams, which run for as
/// long as the subscriber stays, and an import, whose handler times only
/// the upload (an import being applied finishes before it answers).
fn has_own_deadline(req: &Request) -> bool {
    matches!(req.uri().path(), "/events" | "/ws" | "/system/import")
}

/// Wraps the router in an [`Admit`].
#[derive(Clone)]
pub(super) struct AdmissionLayer {
    rules: Arc<Rules>,
}

impl AdmissionLayer {
    /// The rules `config` sets.
    pub(super) fn new(config: &Config) -> AdmissionLayer {
        let max_uri_bytes = MIN_URI_BYTES.max(config.max_key_bytes.saturating_mul(3) + 1024);
        AdmissionLayer {
            rules: Arc::new(Rules {
                token_digest: config
                    .auth_token
                    .as_ref()
                    .map(|t| Sha256::digest(t.expose().as_bytes()).into()),
                slots: Arc::new(Semaphore::new(
                    config.max_concurrent_requests.min(Semaphore::MAX_PERMITS),
                )),
                request_timeout: config.request_timeout,
                max_uri_bytes,
                max_body_bytes: config.max_value_bytes,
                max_txn_bytes: config.max_txn_bytes,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            rules: Arc::clone(&self.rules),
        }
    }
}

/// Refuses or runs a request; see the module docs.
#[derive(Clone)]
pub struct Admit<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S> tower_service::Service<Request> for Admit<S>
where
    S: tower_service::Service<Request, Error = Infallible>,
    S::Response: IntoResponse,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AdmitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Err(e) = self.rules.check(&req) {
            return AdmitFuture::Refused {
                response: Some(e.into_response()),
            };
        }
        // Shed at once rather than queue: a queued request only adds to the
        // latency of everything behind it.
        let Ok(permit) = Arc::clone(&self.rules.slots).try_acquire_owned() else {
            return AdmitFuture::Refused {
                response: Some(
                    ApiError::Unavailable(
                        "too many requests in progress (--max-concurrent-requests); retry later"
                            .into(),
                    )
                    .into_response(),
                ),
            };
        };
        // The body extractors read their limit from the request; only
        // requests that carry a body pay for the extension.
        if req.method() == Method::PUT || req.method() == Method::POST {
            match self.rules.body_limit(&req) {
                BodyLimit::Bytes(max, _) => DefaultBodyLimit::max(max).apply(&mut req),
                BodyLimit::Unlimited => DefaultBodyLimit::disable().apply(&mut req),
            }
        }
        let timeout = self.rules.request_timeout;
        let deadline = (!has_own_deadline(&req)).then(|| tokio::time::sleep(timeout));
        AdmitFuture::Admitted {
            inner: self.inner.call(req),
            deadline,
            timeout,
            _permit: permit,
        }
    }
}

pin_project! {
    /// The answer of [`Admit`]: a refusal, or the handler's response raced
    /// against the deadline while holding a concurrency slot.
    #[project = AdmitProj]
    pub enum AdmitFuture<F> {
        Refused { response: Option<Response> },
        Admitted {
            #[pin]
            inner: F,
            #[pin]
            deadline: Option<Sleep>,
            timeout: Duration,
            _permit: OwnedSemaphorePermit,
        },
    }
}

impl<F, R> Future for AdmitFuture<F>
where
    F: Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AdmitProj::Refused { response } => {
                Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    ApiError::Internal("admission future polled twice".into()).into_response()
                })))
            }
            AdmitProj::Admitted {
                inner,
                deadline,
                timeout,
                ..
            } => {
                if let Poll::Ready(result) = inner.poll(cx) {
                    let Ok(response) = result;
                    return Poll::Ready(Ok(response.into_response()));
                }
                if let Some(deadline) = deadline.as_pin_mut() {
                    ready!(deadline.poll(cx));
                    return Poll::Ready(Ok(ApiError::Unavailable(format!(
                        "the request did not finish within {} s (--request-timeout-secs)",
                        timeout.as_secs()
                    ))
                    .into_response()));
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthToken;

    fn rules(token: Option<&str>) -> Rules {
        let config = Config {
            auth_token: token.map(AuthToken::new),
            ..Config::in_memory()
        };
        Arc::try_unwrap(AdmissionLayer::new(&config).rules).unwrap_or_else(|_| panic!("one owner"))
    }

    fn request(method: Method, uri: &str, auth: Option<&str>) -> Request {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        builder.body(axum::body::Body::empty()).expect("request")
    }

    fn check(token: Option<&str>, method: Method, uri: &str, auth: Option<&str>, ok: bool) {
        let result = rules(token).check(&request(method.clone(), uri, auth));
        if ok {
            assert_eq!(result, Ok(()), "{method} {uri} {auth:?}");
        } else {
            assert!(
                matches!(result, Err(ApiError::Unauthorized)),
                "{method} {uri} {auth:?}: {result:?}"
            );
        }
    }

    #[test]
    fn the_token_is_checked() {
        let t = Some("tok-123");
        check(None, Method::GET, "/kv/a", None, true);
        check(t, Method::GET, "/kv/a", None, false);
        check(t, Method::GET, "/kv/a", Some("Bearer tok-123"), true);
        check(t, Method::GET, "/kv/a", Some("bearer tok-123"), true);
        check(t, Method::GET, "/kv/a", Some("Bearer tok-1234"), false);
        check(t, Method::GET, "/kv/a", Some("Bearer tok-12"), false);
        check(t, Method::GET, "/kv/a", Some("Basic tok-123"), false);
        check(t, Method::GET, "/kv/a", Some("Bearer"), false);
        check(t, Method::GET, "/kv/a", Some(""), false);
        check(t, Method::GET, "/system/alive", None, true);
        check(t, Method::HEAD, "/system/alive", None, true);
        check(t, Method::POST, "/system/alive", None, false);
        check(t, Method::GET, "/system/alive/x", None, false);
        check(t, Method::GET, "/nowhere", None, false);
        check(t, Method::GET, "/ui", None, true);
        check(t, Method::GET, "/ui/main.js", None, true);
        check(t, Method::PUT, "/ui/main.js", None, false);
        check(t, Method::GET, "/uix", None, false);
    }

    #[test]
    fn long_uris_and_headers_are_refused() {
        let r = rules(None);
        let long = format!("/kv/{}", "a".repeat(r.max_uri_bytes));
        assert!(matches!(
            r.check(&request(Method::GET, &long, None)),
            Err(ApiError::UriTooLong(_))
        ));
        let fits = format!("/kv/{}", "%41".repeat(1024));
        assert_eq!(r.check(&request(Method::GET, &fits, None)), Ok(()));
        let mut req = request(Method::GET, "/kv/a", None);
        for i in 0..20 {
            let name = header::HeaderName::try_from(format!("x-filler-{i}")).expect("name");
            let value = header::HeaderValue::try_from("v".repeat(1000)).expect("value");
            req.headers_mut().insert(name, value);
        }
        assert!(matches!(r.check(&req), Err(ApiError::HeadersTooLarge(_))));
    }
}
