//! Handlers of the key–value routes (SPEC §4).

use std::borrow::Cow;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::conditions::{Conditions, precondition};
use super::cursor;
use super::error::ApiError;
use super::{AppState, json, json_bytes};
use crate::db::PutOptions;

const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;

/// The key of a `/kv/{key}[/suffix]` request, percent-decoded. Taken from
/// the raw path so a lookup allocates nothing when there is no escape.
pub(super) fn key_of<'a>(uri: &'a Uri, suffix: &str) -> Result<Cow<'a, str>, ApiError> {
    let raw = uri
        .path()
        .strip_prefix("/kv/")
        .and_then(|rest| rest.strip_suffix(suffix))
        .ok_or_else(|| ApiError::InvalidKey("key missing from the path".into()))?;
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::InvalidKey("key is not valid UTF-8 after percent-decoding".into()))
}

fn etag(version: u64) -> HeaderValue {
    let mut text = String::with_capacity(22);
    text.push('"');
    text.push_str(itoa::Buffer::new().format(version));
    text.push('"');
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::InvalidRequest(format!("bad query string: {}", e.body_text())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutQuery {
    ttl: Option<String>,
}

/// `{"key":…,"version":…,"created":…}`, the answer to every PUT, written
/// directly rather than through a serializer.
fn put_answer(key: &str, version: u64, created: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 48);
    out.extend_from_slice(b"{\"key\":");
    let plain = key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut out, key).is_err() {
        // Writing a string into a Vec cannot fail; keep the JSON valid anyway.
        out.extend_from_slice(b"null");
    }
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(itoa::Buffer::new().format(version).as_bytes());
    out.extend_from_slice(if created {
        b",\"created\":true}"
    } else {
        b",\"created\":false}"
    });
    out
}

/// Takes the whole request rather than `Uri` and `HeaderMap` extractors,
/// which clone the URI and every header on each PUT.
pub(super) async fn put(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    // Moved out, not cloned: the body extractor below needs only the rest.
    let uri = std::mem::take(&mut parts.uri);
    let key = key_of(&uri, "")?;
    let q = query(Query::<PutQuery>::try_from_uri(&uri))?;
    let ttl = match q.ttl.as_deref() {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(secs) if secs > 0 => Some(Duration::from_secs(secs)),
            _ => {
                return Err(ApiError::InvalidRequest(format!(
                    "ttl must be a positive whole number of seconds; got {text:?}"
                )));
            }
        },
    };
    let options = PutOptions {
        ttl,
        precondition: precondition(&parts.headers, Conditions::MatchAndNoneMatch)?,
    };
    // The body limit travels in the request's extensions (set by admission).
    let body = Bytes::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(body_error)?;
    let written = match &state.cluster {
        None => state.db.put_async(&key, &body, options).await?,
        Some(cluster) => super::cluster::put(&state, cluster, &uri, &key, &body, options).await?,
    };
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = json_bytes(status, put_answer(&key, written.version, written.created));
    response
        .headers_mut()
        .insert(header::ETAG, etag(written.version));
    Ok(response)
}

/// The answer to a body that could not be read: 413 past the limit.
pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    body_error_over(rejection, "--max-value-bytes")
}

/// [`body_error`] for a route whose limit the flag `flag` sets.
pub(super) fn body_error_over(rejection: BytesRejection, flag: &str) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge(format!("request body is larger than {flag}"))
    } else {
        ApiError::InvalidRequest(format!(
            "could not read the body: {}",
            rejection.body_text()
        ))
    }
}

pub(super) async fn get(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, "")?;
    if state.cluster.is_some() {
        return replicated_read(&state, &uri, get_entry(&state, &key)).await;
    }
    super::cluster::check_consistency(&uri)?;
    get_entry(&state, &key)()
}

/// A read on a cluster member: after the read index (unless stale), with
/// the revision it reflects.
async fn replicated_read(
    state: &AppState,
    uri: &Uri,
    read: impl FnOnce() -> Result<Response, ApiError>,
) -> Result<Response, ApiError> {
    super::cluster::before_read(state, uri).await?;
    let mut response = read()?;
    super::cluster::mark_revision(state, &mut response);
    Ok(response)
}

fn get_entry<'a>(
    state: &'a AppState,
    key: &'a str,
) -> impl FnOnce() -> Result<Response, ApiError> + 'a {
    move || {
        let entry = state.db.get(key)?.ok_or_else(not_found)?;
        let mut response = Response::new(Body::from(entry.value));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::ETAG, etag(entry.version));
        Ok(response)
    }
}

pub(super) async fn head(State(state): State<AppState>, uri: Uri) -> Response {
    if state.cluster.is_some() {
        let answer = replicated_read(&state, &uri, || Ok(head_entry(&state, &uri))).await;
        return answer.unwrap_or_else(|e| e.status().into_response());
    }
    if let Err(e) = super::cluster::check_consistency(&uri) {
        return e.status().into_response();
    }
    head_entry(&state, &uri)
}

fn head_entry(state: &AppState, uri: &Uri) -> Response {
    let found = key_of(uri, "")
        .ok()
        .and_then(|key| state.db.get(&key).ok().flatten());
    match found {
        Some(entry) => {
            let mut response = StatusCode::OK.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(header::ETAG, etag(entry.version));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.value.len()));
            response
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn not_found() -> ApiError {
    ApiError::NotFound("key not found".into())
}

#[derive(Serialize)]
struct ExistsAnswer<'a> {
    key: &'a str,
    exists: bool,
}

pub(super) async fn exists(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, "/exists")?;
    let read = || {
        let exists = state.db.exists(&key)?;
        Ok(json(StatusCode::OK, &ExistsAnswer { key: &key, exists }))
    };
    if state.cluster.is_some() {
        return replicated_read(&state, &uri, read).await;
    }
    super::cluster::check_consistency(&uri)?;
    read()
}

#[derive(Serialize)]
struct MetaAnswer<'a> {
    key: &'a str,
    version: u64,
    size: usize,
    expires_at: Option<String>,
}

pub(super) async fn meta(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let key = key_of(&uri, "/meta")?;
    let read = || meta_of(&state, &key);
    if state.cluster.is_some() {
        return replicated_read(&state, &uri, read).await;
    }
    super::cluster::check_consistency(&uri)?;
    read()
}

fn meta_of(state: &AppState, key: &str) -> Result<Response, ApiError> {
    let entry = state.db.get(key)?.ok_or_else(not_found)?;
    let expires_at = (entry.expires_at_ms != 0).then(|| super::rfc3339_ms(entry.expires_at_ms));
    let mut response = json(
        StatusCode::OK,
        &MetaAnswer {
            key,
            version: entry.version,
            size: entry.value.len(),
            expires_at,
        },
    );
    response
        .headers_mut()
        .insert(header::ETAG, etag(entry.version));
    Ok(response)
}

#[derive(Serialize)]
struct DeleteAnswer<'a> {
    key: &'a str,
    deleted: bool,
    version: u64,
}

pub(super) async fn delete(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = key_of(&uri, "")?;
    let pre = precondition(&headers, Conditions::MatchOnly)?;
    let version = match &state.cluster {
        None => state.db.delete_async(&key, pre).await?,
        Some(cluster) => super::cluster::delete(&state, cluster, &uri, &key, pre).await?,
    };
    Ok(json(
        StatusCode::OK,
        &DeleteAnswer {
            key: &key,
            deleted: true,
            version,
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    prefix: Option<String>,
    /// `stale` or `linearizable` (cluster members; see `cluster.rs`).
    #[allow(dead_code)]
    consistency: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    values: Option<String>,
}

#[derive(Serialize)]
struct ListAnswer {
    keys: Vec<Box<str>>,
    next_cursor: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    uri: Uri,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    super::cluster::before_read(&state, &uri).await?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIST_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::InvalidRequest(format!(
                    "limit must be a whole number from 1 to {MAX_LIST_LIMIT}; got {text:?}"
                )));
            }
        },
    };
    let with_values = match q.values.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "values must be true or false; got {other:?}"
            )));
        }
    };
    let after = q.cursor.as_deref().map(cursor::decode).transpose()?;
    let prefix = q.prefix.unwrap_or_default();
    // The walk is O(keys): keep it off the async workers.
    let db = state.db.clone();
    let answer = tokio::task::spawn_blocking(move || {
        if with_values {
            entries_answer(&db.list_entries(&prefix, after.as_deref(), limit))
        } else {
            let page = db.list(&prefix, after.as_deref(), limit);
            serde_json::to_vec(&ListAnswer {
                keys: page.keys,
                next_cursor: page.next_after.as_deref().map(cursor::encode),
            })
            .unwrap_or_default()
        }
    })
    .await
    .map_err(|e| ApiError::Internal(format!("listing task failed: {e}")))?;
    let mut response = json_bytes(StatusCode::OK, answer);
    super::cluster::mark_revision(&state, &mut response);
    Ok(response)
}

/// `{"items":[{"key","value","version","expires_at"}…],"next_cursor"}`,
/// each value embedded as the stored bytes.
fn entries_answer(page: &crate::store::EntryPage) -> Vec<u8> {
    let values: usize = page
        .items
        .iter()
        .map(|(k, e)| k.len() + e.value.len())
        .sum();
    let mut out = Vec::with_capacity(64 + values + page.items.len() * 80);
    out.extend_from_slice(b"{\"items\":[");
    for (i, (key, entry)) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"key\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &**key);
        out.extend_from_slice(b",\"value\":");
        out.extend_from_slice(&entry.value);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(itoa::Buffer::new().format(entry.version).as_bytes());
        out.extend_from_slice(b",\"expires_at\":");
        if entry.expires_at_ms == 0 {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'"');
            out.extend_from_slice(super::rfc3339_ms(entry.expires_at_ms).as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match page.next_after.as_deref() {
        Some(key) => {
            out.push(b'"');
            out.extend_from_slice(cursor::encode(key).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PrefixQuery {
    prefix: Option<String>,
    /// `stale` or `linearizable` (cluster members; see `cluster.rs`).
    #[allow(dead_code)]
    consistency: Option<String>,
}

#[derive(Serialize)]
struct CountAnswer {
    count: usize,
}

pub(super) async fn count(
    State(state): State<AppState>,
    uri: Uri,
    q: Result<Query<PrefixQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    super::cluster::before_read(&state, &uri).await?;
    let db = state.db.clone();
    let count = tokio::task::spawn_blocking(move || db.count(q.prefix.as_deref()))
        .await
        .map_err(|e| ApiError::Internal(format!("count task failed: {e}")))?;
    let mut response = json(StatusCode::OK, &CountAnswer { count });
    super::cluster::mark_revision(&state, &mut response);
    Ok(response)
}

#[derive(Serialize)]
struct ClearAnswer {
    cleared: usize,
}

pub(super) async fn clear(
    State(state): State<AppState>,
    uri: Uri,
    q: Result<Query<PrefixQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let cleared = match &state.cluster {
        None => state.db.clear_async(q.prefix.as_deref()).await?,
        Some(cluster) => super::cluster::clear(cluster, &uri, q.prefix.as_deref()).await?,
    };
    Ok(json(StatusCode::OK, &ClearAnswer { cleared }))
}

#[cfg(test)]
mod tests {
    use super::put_answer;

    fn check(key: &str, version: u64, created: bool) {
        let expected = serde_json::json!({"key": key, "version": version, "created": created});
        let written: serde_json::Value =
            serde_json::from_slice(&put_answer(key, version, created)).expect("valid JSON");
        assert_eq!(written, expected, "{key:?}");
    }

    #[test]
    fn put_answers_are_json_for_any_key() {
        check("k1", 1, true);
        check("a/b c%", u64::MAX, false);
        check("quote\"back\\slash", 7, true);
        check("tab\tnl\ncr\r\u{1}", 8, false);
        check("ünï😀", 9, true);
    }
}
