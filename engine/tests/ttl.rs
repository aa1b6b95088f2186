//! Scenario: values written with a TTL disappear when the injectable clock passes their
//! expiry — in gets, scans, snapshots, after flush, compaction and reopen — and an expired
//! newest version never lets an older version of the key show through again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use nokv::clock::ManualClock;
use nokv::{Db, Options, WriteBatch};

fn ttl_options(clock: &Arc<ManualClock>) -> Options {
    Options {
        clock: clock.clone(),
        ..small_options()
    }
}

#[test]
fn expired_values_vanish_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let db = Db::open(dir.path(), ttl_options(&clock)).expect("open");
    db.put_with_ttl(b"short", b"1", Duration::from_millis(100))
        .expect("put");
    db.put_with_ttl(b"long", b"2", Duration::from_secs(3600))
        .expect("put");
    let mut b = WriteBatch::new();
    b.put_with_expiry(b"absolute", b"3", 1_000_050);
    db.write(&b, &Default::default()).expect("batch");
    db.put(b"plain", b"4").expect("put");
    let snap = db.snapshot();
    assert_eq!(db.get(b"short").expect("get"), Some(b"1".to_vec()));
    assert_eq!(scan_all(&db).len(), 4);

    clock.advance(60);
    assert_eq!(
        db.get(b"absolute").expect("get"),
        None,
        "expired at 1_000_050"
    );
    assert_eq!(db.get(b"short").expect("get"), Some(b"1".to_vec()));
    clock.advance(40);
    assert_eq!(db.get(b"short").expect("get"), None, "expiry is exclusive");
    assert_eq!(
        db.get_in(
            nokv::KeySpace::KV,
            b"short",
            &nokv::ReadOptions {
                snapshot: Some(snap.clone()),
                ..Default::default()
            }
        )
        .expect("get at snapshot"),
        None,
        "snapshots judge expiry at read time"
    );
    let keys: Vec<_> = scan_all(&db).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![b"long".to_vec(), b"plain".to_vec()]);
    db.flush().expect("flush");
    db.compact_all().expect("compact");
    assert_eq!(db.get(b"short").expect("get"), None);
    assert_eq!(db.get(b"long").expect("get"), Some(b"2".to_vec()));
    drop(snap);
    db.close().expect("close");
    let db = Db::open(dir.path(), ttl_options(&clock)).expect("reopen");
    assert_eq!(db.get(b"short").expect("get"), None);
    assert_eq!(db.get(b"long").expect("get"), Some(b"2".to_vec()));
    clock.advance(3_600_000);
    assert_eq!(db.get(b"long").expect("get"), None);
    assert_eq!(scan_all(&db), vec![(b"plain".to_vec(), b"4".to_vec())]);
}

#[test]
fn an_expired_newest_version_does_not_resurrect_older_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(5_000_000));
    let db = Db::open(dir.path(), ttl_options(&clock)).expect("open");
    // Enough data for a base level above the last one, so later compactions are not bottommost.
    for k in 0..3000 {
        db.put(&key(k), &value_for(k, 1, 1000)).expect("put");
    }
    db.compact_all().expect("compact");
    let s = db.stats();
    assert!(
        s.base_level < s.levels.len() - 1,
        "need a level below the base: {s}"
    );
    assert!(s.levels[s.levels.len() - 1].files > 0, "{s}");
    for k in (0..3000).step_by(10) {
        db.put_with_ttl(&key(k), b"short-lived", Duration::from_millis(1000))
            .expect("put");
    }
    db.flush().expect("flush");
    clock.advance(5000);
    // More flushes push the expired versions through L0 -> base compactions.
    for round in 0..3u64 {
        for k in 10_000..10_300 {
            db.put(&key(k), &value_for(k, round, 500)).expect("put");
        }
        db.flush().expect("flush");
    }
    db.compact_all().expect("compact");
    let check = |db: &Db| {
        for k in (0..3000).step_by(10) {
            assert_eq!(db.get(&key(k)).expect("get"), None, "key {k} came back");
        }
        assert_eq!(db.get(&key(1)).expect("get"), Some(value_for(1, 1, 1000)));
        assert_eq!(scan_all(db).len(), 3000 - 300 + 300);
    };
    check(&db);
    db.close().expect("close");
    let db = Db::open(dir.path(), ttl_options(&clock)).expect("reopen");
    check(&db);
}
