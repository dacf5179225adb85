//! Chaos rounds against a real 3-node cluster: 8 clients run put, get,
//! `If-Match` CAS and `/txn` value-CAS on three keys (and puts of keys of
//! their own) while the leader is killed with `kill -9` (even rounds) or
//! cut off by the proxies of `partition` (odd rounds), then brought back.
//! Each round's history is checked by `linearizable`, and every
//! acknowledged put of a key of its own must be on every member after the
//! round. `tests/cluster_chaos.rs` runs a short form; `scripts/cluster-chaos
//! N` runs N rounds.
//!
//! Clients send reads to any member (a follower serves them linearizably
//! through the read index) and writes to the member they think leads,
//! following `307`s. An answer never seen (a timeout, a reset) is recorded
//! with no output; a refused connection or a `503` before any proposal
//! leaves no record (nothing was done).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::cluster::{TestCluster, eventually, http, redirect_target};
use super::linearizable::{self, Input, Operation, Output};
use super::partition::Partitions;

/// Raft timing of the chaos members: heartbeats every 50 ms, elections
/// after 150–300 ms without one.
pub const TIMING: [&str; 4] = ["--raft-heartbeat-ms", "50", "--raft-election-ms", "150"];

/// The shared keys of a round.
const KEYS: usize = 3;
/// Clients per round.
const CLIENTS: usize = 8;

/// What a round did.
#[derive(Debug, Clone)]
pub struct Round {
    /// Its number.
    pub n: usize,
    /// `kill -9` or `partition`.
    pub fault: &'static str,
    /// From the fault until the survivors agreed on a new leader (as
    /// polled through `/cluster/status`).
    pub elected: Duration,
    /// From the fault until the first write acknowledged after it (of a
    /// write sent after the fault).
    pub failover: Duration,
    /// Operations in its history (with and without answers).
    pub ops: usize,
    /// Of those, writes whose answer was never seen.
    pub unknown: usize,
    /// Acknowledged puts of the clients' own keys, all found afterwards.
    pub acked_own: usize,
}

/// The cluster the rounds run on, with its proxies.
pub struct Chaos {
    /// The members.
    pub cluster: TestCluster,
    partitions: Partitions,
    epoch: Instant,
}

/// What the clients of a round share.
struct Shared {
    urls: Vec<String>,
    round: usize,
    epoch: Instant,
    history: Mutex<Vec<Operation>>,
    own: Mutex<Vec<String>>,
    /// Acknowledged writes, and when each was called and answered (ns
    /// since the epoch).
    writes: AtomicUsize,
    acks: Mutex<Vec<(u64, u64)>>,
    stop: AtomicBool,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A small xorshift generator: rounds differ, runs repeat.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How one request ended.
enum Answer {
    /// A final answer.
    Got(reqwest::blocking::Response),
    /// Nothing was done (no connection, or no leader to propose to).
    NotDone,
    /// It may or may not have been done.
    Unknown,
}

impl Chaos {
    /// Starts 3 members on their own loopback addresses behind proxies
    /// and makes them one group.
    pub fn start() -> Chaos {
        let cluster = TestCluster::start_on_own_ips(3, &TIMING);
        let partitions = Partitions::new(&cluster);
        let init = cluster.init_with(&partitions.members(&cluster));
        assert_eq!(init.status(), 200, "{:?}", init.text());
        Chaos {
            cluster,
            partitions,
            epoch: Instant::now(),
        }
    }

    /// Runs round `n`: clients, a fault on the leader, recovery, checks.
    ///
    /// # Panics
    ///
    /// On a linearizability violation or a lost acknowledged write.
    pub fn round(&mut self, n: usize) -> Round {
        let leader = self.cluster.leader();
        let shared = Arc::new(Shared {
            urls: self.cluster.nodes.iter().map(|n| n.url()).collect(),
            round: n,
            epoch: self.epoch,
            history: Mutex::new(Vec::new()),
            own: Mutex::new(Vec::new()),
            writes: AtomicUsize::new(0),
            acks: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || client(&shared, c, leader))
            })
            .collect();
        let writes_past = |count: usize, what: &str| {
            eventually(Duration::from_secs(60), what, || {
                (shared.writes.load(Ordering::Acquire) >= count).then_some(())
            });
        };
        writes_past(40, "40 acknowledged writes before the fault");

        let kill = n.is_multiple_of(2);
        let fault = if kill { "kill -9" } else { "partition" };
        let fault_ns = shared.now();
        if kill {
            self.cluster.nodes[leader].kill9();
        } else {
            self.partitions.isolate(&self.cluster, leader);
        }
        let survivors: Vec<usize> = (0..self.cluster.nodes.len())
            .filter(|&i| i != leader)
            .collect();
        self.cluster
            .leader_among(&survivors, Duration::from_secs(30));
        let elected = Duration::from_nanos(shared.now() - fault_ns);
        let first_after = eventually(
            Duration::from_secs(30),
            "a write acknowledged after the fault",
            || {
                let acks = shared.acks.lock().expect("lock");
                acks.iter()
                    .filter(|&&(call, _)| call > fault_ns)
                    .map(|&(_, ret)| ret)
                    .min()
            },
        );
        let failover = Duration::from_nanos(first_after - fault_ns);
        let acked = shared.writes.load(Ordering::Acquire);
        writes_past(acked + 40, "40 more acknowledged writes after the fault");

        if kill {
            self.cluster.nodes[leader].restart();
        } else {
            self.partitions.heal();
        }
        let all: Vec<usize> = (0..self.cluster.nodes.len()).collect();
        let new_leader = self.cluster.leader_among(&all, Duration::from_secs(30));
        let acked = shared.writes.load(Ordering::Acquire);
        writes_past(acked + 20, "20 more acknowledged writes after healing");
        shared.stop.store(true, Ordering::Release);
        for c in clients {
            c.join().expect("client");
        }

        // A last read of every key, after everything returned.
        let client = http();
        for k in 0..KEYS {
            let call = shared.now();
            let url = format!("{}/kv/r{n}-k{k}", shared.urls[new_leader]);
            let response = read_until_answered(&client, &url);
            let output = read_output(response).expect("a final answer");
            shared.history.lock().expect("lock").push(Operation {
                client: CLIENTS,
                key: format!("r{n}-k{k}"),
                call,
                ret: shared.now(),
                input: Input::Get,
                output: Some(output),
            });
        }
        let history = shared.history.lock().expect("lock").clone();
        if let Err(violation) = linearizable::check(&history) {
            panic!("round {n} ({fault}): {violation}");
        }
        let own = shared.own.lock().expect("lock").clone();
        self.check_own(n, new_leader, &own);
        Round {
            n,
            fault,
            elected,
            failover,
            ops: history.len(),
            unknown: history.iter().filter(|o| o.output.is_none()).count(),
            acked_own: own.len(),
        }
    }

    /// Every acknowledged put of a client's own key is on every member
    /// once it has applied what the leader committed.
    fn check_own(&self, n: usize, leader: usize, own: &[String]) {
        let committed = self.cluster.nodes[leader]
            .status()
            .and_then(|s| s["committed"].as_u64())
            .expect("the leader's committed index");
        for node in &self.cluster.nodes {
            eventually(Duration::from_secs(30), "a member catching up", || {
                (node.status()?["applied"].as_u64()? >= committed).then_some(())
            });
            let url = node.at(&format!(
                "/kv?prefix=r{n}-own-&limit=10000&consistency=stale"
            ));
            let listed: Value = http()
                .get(url)
                .send()
                .expect("GET /kv")
                .json()
                .expect("a list");
            let keys: BTreeSet<&str> = listed["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let lost: Vec<&String> = own.iter().filter(|k| !keys.contains(k.as_str())).collect();
            assert!(
                lost.is_empty(),
                "round {n}: node {} lost acknowledged writes {lost:?}",
                node.id
            );
        }
    }
}

/// `GET url` until it answers other than 503 (an election).
fn read_until_answered(client: &Client, url: &str) -> reqwest::blocking::Response {
    eventually(Duration::from_secs(30), "a read answered", || {
        client
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .ok()
            .filter(|r| r.status() != 503)
    })
}

/// The output of a `GET /kv/{key}` answer.
fn read_output(response: reqwest::blocking::Response) -> Option<Output> {
    match response.status().as_u16() {
        404 => Some(Output::Absent),
        200 => {
            let version = etag(&response)?;
            let value: u64 = response.json().ok()?;
            Some(Output::Found(value, version))
        }
        _ => None,
    }
}

fn etag(response: &reqwest::blocking::Response) -> Option<u64> {
    response
        .headers()
        .get("etag")?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

/// Sends one request built by `build` against `urls[*target]`, following
/// redirects to the leader; `target` ends on the member that answered.
fn send(
    shared: &Shared,
    target: &mut usize,
    build: &dyn Fn(&str) -> reqwest::blocking::RequestBuilder,
    write: bool,
) -> Answer {
    for _ in 0..5 {
        let base = &shared.urls[*target];
        match build(base).timeout(Duration::from_secs(2)).send() {
            Ok(r) if r.status() == 307 => match redirect_target(&r, &shared.urls) {
                Some(i) => *target = i,
                None => return Answer::NotDone,
            },
            // No leader: nothing was proposed. A 503 may also be a
            // proposal the leader lost track of, so a write's is unknown.
            Ok(r) if r.status() == 503 => {
                *target = (*target + 1) % shared.urls.len();
                let no_leader = r.text().unwrap_or_default().contains("no leader");
                return if write && !no_leader {
                    Answer::Unknown
                } else {
                    Answer::NotDone
                };
            }
            Ok(r) => return Answer::Got(r),
            Err(e) if e.is_connect() => {
                *target = (*target + 1) % shared.urls.len();
                return Answer::NotDone;
            }
            Err(_) => {
                *target = (*target + 1) % shared.urls.len();
                return Answer::Unknown;
            }
        }
    }
    Answer::NotDone
}

/// One client: random operations until told to stop.
fn client(shared: &Shared, c: usize, leader: usize) {
    let http = http();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (((shared.round as u64) << 8) | (c as u64 + 1)));
    let mut writer = leader;
    let mut seq = 0u64;
    // What this client last saw of each key: (value, version).
    let mut seen: [Option<(u64, u64)>; KEYS] = [None; KEYS];
    while !shared.stop.load(Ordering::Acquire) {
        seq += 1;
        let k = rng.below(KEYS as u64) as usize;
        let key = format!("r{}-k{k}", shared.round);
        let fresh = (c as u64 + 1) * 1_000_000 + seq;
        let dice = rng.below(100);
        let input = match (dice, seen[k]) {
            (0..35, _) => Input::Get,
            (35..50, Some((_, version))) => Input::Cas {
                version,
                value: fresh,
            },
            (50..62, Some((value, _))) => Input::TxnCas {
                expected: value,
                value: fresh,
            },
            (62..80, _) => {
                own_put(shared, &http, &mut writer, c, seq);
                continue;
            }
            _ => Input::Put(fresh),
        };
        let call = shared.now();
        let output = match &input {
            Input::Get => {
                let mut reader = rng.below(shared.urls.len() as u64) as usize;
                let url = |base: &str| http.get(format!("{base}/kv/{key}"));
                match send(shared, &mut reader, &url, false) {
                    Answer::Got(r) => match read_output(r) {
                        Some(out) => Some(out),
                        None => continue,
                    },
                    Answer::NotDone | Answer::Unknown => continue,
                }
            }
            Input::Put(v) | Input::Cas { value: v, .. } => {
                let if_match = match &input {
                    Input::Cas { version, .. } => Some(format!("\"{version}\"")),
                    _ => None,
                };
                let url = |base: &str| {
                    let mut request = http.put(format!("{base}/kv/{key}")).json(v);
                    if let Some(tag) = &if_match {
                        request = request.header("if-match", tag);
                    }
                    request
                };
                match send(shared, &mut writer, &url, true) {
                    Answer::Got(r) if r.status().is_success() => r
                        .json::<Value>()
                        .ok()
                        .and_then(|b| b["version"].as_u64())
                        .map(Output::Written),
                    Answer::Got(r) if r.status() == 412 => Some(Output::Refused),
                    Answer::Got(r) => panic!("PUT {key}: unexpected {}", r.status()),
                    Answer::NotDone => continue,
                    Answer::Unknown => None,
                }
            }
            Input::TxnCas { expected, value } => {
                let body = json!({
                    "compare": [{"key": key, "value": expected}],
                    "success": [{"op": "put", "key": key, "value": value}],
                });
                let url = |base: &str| http.post(format!("{base}/txn")).json(&body);
                match send(shared, &mut writer, &url, true) {
                    Answer::Got(r) if r.status() == 200 => {
                        let b: Value = r.json().expect("a txn answer");
                        if b["succeeded"] == true {
                            b["results"][0]["version"].as_u64().map(Output::Written)
                        } else {
                            Some(Output::Refused)
                        }
                    }
                    Answer::Got(r) => panic!("POST /txn: unexpected {}", r.status()),
                    Answer::NotDone => continue,
                    Answer::Unknown => None,
                }
            }
        };
        let ret = if output.is_some() {
            shared.now()
        } else {
            u64::MAX
        };
        match &output {
            Some(Output::Found(v, n)) => seen[k] = Some((*v, *n)),
            Some(Output::Written(n)) => {
                let value = match input {
                    Input::Put(v)
                    | Input::Cas { value: v, .. }
                    | Input::TxnCas { value: v, .. } => v,
                    Input::Get => unreachable!("a get writes nothing"),
                };
                seen[k] = Some((value, *n));
                acknowledged(shared, call, ret);
            }
            _ => {}
        }
        shared.history.lock().expect("lock").push(Operation {
            client: c,
            key,
            call,
            ret,
            input,
            output,
        });
    }
}

/// A put of a key of this client's own; remembered once acknowledged.
fn own_put(shared: &Shared, http: &Client, writer: &mut usize, c: usize, seq: u64) {
    let key = format!("r{}-own-{c}-{seq}", shared.round);
    let url = |base: &str| http.put(format!("{base}/kv/{key}")).json(&seq);
    let call = shared.now();
    if let Answer::Got(r) = send(shared, writer, &url, true) {
        assert!(r.status().is_success(), "PUT {key}: {}", r.status());
        shared.own.lock().expect("lock").push(key);
        acknowledged(shared, call, shared.now());
    }
}

fn acknowledged(shared: &Shared, call: u64, ret: u64) {
    shared.acks.lock().expect("lock").push((call, ret));
    shared.writes.fetch_add(1, Ordering::AcqRel);
}
