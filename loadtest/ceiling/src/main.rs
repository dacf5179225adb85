//! The HTTP ceiling for DodoDB's load tests: every GET, PUT and POST on any
//! path is answered `200 {"ok": true}\n` (13 bytes); POST makes it a fast
//! webhook receiver for `loadtest/webhooks`. Usage: `dododb-ceiling [--listen ADDR]`.
//! Prints `listening on http://ADDR` (the bound address) once on stdout.

use std::io::Write;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
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

fn listen_arg() -> Result<SocketAddr, String> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--listen" => args.next().ok_or("--listen needs an address")?,
            other if other.starts_with("--listen=") => other["--listen=".len()..].to_string(),
            "-h" | "--help" => {
                println!("usage: dododb-ceiling [--listen ADDR]   (default 127.0.0.1:0)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        };
        addr = value
            .parse()
            .map_err(|e| format!("bad --listen {value:?}: {e}"))?;
    }
    Ok(addr)
}

#[tokio::main]
async fn main() {
    let addr = listen_arg().unwrap_or_else(|e| {
        eprintln!("dododb-ceiling: {e}");
        std::process::exit(2);
    });
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
    let app = Router::new().fallback(answer);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("dododb-ceiling: server failed: {e}");
        std::process::exit(1);
    }
}
