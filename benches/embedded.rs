//! Criterion benchmark of the embedded `Db` facade against the floor under
//! it, a bare `DashMap` of the same keys and values.
//!
//! It has a binary of its own so that nothing else runs in the process: in
//! `benches/engine.rs`, the other groups' setup (a 1M-key store among it)
//! ran even when filtered out, and the heap it left moved both the `Db`'s
//! and the floor's figures between runs.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use dododb::{Config, Db, PutOptions};

mod common;
use common::{VALUE, keys};

fn embedded(c: &mut Criterion) {
    let keys = keys(100_000);
    // The floor under both figures: a bare DashMap of the same keys and
    // values, read and written in the same order, without validation,
    // versions or events. On a VM whose memory is slow, the map's own
    // cache misses bound DodoDB's figures; the ratio to this says what
    // DodoDB adds. It is built first, on a heap that the Db's 100k entries
    // (and the churn of its puts) have not fragmented: built after them,
    // where its keys and values landed depended on the Db's heap, and its
    // get moved by half between builds of unrelated Db code.
    let bare: DashMap<String, Bytes> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::copy_from_slice(VALUE)))
        .collect();
    let db = Db::open(Config::in_memory()).expect("open");
    for key in &keys {
        db.put(key, VALUE, PutOptions::default()).expect("put");
    }
    let mut g = c.benchmark_group("embedded_db_in_memory");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(db.get(&keys[i]).map(|e| e.map(|e| e.version)))
        })
    });
    g.bench_function("put", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            db.put(&keys[i], VALUE, PutOptions::default())
                .map(|w| w.version)
        })
    });
    g.bench_function("bare_dashmap_get", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(bare.get(&keys[i]).map(|v| v.clone()))
        })
    });
    g.bench_function("bare_dashmap_put", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            // An overwrite, like the put above: the value is copied into a
            // new allocation, no key is allocated.
            if let Some(mut value) = bare.get_mut(&keys[i]) {
                *value = Bytes::copy_from_slice(VALUE);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, embedded);
criterion_main!(benches);
