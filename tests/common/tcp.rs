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
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
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
