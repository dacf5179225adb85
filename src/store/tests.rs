//! Unit tests of the store: writes, versions, preconditions, TTLs and
//! listing, with the clock passed in.

use bytes::Bytes;

use super::*;

const NOW: u64 = 1_000_000;

fn put(
    store: &Store,
    key: &str,
    value: &str,
    pre: Precondition,
) -> Result<Outcome<()>, StoreError> {
    put_ttl(store, key, value, 0, pre)
}

fn put_ttl(
    store: &Store,
    key: &str,
    value: &str,
    expires_at_ms: u64,
    pre: Precondition,
) -> Result<Outcome<()>, StoreError> {
    store.mutate(
        key,
        Mutation::Put {
            value: value.as_bytes(),
            expires_at_ms,
        },
        pre,
        NOW,
        &NoJournal,
        &mut |_| {},
    )
}

fn delete(store: &Store, key: &str, pre: Precondition) -> Result<Outcome<()>, StoreError> {
    store.mutate(key, Mutation::Delete, pre, NOW, &NoJournal, &mut |_| {})
}

fn value(store: &Store, key: &str, now: u64) -> Option<String> {
    store
        .get(key, || now)
        .map(|e| String::from_utf8(e.value.to_vec()).expect("utf8"))
}

#[test]
fn versions_follow_the_global_revision() {
    let store = Store::new();
    let a = put(&store, "a", "1", Precondition::None).expect("put");
    let b = put(&store, "b", "2", Precondition::None).expect("put");
    let a2 = put(&store, "a", "3", Precondition::None).expect("put");
    assert_eq!((a.version, b.version, a2.version), (1, 2, 3));
    assert!(a.created && b.created && !a2.created);
    assert_eq!(store.get("a", || NOW).map(|e| e.version), Some(3));
    let d = delete(&store, "b", Precondition::None).expect("delete");
    assert_eq!(d.version, 4);
    assert_eq!(store.revision(), 4);
    assert_eq!(
        delete(&store, "b", Precondition::None).err(),
        Some(StoreError::NotFound)
    );
    assert_eq!(store.revision(), 4, "a refused change takes no revision");
}

#[test]
fn preconditions() {
    let store = Store::new();
    let check = |pre: Precondition, expect_ok: bool| {
        let result = put(&store, "k", "0", pre.clone());
        assert_eq!(result.is_ok(), expect_ok, "{pre:?}");
    };
    check(Precondition::IfVersion(1), false);
    check(Precondition::IfExists, false);
    check(Precondition::IfAbsent, true);
    check(Precondition::IfAbsent, false);
    check(Precondition::IfVersion(1), true);
    check(Precondition::IfVersion(1), false);
    check(Precondition::IfExists, true);
    check(Precondition::IfVersionIn(Box::new([1, 2])), false);
    check(Precondition::IfVersionIn(Box::new([])), false);
    check(Precondition::IfVersionIn(Box::new([2, 3])), true);
    check(Precondition::IfVersionIn(Box::new([4])), true);
    assert_eq!(
        delete(&store, "k", Precondition::IfVersion(99)).err(),
        Some(StoreError::PreconditionFailed { current: Some(5) })
    );
    assert!(store.contains("k", || NOW));
}

#[test]
fn a_refused_first_write_leaves_no_slot() {
    let store = Store::new();
    assert!(put(&store, "k", "1", Precondition::IfVersion(7)).is_err());
    assert_eq!(store.map.len(), 0);
    assert_eq!(store.count(None, NOW), 0);
}

#[test]
fn expired_keys_are_invisible_before_they_are_reaped() {
    let store = Store::new();
    put_ttl(&store, "t", "1", NOW + 10, Precondition::None).expect("put");
    put(&store, "p", "2", Precondition::None).expect("put");
    assert_eq!(value(&store, "t", NOW + 9).as_deref(), Some("1"));
    assert_eq!(value(&store, "t", NOW + 10), None);
    assert_eq!(store.count(None, NOW + 9), 2);
    assert_eq!(store.count(None, NOW + 10), 1);
    assert_eq!(store.count(Some("t"), NOW + 10), 0);
    assert_eq!(
        store.list("", None, 10, NOW + 10).keys,
        vec![Box::from("p")]
    );
    assert_eq!(store.due_expirations(NOW + 10, 10), vec![Box::from("t")]);
    // An expired key counts as absent for If-None-Match.
    let mut events = Vec::new();
    let again = store.mutate(
        "t",
        Mutation::Put {
            value: b"3",
            expires_at_ms: 0,
        },
        Precondition::IfAbsent,
        NOW + 20,
        &NoJournal,
        &mut |e: &Applied<'_>| events.push(ChangeEvent::clone(e.event())),
    );
    assert!(again.expect("put over expired").created);
    assert_eq!(
        events[0].old_value, None,
        "an expired value is not an old value"
    );
    assert!(
        store.due_expirations(NOW + 100, 10).is_empty(),
        "the new write cleared the expiry"
    );
}

#[test]
fn expire_removes_only_what_is_due() {
    let store = Store::new();
    put_ttl(&store, "t", "1", NOW + 10, Precondition::None).expect("put");
    let early = store.mutate(
        "t",
        Mutation::Expire,
        Precondition::None,
        NOW,
        &NoJournal,
        &mut |_| {},
    );
    assert_eq!(early.err(), Some(StoreError::NotFound));
    let mut kinds = Vec::new();
    store
        .mutate(
            "t",
            Mutation::Expire,
            Precondition::None,
            NOW + 10,
            &NoJournal,
            &mut |e| kinds.push(e.kind),
        )
        .expect("expire");
    assert_eq!(kinds, vec![ChangeKind::Expire]);
    assert_eq!(store.map.len(), 0);
    assert!(store.due_expirations(NOW + 100, 10).is_empty());
}

#[test]
fn listing_pages_in_byte_order() {
    let store = Store::new();
    for key in ["b", "a", "ab", "B", "é", "a/b", "c"] {
        put(&store, key, "0", Precondition::None).expect("put");
    }
    let check =
        |prefix: &str, after: Option<&str>, limit: usize, keys: &[&str], next: Option<&str>| {
            let page = store.list(prefix, after.map(str::as_bytes), limit, NOW);
            let got: Vec<&str> = page.keys.iter().map(|k| &**k).collect();
            assert_eq!(got, keys, "prefix {prefix:?} after {after:?}");
            assert_eq!(page.next_after.as_deref(), next);
        };
    check("", None, 10, &["B", "a", "a/b", "ab", "b", "c", "é"], None);
    check("", None, 3, &["B", "a", "a/b"], Some("a/b"));
    check("", Some("a/b"), 3, &["ab", "b", "c"], Some("c"));
    check("", Some("c"), 3, &["é"], None);
    check("a", None, 10, &["a", "a/b", "ab"], None);
    check("a", Some("a"), 1, &["a/b"], Some("a/b"));
    check("zzz", None, 10, &[], None);
    // A position need not be a key, nor UTF-8: the keys after its bytes.
    let after = |position: &[u8], prefix: &str| -> Vec<String> {
        let page = store.list(prefix, Some(position), 10, NOW);
        page.keys.iter().map(|k| k.to_string()).collect()
    };
    assert_eq!(after(b"a\xff", ""), ["b", "c", "é"]);
    assert_eq!(after(b"a\xff", "a"), Vec::<String>::new());
    assert_eq!(after(b"\xc3", ""), ["é"]);
    assert_eq!(after(b"\xff", ""), Vec::<String>::new());
}

/// A model test of listing and counting through the whole store: random
/// puts (some with a TTL), deletes, expiries and clock steps against a
/// `BTreeMap` of key → expiry, checking every page of a full walk and
/// prefixed counts at each step's clock.
#[test]
fn listing_and_counting_agree_with_a_btreemap_model() {
    let mut rng = fastrand::Rng::with_seed(4);
    let store = Store::new();
    let mut model: std::collections::BTreeMap<String, u64> = Default::default();
    let mut now = NOW;
    let random_key = |rng: &mut fastrand::Rng| -> String {
        (0..rng.usize(1..=4))
            .map(|_| ['a', 'b', '/'][rng.usize(0..3)])
            .collect()
    };
    let mut emit = |_: &Applied<'_>| {};
    for step in 0..1_500 {
        let key = random_key(&mut rng);
        match rng.u8(0..10) {
            0..=4 => {
                let expires_at_ms = if rng.bool() { now + rng.u64(1..20) } else { 0 };
                let put = Mutation::Put {
                    value: b"1",
                    expires_at_ms,
                };
                store
                    .mutate(&key, put, Precondition::None, now, &NoJournal, &mut emit)
                    .expect("put");
                model.insert(key, expires_at_ms);
            }
            5..=6 => {
                let live = model.get(&key).is_some_and(|&at| at == 0 || at > now);
                let result = store.mutate(
                    &key,
                    Mutation::Delete,
                    Precondition::None,
                    now,
                    &NoJournal,
                    &mut emit,
                );
                assert_eq!(result.is_ok(), live, "step {step}: delete {key:?}");
                model.remove(&key);
            }
            7 => {
                for due in store.due_expirations(now, 3) {
                    store
                        .mutate(
                            &due,
                            Mutation::Expire,
                            Precondition::None,
                            now,
                            &NoJournal,
                            &mut emit,
                        )
                        .expect("expire a due key");
                    model.remove(&*due);
                }
            }
            _ => now += rng.u64(1..5),
        }
        let visible: Vec<&str> = model
            .iter()
            .filter(|&(_, &at)| at == 0 || at > now)
            .map(|(k, _)| k.as_str())
            .collect();
        let prefix = ["", "a", "b/", "/"][rng.usize(0..4)];
        let under: Vec<&str> = visible
            .iter()
            .copied()
            .filter(|k| k.starts_with(prefix))
            .collect();
        assert_eq!(
            store.count(Some(prefix), now),
            under.len(),
            "step {step}: {prefix:?}"
        );
        assert_eq!(store.count(None, now), visible.len(), "step {step}");
        let limit = rng.usize(1..6);
        let mut walked: Vec<String> = Vec::new();
        let mut after: Option<Box<str>> = None;
        loop {
            let page = store.list(prefix, after.as_deref().map(str::as_bytes), limit, now);
            assert!(page.keys.len() <= limit);
            walked.extend(page.keys.iter().map(|k| k.to_string()));
            match page.next_after {
                Some(next) => {
                    assert_eq!(Some(&next), page.keys.last(), "step {step}");
                    after = Some(next);
                }
                None => break,
            }
        }
        assert_eq!(walked, under, "step {step}: walk of {prefix:?} by {limit}");
    }
}

#[test]
fn events_carry_old_and_new_values() {
    let store = Store::new();
    let mut events = Vec::new();
    let mut emit = |e: &Applied<'_>| events.push(ChangeEvent::clone(e.event()));
    for (m, pre) in [
        (
            Mutation::Put {
                value: b"1",
                expires_at_ms: 0,
            },
            Precondition::None,
        ),
        (
            Mutation::Put {
                value: b"2",
                expires_at_ms: 0,
            },
            Precondition::None,
        ),
        (Mutation::Delete, Precondition::None),
    ] {
        store
            .mutate("k", m, pre, NOW, &NoJournal, &mut emit)
            .expect("change");
    }
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.old_value.clone(), e.new_value.clone(), e.version))
        .collect();
    assert_eq!(
        summary,
        vec![
            (ChangeKind::Update, None, Some(Bytes::from_static(b"1")), 1),
            (
                ChangeKind::Update,
                Some(Bytes::from_static(b"1")),
                Some(Bytes::from_static(b"2")),
                2
            ),
            (ChangeKind::Delete, Some(Bytes::from_static(b"2")), None, 3),
        ]
    );
}

/// A journal that defers everything, like the WAL does: it keeps the
/// changes (`.0`) and the batches of puts (`.1`) it took.
#[derive(Default)]
pub(super) struct Deferring(
    pub(super) std::sync::Mutex<Vec<Change>>,
    pub(super) std::sync::Mutex<Vec<Arc<LoggedPuts>>>,
);

impl Journal for Deferring {
    type Ticket = u64;

    fn submit(
        &self,
        mut change: Change,
        next_version: &dyn Fn() -> u64,
    ) -> Result<Submitted<u64>, StoreError> {
        let version = next_version();
        change.version = version;
        self.0.lock().expect("lock").push(change);
        Ok(Submitted::Deferred(version))
    }

    fn submit_txn(&self, changes: Vec<Change>) -> Result<Submitted<u64, Vec<Change>>, StoreError> {
        let version = changes.last().map_or(0, |c| c.version);
        self.0.lock().expect("lock").extend(changes);
        Ok(Submitted::Deferred(version))
    }

    fn submit_batch(
        &self,
        batch: Arc<LoggedPuts>,
    ) -> Result<Submitted<u64, Arc<LoggedPuts>>, StoreError> {
        let version = batch.last_version();
        self.1.lock().expect("lock").push(batch);
        Ok(Submitted::Deferred(version))
    }

    fn barrier(&self) -> Option<u64> {
        Some(u64::MAX)
    }
}

fn txn_put(key: &str, value: &'static [u8]) -> TxnOp {
    TxnOp::Put {
        key: Box::from(key),
        value: Bytes::from_static(value),
        expires_at_ms: 0,
    }
}

fn txn_get(key: &str) -> TxnOp {
    TxnOp::Get {
        key: Box::from(key),
    }
}

#[test]
fn a_deferred_transaction_is_checked_against_and_applied_whole() {
    let store = Store::new();
    let journal = Deferring::default();
    let absent = |key: &str| Condition {
        key: Box::from(key),
        compare: Compare::Version(0),
    };
    let first = store
        .txn(
            &[absent("a")],
            vec![txn_put("a", b"1"), txn_put("b", b"2"), txn_get("a")],
            Vec::new(),
            NOW,
            &journal,
            &mut |_| {},
        )
        .expect("txn");
    assert!(first.succeeded);
    assert_eq!(first.ticket, Some(2));
    assert!(matches!(&first.results[2], OpResult::Get(Some(e)) if e.version == 1));
    assert_eq!(
        store.get("a", || NOW),
        None,
        "invisible before it is applied"
    );
    // A second transaction sees the logged state: its compare fails, and
    // what it read waits for everything logged so far.
    let second = store
        .txn(
            &[absent("a")],
            Vec::new(),
            vec![txn_get("b"), txn_put("c", b"3")],
            NOW,
            &journal,
            &mut |_| {},
        )
        .expect("txn");
    assert!(!second.succeeded);
    assert!(matches!(&second.results[0], OpResult::Get(Some(e)) if &e.value[..] == b"2"));
    let changes = std::mem::take(&mut *journal.0.lock().expect("lock"));
    let (txn1, txn2) = changes.split_at(2);
    store.apply_many(txn1.to_vec(), &mut |_| {});
    assert_eq!(value(&store, "a", NOW).as_deref(), Some("1"));
    assert_eq!(value(&store, "b", NOW).as_deref(), Some("2"));
    store.abort_many(txn2);
    assert_eq!(store.map.len(), 2, "the aborted put left no slot");
    let read_only = store
        .txn(
            &[],
            vec![txn_get("a"), txn_get("zz")],
            Vec::new(),
            NOW,
            &journal,
            &mut |_| {},
        )
        .expect("txn");
    assert_eq!(
        read_only.ticket, None,
        "a batch read of applied state waits for nothing"
    );
    assert!(matches!(read_only.results[1], OpResult::Get(None)));
}

#[test]
fn deferred_changes_are_invisible_until_applied_but_checked_against() {
    let store = Store::new();
    let journal = Deferring::default();
    let put = |pre| {
        store.mutate(
            "k",
            Mutation::Put {
                value: b"1",
                expires_at_ms: 0,
            },
            pre,
            NOW,
            &journal,
            &mut |_| {},
        )
    };
    put(Precondition::IfAbsent).expect("first");
    assert_eq!(
        store.get("k", || NOW),
        None,
        "not visible before it is applied"
    );
    assert_eq!(
        put(Precondition::IfAbsent).err(),
        Some(StoreError::PreconditionFailed { current: Some(1) }),
        "the pending write is seen by conditions"
    );
    put(Precondition::IfVersion(1)).expect("second");
    let changes = std::mem::take(&mut *journal.0.lock().expect("lock"));
    let mut events = Vec::new();
    for change in changes {
        store.apply(change, &mut |e| events.push(e.version));
    }
    assert_eq!(events, vec![1, 2]);
    assert_eq!(store.get("k", || NOW).map(|e| e.version), Some(2));
}

#[test]
fn aborted_changes_leave_the_committed_state() {
    let store = Store::new();
    let journal = Deferring::default();
    store
        .mutate(
            "k",
            Mutation::Put {
                value: b"1",
                expires_at_ms: 0,
            },
            Precondition::None,
            NOW,
            &journal,
            &mut |_| {},
        )
        .expect("put");
    let change = journal.0.lock().expect("lock").pop().expect("change");
    store.abort(&change);
    assert_eq!(store.map.len(), 0);
    assert!(put(&store, "k", "2", Precondition::IfAbsent).is_ok());
}

#[test]
fn replay_is_idempotent_over_a_newer_state() {
    let store = Store::new();
    let change = |kind, version, value: Option<&'static [u8]>| Change {
        key: Box::from("k"),
        kind,
        value: value.map(Bytes::from_static),
        version,
        expires_at_ms: 0,
        timestamp_ms: NOW,
        old_value: None,
    };
    store.apply(change(ChangeKind::Update, 12, Some(b"12")), &mut |_| {});
    store.replay(change(ChangeKind::Update, 10, Some(b"10")));
    store.apply(change(ChangeKind::Delete, 11, None), &mut |_| {});
    assert_eq!(value(&store, "k", NOW).as_deref(), Some("12"));
    store.apply(change(ChangeKind::Delete, 13, None), &mut |_| {});
    assert_eq!(value(&store, "k", NOW), None);
    store.apply(change(ChangeKind::Delete, 14, None), &mut |_| {});
    assert_eq!(store.revision(), 14);
    assert_eq!(store.count(None, NOW), 0);
}

#[test]
fn a_content_swap_replaces_entries_index_expiries_and_counts_at_once() {
    let live = Store::new();
    put(&live, "a", "1", Precondition::None).expect("put");
    put(&live, "gone", "1", Precondition::None).expect("put");
    put_ttl(&live, "t-old", "1", NOW - 1, Precondition::None).expect("put");
    let fresh = live.empty_like();
    for i in 0..50 {
        put(&fresh, &format!("k{i:02}"), "2", Precondition::None).expect("put");
    }
    put(&fresh, "a", "2", Precondition::None).expect("put");
    put_ttl(&fresh, "t-new", "2", NOW - 1, Precondition::None).expect("put");
    let fresh_revision = fresh.revision();
    live.swap_contents(&fresh);
    assert_eq!(value(&live, "a", NOW).as_deref(), Some("2"));
    assert_eq!(value(&live, "gone", NOW), None);
    assert_eq!(live.count(None, NOW), 51);
    assert_eq!(live.count(Some("k"), NOW), 50);
    let page = live.list("", None, 100, NOW);
    assert_eq!(page.keys.len(), 51);
    assert_eq!(&*page.keys[0], "a");
    assert_eq!(live.due_expirations(NOW, 10), vec![Box::from("t-new")]);
    assert_eq!(live.revision(), fresh_revision.max(3));
    // The other store now holds the old content.
    assert_eq!(value(&fresh, "gone", NOW).as_deref(), Some("1"));
    assert_eq!(fresh.count(None, NOW), 2);
}

/// A prefetch (of the probe group or of the entry) is a hint: on an empty
/// store, a growing one and for keys that are there or not, it changes
/// nothing a reader sees.
#[test]
fn a_prefetch_changes_nothing() {
    let store = Store::new();
    store.prefetch_entry(&store.prefetch("absent"));
    store.prefetch_entry(&store.prefetch(""));
    for i in 0..5_000 {
        let key = format!("k{i}");
        store.prefetch_entry(&store.prefetch(&key));
        put(&store, &key, &i.to_string(), Precondition::None).expect("put");
        let located = store.prefetch(&key);
        store.prefetch_entry(&located);
        // A change through the place the prefetch found is the change.
        let value = i.to_string();
        let again = Mutation::Put {
            value: value.as_bytes(),
            expires_at_ms: 0,
        };
        store
            .mutate_located(
                located,
                again,
                Precondition::None,
                NOW,
                &NoJournal,
                &mut |_| {},
            )
            .expect("put again");
    }
    store.prefetch_entry(&store.locate("absent"));
    assert_eq!(store.count(None, NOW), 5_000);
    for i in (0..5_000).step_by(97) {
        assert_eq!(value(&store, &format!("k{i}"), NOW), Some(i.to_string()));
    }
    assert_eq!(value(&store, "absent", NOW), None);
}

#[test]
fn a_large_deferred_batch_is_applied_whole_and_indexed_in_order() {
    // An import-sized batch and a small one, over keys that exist
    // (overwrites, entries that move) and keys that do not: the events come
    // in version order, and the new keys are listed in byte order.
    for n in [3000, 7] {
        let store = Store::new();
        for i in (0..n).step_by(3) {
            put(&store, &format!("k{i:05}"), "1", Precondition::None).expect("put");
        }
        let journal = Deferring::default();
        let ops: Vec<TxnOp> = (0..n)
            .map(|i| {
                let value: &'static [u8] = if i % 2 == 0 { b"22" } else { &[b'7'; 300] };
                txn_put(&format!("k{i:05}"), value)
            })
            .collect();
        store
            .txn(&[], ops, Vec::new(), NOW, &journal, &mut |_| {})
            .expect("txn");
        assert_eq!(store.changes_in_flight(), n as u64);
        let changes = std::mem::take(&mut *journal.0.lock().expect("lock"));
        let mut events = Vec::new();
        store.apply_many(changes, &mut |e| events.push(ChangeEvent::clone(e.event())));
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        let first = versions[0];
        assert_eq!(
            versions,
            (first..first + n as u64).collect::<Vec<_>>(),
            "{n}"
        );
        assert!(events.iter().enumerate().all(|(i, e)| {
            *e.key == *format!("k{i:05}") && (e.old_value.is_some() == (i % 3 == 0))
        }));
        assert_eq!(store.changes_in_flight(), 0);
        assert_eq!(store.count(None, NOW), n);
        assert_eq!(value(&store, "k00001", NOW).map(|v| v.len()), Some(300));
        assert_eq!(value(&store, "k00003", NOW).map(|v| v.len()), Some(300));
        assert_eq!(value(&store, "k00006", NOW).as_deref(), Some("22"));
        let listed: Vec<String> = store
            .list("k", None, n + 1, NOW)
            .keys
            .into_iter()
            .map(String::from)
            .collect();
        let expected: Vec<String> = (0..n).map(|i| format!("k{i:05}")).collect();
        assert_eq!(listed, expected, "{n}");
        assert!((0..n).all(|i| {
            store
                .sides
                .iter()
                .all(|s| s.head(&format!("k{i:05}")).is_none())
        }));
    }
}
