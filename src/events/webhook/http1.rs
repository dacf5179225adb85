//! The pool's own HTTP/1.1 client for `http://` callbacks: POSTs of
//! events over keep-alive connections that the subscription's delivery task
//! owns, with nothing shared between tasks.
//!
//! A webhook POST is always the same request with three headers and a body
//! changed, so the request line and the fixed headers are written once per
//! subscription, and answers are parsed in place (`httparse`) and their
//! bodies skipped. Several POSTs (for different keys: the task never has
//! two events of one key out) are pipelined on one connection: written in
//! one `write`, their answers read in order, often several per `read`. On
//! loopback, the kernel's send and receive path per call was most of the
//! CPU an event cost. A general client (reqwest over hyper's pooled
//! client) spent more CPU per event on parsing the URL, building and
//! cloning header maps, its pool and redirect layers and a task hand-off
//! per request than the POST itself cost.
//!
//! `https://` callbacks, and URLs with credentials, go through reqwest (see
//! [`Endpoint::for_url`]).
//!
//! Invariants: answers are matched to requests in order; a connection goes
//! back to the idle list only after every request on it was answered and
//! nothing followed the last answer, and only if the answers allow
//! keep-alive; anything unexpected closes it, and the requests it left
//! unanswered are the caller's to send again.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most header lines an answer may have.
const MAX_HEADERS: usize = 64;

/// An answer's head may not be longer than this.
const MAX_HEAD: usize = 64 * 1024;

/// Bodies longer than this are not read to keep the connection: it is
/// closed instead.
const MAX_SKIPPED_BODY: u64 = 1024 * 1024;

/// An idle connection is closed after this long (receivers close theirs
/// too, often sooner; a stale one is noticed and replaced, see [`post`]).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A receiver's address and the head every POST to it starts with.
#[derive(Debug)]
pub(super) struct Endpoint {
    /// What to connect to: a name or an IP address (without brackets).
    host: Box<str>,
    port: u16,
    /// `POST <path> HTTP/1.1` and the fixed headers, each line ended.
    head: Box<[u8]>,
    /// `host:port`, for errors.
    authority: Box<str>,
}

impl Endpoint {
    /// The endpoint of a plain `http://` URL without credentials; `None`
    /// for anything else (`https`, `user:password@`), which reqwest sends.
    pub(super) fn for_url(url: &str, user_agent: &str) -> Option<Endpoint> {
        let url = reqwest::Url::parse(url).ok()?;
        if url.scheme() != "http" || !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        // An IPv6 address comes in brackets, as it is written in the URL.
        let written = url.host_str()?;
        let host: Box<str> = written.trim_start_matches('[').trim_end_matches(']').into();
        let port = url.port_or_known_default()?;
        let mut target = url.path().to_owned();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let authority = match url.port() {
            Some(port) => format!("{written}:{port}"),
            None => written.to_owned(),
        };
        let head = format!(
            "POST {target} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {user_agent}\r\n\
             content-type: application/json\r\naccept: */*\r\n"
        );
        Some(Endpoint {
            host,
            port,
            head: head.into_bytes().into_boxed_slice(),
            authority: authority.into(),
        })
    }
}

/// One open connection to an endpoint, with its buffers.
#[derive(Debug)]
pub(super) struct Conn {
    stream: TcpStream,
    /// What was read of the answers.
    inbuf: Vec<u8>,
    /// When it was last put back idle.
    pub(super) idle_since: Instant,
}

/// What the receiver answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answer {
    /// The status code.
    pub(super) status: u16,
    /// `Retry-After` in seconds, when given as a number.
    pub(super) retry_after: Option<u64>,
}

/// Why a POST got no answer.
#[derive(Debug)]
struct Failed {
    text: String,
    /// Nothing came back at all: on a connection that was idle, the
    /// receiver may have closed it meanwhile, so a new one is tried.
    silent: bool,
    /// No answer came in time.
    timed_out: bool,
}

fn failed(text: impl Into<String>) -> Failed {
    Failed {
        text: text.into(),
        silent: false,
        timed_out: false,
    }
}

/// The headers of one POST beyond the endpoint's fixed ones.
pub(super) struct Headers<'a> {
    pub(super) id: &'a str,
    pub(super) timestamp: u64,
    pub(super) signature: Option<&'a str>,
}

/// Appends one POST of `body` to `out`: several appended requests go out
/// together, pipelined (see [`pipeline`]).
pub(super) fn write_request(
    out: &mut Vec<u8>,
    endpoint: &Endpoint,
    headers: &Headers<'_>,
    body: &[u8],
) {
    out.extend_from_slice(&endpoint.head);
    out.extend_from_slice(b"webhook-id: ");
    out.extend_from_slice(headers.id.as_bytes());
    out.extend_from_slice(b"\r\nwebhook-timestamp: ");
    out.extend_from_slice(itoa::Buffer::new().format(headers.timestamp).as_bytes());
    if let Some(signature) = headers.signature {
        out.extend_from_slice(b"\r\nwebhook-signature: ");
        out.extend_from_slice(signature.as_bytes());
    }
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// What a pipeline came to.
#[derive(Debug)]
pub(super) struct Pipelined {
    /// The answers, in the order of the requests: all of them, or fewer
    /// when the connection ended (or stalled) first.
    pub(super) answers: Vec<Answer>,
    /// Why the requests after the answers got none (`None` when every
    /// request was answered).
    pub(super) error: Option<String>,
    /// No answer came within the timeout after at least one did: the
    /// receiver may not read pipelined requests.
    pub(super) stalled: bool,
    /// The connection, if it may carry the next requests.
    pub(super) conn: Option<Conn>,
}

/// Sends `n` requests (written into `requests` by [`write_request`]) in
/// one write, on `conn` if given (an idle connection) or else on a new
/// one, and reads their answers in order, each within `timeout`
/// (HTTP/1.1 pipelining, RFC 9112 §9.3.2). An answer that closes the
/// connection (`Connection: close`, HTTP/1.0, a body until the end) or a
/// connection that ends or fails leaves the later requests unanswered;
/// the caller sends them again. An idle connection that turns out closed
/// before anything came back is replaced by a new one and everything sent
/// again, once (at least once: the receiver may have had the requests, and
/// de-duplicates by `webhook-id`).
pub(super) async fn pipeline(
    endpoint: &Endpoint,
    conn: Option<Conn>,
    requests: &[u8],
    n: usize,
    timeout: Duration,
) -> Pipelined {
    let mut reused = conn.is_some();
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut conn = match conn {
        Some(conn) => conn,
        None => match connect(endpoint, deadline, timeout).await {
            Ok(conn) => conn,
            Err(e) => return unanswered(Vec::new(), e, false),
        },
    };
    let mut answers = Vec::with_capacity(n);
    let first = loop {
        let result = exchange(
            &mut conn,
            endpoint,
            requests,
            n,
            &mut answers,
            deadline,
            timeout,
        )
        .await;
        if !(reused && answers.is_empty() && matches!(&result, Err(f) if f.silent)) {
            break result;
        }
        // A stale idle connection: once more on a new one.
        reused = false;
        deadline = tokio::time::Instant::now() + timeout;
        conn = match connect(endpoint, deadline, timeout).await {
            Ok(conn) => conn,
            Err(e) => return unanswered(answers, e, false),
        };
    };
    match first {
        // Nothing may follow the last answer on a connection kept.
        Ok(true) if answers.len() == n && conn.inbuf.is_empty() => Pipelined {
            answers,
            error: None,
            stalled: false,
            conn: Some(conn),
        },
        Ok(_) if answers.len() == n => unanswered(answers, String::new(), false),
        Ok(_) => unanswered(
            answers,
            format!(
                "{}: the connection was closed after an answer",
                endpoint.authority
            ),
            false,
        ),
        Err(f) => {
            let stalled = f.timed_out && !answers.is_empty();
            unanswered(answers, f.text, stalled)
        }
    }
}

fn unanswered(answers: Vec<Answer>, error: String, stalled: bool) -> Pipelined {
    Pipelined {
        error: (!error.is_empty()).then_some(error),
        answers,
        stalled,
        conn: None,
    }
}

async fn connect(
    endpoint: &Endpoint,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Conn, String> {
    let stream = match tokio::time::timeout_at(
        deadline,
        TcpStream::connect((&*endpoint.host, endpoint.port)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("cannot connect to {}: {e}", endpoint.authority)),
        Err(_) => {
            return Err(format!(
                "{}: no connection within {timeout:?}",
                endpoint.authority
            ));
        }
    };
    // Requests are written whole; waiting to fill a segment only delays them.
    let _ = stream.set_nodelay(true);
    Ok(Conn {
        stream,
        inbuf: Vec::with_capacity(1024),
        idle_since: Instant::now(),
    })
}

/// Writes the requests and reads their answers into `answers`, each
/// within `timeout`; says whether the connection may carry more (false
/// once an answer closes it, which leaves the requests after it
/// unanswered).
async fn exchange(
    conn: &mut Conn,
    endpoint: &Endpoint,
    requests: &[u8],
    n: usize,
    answers: &mut Vec<Answer>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<bool, Failed> {
    match tokio::time::timeout_at(deadline, conn.stream.write_all(requests)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(Failed {
                text: format!("cannot send to {}: {e}", endpoint.authority),
                silent: true,
                timed_out: false,
            });
        }
        Err(_) => return Err(no_answer(endpoint, timeout)),
    }
    if n > 1 {
        ack_at_once(&conn.stream);
    }
    conn.inbuf.clear();
    let mut deadline = deadline;
    while answers.len() < n {
        let Ok(read) = tokio::time::timeout_at(deadline, read_answer(conn, endpoint)).await else {
            return Err(no_answer(endpoint, timeout));
        };
        let (answer, keep_alive) = read?;
        answers.push(answer);
        if !keep_alive {
            return Ok(false);
        }
        deadline = tokio::time::Instant::now() + timeout;
    }
    Ok(true)
}

/// Makes the kernel acknowledge each answer as soon as it is read, until
/// the next write. A receiver with Nagle's algorithm on (no `TCP_NODELAY`,
/// as with many servers' defaults) holds its second answer until the first
/// is acknowledged, and after a write Linux delays acknowledgements (up to
/// 40 ms) to piggyback them on the next one, which a pipeline only sends
/// once every answer is in: without this, each pipeline waited for the
/// delayed-ack timer.
fn ack_at_once(stream: &TcpStream) {
    #[cfg(target_os = "linux")]
    let _ = stream.set_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = stream;
}

fn no_answer(endpoint: &Endpoint, timeout: Duration) -> Failed {
    Failed {
        text: format!("{}: no answer within {timeout:?}", endpoint.authority),
        silent: false,
        timed_out: true,
    }
}

/// How an answer's body is delimited (RFC 9112 §6.3).
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the receiver closes the connection.
    Close,
}

/// Reads one answer, and past its body; also says whether the connection
/// may carry more (what follows in `inbuf` belongs to the next answer).
async fn read_answer(conn: &mut Conn, endpoint: &Endpoint) -> Result<(Answer, bool), Failed> {
    loop {
        let parsed = parse_head(&conn.inbuf)?;
        let Some((head_len, answer, framing, keep_alive)) = parsed else {
            if conn.inbuf.len() >= MAX_HEAD {
                return Err(failed(format!(
                    "{}: an answer's head is longer than {MAX_HEAD} bytes",
                    endpoint.authority
                )));
            }
            if fill(conn).await? == 0 {
                return Err(Failed {
                    text: format!(
                        "{}: connection closed before a complete answer",
                        endpoint.authority
                    ),
                    silent: conn.inbuf.is_empty(),
                    timed_out: false,
                });
            }
            continue;
        };
        conn.inbuf.drain(..head_len);
        if (100..200).contains(&answer.status) && answer.status != 101 {
            // An interim answer (100 Continue, 103 Early Hints): the real
            // one follows.
            continue;
        }
        let reusable = keep_alive && answer.status != 101 && skip_body(conn, framing).await?;
        return Ok((answer, reusable));
    }
}

/// Parses an answer's head if `buf` holds all of it: its length, the
/// answer, the body's framing and whether keep-alive is allowed.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Answer, Framing, bool)>, Failed> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut lines);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(failed(format!("malformed answer: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut keep_alive = response.version == Some(1);
    let mut length = None;
    let mut transfer = None;
    let mut retry_after = None;
    for header in response.headers.iter() {
        let name = header.name;
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| failed(format!("malformed answer: content-length {value:?}")))?;
            if length.is_some_and(|m| m != n) {
                return Err(failed("malformed answer: two content-lengths"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer = Some(value.to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse::<u64>().ok();
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if let Some(transfer) = transfer {
        if transfer.rsplit(',').next().map(str::trim) == Some("chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some((
        head_len,
        Answer {
            status,
            retry_after,
        },
        framing,
        keep_alive,
    )))
}

/// Reads more of the answer into `inbuf`; 0 at the end of the stream.
async fn fill(conn: &mut Conn) -> Result<usize, Failed> {
    conn.inbuf.reserve(4096);
    conn.stream
        .read_buf(&mut conn.inbuf)
        .await
        .map_err(|e| Failed {
            text: format!("cannot read the answer: {e}"),
            silent: conn.inbuf.is_empty() && is_reset(&e),
            timed_out: false,
        })
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Reads past the body; whether the connection can be used again (false
/// when the body runs to the end of the stream or is too long to read).
async fn skip_body(conn: &mut Conn, framing: Framing) -> Result<bool, Failed> {
    match framing {
        Framing::None => Ok(true),
        Framing::Close => Ok(false),
        Framing::Length(n) if n > MAX_SKIPPED_BODY => Ok(false),
        Framing::Length(mut left) => loop {
            let have = conn.inbuf.len() as u64;
            if have >= left {
                // `left` is at most `have`, which is a buffer's length.
                conn.inbuf.drain(..left as usize);
                return Ok(true);
            }
            left -= have;
            conn.inbuf.clear();
            if fill(conn).await? == 0 {
                return Err(failed("connection closed in the answer's body"));
            }
        },
        Framing::Chunked => {
            let mut chunks = Chunks::Size;
            let mut skipped = 0u64;
            loop {
                let (used, next) = chunks.advance(&conn.inbuf)?;
                conn.inbuf.drain(..used);
                skipped += used as u64;
                chunks = next;
                if matches!(chunks, Chunks::Done) {
                    return Ok(true);
                }
                if skipped > MAX_SKIPPED_BODY {
                    return Ok(false);
                }
                if fill(conn).await? == 0 {
                    return Err(failed("connection closed in the answer's body"));
                }
            }
        }
    }
}

/// Where a chunked body is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

impl Chunks {
    /// Consumes what it can of `buf`: the bytes used and the new state.
    fn advance(mut self, buf: &[u8]) -> Result<(usize, Chunks), Failed> {
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self {
                Chunks::Done => return Ok((at, self)),
                Chunks::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        at += used;
                        self = Chunks::Trailers;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        at += used;
                        self = Chunks::Data(size);
                    }
                    Ok(httparse::Status::Partial) => return Ok((at, self)),
                    Err(_) => return Err(failed("malformed answer: a bad chunk size")),
                },
                Chunks::Data(left) => {
                    if rest.is_empty() {
                        return Ok((at, self));
                    }
                    let n = left.min(rest.len() as u64);
                    // `n` is at most `rest.len()`.
                    at += n as usize;
                    self = if n == left {
                        Chunks::DataEnd
                    } else {
                        Chunks::Data(left - n)
                    };
                }
                Chunks::DataEnd => {
                    if rest.len() < 2 {
                        return Ok((at, self));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(failed("malformed answer: no CRLF after a chunk"));
                    }
                    at += 2;
                    self = Chunks::Size;
                }
                Chunks::Trailers => {
                    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        return Ok((at, self));
                    };
                    at += end + 2;
                    if end == 0 {
                        self = Chunks::Done;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_written_once_per_endpoint() {
        let e = Endpoint::for_url("http://127.0.0.1:8080/a/b?c=d#frag", "UA/1").expect("http");
        assert_eq!(&*e.host, "127.0.0.1");
        assert_eq!(e.port, 8080);
        assert_eq!(
            std::str::from_utf8(&e.head).expect("ascii"),
            "POST /a/b?c=d HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nuser-agent: UA/1\r\n\
             content-type: application/json\r\naccept: */*\r\n"
        );
        let v6 = Endpoint::for_url("http://[::1]/", "UA").expect("http");
        assert_eq!((&*v6.host, v6.port), ("::1", 80));
        assert!(
            std::str::from_utf8(&v6.head)
                .expect("ascii")
                .contains("host: [::1]\r\n")
        );
        assert!(Endpoint::for_url("https://example.com/", "UA").is_none());
        assert!(Endpoint::for_url("http://u:p@example.com/", "UA").is_none());
    }

    #[test]
    fn answers_are_framed_as_rfc_9112_says() {
        let head = |s: &str| match parse_head(s.as_bytes()) {
            Ok(Some((n, answer, framing, keep))) => (n, answer, framing, keep),
            _ => panic!("complete head expected: {s:?}"),
        };
        let (n, a, f, keep) = head("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!((n, a.status, keep), (38, 200, true));
        assert!(matches!(f, Framing::Length(2)));
        let (_, a, f, keep) =
            head("HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nConnection: close\r\n\r\n");
        assert_eq!((a.status, a.retry_after, keep), (503, Some(7), false));
        assert!(matches!(f, Framing::Close));
        let (_, _, f, keep) = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(f, Framing::None) && !keep);
        let (_, _, f, _) = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(f, Framing::Chunked));
        let (_, _, f, _) = head("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n");
        assert!(matches!(f, Framing::None));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le"),
            Ok(None)
        ));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn a_chunked_body_is_skipped_in_any_pieces() {
        let body = b"4\r\nwiki\r\n5;ext=1\r\npedia\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut state = Chunks::Size;
            let mut buf = body[..split].to_vec();
            let (used, next) = state.advance(&buf).expect("valid");
            buf.drain(..used);
            state = next;
            buf.extend_from_slice(&body[split..]);
            let (used, next) = state.advance(&buf).expect("valid");
            assert_eq!(next, Chunks::Done, "split at {split}");
            assert_eq!(used, buf.len(), "split at {split}");
        }
        assert!(Chunks::Size.advance(b"zz\r\n").is_err());
        assert!(Chunks::DataEnd.advance(b"xx").is_err());
    }
}
