//! A cluster member's Raft figures (SPEC §7, §10) with real members on
//! 127.0.0.1: `/metrics` (parsed by strict Prometheus and OpenMetrics
//! parsers) and `/system/stats` show each member's role, term, leader,
//! log, commit and apply positions; the leader shows each follower's
//! matched index and lag, which grows while a follower is `kill -9`ed and
//! returns to 0 after it catches up by snapshot install (counted on that
//! follower); a `kill -9` of the leader shows on the survivors as a new
//! term and a leader change. A single server shows none of them.

mod common;

use std::time::Duration;

use common::TestServer;
use common::cluster::{TestCluster, eventually, http};
use openmetrics_parser::openmetrics::parse_openmetrics;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{OpenMetricsValue, PrometheusValue};
use serde_json::{Value, json};

/// A follower down for a few hundred writes needs a snapshot install.
const ARGS: [&str; 6] = common::cluster::SNAPSHOT_EVERY_100;

/// Longest wait for any one step; only a hang guard, never a timing assert.
const STEP: Duration = Duration::from_secs(60);

/// One sample: its family name, its labels and its value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: every sample.
struct Scrape(Vec<Sample>);

impl Scrape {
    /// `GET /metrics` at `url` in the default (Prometheus 0.0.4) format.
    fn of(url: &str) -> Option<Scrape> {
        let text = http()
            .get(format!("{url}/metrics"))
            .send()
            .ok()?
            .text()
            .ok()?;
        let parsed = parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("not Prometheus text ({e:?}):\n{text}"));
        let mut samples = Vec::new();
        for (name, family) in &parsed.families {
            for sample in family.iter_samples() {
                let labels = sample
                    .get_labelset()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let value = match &sample.value {
                    PrometheusValue::Counter(c) => c.value.as_f64(),
                    PrometheusValue::Gauge(v) | PrometheusValue::Unknown(v) => v.as_f64(),
                    _ => continue,
                };
                samples.push((name.clone(), labels, value));
            }
        }
        Some(Scrape(samples))
    }

    /// The one value of `name` with `labels`, if there is one.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, set, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| set.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?}: {found:?}");
        found.first().copied()
    }

    /// [`Scrape::get`] as a whole number, which the sample must be there.
    fn int(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self
            .get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"));
        assert!(value >= 0.0 && value.fract() == 0.0, "{name}: {value}");
        value as u64
    }

    /// Whether any family starts with `prefix`.
    fn has_prefix(&self, prefix: &str) -> bool {
        self.0.iter().any(|(n, _, _)| n.starts_with(prefix))
    }

    /// The role whose `dododb_raft_role` sample is 1; the others must be 0.
    fn role(&self) -> String {
        let roles: Vec<&str> = ["leader", "follower", "candidate", "learner", "shutdown"]
            .into_iter()
            .filter(|r| self.int("dododb_raft_role", &[("role", r)]) == 1)
            .collect();
        assert_eq!(roles.len(), 1, "{roles:?}");
        roles[0].to_string()
    }
}

/// `GET /system/stats` at `url`.
fn stats(url: &str) -> Value {
    let response = http()
        .get(format!("{url}/system/stats"))
        .send()
        .expect("GET /system/stats");
    assert_eq!(response.status(), 200);
    response.json().expect("stats JSON")
}

/// `PUT /kv/{key}` on the leader at `url`, which must acknowledge it.
fn put(url: &str, key: &str, value: &Value) {
    let response = http()
        .put(format!("{url}/kv/{key}"))
        .json(value)
        .send()
        .expect("PUT");
    assert!(
        response.status().is_success(),
        "PUT {key}: {}",
        response.status()
    );
}

/// The leader's view of `follower` in its `/metrics`: (matched, lag).
fn follower(scrape: &Scrape, follower: u64) -> Option<(u64, u64)> {
    let id = follower.to_string();
    let labels = [("follower", id.as_str())];
    Some((
        scrape.get("dododb_raft_follower_matched_index", &labels)? as u64,
        scrape.get("dododb_raft_follower_lag_entries", &labels)? as u64,
    ))
}

#[test]
fn raft_figures_follow_replication_snapshot_install_and_failover() {
    let mut cluster = TestCluster::start(3, &ARGS);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    let leader_id = cluster.nodes[leader].id;
    let leader_url = cluster.nodes[leader].url();
    let up = (leader + 1) % 3;
    let down = (leader + 2) % 3;
    for i in 0..20 {
        put(&leader_url, &format!("k{i}"), &json!(i));
    }

    // Every follower holds everything: lag 0, matched = the last index.
    let on_leader = eventually(STEP, "both followers matched", || {
        let s = Scrape::of(&leader_url)?;
        let last = s.int("dododb_raft_last_log_index", &[]);
        [up, down]
            .iter()
            .all(|&i| follower(&s, cluster.nodes[i].id) == Some((last, 0)))
            .then_some(s)
    });
    assert_eq!(on_leader.role(), "leader");
    assert_eq!(on_leader.int("dododb_raft_node_id", &[]), leader_id);
    assert_eq!(on_leader.int("dododb_raft_leader_id", &[]), leader_id);
    assert!(on_leader.int("dododb_raft_leader_changes_total", &[]) >= 1);
    assert!(
        on_leader
            .get("dododb_raft_quorum_ack_age_seconds", &[])
            .is_some()
    );
    let last = on_leader.int("dododb_raft_last_log_index", &[]);
    assert!(last >= 20, "{last}");
    assert!(on_leader.int("dododb_raft_committed_index", &[]) <= last);
    assert!(on_leader.int("dododb_raft_applied_index", &[]) <= last);
    assert!(
        follower(&on_leader, leader_id).is_none(),
        "the leader lists itself"
    );
    let status = cluster.nodes[leader].status().expect("status");
    let term = on_leader.int("dododb_raft_term", &[]);
    assert!(term >= 1);
    assert_eq!(status["term"].as_u64(), Some(term));

    // Followers: their role, the leader, no per-follower figures; they
    // applied everything the leader committed.
    for &i in &[up, down] {
        let url = cluster.nodes[i].url();
        let s = eventually(STEP, "the follower applied the writes", || {
            let s = Scrape::of(&url)?;
            (s.int("dododb_raft_applied_index", &[]) >= 20).then_some(s)
        });
        assert_eq!(s.role(), "follower");
        assert_eq!(s.int("dododb_raft_node_id", &[]), cluster.nodes[i].id);
        assert_eq!(s.int("dododb_raft_leader_id", &[]), leader_id);
        assert!(s.int("dododb_raft_leader_changes_total", &[]) >= 1);
        assert_eq!(s.int("dododb_raft_snapshots_installed_total", &[]), 0);
        assert!(!s.has_prefix("dododb_raft_follower_"));
        assert!(s.get("dododb_raft_quorum_ack_age_seconds", &[]).is_none());
    }

    // One follower down for 300 writes: its lag on the leader grows, the
    // other's returns to 0; the leader snapshots and purges its log.
    let down_id = cluster.nodes[down].id;
    cluster.nodes[down].kill9();
    for i in 0..300 {
        put(&leader_url, &format!("w{i}"), &json!({ "i": i }));
    }
    let (s, matched_down) = eventually(STEP, "the up follower matched again", || {
        let s = Scrape::of(&leader_url)?;
        let last = s.int("dododb_raft_last_log_index", &[]);
        let (up_matched, up_lag) = follower(&s, cluster.nodes[up].id)?;
        let (matched, lag) = follower(&s, down_id)?;
        (up_matched == last && up_lag == 0 && matched + lag == last).then_some((s, matched))
    });
    let last = s.int("dododb_raft_last_log_index", &[]);
    assert!(last - matched_down >= 300, "{matched_down} of {last}");
    assert!(s.int("dododb_raft_snapshot_index", &[]) > matched_down);
    // /system/stats says the same.
    let answer = stats(&leader_url);
    let figures = &answer["cluster"];
    assert_eq!(figures["role"], "leader");
    assert_eq!(figures["node_id"].as_u64(), Some(leader_id));
    let listed = figures["followers"]
        .as_array()
        .expect("followers")
        .iter()
        .find(|f| f["id"].as_u64() == Some(down_id))
        .expect("the down follower listed")
        .clone();
    assert_eq!(listed["matched"].as_u64(), Some(matched_down));
    assert!(listed["lag"].as_u64().expect("lag") >= 300, "{listed}");
    // Every field is the one the OpenAPI document describes.
    let doc: Value = http()
        .get(format!("{leader_url}/openapi.json"))
        .send()
        .expect("GET /openapi.json")
        .json()
        .expect("JSON");
    let described = &doc["components"]["schemas"]["Stats"]["properties"]["cluster"]["properties"];
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(figures), keys(described));
    assert_eq!(
        keys(&listed),
        keys(&described["followers"]["items"]["properties"])
    );

    // Back, it catches up by a snapshot install, counted on it; the
    // leader's lag for it returns to 0.
    cluster.nodes[down].restart();
    let down_url = cluster.nodes[down].url();
    let committed = s.int("dododb_raft_committed_index", &[]);
    let caught_up = eventually(STEP, "the restarted follower caught up", || {
        let s = Scrape::of(&down_url)?;
        (s.int("dododb_raft_applied_index", &[]) >= committed).then_some(s)
    });
    // At least one: the leader sends a newer snapshot again if it built
    // one while the first was on its way.
    assert!(
        caught_up.int("dododb_raft_snapshots_installed_total", &[]) >= 1,
        "{}",
        cluster.nodes[down].log()
    );
    assert!(caught_up.int("dododb_raft_snapshot_index", &[]) > matched_down);
    let down_stats = stats(&down_url);
    let installed = caught_up.int("dododb_raft_snapshots_installed_total", &[]);
    let in_stats = down_stats["cluster"]["snapshots_installed"].as_u64();
    assert!(in_stats.is_some_and(|n| n >= installed), "{down_stats}");
    assert_eq!(down_stats["cluster"]["role"], "follower");
    assert_eq!(down_stats["cluster"]["followers"], json!([]));
    eventually(STEP, "the leader's lag for it back to 0", || {
        let s = Scrape::of(&leader_url)?;
        let last = s.int("dododb_raft_last_log_index", &[]);
        (follower(&s, down_id)? == (last, 0)).then_some(())
    });

    // The leader killed: the survivors see a new term and a new leader.
    let before: Vec<(usize, u64)> = [up, down]
        .iter()
        .map(|&i| {
            let s = Scrape::of(&cluster.nodes[i].url()).expect("scrape");
            (i, s.int("dododb_raft_leader_changes_total", &[]))
        })
        .collect();
    cluster.nodes[leader].kill9();
    let new = cluster.leader_among(&[up, down], STEP);
    let new_id = cluster.nodes[new].id;
    let new_url = cluster.nodes[new].url();
    for (i, changes) in before {
        let url = cluster.nodes[i].url();
        let s = eventually(STEP, "the survivor following the new leader", || {
            let s = Scrape::of(&url)?;
            (s.int("dododb_raft_leader_id", &[]) == new_id).then_some(s)
        });
        assert!(s.int("dododb_raft_term", &[]) > term);
        assert!(s.int("dododb_raft_leader_changes_total", &[]) > changes);
    }
    put(&new_url, "after", &json!(true));
    let s = eventually(STEP, "the old leader lagging", || {
        let s = Scrape::of(&new_url)?;
        let (_, lag) = follower(&s, leader_id)?;
        (lag >= 1).then_some(s)
    });
    assert_eq!(s.role(), "leader");
}

#[test]
fn a_single_server_has_no_raft_figures() {
    let server = TestServer::start(&["--in-memory"]);
    let url = server.url.clone();
    put(&url, "k", &json!(1));
    let scrape = Scrape::of(&url).expect("scrape");
    assert_eq!(scrape.int("dododb_keys", &[]), 1);
    assert!(!scrape.has_prefix("dododb_raft_"));
    assert!(stats(&url).get("cluster").is_none());
}

#[test]
fn raft_figures_are_openmetrics_too() {
    let cluster = TestCluster::start(3, &ARGS);
    assert_eq!(cluster.init().status(), 200);
    let leader = cluster.leader();
    put(&cluster.nodes[leader].url(), "k", &json!(1));
    let text = http()
        .get(cluster.nodes[leader].at("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .expect("GET /metrics")
        .text()
        .expect("body");
    let parsed = parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not OpenMetrics text ({e:?}):\n{text}"));
    let value = |name: &str| -> Vec<f64> {
        parsed
            .families
            .get(name)
            .unwrap_or_else(|| panic!("no {name}:\n{text}"))
            .iter_samples()
            .map(|s| match &s.value {
                OpenMetricsValue::Counter(c) => c.value.as_f64(),
                OpenMetricsValue::Gauge(v) => v.as_f64(),
                other => panic!("{name}: {other:?}"),
            })
            .collect()
    };
    // OpenMetrics counters drop `_total` from the family name.
    assert!(value("dododb_raft_leader_changes")[0] >= 1.0);
    assert_eq!(value("dododb_raft_role").iter().sum::<f64>(), 1.0);
    assert_eq!(value("dododb_raft_follower_lag_entries").len(), 2);
}
