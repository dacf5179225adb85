//! Linearizability under chaos (SPEC §10): rounds of `common::chaos` on a
//! real 3-node cluster (8 clients doing put, get, `If-Match` CAS and
//! `/txn` value-CAS while the leader is killed with `kill -9` or cut off
//! by TCP proxies), each history checked by `common::linearizable`, a
//! Wing–Gong checker, and every acknowledged write looked for on every
//! member. The suite runs 2 rounds (one of each fault);
//! `scripts/cluster-chaos N` sets `DODODB_CHAOS_ROUNDS=N` for more.
//!
//! The checker's own tests come first: it must reject what is not
//! linearizable, or the chaos rounds prove nothing.

mod common;

use std::time::Duration;

use common::chaos::Chaos;
use common::linearizable::{Input, Operation, Output, check};

#[test]
fn chaos_rounds_are_linearizable_and_lose_no_acknowledged_write() {
    let rounds: usize = std::env::var("DODODB_CHAOS_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let mut chaos = Chaos::start();
    let mut elected: Vec<Duration> = Vec::new();
    let mut failovers: Vec<Duration> = Vec::new();
    for n in 0..rounds {
        let round = chaos.round(n);
        eprintln!(
            "round {:>3} {:<9} new leader after {:>5} ms, writes after {:>5} ms, {} ops ({} unanswered writes), {} own writes found on all 3, 0 violations",
            round.n,
            round.fault,
            round.elected.as_millis(),
            round.failover.as_millis(),
            round.ops,
            round.unknown,
            round.acked_own
        );
        elected.push(round.elected);
        failovers.push(round.failover);
    }
    eprintln!("{rounds} rounds: 0 violations, 0 lost acknowledged writes");
    eprintln!("new leader agreed, ms: {}", distribution(&mut elected));
    eprintln!(
        "first write acknowledged, ms: {}",
        distribution(&mut failovers)
    );
}

/// min, p50, p90, p99 and max of `times`, in ms.
fn distribution(times: &mut [Duration]) -> String {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_millis();
    format!(
        "min {} p50 {} p90 {} p99 {} max {}",
        at(0.0),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

fn op(client: usize, call: u64, ret: u64, input: Input, output: Option<Output>) -> Operation {
    Operation {
        client,
        key: "k".into(),
        call,
        ret,
        input,
        output,
    }
}

#[test]
fn overlapping_writes_may_go_either_way() {
    let h = vec![
        op(0, 0, 10, Input::Put(1), Some(Output::Written(5))),
        op(1, 1, 9, Input::Put(2), Some(Output::Written(4))),
        op(2, 11, 12, Input::Get, Some(Output::Found(1, 5))),
    ];
    assert!(check(&h).is_ok());
}

#[test]
fn a_stale_read_after_a_write_returned_is_a_violation() {
    let h = vec![
        op(0, 0, 1, Input::Put(1), Some(Output::Written(1))),
        op(0, 2, 3, Input::Put(2), Some(Output::Written(2))),
        op(1, 4, 5, Input::Get, Some(Output::Found(1, 1))),
    ];
    assert!(check(&h).is_err());
}

#[test]
fn two_winning_cas_on_one_version_are_a_violation() {
    let h = vec![
        op(0, 0, 1, Input::Put(1), Some(Output::Written(1))),
        op(
            1,
            2,
            5,
            Input::Cas {
                version: 1,
                value: 2,
            },
            Some(Output::Written(2)),
        ),
        op(
            2,
            2,
            5,
            Input::Cas {
                version: 1,
                value: 3,
            },
            Some(Output::Written(3)),
        ),
    ];
    assert!(check(&h).is_err());
}

#[test]
fn a_lost_answer_may_or_may_not_have_taken_effect() {
    let took = vec![
        op(0, 0, u64::MAX, Input::Put(7), None),
        op(1, 5, 6, Input::Get, Some(Output::Found(7, 3))),
    ];
    assert!(check(&took).is_ok());
    let did_not = vec![
        op(0, 0, u64::MAX, Input::Put(7), None),
        op(1, 5, 6, Input::Get, Some(Output::Absent)),
    ];
    assert!(check(&did_not).is_ok());
    // But a value no one wrote is never read.
    let invented = vec![op(1, 5, 6, Input::Get, Some(Output::Found(8, 1)))];
    assert!(check(&invented).is_err());
}

#[test]
fn txn_cas_compares_the_value() {
    let h = vec![
        op(0, 0, 1, Input::Put(1), Some(Output::Written(1))),
        op(
            1,
            2,
            3,
            Input::TxnCas {
                expected: 1,
                value: 2,
            },
            Some(Output::Written(2)),
        ),
        op(
            2,
            4,
            5,
            Input::TxnCas {
                expected: 1,
                value: 3,
            },
            Some(Output::Written(3)),
        ),
    ];
    assert!(check(&h).is_err());
}
