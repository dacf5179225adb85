//! Criterion benchmark of the embedded `Db` facade against the floor under
//! it, a bare `DashMap` of the same keys and values.
//!
//! It has a binary of its own so that nothing else runs in the process: in
//! `benches/engine.rs`, the other groups' setup (a 1M-key store among it)
//! ran even when filtered out, and the heap it left moved both the `Db`'s
//! and the floor's figures between runs.
//!
//! After criterion's groups, `--bench` also prints the ratios measured
//! interleaved: rounds that time the `Db` and the floor one right after
//! the other, at 100k keys and again at 1k (in cache, so that only the
//! work each side does is compared). On this kind of VM the floor itself
//! moves by up to 1.6× between criterion runs a minute apart, so a ratio
//! of two separate criterion estimates says more about when each ran
//! than about the `Db`; a ratio within one round does not.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group};
use dashmap::DashMap;
use dododb::{Config, Db, PutOptions};

mod common;
use common::{VALUE, keys};

/// What both sides are timed on.
struct Fixture {
    keys: Vec<String>,
    db: Db,
    bare: DashMap<String, Bytes>,
}

impl Fixture {
    /// Both stores with the keys `key:0` .. `key:{n-1}` and [`VALUE`].
    fn new(n: usize) -> Self {
        let keys = keys(n);
        // The floor under both figures: a bare DashMap of the same keys and
        // values, read and written in the same order, without validation,
        // versions or events. On a VM whose memory is slow, the map's own
        // cache misses bound DodoDB's figures; the ratio to this says what
        // DodoDB adds. It is built first, on a heap that the Db's
        // entries (and the churn of its puts) have not fragmented: built
        // after them, where its keys and values landed depended on the Db's
        // heap, and its get moved by half between builds of unrelated Db
        // code.
        let bare: DashMap<String, Bytes> = keys
            .iter()
            .map(|k| (k.clone(), Bytes::copy_from_slice(VALUE)))
            .collect();
        let db = Db::open(Config::in_memory()).expect("open");
        for key in &keys {
            db.put(key, VALUE, PutOptions::default()).expect("put");
        }
        Fixture { keys, db, bare }
    }

    /// The next key of the walk: a large prime stride, so that successive
    /// operations miss the cache as a random workload's would.
    fn next<'a>(&'a self, i: &mut usize) -> &'a str {
        *i = (*i + 7919) % self.keys.len();
        &self.keys[*i]
    }

    fn db_get(&self, i: &mut usize) {
        let key = self.next(i);
        black_box(self.db.get(key).expect("get").map(|e| e.version));
    }

    fn db_put(&self, i: &mut usize) {
        let key = self.next(i);
        black_box(
            self.db
                .put(key, VALUE, PutOptions::default())
                .expect("put")
                .version,
        );
    }

    fn bare_get(&self, i: &mut usize) {
        let key = self.next(i);
        black_box(self.bare.get(key).map(|v| v.clone()));
    }

    fn bare_put(&self, i: &mut usize) {
        let key = self.next(i);
        // An overwrite, like the `Db`'s put: the value is copied into a
        // new allocation, no key is allocated.
        if let Some(mut value) = self.bare.get_mut(key) {
            *value = Bytes::copy_from_slice(VALUE);
        }
    }
}

type Op = fn(&Fixture, &mut usize);

fn embedded(c: &mut Criterion) {
    let f = Fixture::new(CACHE_MISSING_KEYS);
    let mut g = c.benchmark_group("embedded_db_in_memory");
    g.throughput(Throughput::Elements(1));
    let ops: [(&str, Op); 4] = [
        ("get", Fixture::db_get),
        ("put", Fixture::db_put),
        ("bare_dashmap_get", Fixture::bare_get),
        ("bare_dashmap_put", Fixture::bare_put),
    ];
    let mut i = 0usize;
    for (name, op) in ops {
        g.bench_function(name, |b| b.iter(|| op(&f, &mut i)));
    }
    g.finish();
}

/// Rounds of the interleaved comparison, and operations per pass (each
/// side makes two passes a round).
const ROUNDS: usize = 21;
const OPS_PER_SIDE: usize = 100_000;

/// Nanoseconds per operation of `op` over one pass.
fn time_side(f: &Fixture, op: Op, i: &mut usize) -> f64 {
    let start = Instant::now();
    for _ in 0..OPS_PER_SIDE {
        op(f, i);
    }
    start.elapsed().as_nanos() as f64 / OPS_PER_SIDE as f64
}

/// The lower quartile, the median and the upper quartile of `xs`.
fn quartiles(mut xs: Vec<f64>) -> [f64; 3] {
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// Times `db_op` and `bare_op` in turns, each for two passes in a row
/// (`Db`, `Db`, bare, bare, `Db`, `Db`, ...), and prints the median of the
/// per-round ratios (bare time ÷ `Db` time; 1 means the `Db` adds nothing)
/// for each kind of pass:
/// - warm: a side's second pass, with its own entries left in the cache
///   by its first, as in criterion's runs of one function at a time;
/// - cold: a side's first pass, right after the other side evicted much
///   of its entries (the two stores together outgrow a 32 MiB L3), as in
///   a random workload over a large store.
fn interleaved(f: &Fixture, name: &str, db_op: Op, bare_op: Op) {
    let mut i = 0usize;
    // One untimed turn, so that the first timed pass is already cold.
    time_side(f, db_op, &mut i);
    time_side(f, bare_op, &mut i);
    // Per kind of pass, the times of the `Db` side and of the bare side.
    let (mut cold, mut warm): ([Vec<f64>; 2], [Vec<f64>; 2]) = Default::default();
    for _ in 0..ROUNDS {
        for (side, op) in [db_op, bare_op].into_iter().enumerate() {
            cold[side].push(time_side(f, op, &mut i));
            warm[side].push(time_side(f, op, &mut i));
        }
    }
    for (kind, [db, bare]) in [("warm", warm), ("cold", cold)] {
        let ratios = db.iter().zip(&bare).map(|(db, bare)| bare / db).collect();
        let [q1, ratio, q3] = quartiles(ratios);
        let [_, db, _] = quartiles(db);
        let [_, bare, _] = quartiles(bare);
        println!(
            "interleaved {name} ({kind}): Db {db:.0} ns, bare {bare:.0} ns, ratio bare/Db \
             {ratio:.2} (quartiles {q1:.2}-{q3:.2}, {ROUNDS} rounds of {OPS_PER_SIDE} ops per pass)"
        );
    }
}

/// Keys of the stores the figures are for: each side's 100k entries
/// outgrow the L2 caches, so most operations miss them.
const CACHE_MISSING_KEYS: usize = 100_000;

/// Keys of a store that stays in the L2 caches: what the `Db` costs in
/// work alone, with memory taken out of both sides.
const IN_CACHE_KEYS: usize = 1_000;

fn interleaved_ratios() {
    for (n, label) in [
        (CACHE_MISSING_KEYS, "100k keys"),
        (IN_CACHE_KEYS, "1k keys, in cache"),
    ] {
        let f = Fixture::new(n);
        interleaved(
            &f,
            &format!("get, {label}"),
            Fixture::db_get,
            Fixture::bare_get,
        );
        interleaved(
            &f,
            &format!("put, {label}"),
            Fixture::db_put,
            Fixture::bare_put,
        );
    }
}

criterion_group!(benches, embedded);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Only a real bench run (`--bench`), not `cargo test --benches`'s
    // one pass over each function.
    if std::env::args().any(|a| a == "--bench") {
        interleaved_ratios();
    }
}
