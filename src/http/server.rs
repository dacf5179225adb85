//! The accept loop: HTTP/1.1 connections served by hyper with the limits
//! axum's `serve` does not expose (a header read timeout against slowloris
//! clients, a cap on the request head), keep-alive after answers that
//! leave a body unread (`unread_body`), a lingering close after those it
//! will not read (`linger`), and a graceful shutdown that lets in-flight
//! requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;

use super::linger::{LingerFlag, LingeringStream};
use super::{App, unread_body};

/// The largest request head (request line and headers) hyper buffers. A
/// larger one gets a bare `431` and the connection closes; this bounds the
/// memory a slow client can pin. Smaller heads over the API's own limits
/// get the enveloped `414` / `431` from the admission middleware.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits for every open connection to finish its request.
///
/// # Errors
///
/// None so far: accept failures are logged and retried, as a full
/// descriptor table must not stop the server.
pub(super) async fn run(
    listener: TcpListener,
    app: App,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    // `stop` tells connections to finish; every connection task holds a
    // `running` receiver, so `closed()` resolves once the last one is gone.
    let (stop_tx, stop_rx) = watch::channel(());
    let (running_tx, running_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Per-connection failures (reset before accept) are
                    // noise; others (EMFILE) need a pause, or the loop spins.
                    if !is_connection_error(&e) {
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        // Small responses should leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let linger = LingerFlag::default();
        let closing = linger.clone();
        // Every layer of `App` is always ready, so `call` needs no
        // `poll_ready` first.
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let (request, watch) = unread_body::watch(request);
            let answer = app.clone().call(request);
            let closing = closing.clone();
            async move {
                let mut response = answer.await?;
                if let Some(watch) = watch
                    && watch.settle(&mut response, header_read_timeout)
                {
                    closing.set();
                }
                Ok::<_, Infallible>(response)
            }
        });
        let conn = http
            .serve_connection(TokioIo::new(LingeringStream::new(tcp, linger)), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        let running = running_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // Timeouts, resets and malformed requests: the client's doing.
                tracing::debug!("connection ended: {e}");
            }
            drop(running);
        });
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(running_rx);
    running_tx.closed().await;
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
