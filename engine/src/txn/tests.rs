//! Unit tests of the operations on the in-memory store.

use super::*;
use crate::NS_KV;
use mvcc::load_lock;

fn store() -> MemStore {
    MemStore::new(NS_KV)
}

fn opts(ttl: u64) -> PrewriteOptions {
    PrewriteOptions {
        lock_ttl_ms: ttl,
        ..Default::default()
    }
}

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Prewrites and commits `muts` (primary: the first key) on `s`.
fn txn(s: &mut MemStore, muts: &[Mutation], start_ts: u64, commit_ts: u64) {
    let b = prewrite(s, muts, &muts[0].key, start_ts, &opts(100)).unwrap();
    s.apply(&b).unwrap();
    let keys: Vec<_> = muts.iter().map(|m| m.key.clone()).collect();
    let b = commit(s, &keys, start_ts, commit_ts).unwrap();
    s.apply(&b).unwrap();
}

#[test]
fn prewrite_commit_then_reads_at_each_ts() {
    let mut s = store();
    txn(&mut s, &[Mutation::put(b"a", b"1")], 10, 11);
    txn(&mut s, &[Mutation::put(b"a", b"2")], 20, 21);
    txn(&mut s, &[Mutation::delete(b"a")], 30, 31);
    assert_eq!(get(&s, b"a", 9).unwrap(), None);
    assert_eq!(get(&s, b"a", 11).unwrap(), Some(k("1")));
    assert_eq!(get(&s, b"a", 20).unwrap(), Some(k("1")));
    assert_eq!(get(&s, b"a", 21).unwrap(), Some(k("2")));
    assert_eq!(get(&s, b"a", 31).unwrap(), None);
}

#[test]
fn long_values_live_in_the_default_cf() {
    let mut s = store();
    let long = vec![7u8; SHORT_VALUE_MAX_LEN + 1];
    let b = prewrite(&s, &[Mutation::put(b"a", &long)], b"a", 10, &opts(100)).unwrap();
    assert_eq!(b.len(), 2, "lock + value");
    s.apply(&b).unwrap();
    s.apply(&commit(&s, &[k("a")], 10, 11).unwrap()).unwrap();
    assert_eq!(get(&s, b"a", 12).unwrap(), Some(long));
}

#[test]
fn lock_blocks_reads_at_or_after_its_start_ts_only() {
    let mut s = store();
    txn(&mut s, &[Mutation::put(b"a", b"old")], 5, 6);
    let b = prewrite(&s, &[Mutation::put(b"a", b"new")], b"a", 10, &opts(100)).unwrap();
    s.apply(&b).unwrap();
    assert_eq!(get(&s, b"a", 9).unwrap(), Some(k("old")));
    assert!(
        matches!(get(&s, b"a", 10), Err(TxnError::KeyIsLocked { lock, .. }) if lock.start_ts == 10)
    );
    // Lock-only mutations never block.
    let mut s2 = store();
    s2.apply(&prewrite(&s2, &[Mutation::lock(b"x")], b"x", 10, &opts(100)).unwrap())
        .unwrap();
    assert_eq!(get(&s2, b"x", 20).unwrap(), None);
}

#[test]
fn write_conflict_and_lock_detection() {
    let mut s = store();
    txn(&mut s, &[Mutation::put(b"a", b"1")], 10, 15);
    let e = prewrite(&s, &[Mutation::put(b"a", b"2")], b"a", 12, &opts(100)).unwrap_err();
    assert!(
        matches!(
            e,
            TxnError::WriteConflict {
                conflict_start_ts: 10,
                conflict_commit_ts: 15,
                start_ts: 12,
                ..
            }
        ),
        "{e}"
    );
    // commit_ts == start_ts counts as a conflict too.
    let e = prewrite(&s, &[Mutation::put(b"a", b"2")], b"a", 15, &opts(100)).unwrap_err();
    assert!(matches!(e, TxnError::WriteConflict { .. }), "{e}");
    // The same prewrite with the test switch goes through.
    let skip = PrewriteOptions {
        test_skip_write_conflict_check: true,
        ..opts(100)
    };
    assert!(prewrite(&s, &[Mutation::put(b"a", b"2")], b"a", 12, &skip).is_ok());
    s.apply(&prewrite(&s, &[Mutation::put(b"a", b"3")], b"a", 20, &opts(100)).unwrap())
        .unwrap();
    let e = prewrite(
        &s,
        &[Mutation::put(b"b", b"x"), Mutation::put(b"a", b"4")],
        b"b",
        25,
        &opts(100),
    )
    .unwrap_err();
    assert!(
        matches!(&e, TxnError::KeyIsLocked { key, lock } if key == b"a" && lock.start_ts == 20),
        "{e}"
    );
}

#[test]
fn other_txns_rollbacks_are_no_conflict() {
    let mut s = store();
    s.apply(&rollback(&s, &[k("a")], 15).unwrap()).unwrap();
    txn(&mut s, &[Mutation::put(b"a", b"1")], 10, 20);
    assert_eq!(get(&s, b"a", 20).unwrap(), Some(k("1")));
}

#[test]
fn reprewrite_and_recommit_are_idempotent() {
    let mut s = store();
    let m = [Mutation::put(b"a", b"1"), Mutation::put(b"b", b"2")];
    let b = prewrite(&s, &m, b"a", 10, &opts(100)).unwrap();
    s.apply(&b).unwrap();
    assert!(prewrite(&s, &m, b"a", 10, &opts(100)).unwrap().is_empty());
    let keys = vec![k("a"), k("b")];
    s.apply(&commit(&s, &keys, 10, 11).unwrap()).unwrap();
    assert!(commit(&s, &keys, 10, 11).unwrap().is_empty());
    // A prewrite retried after the commit writes nothing.
    assert!(prewrite(&s, &m, b"a", 10, &opts(100)).unwrap().is_empty());
    // Rolling back a committed transaction is refused.
    assert!(matches!(
        rollback(&s, &keys, 10),
        Err(TxnError::AlreadyCommitted { commit_ts: 11, .. })
    ));
}

#[test]
fn rollback_refuses_late_prewrite_and_commit() {
    let mut s = store();
    let long = vec![1u8; 300];
    let m = [Mutation::put(b"a", &long)];
    s.apply(&prewrite(&s, &m, b"a", 10, &opts(100)).unwrap())
        .unwrap();
    let b = rollback(&s, &[k("a"), k("b")], 10).unwrap();
    s.apply(&b).unwrap();
    assert_eq!(get(&s, b"a", 50).unwrap(), None);
    assert_eq!(s.get_versioned(crate::CF_DEFAULT, b"a", 10).unwrap(), None);
    assert!(
        rollback(&s, &[k("a"), k("b")], 10).unwrap().is_empty(),
        "idempotent"
    );
    let e = prewrite(&s, &[Mutation::put(b"b", b"x")], b"a", 10, &opts(100)).unwrap_err();
    assert!(
        matches!(e, TxnError::RolledBack { start_ts: 10, .. }),
        "{e}"
    );
    let e = commit(&s, &[k("a")], 10, 11).unwrap_err();
    assert!(matches!(e, TxnError::RolledBack { .. }), "{e}");
    let e = commit(&s, &[k("c")], 10, 11).unwrap_err();
    assert!(matches!(e, TxnError::TxnNotFound { .. }), "{e}");
}

#[test]
fn check_txn_status_covers_every_state() {
    let mut s = store();
    let t0 = ts::compose(1_000, 0);
    s.apply(&prewrite(&s, &[Mutation::put(b"p", b"v")], b"p", t0, &opts(50)).unwrap())
        .unwrap();
    let (b, st) = check_txn_status(&s, b"p", t0, 0, ts::compose(1_049, 9)).unwrap();
    assert!(b.is_empty());
    assert_eq!(
        st,
        TxnStatus::Locked {
            ttl_ms: 50,
            min_commit_ts: t0
        }
    );
    // A reader at caller_start_ts pushes min_commit_ts and may then read past the lock.
    let reader = ts::compose(1_010, 0);
    let (b, st) = check_txn_status(&s, b"p", t0, reader, ts::compose(1_010, 1)).unwrap();
    assert_eq!(
        st,
        TxnStatus::Locked {
            ttl_ms: 50,
            min_commit_ts: reader + 1
        }
    );
    s.apply(&b).unwrap();
    assert_eq!(get(&s, b"p", reader).unwrap(), None);
    assert!(matches!(
        commit(&s, &[k("p")], t0, reader),
        Err(TxnError::CommitTsExpired { .. })
    ));
    let (b, st) = check_txn_status(&s, b"p", t0, 0, ts::compose(1_050, 0)).unwrap();
    assert_eq!(st, TxnStatus::TtlExpired);
    s.apply(&b).unwrap();
    let (b, st) = check_txn_status(&s, b"p", t0, 0, ts::compose(1_060, 0)).unwrap();
    assert_eq!((b.is_empty(), st), (true, TxnStatus::RolledBack));
    // Unknown transaction: rolled back so that its prewrite can never land.
    let t1 = ts::compose(2_000, 0);
    let (b, st) = check_txn_status(&s, b"q", t1, 0, t1 + 1).unwrap();
    assert_eq!(st, TxnStatus::LockNotExistRolledBack);
    s.apply(&b).unwrap();
    assert!(prewrite(&s, &[Mutation::put(b"q", b"v")], b"q", t1, &opts(50)).is_err());
    // Committed.
    let t2 = ts::compose(3_000, 0);
    txn(&mut s, &[Mutation::put(b"r", b"v")], t2, t2 + 1);
    let (_, st) = check_txn_status(&s, b"r", t2, 0, t2 + 2).unwrap();
    assert_eq!(st, TxnStatus::Committed(t2 + 1));
}

#[test]
fn resolve_lock_commits_or_rolls_back_secondaries() {
    let mut s = store();
    let m = [
        Mutation::put(b"p", b"1"),
        Mutation::put(b"s1", b"2"),
        Mutation::delete(b"s2"),
    ];
    s.apply(&prewrite(&s, &m, b"p", 10, &opts(1)).unwrap())
        .unwrap();
    s.apply(&commit(&s, &[k("p")], 10, 12).unwrap()).unwrap();
    let keys = vec![k("s1"), k("s2")];
    s.apply(&resolve_lock(&s, 10, Some(12), &keys).unwrap())
        .unwrap();
    assert!(resolve_lock(&s, 10, Some(12), &keys).unwrap().is_empty());
    assert_eq!(get(&s, b"s1", 12).unwrap(), Some(k("2")));
    let m = [Mutation::put(b"p", b"x"), Mutation::put(b"s1", b"y")];
    s.apply(&prewrite(&s, &m, b"p", 20, &opts(1)).unwrap())
        .unwrap();
    s.apply(&resolve_lock(&s, 20, None, &[k("p"), k("s1")]).unwrap())
        .unwrap();
    assert_eq!(get(&s, b"s1", 30).unwrap(), Some(k("2")));
}

#[test]
fn scan_merges_locks_and_writes() {
    let mut s = store();
    txn(
        &mut s,
        &[
            Mutation::put(b"a", b"1"),
            Mutation::put(b"b", b"2"),
            Mutation::put(b"d", b"4"),
        ],
        10,
        11,
    );
    txn(&mut s, &[Mutation::delete(b"b")], 12, 13);
    assert_eq!(
        scan(&s, b"", None, 20, 10).unwrap(),
        vec![(k("a"), k("1")), (k("d"), k("4"))]
    );
    assert_eq!(
        scan(&s, b"", None, 11, 2).unwrap(),
        vec![(k("a"), k("1")), (k("b"), k("2"))]
    );
    assert_eq!(
        scan(&s, b"b", Some(b"d"), 11, 10).unwrap(),
        vec![(k("b"), k("2"))]
    );
    s.apply(&prewrite(&s, &[Mutation::put(b"c", b"3")], b"c", 15, &opts(1)).unwrap())
        .unwrap();
    assert_eq!(scan(&s, b"", None, 14, 10).unwrap().len(), 2);
    assert!(matches!(
        scan(&s, b"", None, 16, 10),
        Err(TxnError::KeyIsLocked { .. })
    ));
}

#[test]
fn one_phase_commit() {
    let mut s = store();
    let m = [Mutation::put(b"a", b"1"), Mutation::put(b"b", &[9u8; 400])];
    let c = commit_1pc(&s, &m, 10, 11).unwrap();
    assert_eq!(c.commit_ts, 11);
    s.apply(&c.batch).unwrap();
    assert_eq!(get(&s, b"b", 11).unwrap(), Some(vec![9u8; 400]));
    assert!(
        commit_1pc(&s, &m, 10, 11).unwrap().batch.is_empty(),
        "a retry writes nothing"
    );
    assert!(matches!(
        commit_1pc(&s, &m, 9, 12),
        Err(TxnError::WriteConflict { .. })
    ));
    s.apply(&prewrite(&s, &[Mutation::put(b"c", b"x")], b"c", 20, &opts(1)).unwrap())
        .unwrap();
    assert!(matches!(
        commit_1pc(&s, &[Mutation::delete(b"c")], 21, 22),
        Err(TxnError::KeyIsLocked { .. })
    ));
}

#[test]
fn a_one_phase_commit_retried_after_others_wrote_its_keys_still_succeeds_writing_nothing() {
    let mut s = store();
    let m = [Mutation::put(b"a", b"1"), Mutation::put(b"b", b"2")];
    s.apply(&commit_1pc(&s, &m, 10, 11).unwrap().batch).unwrap();
    // Its answer was lost; meanwhile another transaction committed `a` and a third locked `b`.
    txn(&mut s, &[Mutation::put(b"a", b"other")], 12, 13);
    s.apply(&prewrite(&s, &[Mutation::put(b"b", b"x")], b"b", 14, &opts(1)).unwrap())
        .unwrap();
    // The retry comes with a newer commit timestamp (the first one was refused by a new
    // leader's floor, say): it is answered with the one the records carry.
    let retry = commit_1pc(&s, &m, 10, 16).unwrap();
    assert!(
        retry.batch.is_empty(),
        "the retry is answered as committed, not as a conflict or a lock"
    );
    assert_eq!(retry.commit_ts, 11, "the commit timestamp that applied");
    assert_eq!(get(&s, b"a", 13).unwrap(), Some(b"other".to_vec()));
    // A one-phase commit whose transaction was rolled back on a key is refused.
    s.apply(&rollback(&s, &[k("c")], 20).unwrap()).unwrap();
    assert!(matches!(
        commit_1pc(&s, &[Mutation::put(b"c", b"1")], 20, 21),
        Err(TxnError::RolledBack { .. })
    ));
}

#[test]
fn a_heartbeat_extends_the_primary_lock_until_the_transaction_is_decided() {
    let mut s = store();
    s.apply(&prewrite(&s, &[Mutation::put(b"p", b"1")], b"p", 10, &opts(100)).unwrap())
        .unwrap();
    let (b, ttl) = heart_beat(&s, b"p", 10, 5000).unwrap();
    assert_eq!(ttl, 5000);
    s.apply(&b).unwrap();
    assert_eq!(load_lock(&s, b"p").unwrap().map(|l| l.ttl_ms), Some(5000));
    // A shorter advice keeps the longer TTL and writes nothing.
    let (b, ttl) = heart_beat(&s, b"p", 10, 200).unwrap();
    assert!(b.is_empty());
    assert_eq!(ttl, 5000);
    // Another transaction's heartbeat on the key: it holds no lock there.
    assert!(matches!(
        heart_beat(&s, b"p", 9, 5000),
        Err(TxnError::TxnNotFound { .. })
    ));
    s.apply(&commit(&s, &[k("p")], 10, 11).unwrap()).unwrap();
    assert!(matches!(
        heart_beat(&s, b"p", 10, 5000),
        Err(TxnError::AlreadyCommitted { commit_ts: 11, .. })
    ));
    s.apply(&rollback(&s, &[k("q")], 20).unwrap()).unwrap();
    assert!(matches!(
        heart_beat(&s, b"q", 20, 5000),
        Err(TxnError::RolledBack { .. })
    ));
}

#[test]
fn bad_arguments_and_bad_records_are_errors() {
    let mut s = store();
    assert!(matches!(
        prewrite(&s, &[Mutation::put(b"a", b"1")], b"a", 0, &opts(1)),
        Err(TxnError::InvalidArgument(_))
    ));
    assert!(matches!(
        prewrite(&s, &[Mutation::put(b"", b"1")], b"a", 1, &opts(1)),
        Err(TxnError::InvalidArgument(_))
    ));
    assert!(matches!(
        prewrite(
            &s,
            &[Mutation::put(b"a", b"1"), Mutation::delete(b"a")],
            b"a",
            1,
            &opts(1)
        ),
        Err(TxnError::InvalidArgument(_))
    ));
    assert!(matches!(
        commit(&s, &[k("a")], 5, 5),
        Err(TxnError::InvalidArgument(_))
    ));
    let mut b = crate::WriteBatch::new();
    b.put_at(
        crate::KeySpace::new(NS_KV, crate::CF_LOCK),
        b"a",
        LOCK_VERSION,
        b"junk",
    );
    b.put_at(
        crate::KeySpace::new(NS_KV, crate::CF_WRITE),
        b"b",
        5,
        b"junk",
    );
    s.apply(&b).unwrap();
    let e = get(&s, b"a", 10).unwrap_err();
    assert!(matches!(e, TxnError::BadRecord { what: "lock", .. }), "{e}");
    let e = get(&s, b"b", 10).unwrap_err();
    assert!(
        matches!(e, TxnError::BadRecord { what: "write", .. }),
        "{e}"
    );
    // A put record whose long value is missing.
    let mut b = crate::WriteBatch::new();
    let w = Write {
        kind: WriteKind::Put,
        start_ts: 3,
        short_value: None,
    };
    b.put_at(
        crate::KeySpace::new(NS_KV, crate::CF_WRITE),
        b"c",
        4,
        &w.encode(),
    );
    s.apply(&b).unwrap();
    assert!(matches!(
        get(&s, b"c", 10),
        Err(TxnError::DefaultNotFound { start_ts: 3, .. })
    ));
}
