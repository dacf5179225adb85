//! The crash ledger: what writers did to each key, checked after every
//! crash or power cut.
//!
//! Eight writers each own their keys, so every key's history is a plain
//! sequence: puts of values that are never reused, and deletes. Each entry
//! knows whether it was acknowledged, with its version and when. After a
//! restart, each key must hold a state from its history no older than the
//! last write that had to survive (every acknowledged one under `always`),
//! never a value that was not written and never half a write. What a
//! recovery showed becomes the new floor: nothing may go back past it, and
//! the revision never goes backwards.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::webhook::Received;
use super::{TestServer, client, poll_until, stats};

/// Keys per writer: few enough that writes overwrite and delete often.
const KEYS_PER_WRITER: usize = 12;
/// Concurrent writers.
pub const WRITERS: usize = 8;

/// A key's state: its value and version, or absent.
type State = Option<(Value, u64)>;

#[derive(Debug, Clone)]
struct Op {
    /// `None`: a delete.
    value: Option<Value>,
    /// Set once acknowledged.
    version: Option<u64>,
    acked_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct KeyLog {
    /// The state the last recovery showed.
    base: State,
    ops: Vec<Op>,
    /// Every op of earlier cycles, oldest first (for checking events).
    history: Vec<Op>,
}

impl KeyLog {
    /// The state after the first `n` ops (0: the base).
    fn state_after(&self, n: usize) -> Option<(&Value, Option<u64>)> {
        if n == 0 {
            return self.base.as_ref().map(|(v, ver)| (v, Some(*ver)));
        }
        let op = &self.ops[n - 1];
        op.value.as_ref().map(|v| (v, op.version))
    }

    fn present(&self) -> bool {
        self.state_after(self.ops.len()).is_some()
    }
}

/// Which acknowledged writes must survive a crash.
#[derive(Debug, Clone, Copy)]
pub enum MustKeep {
    /// Every one (`--fsync always`, or a `kill -9` under any policy).
    All,
    /// Those acknowledged longer than this before the cut (`everysec`).
    OlderThan(Instant, Duration),
    /// None (`--fsync never` under a power cut at this instant).
    Nothing(Instant),
}

/// What one verification found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Acknowledged writes that were lost (allowed by the policy).
    pub lost: usize,
    /// The longest time between losing a write's acknowledgement and the cut.
    pub oldest_loss: Option<Duration>,
    /// Writes in flight at the crash that made it.
    pub in_flight_kept: usize,
    /// Writes in flight at the crash that did not.
    pub in_flight_dropped: usize,
    /// Writes acknowledged in the cycle before the crash.
    pub acked: usize,
}

/// What the events a subscriber to every writer's keys got show.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Requests the receiver got.
    pub requests: usize,
    /// Distinct events among them (by `webhook-id`).
    pub events: usize,
    /// Requests for an event that had arrived before.
    pub duplicates: usize,
    /// Acknowledged changes that have not arrived (yet).
    pub missing: usize,
    /// A few of those, for a failure message.
    pub missing_examples: Vec<(String, u64)>,
}

/// The ledger of all writers across all cycles.
#[derive(Default)]
pub struct Ledger {
    keys: HashMap<String, KeyLog>,
    /// The revision the last recovery reported.
    revision: u64,
    acked_this_cycle: usize,
}

impl Ledger {
    fn begin(&mut self, key: &str, value: Option<Value>) -> usize {
        let log = self.keys.entry(key.to_string()).or_default();
        log.ops.push(Op {
            value,
            version: None,
            acked_at: None,
        });
        log.ops.len() - 1
    }

    fn ack(&mut self, key: &str, index: usize, version: u64) {
        if let Some(op) = self.keys.get_mut(key).and_then(|l| l.ops.get_mut(index)) {
            op.version = Some(version);
            op.acked_at = Some(Instant::now());
            self.acked_this_cycle += 1;
        }
    }

    /// Writes acknowledged since the last verification.
    pub fn acked_this_cycle(&self) -> usize {
        self.acked_this_cycle
    }

    /// Checks the requests a receiver subscribed to every writer key got
    /// (`got`, in arrival order) against every write the ledger saw: each
    /// event is a change some writer made (its key and value, and its
    /// version if acknowledged); a `webhook-id` is its version and never
    /// names two different changes; after de-duplication by `webhook-id`
    /// each key's versions ascend. Panics with every violation found;
    /// returns the counts, with the acknowledged changes not delivered.
    pub fn check_events(&self, got: &[Received]) -> Delivered {
        let mut errors = Vec::new();
        // (key, version) -> the value written (None: a delete), for every
        // acknowledged op; unacknowledged ones by key.
        let mut acked: HashMap<(&str, u64), Option<&Value>> = HashMap::new();
        let mut unacked: HashMap<&str, Vec<Option<&Value>>> = HashMap::new();
        for (key, log) in &self.keys {
            for op in log.history.iter().chain(&log.ops) {
                match op.version {
                    Some(version) => {
                        acked.insert((key.as_str(), version), op.value.as_ref());
                    }
                    None => unacked.entry(key).or_default().push(op.value.as_ref()),
                }
            }
        }
        let mut first: HashMap<&str, (&str, Option<&Value>)> = HashMap::new();
        let mut last_version: HashMap<&str, u64> = HashMap::new();
        let mut delivered: HashSet<(&str, u64)> = HashSet::new();
        let mut duplicates = 0;
        for r in got {
            let (id, key, version) = (r.id(), r.key(), r.version());
            let new_value = match r.body["event"].as_str() {
                Some("update") => Some(&r.body["new_value"]),
                Some("delete") => None,
                _ => {
                    errors.push(format!("{id}: an event of kind {}", r.body["event"]));
                    continue;
                }
            };
            if id != format!("evt_{version}") {
                errors.push(format!("{id}: webhook-id is not evt_{version}"));
            }
            if let Some(&(first_key, first_value)) = first.get(id) {
                duplicates += 1;
                if (first_key, first_value) != (key, new_value) {
                    errors.push(format!(
                        "{id} names two changes: {first_key} to {first_value:?}, then {key} to {new_value:?}"
                    ));
                }
                continue;
            }
            first.insert(id, (key, new_value));
            let written = match acked.get(&(key, version)) {
                Some(&value) => value == new_value,
                None => unacked.get(key).is_some_and(|ops| ops.contains(&new_value)),
            };
            if !written {
                errors.push(format!(
                    "{key}: {id} sets it to {new_value:?}, which no write of it at that version did"
                ));
            }
            let previous = last_version.insert(key, version).unwrap_or(0);
            if previous >= version {
                errors.push(format!("{key}: version {version} arrived after {previous}"));
            }
            delivered.insert((key, version));
        }
        assert!(
            errors.is_empty(),
            "{} violations in the events delivered:\n{}",
            errors.len(),
            errors.join("\n")
        );
        let mut missing: Vec<(String, u64)> = acked
            .keys()
            .filter(|k| !delivered.contains(*k))
            .map(|(key, version)| (key.to_string(), *version))
            .collect();
        missing.sort_unstable_by_key(|(_, version)| *version);
        Delivered {
            requests: got.len(),
            events: first.len(),
            duplicates,
            missing: missing.len(),
            missing_examples: missing.into_iter().take(5).collect(),
        }
    }

    /// Checks a recovered server's data (`entries`: key -> (version, value))
    /// and revision against the ledger, then makes them the new floor.
    /// Panics with every violation found.
    pub fn verify(
        &mut self,
        entries: &HashMap<String, (u64, Value)>,
        revision: u64,
        must_keep: MustKeep,
    ) -> Verified {
        let mut errors = Vec::new();
        let mut report = Verified {
            acked: self.acked_this_cycle,
            ..Verified::default()
        };
        for key in entries.keys() {
            if !self.keys.contains_key(key) {
                errors.push(format!("{key}: present but never written"));
            }
        }
        let mut must_revision = self.revision;
        for (key, log) in &mut self.keys {
            let found = entries.get(key);
            let must = |op: &Op| match (must_keep, op.acked_at) {
                (_, None) => false,
                (MustKeep::All, Some(_)) => true,
                (MustKeep::OlderThan(cut, window), Some(at)) => cut.duration_since(at) > window,
                (MustKeep::Nothing(_), Some(_)) => false,
            };
            let floor = log.ops.iter().rposition(must).map_or(0, |i| i + 1);
            for op in &log.ops[..floor] {
                must_revision = must_revision.max(op.version.unwrap_or(0));
            }
            let matches = |n: usize| match (log.state_after(n), found) {
                (None, None) => true,
                (Some((value, version)), Some((found_version, found_value))) => {
                    value == found_value && version.is_none_or(|v| v == *found_version)
                }
                _ => false,
            };
            let Some(at) = (floor..=log.ops.len()).rev().find(|&n| matches(n)) else {
                let older = (0..floor).rev().find(|&n| matches(n));
                errors.push(match older {
                    Some(n) => format!(
                        "{key}: went back to its state after op {n} of {}, below op {floor} that had to survive ({found:?})",
                        log.ops.len()
                    ),
                    None => format!(
                        "{key}: holds {found:?}, which no write of it ever had (history: {:?} then {:?})",
                        log.base, log.ops
                    ),
                });
                continue;
            };
            // Acknowledged writes after the state found were lost.
            for op in &log.ops[at..] {
                if let Some(acked_at) = op.acked_at {
                    report.lost += 1;
                    if let MustKeep::OlderThan(cut, _) | MustKeep::Nothing(cut) = must_keep {
                        let age = cut.duration_since(acked_at);
                        report.oldest_loss = Some(report.oldest_loss.map_or(age, |o| o.max(age)));
                    }
                }
            }
            if let Some(last) = log.ops.last()
                && last.acked_at.is_none()
            {
                if at == log.ops.len() && log.ops.len() > floor {
                    report.in_flight_kept += 1;
                } else {
                    report.in_flight_dropped += 1;
                }
            }
            log.base = found.map(|(version, value)| (value.clone(), *version));
            log.history.append(&mut log.ops);
        }
        let highest_found = entries.values().map(|(v, _)| *v).max().unwrap_or(0);
        if revision < must_revision || revision < highest_found {
            errors.push(format!(
                "the revision went backwards: {revision} after recovery, but {must_revision} had to survive and {highest_found} is stored"
            ));
        }
        assert!(
            errors.is_empty(),
            "{} violations after recovery:\n{}",
            errors.len(),
            errors.join("\n")
        );
        self.revision = revision;
        self.acked_this_cycle = 0;
        report
    }
}

/// Every entry of a running server, from `/system/export`: key -> (version, value).
pub async fn dump(server: &TestServer) -> HashMap<String, (u64, Value)> {
    let text = client()
        .get(server.at("/system/export"))
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("export body");
    let mut entries = HashMap::new();
    for line in text.lines() {
        let doc: Value = serde_json::from_str(line).expect("export line is JSON");
        if let Some(key) = doc.get("key").and_then(Value::as_str) {
            let version = doc["version"].as_u64().expect("version");
            let value = match doc.get("value") {
                Some(v) => v.clone(),
                None => serde_json::from_str(doc["value_text"].as_str().expect("value_text"))
                    .expect("json"),
            };
            entries.insert(key.to_string(), (version, value));
        }
    }
    entries
}

/// The server's revision, from `/system/stats`.
pub async fn revision(server: &TestServer) -> u64 {
    stats(server).await["revision"].as_u64().expect("revision")
}

/// Checks a freshly started server against the ledger.
pub async fn verify(server: &TestServer, ledger: &Mutex<Ledger>, must_keep: MustKeep) -> Verified {
    let entries = dump(server).await;
    let revision = revision(server).await;
    ledger
        .lock()
        .expect("ledger")
        .verify(&entries, revision, must_keep)
}

/// Waits until the writers got at least one acknowledgement: a cycle that
/// acknowledged nothing proves nothing.
pub async fn wait_for_acks(ledger: &Mutex<Ledger>) {
    poll_until("a write acknowledged in this cycle", async || {
        (ledger.lock().expect("ledger").acked_this_cycle() > 0).then_some(())
    })
    .await;
}

/// Starts the writers: each overwrites and deletes its own keys until a
/// request fails (the server died or refuses writes), then stops.
pub fn start_writers(
    url: &str,
    cycle: usize,
    seed: u64,
    ledger: &Arc<Mutex<Ledger>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let url = url.to_string();
            let ledger = Arc::clone(ledger);
            let mut rng = fastrand::Rng::with_seed(seed ^ (w as u64 + 1));
            tokio::spawn(async move {
                let http = client();
                for n in 0.. {
                    let key = format!("w{w}-{}", rng.usize(0..KEYS_PER_WRITER));
                    let present = ledger
                        .lock()
                        .expect("ledger")
                        .keys
                        .get(&key)
                        .is_some_and(KeyLog::present);
                    let value = (!present || rng.u8(0..4) != 0).then(|| {
                        json!({"w": w, "cycle": cycle, "n": n, "pad": "x".repeat(rng.usize(0..300))})
                    });
                    let index = ledger.lock().expect("ledger").begin(&key, value.clone());
                    let request = match &value {
                        Some(v) => http.put(format!("{url}/kv/{key}")).body(v.to_string()),
                        None => http.delete(format!("{url}/kv/{key}")),
                    };
                    let version = match request.send().await {
                        Ok(r) if r.status().is_success() => r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|body| body["version"].as_u64()),
                        _ => None,
                    };
                    match version {
                        Some(version) => ledger.lock().expect("ledger").ack(&key, index, version),
                        None => return,
                    }
                }
            })
        })
        .collect()
}
