//! Handlers of the `/pubsub` routes (SPEC §5).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, json};
use crate::db::{DbError, SubscriptionStatus, Unsubscribe};
use crate::events::subscriptions::{Subscription, Target};

// Every field may be left out, but one that is there is a string: `null`
// is refused like any other wrong type, as the OpenAPI document says.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    #[serde(default, deserialize_with = "string")]
    key: Option<String>,
    #[serde(default, deserialize_with = "string")]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "string", alias = "callback")]
    callback_url: Option<String>,
    #[serde(default, deserialize_with = "string")]
    secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    #[serde(default, deserialize_with = "string")]
    id: Option<String>,
    #[serde(default, deserialize_with = "string")]
    key: Option<String>,
    #[serde(default, deserialize_with = "string")]
    prefix: Option<String>,
    #[serde(default, deserialize_with = "string", alias = "callback")]
    callback_url: Option<String>,
}

/// A field that is present: a string, never `null`.
fn string<'de, D: serde::Deserializer<'de>>(field: D) -> Result<Option<String>, D::Error> {
    String::deserialize(field).map(Some)
}

/// A subscription as the API shows it: never with its secret.
#[derive(Serialize)]
struct Shown<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix: Option<&'a str>,
    callback_url: &'a str,
    created_at: &'a str,
    signed: bool,
}

fn shown(sub: &Subscription) -> Shown<'_> {
    let (key, prefix) = match &sub.target {
        Target::Key(k) => (Some(k.as_str()), None),
        Target::Prefix(p) => (None, Some(p.as_str())),
    };
    Shown {
        id: &sub.id,
        key,
        prefix,
        callback_url: &sub.callback_url,
        created_at: &sub.created_at,
        signed: sub.secret.is_some(),
    }
}

/// Parses a JSON request body into `T`: broken JSON is `invalid_json`,
/// JSON of the wrong shape is `invalid_request`.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::InvalidJson(format!("body is not valid JSON: {e}"))
        } else {
            ApiError::InvalidRequest(format!("bad subscription body: {e}"))
        }
    })
}

/// What a `POST /pubsub/subscribe` body asks for: the target, the
/// callback URL and the secret (the URL is checked by the database).
pub(super) fn subscribe_request(body: Bytes) -> Result<(Target, String, Option<String>), ApiError> {
    let body: SubscribeBody = parse_body(&body)?;
    let target = target(body.key, body.prefix)?;
    let url = body
        .callback_url
        .ok_or_else(|| ApiError::InvalidRequest("\"callback_url\" is required".into()))?;
    Ok((target, url, body.secret))
}

/// What a `POST /pubsub/unsubscribe` body asks to remove.
pub(super) fn unsubscribe_request(body: Bytes) -> Result<Unsubscribe, ApiError> {
    let body: UnsubscribeBody = parse_body(&body)?;
    match (body.id, body.callback_url) {
        (Some(id), None) if body.key.is_none() && body.prefix.is_none() => Ok(Unsubscribe::Id(id)),
        (None, Some(url)) => Ok(Unsubscribe::Target(target(body.key, body.prefix)?, url)),
        _ => Err(ApiError::InvalidRequest(
            "give either \"id\", or \"key\"/\"prefix\" with \"callback_url\"".into(),
        )),
    }
}

fn target(key: Option<String>, prefix: Option<String>) -> Result<Target, ApiError> {
    match (key, prefix) {
        (Some(key), None) => Ok(Target::Key(key)),
        (None, Some(prefix)) => Ok(Target::Prefix(prefix)),
        _ => Err(ApiError::InvalidRequest(
            "give exactly one of \"key\" and \"prefix\"".into(),
        )),
    }
}

pub(super) async fn subscribe(
    State(state): State<AppState>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::cluster::ensure_leader(&state, &uri)?;
    let (target, url, secret) = subscribe_request(body.map_err(super::kv::body_error)?)?;
    let db = state.db.clone();
    let (sub, created) =
        tokio::task::spawn_blocking(move || db.subscribe_webhook(target, &url, secret))
            .await
            .map_err(|e| ApiError::Internal(format!("subscribe task failed: {e}")))??;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &shown(&sub)))
}

pub(super) async fn unsubscribe(
    State(state): State<AppState>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::cluster::ensure_leader(&state, &uri)?;
    let which = unsubscribe_request(body.map_err(super::kv::body_error)?)?;
    let db = state.db.clone();
    let removed = tokio::task::spawn_blocking(move || db.unsubscribe_webhook(&which))
        .await
        .map_err(|e| ApiError::Internal(format!("unsubscribe task failed: {e}")))??;
    if removed {
        Ok(json(StatusCode::OK, &serde_json::json!({"removed": true})))
    } else {
        Err(ApiError::NotFound("no such subscription".into()))
    }
}

/// A subscription with its delivery state (SPEC §5).
#[derive(Serialize)]
struct Detailed<'a> {
    #[serde(flatten)]
    def: Shown<'a>,
    status: &'static str,
    cursor: u64,
    pending: u64,
    failed: usize,
    lost_events: u64,
    last_success_at: Option<String>,
    failing_since: Option<String>,
    last_error: Option<&'a str>,
}

fn detailed(s: &SubscriptionStatus) -> Detailed<'_> {
    Detailed {
        def: shown(&s.def),
        status: s.state.status(),
        cursor: s.state.cursor,
        pending: s.pending,
        failed: s.state.failed.len(),
        lost_events: s.state.lost_events,
        last_success_at: s.state.last_success_at_ms.map(super::rfc3339_ms),
        failing_since: s.state.failing_since_ms.map(super::rfc3339_ms),
        last_error: s.state.last_error.as_deref(),
    }
}

pub(super) async fn subscriptions(State(state): State<AppState>) -> Response {
    let subs = state.db.subscription_statuses();
    let shown: Vec<Detailed<'_>> = subs.iter().map(detailed).collect();
    json(StatusCode::OK, &serde_json::json!({"subscriptions": shown}))
}

fn sub_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id)
        .map_err(|e| ApiError::InvalidRequest(format!("bad subscription id: {}", e.body_text())))
}

/// A database answer about one subscription: "not found" names it.
fn about<T>(result: Result<T, DbError>) -> Result<T, ApiError> {
    result.map_err(|e| match e {
        DbError::NotFound => ApiError::NotFound("no such subscription".into()),
        other => other.into(),
    })
}

/// `GET /pubsub/subscriptions/{id}`.
pub(super) async fn subscription(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let status = about(state.db.subscription_status(&sub_id(id)?))?;
    Ok(json(StatusCode::OK, &detailed(&status)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FailedQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `GET /pubsub/subscriptions/{id}/failed`: paged like `/kv`.
pub(super) async fn failed(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<FailedQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = sub_id(id)?;
    let q = super::kv::query(q)?;
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit must be between 1 and 10000; got {limit}"
        )));
    }
    let after = q
        .cursor
        .map(|c| {
            c.parse::<u64>().map_err(|_| {
                ApiError::InvalidRequest(format!(
                    "cursor must be the next_cursor of a previous page; got {c:?}"
                ))
            })
        })
        .transpose()?;
    let (events, next) = about(state.db.failed_events(&id, after, limit))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"events": events, "next_cursor": next.map(|n| n.to_string())}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    #[serde(default, deserialize_with = "super::whole::optional")]
    since: Option<u64>,
}

/// `POST /pubsub/subscriptions/{id}/recover` with `{"since": REV}`.
pub(super) async fn recover(
    State(state): State<AppState>,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // The leader delivers, so it is the one to send them again.
    super::cluster::ensure_leader(&state, &uri)?;
    let id = sub_id(id)?;
    let body: RecoverBody = parse_body(&body.map_err(super::kv::body_error)?)?;
    let since = body
        .since
        .ok_or_else(|| ApiError::InvalidRequest("\"since\" (a revision) is required".into()))?;
    let queued = about(state.db.recover(&id, since))?;
    Ok(json(StatusCode::OK, &serde_json::json!({"queued": queued})))
}

/// `POST /pubsub/subscriptions/{id}/enable`.
pub(super) async fn enable(
    State(state): State<AppState>,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    super::cluster::ensure_leader(&state, &uri)?;
    let id = sub_id(id)?;
    let db = state.db.clone();
    let status = tokio::task::spawn_blocking(move || db.enable(&id))
        .await
        .map_err(|e| ApiError::Internal(format!("enable task failed: {e}")))?;
    Ok(json(StatusCode::OK, &detailed(&about(status)?)))
}
