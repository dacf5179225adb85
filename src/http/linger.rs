//! Lingering close, as nginx and Go's net/http do it. When the server
//! closes a connection after an answer that left the client's body unread
//! (`unread_body`'s `Connection: close`: a large import sent to a follower
//! that redirects it, a 413, a 401), closing at once makes the kernel reset
//! the connection over the unread bytes. A client still sending its body
//! then gets a broken pipe or a reset and never reads the answer. So such a
//! connection is half-closed once hyper lets go of it, and what the client
//! still sends is read and thrown away, for a bounded time, before the
//! socket is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The longest a closing connection reads on (nginx's `lingering_time`
/// is 30 s; a client on a sane network has sent a body of the sizes the
/// API takes well within this).
const LINGER_FOR: Duration = Duration::from_secs(10);

/// The longest it waits for the client's next bytes (nginx's
/// `lingering_timeout` is 5 s).
const LINGER_IDLE: Duration = Duration::from_secs(2);

/// Says that the connection's owner closes it with the client's body
/// unread; set from the request path, read when the stream is dropped.
#[derive(Clone, Default)]
pub(super) struct LingerFlag(Arc<AtomicBool>);

impl LingerFlag {
    /// The connection will close with the client's body unread.
    pub(super) fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A TCP stream that lingers on drop when its [`LingerFlag`] is set.
pub(super) struct LingeringStream {
    stream: Option<TcpStream>,
    linger: LingerFlag,
}

impl LingeringStream {
    pub(super) fn new(stream: TcpStream, linger: LingerFlag) -> Self {
        Self {
            stream: Some(stream),
            linger,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        if !self.linger.0.load(Ordering::Relaxed) {
            return;
        }
        let (Some(stream), Ok(runtime)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(linger(stream));
    }
}

/// Half-closes `stream` (the client reads the answer, then end of file)
/// and discards what the client still sends until it closes too, stalls
/// for [`LINGER_IDLE`], or [`LINGER_FOR`] has passed.
async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(LINGER_FOR, async {
        while let Ok(Ok(n)) = tokio::time::timeout(LINGER_IDLE, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
