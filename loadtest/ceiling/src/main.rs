//! The HTTP ceiling for DodoDB's load tests: every GET, PUT and POST on any
//! path is answered `200 {"ok": true}\n` (13 bytes); POST makes it a fast
//! webhook receiver for `loadtest/webhooks`.
//!
//! With `--naive-kv` it is instead the naive key-value server that
//! `docs/performance.md` describes, the bar DodoDB has to beat: axum +
//! `DashMap<String, Bytes>`, `Path<String>` extraction, no validation,
//! versions, log or events. GET `/kv/{key}` answers the stored bytes (404
//! if absent), PUT stores a copy of the body (201 new, 200 replaced).
//!
//! Usage: `dododb-ceiling [--listen ADDR] [--naive-kv]`. Prints
//! `listening on http://ADDR` (the bound address) once on stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dashmap::DashMap;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

const BODY: &str = "{\"ok\": true}\n";

async fn answer(method: Method, body: Bytes) -> Response {
    // Read the body (the extractor does) so PUT costs what it costs a real server.
    drop(body);
    if method == Method::GET || method == Method::PUT || method == Method::POST {
        ([(header::CONTENT_TYPE, "application/json")], BODY).into_response()
    } else {
        StatusCode::METHOD_NOT_ALLOWED.into_response()
    }
}

type Naive = Arc<DashMap<String, Bytes>>;

async fn naive_get(State(map): State<Naive>, Path(key): Path<String>) -> Response {
    match map.get(&key) {
        Some(value) => {
            ([(header::CONTENT_TYPE, "application/json")], value.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn naive_put(State(map): State<Naive>, Path(key): Path<String>, body: Bytes) -> Response {
    // A copy: the body is a slice of hyper's read buffer, which it would pin.
    let created = map.insert(key, Bytes::copy_from_slice(&body)).is_none();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, [(header::CONTENT_TYPE, "application/json")], BODY).into_response()
}

struct Args {
    listen: SocketAddr,
    naive_kv: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut parsed = Args {
        listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        naive_kv: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" => args.next().ok_or("--listen needs an address")?,
            other if other.starts_with("--listen=") => other["--listen=".len()..].to_string(),
            "--naive-kv" => {
                parsed.naive_kv = true;
                continue;
            }
            "-h" | "--help" => {
                println!(
                    "usage: dododb-ceiling [--listen ADDR] [--naive-kv]   (default 127.0.0.1:0)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        };
        parsed.listen = value
            .parse()
            .map_err(|e| format!("bad --listen {value:?}: {e}"))?;
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("dododb-ceiling: {e}");
        std::process::exit(2);
    });
    let addr = args.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("dododb-ceiling: cannot listen on {addr}: {e}");
            std::process::exit(1);
        });
    let bound = listener.local_addr().expect("bound address");
    // One line for the script that started us; flushed because stdout is a pipe.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{bound}");
    let _ = out.flush();
    drop(out);
    let app = if args.naive_kv {
        Router::new()
            .route("/kv/{key}", get(naive_get).put(naive_put))
            .with_state(Naive::default())
    } else {
        Router::new().fallback(answer)
    };
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("dododb-ceiling: server failed: {e}");
        std::process::exit(1);
    }
}
