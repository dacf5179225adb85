//! The REST API over a [`Db`]: the router factory, the server loop with
//! graceful shutdown, and the JSON helpers. The only module that knows axum.

mod admission;
mod cluster;
mod cluster_metrics;
mod conditions;
mod cursor;
mod error;
mod exposition;
mod feed;
#[doc(hidden)]
pub mod fuzz;
mod kv;
mod linger;
mod metrics;
mod pubsub;
mod routes;
mod server;
mod system;
mod txn;
mod ui;
mod unread_body;
mod whole;

use std::future::Future;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::net::TcpListener;
use tower::util::Either;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::SizeAbove;
use tower_http::cors::{AllowOrigin, Cors, CorsLayer};
use tower_layer::Layer;

pub use error::ApiError;
pub use routes::{OPENAPI_JSON, ROUTES, Route};

use crate::db::Db;
use crate::raft::Cluster;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The Raft group this server is a member of (`--node-id`), if any.
    pub cluster: Option<std::sync::Arc<Cluster>>,
    /// What `GET /metrics` renders.
    metrics: std::sync::Arc<metrics::Metrics>,
}

/// Responses smaller than this are sent as they are: gzip would cost more
/// time than the bytes it saves.
const MIN_GZIP_BYTES: u16 = 1024;

/// The whole application as one service: request recording, then CORS
/// when configured, then admission (limits, token, load shedding,
/// deadline), then the router.
///
/// The two middlewares wrap the router once instead of being added with
/// `Router::layer`, which would box each route's service and its future
/// once per layer on every request.
pub type App = metrics::Record<Either<Cors<admission::Admit<Router>>, admission::Admit<Router>>>;

/// Builds the application: every route of the SPEC over `db`, behind the
/// admission and recording middleware. The server runs this.
pub fn app(db: Db) -> App {
    member_app(db, None)
}

/// [`app`] for a cluster member: writes go through `cluster`, reads wait
/// for its read index, and the `/cluster` and `/raft` routes work.
pub fn member_app(db: Db, cluster: Option<std::sync::Arc<Cluster>>) -> App {
    let config = db.config();
    let admission = admission::AdmissionLayer::new(config);
    let cors = config.cors_origin.as_deref().map(cors);
    let metrics = std::sync::Arc::new(metrics::Metrics::new(db.clone(), cluster.clone()));
    // Benchmark hook: the load harness measures with and without request
    // recording (it is not a setting users should turn off).
    let record = metrics.layer(std::env::var_os("DODODB_BENCH_NO_REQUEST_METRICS").is_none());
    let state = AppState {
        db,
        cluster,
        metrics,
    };
    let routes = routes::api()
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    let admitted = admission.layer(routes);
    // CORS sits outside admission: a browser's preflight carries no token,
    // and a refusal must carry the CORS headers for the page to read it.
    // Only there when asked for, so the default path pays nothing for it.
    let app = match cors {
        Some(cors) => Either::Left(cors.layer(admitted)),
        None => Either::Right(admitted),
    };
    // Outermost, so a request's recorded latency covers admission too.
    record.layer(app)
}

/// [`app`] as an axum [`Router`], for embedding the API in another axum
/// application (`Router::nest`, `Router::merge`).
pub fn router(db: Db) -> Router {
    Router::new().fallback_service(app(db))
}

/// Gzip for the routes whose answers grow with the data (`GET /kv`,
/// `/system/export`), only when the client asks: `GET /kv/{key}` stays as
/// it is.
pub(super) fn gzip() -> CompressionLayer<SizeAbove> {
    CompressionLayer::new().compress_when(SizeAbove::new(MIN_GZIP_BYTES))
}

/// Browser access from `origin` (`*`: any). Validated at start-up.
fn cors(origin: &str) -> CorsLayer {
    let allow = if origin == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::exact(
            HeaderValue::from_str(origin).unwrap_or(HeaderValue::from_static("null")),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
        ])
        .expose_headers([header::ETAG])
        .max_age(Duration::from_secs(600))
}

async fn route_not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves `db` on `listener` until `shutdown` completes, then finishes
/// in-flight requests and closes the database (final snapshot, WAL sync).
///
/// # Errors
///
/// The listener fails, or closing the database fails.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_member(listener, db, None, shutdown).await
}

/// [`serve`] for a cluster member; Raft stops (its log synced) after the
/// last request and before the database closes.
///
/// # Errors
///
/// As [`serve`].
pub async fn serve_member(
    listener: TcpListener,
    db: Db,
    cluster: Option<std::sync::Arc<Cluster>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = member_app(db.clone(), cluster.clone());
    let header_read_timeout = db.config().header_read_timeout;
    let feed_db = db.clone();
    // Live feed streams never end on their own: close them when shutdown
    // starts, or the graceful shutdown would wait for them forever.
    let shutdown = async move {
        shutdown.await;
        feed_db.feed().close();
    };
    server::run(listener, app, header_read_timeout, shutdown).await?;
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    tracing::info!("HTTP server stopped; closing the database");
    tokio::task::spawn_blocking(move || db.close())
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)
}

/// Serves `app` on `listener` until the process ends: a cluster member's
/// separate Raft listener (`--raft-listen`).
///
/// # Errors
///
/// The listener fails.
pub async fn serve_app(
    listener: TcpListener,
    app: App,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    server::run(listener, app, header_read_timeout, std::future::pending()).await
}

/// A JSON response with `status`.
pub(crate) fn json(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => ApiError::Internal(format!("cannot encode a response: {e}")).into_response(),
    }
}

/// A response with `status` whose body is the JSON text `bytes`. Its
/// headers are set once (`into_response` for bytes would set a content
/// type only for it to be replaced).
pub(crate) fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(axum::body::Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 9999-12-31T23:59:59.999Z in Unix milliseconds.
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// Unix milliseconds as RFC 3339 UTC (`2025-01-01T12:00:00.123Z`; whole
/// seconds drop the fraction).
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    // RFC 3339 has four-digit years and the formatter panics beyond them: a
    // later instant (a TTL of millennia) is written as the last one it can
    // express instead of failing the request.
    let ms = ms.min(MAX_RFC3339_MS);
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(at).to_string()
    } else {
        humantime::format_rfc3339_millis(at).to_string()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn instants_past_year_9999_are_written_as_its_last_millisecond() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339_ms(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(super::rfc3339_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use tower::util::ServiceExt;

    use crate::config::{AuthToken, Config};
    use crate::db::Db;

    async fn status(db: &Db, uri: &str, token: Option<&str>) -> StatusCode {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::empty()).expect("request");
        let response = super::router(db.clone()).oneshot(request).await;
        response.map_or(StatusCode::INTERNAL_SERVER_ERROR, |r| r.status())
    }

    /// Embedders get the whole application, middleware included.
    #[test]
    fn the_embeddable_router_keeps_the_middleware() {
        // Opened and dropped outside the runtime: the database owns a
        // runtime of its own (webhook delivery) that cannot be dropped
        // inside another.
        let db = Db::open(Config {
            auth_token: Some(AuthToken::new("tok")),
            ..Config::in_memory()
        })
        .expect("open");
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            assert_eq!(status(&db, "/kv/a", None).await, StatusCode::UNAUTHORIZED);
            assert_eq!(
                status(&db, "/kv/a", Some("tok")).await,
                StatusCode::NOT_FOUND
            );
            assert_eq!(status(&db, "/system/alive", None).await, StatusCode::OK);
            assert_eq!(
                status(&db, "/nowhere", Some("tok")).await,
                StatusCode::NOT_FOUND
            );
        });
        drop(runtime);
        drop(db);
    }
}
