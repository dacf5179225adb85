//! The OpenAPI document at `GET /openapi.json` against the router: every
//! route of `dododb::http::ROUTES` (the table the router is built from) is
//! documented, every documented operation is routed, no other method is
//! routed on a documented path, and every `$ref` resolves.

mod common;

use std::collections::BTreeSet;

use common::{TestServer, put};
use reqwest::Method;
use serde_json::Value;

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "head", "patch", "options"];

async fn served_document(server: &TestServer) -> Value {
    let response = server
        .http()
        .get(server.at("/openapi.json"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    response.json().await.expect("the document is JSON")
}

/// (METHOD, path) of every documented operation.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn routed() -> BTreeSet<(String, String)> {
    dododb::http::ROUTES
        .iter()
        .map(|r| (r.method().as_str().to_string(), r.path().to_string()))
        .collect()
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_path_is_routed() {
    let server = TestServer::start(&[]);
    let doc = served_document(&server).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let documented = documented(&doc);
    let routed = routed();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented but not in ROUTES: {unrouted:?}"
    );
    // The served document is the one compiled in.
    let compiled: Value = serde_json::from_str(dododb::http::OPENAPI_JSON).expect("JSON");
    assert_eq!(doc, compiled);
}

/// A concrete URL path for a template (`{key}` becomes a real key).
fn concrete(path: &str) -> String {
    path.replace("{key}", "openapi-probe")
}

#[tokio::test]
async fn the_server_routes_exactly_the_documented_methods() {
    let server = TestServer::start(&[]);
    let doc = served_document(&server).await;
    let http = server.http();
    let documented = documented(&doc);
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let url = server.at(&concrete(path));
        for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            let expected = documented.contains(&(method.to_string(), path.clone()));
            if method == "DELETE" && expected {
                // Deleting the probe would turn the other checks into 404s.
                continue;
            }
            // `{key}` routes get a key that exists, so a 404 can only mean
            // "no such route" (written again each time: `/kv/clear`
            // removes it).
            put(&server, "openapi-probe", "1").await;
            let response = http
                .request(Method::from_bytes(method.as_bytes()).expect("method"), &url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let status = response.status().as_u16();
            let body = if method == "GET" && (path == "/events" || path == "/ws") {
                // Endless stream or failed upgrade: the status says enough.
                String::new()
            } else {
                response.text().await.unwrap_or_default()
            };
            if expected {
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
                assert!(
                    !(status == 404 && body.contains("no such route")),
                    "{method} {path} is documented but not routed: {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is routed but not documented: {body}"
                );
            }
        }
    }
    let deleted = http
        .delete(server.at("/kv/openapi-probe"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200, "DELETE /kv/{{key}} is routed");
}

fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_and_errors_use_the_envelope() {
    let doc: Value = serde_json::from_str(dododb::http::OPENAPI_JSON).expect("JSON");
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
    }
    let codes = doc.pointer("/components/schemas/Error/properties/error/properties/code/enum");
    for code in [
        "invalid_json",
        "not_found",
        "precondition_failed",
        "unavailable",
    ] {
        assert!(
            codes
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|v| v == code)),
            "{code} missing from the Error schema"
        );
    }
    // Every documented 4xx/5xx with a body uses the envelope.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(responses) = item.get(method).and_then(|op| op["responses"].as_object())
            else {
                continue;
            };
            for (status, response) in responses {
                if (status.starts_with('4') || status.starts_with('5'))
                    && let Some(schema) = response.pointer("/content/application~1json/schema")
                {
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

/// `/ui/{asset}` names exactly the console's files (those under `ui/`), and
/// each is served with a content type the document lists.
#[tokio::test]
async fn the_console_assets_are_exactly_the_documented_names() {
    let doc: Value = serde_json::from_str(dododb::http::OPENAPI_JSON).expect("JSON");
    let op = &doc["paths"]["/ui/{asset}"]["get"];
    let documented: BTreeSet<String> = op["parameters"][0]["schema"]["enum"]
        .as_array()
        .expect("an enum of names")
        .iter()
        .map(|v| v.as_str().expect("a name").to_string())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/ui"))
        .expect("ui/")
        .map(|e| e.expect("entry").file_name().into_string().expect("UTF-8"))
        .collect();
    assert_eq!(documented, files);
    let types = op["responses"]["200"]["content"]
        .as_object()
        .expect("content");
    let server = TestServer::start(&[]);
    let http = server.http();
    for name in &documented {
        let response = http
            .get(server.at(&format!("/ui/{name}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 200, "{name}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or_default()
            .to_string();
        assert!(types.contains_key(&content_type), "{name}: {content_type}");
    }
    let response = http
        .get(server.at("/ui/nope.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
}
