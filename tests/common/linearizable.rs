//! A linearizability checker for histories of one key–value register per
//! key: the Wing–Gong search with Lowe's memo (the algorithm of Knossos and
//! Porcupine), run per key, since linearizability is local (Herlihy & Wing).
//!
//! A history is what clients saw: each operation's call and return time,
//! its input, and its output, or no output when the client never learned
//! it (a timeout, a dropped connection): such an operation may have taken
//! effect at any point after its call, or not at all, so it returns at
//! "infinity" and the model lets it do either.
//!
//! The model is a key with a value and a version: `put` sets both (the
//! version it answered must be above the one it replaced), `get` must see
//! exactly the current pair, `cas` (`If-Match: <version>`) writes only at
//! that version, and `txn_cas` (a `/txn` comparing the value) writes only
//! when the value is equal.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A value written (each write in a history writes a distinct one).
pub type Value = u64;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `PUT /kv/{key}`.
    Put(Value),
    /// `GET /kv/{key}`.
    Get,
    /// `PUT /kv/{key}` with `If-Match: "<version>"`.
    Cas {
        /// The version required.
        version: u64,
        /// The value written.
        value: Value,
    },
    /// `POST /txn`: if the key holds `expected`, put `value`.
    TxnCas {
        /// The value required.
        expected: Value,
        /// The value written.
        value: Value,
    },
}

/// What the client got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A write took this version.
    Written(u64),
    /// A read found this value at this version.
    Found(Value, u64),
    /// A read found nothing.
    Absent,
    /// A conditional write's condition did not hold.
    Refused,
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation {
    /// Which client ran it.
    pub client: usize,
    /// The key.
    pub key: String,
    /// When it was called (any monotonic clock, one for the history).
    pub call: u64,
    /// When it returned; `u64::MAX` when the output is unknown.
    pub ret: u64,
    /// What was asked.
    pub input: Input,
    /// What came back, if anything did.
    pub output: Option<Output>,
}

/// The model's state of one key. `version == UNKNOWN` after a write whose
/// answer was lost: a later read tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    value: Option<Value>,
    version: u64,
}

const UNKNOWN: u64 = u64::MAX;

/// A history that no order explains.
#[derive(Debug)]
pub struct Violation {
    /// The key whose history it is.
    pub key: String,
    /// That key's operations, by call time.
    pub ops: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "no linearization of key {:?}:", self.key)?;
        for op in &self.ops {
            let ret = if op.ret == u64::MAX {
                "?".to_string()
            } else {
                op.ret.to_string()
            };
            writeln!(
                f,
                "  client {} [{} .. {ret}] {:?} -> {:?}",
                op.client, op.call, op.input, op.output
            )?;
        }
        Ok(())
    }
}

/// The states `op` may lead to from `s`; empty when it cannot happen there.
fn step(s: State, input: &Input, output: Option<&Output>) -> Vec<State> {
    let version_fits = |asked: u64| s.version == asked || s.version == UNKNOWN;
    let wrote = |value: Value, version: u64| State {
        value: Some(value),
        version,
    };
    match (input, output) {
        (Input::Get, Some(Output::Absent)) => {
            if s.value.is_none() {
                vec![s]
            } else {
                vec![]
            }
        }
        (Input::Get, Some(Output::Found(v, n))) => {
            if s.value == Some(*v) && version_fits(*n) {
                vec![wrote(*v, *n)]
            } else {
                vec![]
            }
        }
        // A read with no answer changes nothing.
        (Input::Get, None) => vec![s],
        (Input::Put(v), Some(Output::Written(n))) => {
            if s.version == UNKNOWN || *n > s.version {
                vec![wrote(*v, *n)]
            } else {
                vec![]
            }
        }
        (Input::Put(v), None) => vec![wrote(*v, UNKNOWN), s],
        (Input::Cas { version, value }, Some(Output::Written(n))) => {
            if s.value.is_some() && version_fits(*version) && n > version {
                vec![wrote(*value, *n)]
            } else {
                vec![]
            }
        }
        (Input::Cas { version, .. }, Some(Output::Refused)) => {
            if s.value.is_none() || s.version != *version {
                vec![s]
            } else {
                vec![]
            }
        }
        (Input::Cas { version, value }, None) => {
            if s.value.is_some() && version_fits(*version) {
                vec![wrote(*value, UNKNOWN), s]
            } else {
                vec![s]
            }
        }
        (Input::TxnCas { expected, value }, Some(Output::Written(n))) => {
            if s.value == Some(*expected) && (s.version == UNKNOWN || *n > s.version) {
                vec![wrote(*value, *n)]
            } else {
                vec![]
            }
        }
        (Input::TxnCas { expected, .. }, Some(Output::Refused)) => {
            if s.value != Some(*expected) {
                vec![s]
            } else {
                vec![]
            }
        }
        (Input::TxnCas { expected, value }, None) => {
            if s.value == Some(*expected) {
                vec![wrote(*value, UNKNOWN), s]
            } else {
                vec![s]
            }
        }
        _ => vec![],
    }
}

/// Checks a whole history, key by key.
///
/// # Errors
///
/// The first key whose operations have no linearization.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, mut ops) in by_key {
        ops.sort_by_key(|op| op.call);
        if !linearizable(&ops) {
            return Err(Violation {
                key: key.to_string(),
                ops,
            });
        }
    }
    Ok(())
}

/// Operations done (a bit set) and the next steps left to try from there.
type Frame = (Vec<u64>, Vec<(usize, State)>);

/// The Wing–Gong search over one key's operations (sorted by call): pick
/// an operation that may go next (called before every pending operation
/// returned), apply it to the model, go on; back up when stuck. A set of
/// (operations done, state) pairs already explored cuts repeated work.
fn linearizable(ops: &[Operation]) -> bool {
    let n = ops.len();
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let start = State {
        value: None,
        version: 0,
    };
    // Each frame: the done set and the candidates left to try from it.
    let mut stack: Vec<Frame> = Vec::new();
    let done = vec![0u64; n.div_ceil(64)];
    let first = candidates(ops, &done, start);
    stack.push((done, first));
    while let Some((done, options)) = stack.last_mut() {
        let Some((i, next)) = options.pop() else {
            stack.pop();
            continue;
        };
        let mut done = done.clone();
        done[i / 64] |= 1 << (i % 64);
        if done.iter().map(|w| w.count_ones() as usize).sum::<usize>() == n {
            return true;
        }
        if !seen.insert((done.clone(), next)) {
            continue;
        }
        let more = candidates(ops, &done, next);
        stack.push((done, more));
    }
    n == 0
}

/// The operations that may be linearized next from `state`, each with the
/// state it leads to.
fn candidates(ops: &[Operation], done: &[u64], state: State) -> Vec<(usize, State)> {
    let pending = |i: usize| done[i / 64] & (1 << (i % 64)) == 0;
    let first_return = (0..ops.len())
        .filter(|&i| pending(i))
        .map(|i| ops[i].ret)
        .min()
        .unwrap_or(u64::MAX);
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.call > first_return {
            break;
        }
        if pending(i) {
            for next in step(state, &op.input, op.output.as_ref()) {
                out.push((i, next));
            }
        }
    }
    out
}
