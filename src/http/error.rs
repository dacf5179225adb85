//! The one place where failures become HTTP statuses and the SPEC's error
//! envelope: `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;
use crate::value::ValueError;

/// An error answer of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 `invalid_json`.
    InvalidJson(String),
    /// 400 `invalid_key`.
    InvalidKey(String),
    /// 400 `invalid_request`.
    InvalidRequest(String),
    /// 401 `unauthorized`.
    Unauthorized,
    /// 404 `not_found`.
    NotFound(String),
    /// 405 `method_not_allowed`.
    MethodNotAllowed,
    /// 412 `precondition_failed`.
    PreconditionFailed(String),
    /// 413 `payload_too_large`.
    PayloadTooLarge(String),
    /// 414 `uri_too_long`.
    UriTooLong(String),
    /// 431 `headers_too_large`.
    HeadersTooLarge(String),
    /// 503 `unavailable`.
    Unavailable(String),
    /// 307 `not_leader`: a cluster follower got a write; the leader's URL
    /// for the same path goes in `Location`.
    NotLeader(String),
    /// 500 `internal`: a bug; details go to the log only.
    Internal(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson(_) | ApiError::InvalidKey(_) | ApiError::InvalidRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotLeader(_) => StatusCode::TEMPORARY_REDIRECT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The SPEC's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidKey(_) => "invalid_key",
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PreconditionFailed(_) => "precondition_failed",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotLeader(_) => "not_leader",
            ApiError::Internal(_) => "internal",
        }
    }

    fn message(&self) -> &str {
        match self {
            ApiError::InvalidJson(m)
            | ApiError::InvalidKey(m)
            | ApiError::InvalidRequest(m)
            | ApiError::NotFound(m)
            | ApiError::PreconditionFailed(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::UriTooLong(m)
            | ApiError::HeadersTooLarge(m)
            | ApiError::Unavailable(m) => m,
            ApiError::NotLeader(_) => "this node is not the leader; repeat the request at Location",
            ApiError::Unauthorized => "missing or wrong bearer token",
            ApiError::MethodNotAllowed => "method not allowed on this path",
            ApiError::Internal(_) => "internal error (see the server log)",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "request refused: unavailable"),
            _ => tracing::debug!(
                code = self.code(),
                message = self.message(),
                "request rejected"
            ),
        }
        let envelope = Envelope {
            error: Body {
                code: self.code(),
                message: self.message(),
            },
        };
        let body = serde_json::to_vec(&envelope).unwrap_or_default();
        let mut response = (self.status(), body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // A 413 (like a 401 or 404) is often sent before the body was read:
        // the server loop then reads and discards the rest or says
        // `Connection: close` (`unread_body`), whatever the status.
        if let ApiError::NotLeader(location) = &self
            && let Ok(value) = HeaderValue::from_str(location)
        {
            response.headers_mut().insert(header::LOCATION, value);
        }
        if matches!(self, ApiError::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::InvalidKey(m) => ApiError::InvalidKey(m),
            DbError::InvalidValue(ValueError::Invalid(m)) => {
                ApiError::InvalidJson(format!("body is not valid JSON: {m}"))
            }
            DbError::InvalidValue(e @ ValueError::TooDeep) => ApiError::InvalidJson(e.to_string()),
            e @ DbError::ValueTooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            DbError::OpTooLarge(m) => ApiError::PayloadTooLarge(m),
            DbError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            DbError::NotFound => ApiError::NotFound("key not found".into()),
            e @ DbError::PreconditionFailed { .. } => ApiError::PreconditionFailed(e.to_string()),
            DbError::Unavailable(m) => ApiError::Unavailable(m),
            DbError::Storage(m) => ApiError::Internal(m),
        }
    }
}
