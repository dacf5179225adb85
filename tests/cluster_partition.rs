//! A network partition between real members (SPEC §10), made with TCP
//! proxies between the members (`common::partition`: each member on its
//! own loopback address, its Raft traffic through proxies that can
//! black-hole it both ways; no root needed). The isolated leader must
//! acknowledge nothing, the majority elects a new leader that takes
//! writes, and after healing the old leader follows.

mod common;

use std::time::Duration;

use common::cluster::{TestCluster, eventually, http, read as read_retrying};
use common::partition::Partitions;
use serde_json::json;

#[test]
fn an_isolated_leader_acknowledges_nothing_and_follows_after_healing() {
    let args = ["--raft-heartbeat-ms", "100", "--raft-election-ms", "500"];
    let cluster = TestCluster::start_on_own_ips(3, &args);
    let partitions = Partitions::new(&cluster);
    let init = cluster.init_with(&partitions.members(&cluster));
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
    partitions.isolate(&cluster, old);
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
    partitions.heal();
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
