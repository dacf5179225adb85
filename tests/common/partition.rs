//! Network partitions between real cluster members without root: each
//! member listens on its own loopback address (127.0.0.1, .2, .3), so its
//! Raft calls leave from it, and every member reaches the others' Raft
//! routes through a TCP proxy here. Cutting one member's address in every
//! proxy isolates it both ways, while a test still reaches its client
//! port directly.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::cluster::TestCluster;

/// Which member is cut off, if any.
type Cut = Arc<Mutex<Option<IpAddr>>>;

/// The proxies in front of every member's Raft routes.
pub struct Partitions {
    cut: Cut,
    /// Proxy address of node `i + 1`.
    pub proxies: Vec<SocketAddr>,
}

impl Partitions {
    /// A proxy in front of each member of `cluster` (started with
    /// [`TestCluster::start_on_own_ips`]).
    pub fn new(cluster: &TestCluster) -> Partitions {
        let cut: Cut = Arc::new(Mutex::new(None));
        let proxies = cluster
            .nodes
            .iter()
            .map(|n| proxy(n.addr.parse().expect("addr"), Arc::clone(&cut)))
            .collect();
        Partitions { cut, proxies }
    }

    /// The `/cluster/init` body naming each member's proxy as its Raft URL.
    pub fn members(&self, cluster: &TestCluster) -> Value {
        cluster.members(|n| Some(format!("http://{}", self.proxies[n.id as usize - 1])))
    }

    /// Cuts node `index + 1` off from the others, both ways.
    pub fn isolate(&self, cluster: &TestCluster, index: usize) {
        let ip = cluster.nodes[index]
            .addr
            .parse::<SocketAddr>()
            .expect("addr")
            .ip();
        *self.cut.lock().expect("lock") = Some(ip);
    }

    /// Joins everyone again.
    pub fn heal(&self) {
        *self.cut.lock().expect("lock") = None;
    }
}

fn is_cut(cut: &Cut, a: IpAddr, b: IpAddr) -> bool {
    let cut = *cut.lock().expect("lock");
    cut == Some(a) || cut == Some(b)
}

/// Copies `from` to `to` until either side closes or the link is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: Cut, a: IpAddr, b: IpAddr) {
    let mut buf = [0u8; 16 * 1024];
    from.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    loop {
        if is_cut(&cut, a, b) {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if is_cut(&cut, a, b) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A proxy in front of `target`; returns its address.
fn proxy(target: SocketAddr, cut: Cut) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(peer) = client.peer_addr() else {
                continue;
            };
            if is_cut(&cut, peer.ip(), target.ip()) {
                continue;
            }
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let (cut1, cut2) = (Arc::clone(&cut), Arc::clone(&cut));
            let (a, b) = (peer.ip(), target.ip());
            std::thread::spawn(move || pump(client, server, cut1, a, b));
            std::thread::spawn(move || pump(s2, c2, cut2, a, b));
        }
    });
    addr
}
