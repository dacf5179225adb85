//! The web console (SPEC §11): `GET /ui` and `GET /ui/{asset}` serve the
//! files of `ui/` at the crate root, compiled into the executable with
//! `include_bytes!`, so the console needs nothing beyond `cargo build` and
//! fetches nothing at run time. The console is a client of the REST API
//! like any other; this file only serves its files.
//!
//! Every answer carries a strong `ETag` (a digest of the file, computed
//! once) and a Content-Security-Policy that allows scripts, styles and
//! connections from this origin only and no inline script or style, so a
//! key or value that looks like markup can never run. The files carry no
//! data, so they are served without the bearer token: the page asks for
//! the token itself and sends it on each API call.

use std::sync::OnceLock;

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The policy of every console file: scripts, styles, images and API calls
/// from this origin only; no inline script or style, no plugins, no
/// framing, no form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $name)),
        }
    };
}

/// Every file of the console; `index.html` is the page at `/ui`.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("main.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("json.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("keys.js", "text/javascript; charset=utf-8"),
    asset!("editor.js", "text/javascript; charset=utf-8"),
    asset!("feed.js", "text/javascript; charset=utf-8"),
    asset!("subscriptions.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
];

/// The `ETag` of each asset, in [`ASSETS`] order: a quoted prefix of its
/// SHA-256, computed on first use.
fn etags() -> &'static [HeaderValue] {
    static ETAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                HeaderValue::try_from(format!("\"{hex}\""))
                    .unwrap_or(HeaderValue::from_static("\"0\""))
            })
            .collect()
    })
}

/// `GET /ui`: the console's page.
pub(super) async fn page(headers: HeaderMap) -> Result<Response, ApiError> {
    serve("index.html", &headers)
}

/// `GET /ui/{asset}`: one of the page's scripts, styles or images.
pub(super) async fn asset(
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let index = ASSETS
        .iter()
        .position(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("the console has no file {name:?}")))?;
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches_etag(v, etag));
    let mut response = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(asset.bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    // Cached, but checked with the ETag on every load: a new binary's
    // console is never mixed with an old one's files.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(response)
}

/// Whether an `If-None-Match` list names `etag` (or is `*`); weak ETags
/// compare equal to strong ones here (RFC 9110 §13.1.2).
fn matches_etag(list: &str, etag: &HeaderValue) -> bool {
    let etag = etag.as_bytes();
    list.split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/").as_bytes() == etag)
}

/// Whether `path` is one of the console's files, which need no token.
pub(super) fn is_console_path(path: &str) -> bool {
    path == "/ui"
        || path
            .strip_prefix("/ui/")
            .is_some_and(|rest| !rest.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_an_etag_and_the_policy() {
        for asset in ASSETS {
            let response = serve(asset.name, &HeaderMap::new()).expect(asset.name);
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.name);
            let h = response.headers();
            assert!(h.contains_key(header::ETAG), "{}", asset.name);
            assert_eq!(
                h.get(header::CONTENT_SECURITY_POLICY)
                    .map(HeaderValue::as_bytes),
                Some(CONTENT_SECURITY_POLICY.as_bytes())
            );
        }
        assert!(matches!(
            serve("nope.js", &HeaderMap::new()),
            Err(ApiError::NotFound(_))
        ));
    }

    #[test]
    fn a_matching_etag_gets_not_modified() {
        let etag = etags()[0].clone();
        let check = |list: &str, fresh: bool| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::IF_NONE_MATCH,
                HeaderValue::try_from(list).expect("header"),
            );
            let status = serve("index.html", &headers).expect("served").status();
            let expected = if fresh {
                StatusCode::NOT_MODIFIED
            } else {
                StatusCode::OK
            };
            assert_eq!(status, expected, "{list}");
        };
        let tag = etag.to_str().expect("ascii");
        check(tag, true);
        check(&format!("W/{tag}"), true);
        check(&format!("\"other\", {tag}"), true);
        check("*", true);
        check("\"other\"", false);
    }

    #[test]
    fn the_policy_allows_no_inline_script() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-eval"));
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self'"));
    }

    #[test]
    fn console_paths() {
        assert!(is_console_path("/ui"));
        assert!(is_console_path("/ui/main.js"));
        assert!(!is_console_path("/ui/a/b"));
        assert!(!is_console_path("/uix"));
        assert!(!is_console_path("/kv/ui"));
    }
}
