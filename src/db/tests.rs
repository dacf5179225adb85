//! Unit tests of the database facade: open, write, close and reopen a real
//! data directory.

use super::*;
use crate::config::FsyncPolicy;
use crate::{ChangeEvent, ChangeKind, Target};

fn open_dir(dir: &std::path::Path) -> Db {
    Db::open(Config {
        fsync: FsyncPolicy::Never,
        ..Config::with_dir(dir)
    })
    .expect("open")
}

#[test]
fn reopening_keeps_values_versions_and_deletes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = open_dir(tmp.path());
    db.put("a", b" {\"x\": 1} ", PutOptions::default())
        .expect("put");
    db.put("b", b"2", PutOptions::default()).expect("put");
    db.delete("b", None).expect("delete");
    db.close().expect("close");
    drop(db);
    let db = open_dir(tmp.path());
    assert_eq!(
        db.get("a").expect("get").map(|e| e.value),
        Some(Bytes::from_static(b" {\"x\": 1} "))
    );
    assert_eq!(db.get("b").expect("get"), None);
    assert_eq!(db.stats().revision, 3);
    let next = db.put("c", b"3", PutOptions::default()).expect("put");
    assert_eq!(next.version, 4, "versions keep growing across restarts");
}

#[test]
fn a_second_open_of_the_same_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _db = open_dir(tmp.path());
    let second = Db::open(Config::with_dir(tmp.path()));
    assert!(
        matches!(second, Err(DbError::Storage(ref m)) if m.contains("in use")),
        "{:?}",
        second.err()
    );
}

/// Empty, reserved and oversized keys are refused by put, get and exists
/// alike, and nothing is stored for them. The key check's fast path passes
/// only keys it need not look at closely: keys of a reserved name's length
/// and at the length limit take the full check.
#[test]
fn keys_beside_the_reserved_names_and_at_the_limit_are_checked_exactly() {
    let db = Db::open(Config {
        max_key_bytes: 5,
        ..Config::in_memory()
    })
    .expect("open");
    let cases = [
        ("users", true),
        ("Count", true),
        ("clea", true),
        ("c", true),
        ("count", false),
        ("clear", false),
        ("clearx", false),
        ("much-too-long", false),
        ("", false),
    ];
    for (key, valid) in cases {
        let put = db.put(key, b"1", PutOptions::default());
        let got = db.get(key);
        let exists = db.exists(key);
        if valid {
            assert!(put.is_ok(), "{key:?}: {put:?}");
            assert_eq!(
                got.expect("get").map(|e| e.value),
                Some(Bytes::from_static(b"1")),
                "{key:?}"
            );
            assert_eq!(exists, Ok(true), "{key:?}");
        } else {
            assert!(matches!(put, Err(DbError::InvalidKey(_))), "{key:?}");
            assert!(matches!(got, Err(DbError::InvalidKey(_))), "{key:?}");
            assert!(matches!(exists, Err(DbError::InvalidKey(_))), "{key:?}");
        }
    }
    assert_eq!(db.count(None), 4);
}

#[test]
fn clear_with_prefix_removes_only_that_prefix() {
    let db = Db::open(Config::in_memory()).expect("open");
    for key in ["a:1", "a:2", "b:1"] {
        db.put(key, b"1", PutOptions::default()).expect("put");
    }
    assert_eq!(db.clear(Some("a:")).expect("clear"), 2);
    assert_eq!(db.list("", None, 10).keys, vec![Box::from("b:1")]);
}

/// An in-memory database lends each change to its listeners without an
/// owned event when no feed client is connected: the feed's ring still
/// keeps every change with its old and new values, and a resume reads
/// them back; a library subscriber still gets owned events with both.
#[test]
fn changes_lent_to_listeners_keep_their_old_and_new_values() {
    use crate::events::feed::{FeedItem, TryNext};
    let db = Db::open(Config::in_memory()).expect("open");
    let (tx, rx) = std::sync::mpsc::channel();
    let _subscription = db.subscribe(Target::Prefix(String::new()), move |e| {
        let _ = tx.send(e.clone());
    });
    db.put("k", b"1", PutOptions::default()).expect("put");
    db.put("k", b"[2]", PutOptions::default()).expect("put");
    db.put("other", b"{}", PutOptions::default()).expect("put");
    db.delete("k", None).expect("delete");
    let expected = [
        ("k", ChangeKind::Update, None, Some(&b"1"[..]), 1),
        (
            "k",
            ChangeKind::Update,
            Some(&b"1"[..]),
            Some(&b"[2]"[..]),
            2,
        ),
        ("other", ChangeKind::Update, None, Some(&b"{}"[..]), 3),
        ("k", ChangeKind::Delete, Some(&b"[2]"[..]), None, 4),
    ];
    let summary = |e: &ChangeEvent| {
        (
            e.key.to_string(),
            e.kind,
            e.old_value.as_ref().map(|v| v.to_vec()),
            e.new_value.as_ref().map(|v| v.to_vec()),
            e.version,
        )
    };
    let expected: Vec<_> = expected
        .iter()
        .map(|&(k, kind, old, new, v)| {
            (
                k.to_string(),
                kind,
                old.map(<[u8]>::to_vec),
                new.map(<[u8]>::to_vec),
                v,
            )
        })
        .collect();
    let mut replay = db.feed().subscribe("", Some(0));
    let replayed: Vec<_> = std::iter::from_fn(|| match replay.try_next() {
        TryNext::Item(FeedItem::Event(e)) => Some(summary(&e.change)),
        _ => None,
    })
    .collect();
    assert_eq!(replayed, expected, "the ring");
    let received: Vec<_> = expected
        .iter()
        .map(|_| {
            let e = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the subscriber's event");
            summary(&e)
        })
        .collect();
    assert_eq!(received, expected, "the subscriber");
}
