//! A network partition between real members (SPEC §10): each member
//! listens on its own loopback address (127.0.0.1, .2, .3), so its Raft
//! calls leave from it, and every member reaches the others' Raft routes
//! through a TCP proxy in this test. Cutting the leader's address in every
//! proxy isolates it both ways, while the test still reaches it directly.
//! The isolated leader must acknowledge nothing, the majority elects a new
//! leader that takes writes, and after healing the old leader follows.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{TestCluster, eventually, http, read as read_retrying};
use serde_json::json;

/// Which member is cut off, if any.
type Cut = Arc<Mutex<Option<IpAddr>>>;

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

#[test]
fn an_isolated_leader_acknowledges_nothing_and_follows_after_healing() {
    let args = ["--raft-heartbeat-ms", "100", "--raft-election-ms", "500"];
    let cluster = TestCluster::start_on_own_ips(3, &args);
    let cut: Cut = Arc::new(Mutex::new(None));
    let proxies: Vec<SocketAddr> = cluster
        .nodes
        .iter()
        .map(|n| proxy(n.addr.parse().expect("addr"), Arc::clone(&cut)))
        .collect();
    let members = cluster.members(|n| Some(format!("http://{}", proxies[n.id as usize - 1])));
    let init = cluster.init_with(&members);
    assert_eq!(init.status(), 200, "{:?}", init.text());
    let old = cluster.leader();
    let old_node = &cluster.nodes[old];
    let before = http()
        .put(old_node.at("/kv/before"))
        .json(&json!(1))
        .send()
        .expect("PUT");
    assert_eq!(before.status(), 201);

    // Isolate the leader: every proxy drops its traffic, both ways.
    let old_ip: IpAddr = old_node.addr.parse::<SocketAddr>().expect("addr").ip();
    *cut.lock().expect("lock") = Some(old_ip);
    let isolated_write = {
        let url = old_node.at("/kv/isolated");
        std::thread::spawn(move || {
            http()
                .put(url)
                .timeout(Duration::from_secs(5))
                .json(&json!("must not be acknowledged"))
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = cluster.leader_among(&others, Duration::from_secs(30));
    assert_ne!(new, old);
    let during = http()
        .put(cluster.nodes[new].at("/kv/during"))
        .json(&json!(2))
        .send()
        .expect("PUT");
    assert_eq!(during.status(), 201);
    let answer = isolated_write.join().expect("writer");
    assert!(
        !answer.as_ref().is_ok_and(|s| (200..300).contains(s)),
        "the isolated leader acknowledged a write: {answer:?}"
    );
    // Nor does it serve a linearizable read it cannot confirm.
    let read = http()
        .get(old_node.at("/kv/before"))
        .timeout(Duration::from_secs(8))
        .send()
        .map(|r| r.status().as_u16());
    assert!(
        !read.is_ok_and(|s| s == 200),
        "the isolated leader served a linearizable read"
    );

    // Heal: the old leader learns the new term and follows.
    *cut.lock().expect("lock") = None;
    let new_id = cluster.nodes[new].id;
    eventually(Duration::from_secs(30), "the old leader following", || {
        let status = cluster.nodes[old].status()?;
        (status["role"] == "follower" && status["leader_id"] == new_id).then_some(())
    });
    for node in &cluster.nodes {
        let during = read_retrying(&node.at("/kv/during"));
        assert_eq!(during.status(), 200, "node {}", node.id);
        let isolated = read_retrying(&node.at("/kv/isolated"));
        assert_eq!(isolated.status(), 404, "node {}", node.id);
    }
    eprintln!("partition: proxies between members on 127.0.0.1-3 (TCP, both ways cut)");
}
