//! The web console's files over real HTTP, without a browser (that is
//! tests/ui.rs): every file the page loads is served with its content
//! type, an `ETag` that revalidates to `304`, and the Content-Security-
//! Policy; the files need no token when the API does; and the figures the
//! console charts are in `/system/stats`.

mod common;

use common::{TestServer, assert_error, client, put, stats};
use reqwest::StatusCode;
use serde_json::Value;

/// The files `index.html` loads, with their content types.
const FILES: [(&str, &str); 4] = [
    ("/ui", "text/html; charset=utf-8"),
    ("/ui/main.js", "text/javascript; charset=utf-8"),
    ("/ui/style.css", "text/css; charset=utf-8"),
    ("/ui/favicon.svg", "image/svg+xml"),
];

#[tokio::test]
async fn files_carry_an_etag_and_a_strict_policy() {
    let server = TestServer::start(&["--in-memory"]);
    let http = client();
    for (path, content_type) in FILES {
        let r = http.get(server.at(path)).send().await.expect("GET");
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], content_type, "{path}");
        let csp = h["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let etag = h["etag"].clone();
        let again = http
            .get(server.at(path))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .expect("GET");
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag);
    }
    // Every module the page imports is there.
    let main = http
        .get(server.at("/ui/main.js"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    for module in main.lines().filter_map(|l| l.split("from './").nth(1)) {
        let name = module.trim_end_matches("';");
        let r = http
            .get(server.at(&format!("/ui/{name}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), 200, "{name}");
    }
    let missing = http
        .get(server.at("/ui/nope.js"))
        .send()
        .await
        .expect("GET");
    assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn the_files_need_no_token_but_the_api_does() {
    let server = TestServer::start(&["--in-memory", "--auth-token", "tok"]);
    let http = client();
    for (path, _) in FILES {
        let r = http.get(server.at(path)).send().await.expect("GET");
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http.get(server.at("/kv")).send().await.expect("GET");
    assert_eq!(r.status(), 401);
    let r = http
        .put(server.at("/ui/main.js"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 401, "only reading the files is open");
}

#[tokio::test]
async fn stats_have_the_request_count_and_fsync_time() {
    let server = TestServer::start(&[]);
    let before = stats(&server).await;
    for i in 0..5 {
        put(&server, &format!("k{i}"), "1").await;
    }
    let after = stats(&server).await;
    let requests = |s: &Value| s["http"]["requests"].as_u64().expect("http.requests");
    // The five PUTs and the first stats request were answered in between.
    assert!(
        requests(&after) >= requests(&before) + 6,
        "{before} {after}"
    );
    let fsyncs = |s: &Value| s["wal"]["fsyncs"].as_u64().expect("fsyncs");
    let micros = |s: &Value| s["wal"]["fsync_micros"].as_u64().expect("fsync_micros");
    assert!(fsyncs(&after) > fsyncs(&before));
    assert!(micros(&after) > micros(&before), "{before} {after}");
}
