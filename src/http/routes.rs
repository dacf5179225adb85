//! The route table: every method and path of the API with its handler, in
//! one list. The router is built from it and the OpenAPI test checks the
//! document against it, so the two cannot drift apart. Handlers live in
//! the modules of their SPEC section; this file only names them.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

use super::exposition::Format;
use super::{AppState, cluster, feed, kv, pubsub, system, txn, ui};

/// The OpenAPI 3 document of this API, served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// One method on one path of the API.
pub struct Route {
    method: Method,
    path: &'static str,
    handler: fn(MethodFilter) -> MethodRouter<AppState>,
}

impl Route {
    const fn new(
        method: Method,
        path: &'static str,
        handler: fn(MethodFilter) -> MethodRouter<AppState>,
    ) -> Route {
        Route {
            method,
            path,
            handler,
        }
    }

    /// The HTTP method. A `GET` route also answers `HEAD` (without a body)
    /// unless the table has a `HEAD` route of its own for the path.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The path template, in the syntax axum and OpenAPI share
    /// (`/kv/{key}`).
    pub fn path(&self) -> &'static str {
        self.path
    }
}

/// Every route of the API (SPEC §4–§7, §10, `/openapi.json` and the console of
/// §11).
pub static ROUTES: &[Route] = &[
    Route::new(Method::GET, "/kv", |m| on(m, kv::list).layer(super::gzip())),
    Route::new(Method::GET, "/kv/count", |m| on(m, kv::count)),
    Route::new(Method::POST, "/kv/clear", |m| on(m, kv::clear)),
    Route::new(Method::GET, "/kv/{key}", |m| on(m, kv::get)),
    Route::new(Method::HEAD, "/kv/{key}", |m| on(m, kv::head)),
    Route::new(Method::PUT, "/kv/{key}", |m| on(m, kv::put)),
    Route::new(Method::DELETE, "/kv/{key}", |m| on(m, kv::delete)),
    Route::new(Method::GET, "/kv/{key}/exists", |m| on(m, kv::exists)),
    Route::new(Method::GET, "/kv/{key}/meta", |m| on(m, kv::meta)),
    Route::new(Method::POST, "/txn", |m| on(m, txn::txn)),
    Route::new(Method::POST, "/pubsub/subscribe", |m| {
        on(m, pubsub::subscribe)
    }),
    Route::new(Method::POST, "/pubsub/unsubscribe", |m| {
        on(m, pubsub::unsubscribe)
    }),
    Route::new(Method::GET, "/pubsub/subscriptions", |m| {
        on(m, pubsub::subscriptions)
    }),
    Route::new(Method::GET, "/pubsub/subscriptions/{id}", |m| {
        on(m, pubsub::subscription)
    }),
    Route::new(Method::GET, "/pubsub/subscriptions/{id}/failed", |m| {
        on(m, pubsub::failed)
    }),
    Route::new(Method::POST, "/pubsub/subscriptions/{id}/recover", |m| {
        on(m, pubsub::recover)
    }),
    Route::new(Method::POST, "/pubsub/subscriptions/{id}/enable", |m| {
        on(m, pubsub::enable)
    }),
    Route::new(Method::GET, "/system/alive", |m| on(m, system::alive)),
    Route::new(Method::GET, "/system/version", |m| on(m, system::version)),
    Route::new(Method::GET, "/system/stats", |m| on(m, system::stats)),
    Route::new(Method::POST, "/system/snapshot", |m| {
        on(m, system::snapshot)
    }),
    Route::new(Method::GET, "/system/export", |m| {
        on(m, system::export).layer(super::gzip())
    }),
    Route::new(Method::POST, "/system/import", |m| on(m, system::import)),
    Route::new(Method::GET, "/events", |m| on(m, feed::events)),
    Route::new(Method::GET, "/ws", |m| on(m, feed::ws)),
    Route::new(Method::POST, "/cluster/init", |m| on(m, cluster::init)),
    Route::new(Method::POST, "/cluster/learners", |m| {
        on(m, cluster::learners)
    }),
    Route::new(Method::POST, "/cluster/members", |m| {
        on(m, cluster::members)
    }),
    Route::new(Method::GET, "/cluster/status", |m| on(m, cluster::status)),
    Route::new(Method::POST, "/raft/append", |m| {
        on(m, cluster::raft_append)
    }),
    Route::new(Method::POST, "/raft/vote", |m| on(m, cluster::raft_vote)),
    Route::new(Method::POST, "/raft/snapshot", |m| {
        on(m, cluster::raft_snapshot)
    }),
    Route::new(Method::POST, "/raft/read-index", |m| {
        on(m, cluster::raft_read_index)
    }),
    Route::new(Method::GET, "/metrics", |m| on(m, metrics)),
    Route::new(Method::GET, "/openapi.json", |m| on(m, openapi)),
    Route::new(Method::GET, "/ui", |m| on(m, ui::page)),
    Route::new(Method::GET, "/ui/{asset}", |m| on(m, ui::asset)),
];

/// A router with every route of [`ROUTES`] (no fallbacks, no layers).
pub(super) fn api() -> Router<AppState> {
    ROUTES.iter().fold(Router::new(), |router, route| {
        // Calling `route` again for a path adds the method to it.
        router.route(route.path, (route.handler)(filter(&route.method)))
    })
}

/// # Panics
///
/// For a method axum cannot route (`CONNECT`, extensions): the table uses
/// none, and the first router built (every test's) would say so.
fn filter(method: &Method) -> MethodFilter {
    MethodFilter::try_from(method.clone()).expect("the route table uses routable methods")
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    state.metrics.render(Format::negotiate(&headers))
}

async fn openapi() -> Response {
    let mut response = (StatusCode::OK, OPENAPI_JSON).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
