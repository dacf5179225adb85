//! Raw TCP to a server, for what a well-behaved HTTP client cannot do on
//! purpose: a head that never ends, a body that never comes, bytes the
//! client library would never send.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use super::TestServer;

/// The read timeout for tests of `--header-read-timeout-secs 1`: well past
/// that second and well short of the server's default (30 s), so a server
/// that ignored the flag, and cut the client off only at its default,
/// fails the test instead of passing it.
pub const SHORT_OF_THE_DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection whose reads fail after `read_timeout` without a byte, so a
/// server bug fails the test instead of hanging it.
pub fn connect(server: &TestServer, read_timeout: Duration) -> TcpStream {
    let tcp = TcpStream::connect(server.addr()).expect("connect");
    tcp.set_read_timeout(Some(read_timeout)).expect("timeout");
    tcp
}

/// A loopback port nothing listens on now (for a receiver that is down,
/// or a helper process to bind).
///
/// It is taken below Linux's ephemeral range (32768-60999 by default), so
/// that no `bind(0)` of a parallel test and no outgoing connection can be
/// given it before the test binds it: a client that keeps connecting to a
/// dead port in that range can be given that very port as its own local
/// port and connect to itself (TCP simultaneous open), which holds it.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
    (0..COUNT)
        .map(|i| {
            u16::try_from(FIRST + (start.wrapping_add(i.wrapping_mul(7_919))) % COUNT)
                .expect("port")
        })
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback port below the ephemeral range")
}

/// Reads one response head (up to the blank line) from `tcp`; what came
/// before the connection closed if it closed first.
pub fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("reading a response head: {e}"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
