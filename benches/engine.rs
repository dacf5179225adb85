//! Criterion benchmarks of the engine without HTTP: store operations, JSON
//! validation, key decoding, the WAL codec and group commit, snapshots and
//! listing. The embedded `Db` facade against a bare `DashMap` has its own
//! binary, `benches/embedded.rs`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dododb::store::{Change, ChangeKind, Mutation, NoJournal, Precondition, Store};
use dododb::wal::record::{Record, decode, encode};
use dododb::{Config, Db, FsyncPolicy, PutOptions};

mod common;
use common::{VALUE, keys};

fn filled_store(n: usize) -> Store {
    let store = Store::new();
    for i in 0..n {
        let put = Mutation::Put {
            value: VALUE,
            expires_at_ms: 0,
        };
        let _ = store.mutate(
            &format!("key:{i}"),
            put,
            Precondition::None,
            1,
            &NoJournal,
            &mut |_| {},
        );
    }
    store
}

fn store_ops(c: &mut Criterion) {
    let store = filled_store(100_000);
    let keys = keys(100_000);
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(store.get(&keys[i], || 1))
        })
    });
    g.bench_function("put_overwrite", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            let put = Mutation::Put {
                value: VALUE,
                expires_at_ms: 0,
            };
            black_box(
                store
                    .mutate(
                        &keys[i],
                        put,
                        Precondition::None,
                        1,
                        &NoJournal,
                        &mut |_| {},
                    )
                    .is_ok(),
            )
        })
    });
    g.bench_function("put_then_delete", |b| {
        b.iter(|| {
            let put = Mutation::Put {
                value: VALUE,
                expires_at_ms: 0,
            };
            let _ = store.mutate(
                "transient",
                put,
                Precondition::None,
                1,
                &NoJournal,
                &mut |_| {},
            );
            black_box(
                store
                    .mutate(
                        "transient",
                        Mutation::Delete,
                        Precondition::None,
                        1,
                        &NoJournal,
                        &mut |_| {},
                    )
                    .is_ok(),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("listing");
    g.bench_function("prefix_page_100_of_100k", |b| {
        b.iter(|| black_box(store.list("key:99", None, 100, 1)))
    });
    g.finish();
}

fn validation_and_decoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("input");
    g.throughput(Throughput::Bytes(VALUE.len() as u64));
    g.bench_function("validate_100B_json", |b| {
        b.iter(|| dododb::value::validate(black_box(VALUE)))
    });
    let big: Vec<u8> = format!(
        "[{}]",
        vec![std::str::from_utf8(VALUE).expect("utf8"); 5000].join(",")
    )
    .into_bytes();
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("validate_500KB_json", |b| {
        b.iter(|| dododb::value::validate(black_box(&big)))
    });
    // A document that is mostly string content (a stored log or report).
    let text: Vec<u8> = format!(
        "{{\"log\":\"{}\",\"ok\":true}}",
        "GET /kv/a 200 0.12ms\\n".repeat(200)
    )
    .into_bytes();
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("validate_4KB_text_json", |b| {
        b.iter(|| dododb::value::validate(black_box(&text)))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("percent_decode_key", |b| {
        b.iter(|| {
            percent_encoding::percent_decode_str(black_box("users%2F12345%20x"))
                .decode_utf8()
                .map(|k| k.len())
        })
    });
    g.finish();
}

fn wal(c: &mut Criterion) {
    let record = Record::Change(Change {
        key: Box::from("key:12345"),
        kind: ChangeKind::Update,
        value: Some(Bytes::from_static(VALUE)),
        version: 42,
        expires_at_ms: 0,
        timestamp_ms: 1,
        old_value: Some(Bytes::from_static(VALUE)),
    });
    let mut buf = Vec::with_capacity(256);
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(&record), &mut buf);
        })
    });
    encode(&record, &mut buf);
    g.bench_function("decode", |b| {
        b.iter(|| decode(black_box(&buf)).map(|(_, n)| n))
    });
    for fsync in [FsyncPolicy::Never, FsyncPolicy::Always] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = Db::open(Config {
            fsync,
            snapshot_interval: None,
            ..Config::with_dir(tmp.path())
        })
        .expect("open");
        let mut n = 0u64;
        g.bench_function(format!("db_put_one_writer_fsync_{}", fsync.as_str()), |b| {
            b.iter(|| {
                n += 1;
                db.put(&format!("k{}", n % 10_000), VALUE, PutOptions::default())
                    .map(|w| w.version)
            })
        });
        // Group commit: 16 threads writing at once share fsyncs.
        g.throughput(Throughput::Elements(16 * 64));
        g.bench_function(format!("db_put_16_writers_fsync_{}", fsync.as_str()), |b| {
            b.iter(|| {
                std::thread::scope(|s| {
                    for t in 0..16 {
                        let db = &db;
                        s.spawn(move || {
                            for i in 0..64 {
                                let _ = db.put(&format!("t{t}-{i}"), VALUE, PutOptions::default());
                            }
                        });
                    }
                })
            })
        });
        g.throughput(Throughput::Elements(1));
    }
    g.finish();
}

fn snapshots(c: &mut Criterion) {
    let n = 1_000_000;
    let store = filled_store(n);
    let mut g = c.benchmark_group("snapshot_1M");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("encode_to_sink", |b| {
        b.iter(|| dododb::snapshot::encode(&store, &[], 1, 1, std::io::sink()).map(|w| w.bytes))
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, path) =
        dododb::snapshot::write(tmp.path(), &store, &[], 1, 1, 1, &|_| {}).expect("write");
    g.bench_function("load", |b| {
        b.iter_batched(
            Store::new,
            |fresh| dododb::snapshot::load(&path, |change| fresh.replay(change)).map(|l| l.keys),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, store_ops, validation_and_decoding, wal, snapshots);
criterion_main!(benches);
