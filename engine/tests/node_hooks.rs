//! Scenario: the hooks the server needs — opaque WAL records handed back on recovery,
//! batches applied without being logged again, and per-region applied indexes persisted
//! atomically with the flush that makes their data durable.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use nokv::fs::{FaultFs, FileSystem};
use nokv::{Db, KeySpace, Options, ReadOptions, WriteBatch, WriteOptions};

type Seen = Arc<Mutex<Vec<(u8, Vec<u8>)>>>;

fn replaying(fs: &FaultFs, seen: &Seen) -> Options {
    let seen = seen.clone();
    Options {
        opaque_replay: Some(Arc::new(move |tag, payload| {
            seen.lock().expect("seen").push((tag, payload.to_vec()));
        })),
        ..fault_options(fs)
    }
}

#[test]
fn opaque_records_are_replayed_in_order_until_released() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let seen: Seen = Arc::default();
    let db = Db::open("/db", replaying(&fs, &seen)).expect("open");
    let first = db
        .append_opaque(
            &[(1, b"entry-1"), (2, b"hardstate-1")],
            &WriteOptions::default(),
        )
        .expect("append");
    db.set_opaque_floor(Some(first.segment))
        .expect("retain from the first record");
    // Enough data to rotate the WAL several times and flush memtables.
    for k in 0..600 {
        db.put(&key(k), &value_for(k, 1, 300)).expect("put");
    }
    let later = db
        .append_opaque(&[(1, b"entry-2")], &WriteOptions::default())
        .expect("append");
    assert!(later.segment > first.segment, "the WAL rotated in between");
    crash(&fs, db, None);

    let db = Db::open("/db", replaying(&fs, &seen)).expect("reopen");
    let got = std::mem::take(&mut *seen.lock().expect("seen"));
    assert_eq!(
        got,
        vec![
            (1, b"entry-1".to_vec()),
            (2, b"hardstate-1".to_vec()),
            (1, b"entry-2".to_vec())
        ],
        "opaque records come back oldest first, batches are not handed out"
    );
    for k in (0..600).step_by(37) {
        assert_eq!(db.get(&key(k)).expect("get"), Some(value_for(k, 1, 300)));
    }
    // Releasing everything before the last record's segment drops the older ones.
    db.set_opaque_floor(Some(later.segment)).expect("release");
    for k in 0..600 {
        db.put(&key(k), &value_for(k, 2, 300)).expect("put");
    }
    db.flush().expect("flush");
    crash(&fs, db, None);
    let _db = Db::open("/db", replaying(&fs, &seen)).expect("reopen");
    let got = std::mem::take(&mut *seen.lock().expect("seen"));
    assert_eq!(got, vec![(1, b"entry-2".to_vec())]);
}

#[test]
fn unlogged_batches_become_durable_only_with_the_flush_that_records_their_index() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", fault_options(&fs)).expect("open");
    let mut b = WriteBatch::new();
    b.put(b"a", b"1").put(b"b", b"2");
    db.apply_unlogged(&b, Some((7, 10))).expect("apply");
    assert_eq!(
        db.get(b"a").expect("get"),
        Some(b"1".to_vec()),
        "visible at once"
    );
    assert_eq!(db.applied_index(7), None, "not durable before a flush");
    db.flush().expect("flush");
    assert_eq!(db.applied_index(7), Some(10));

    let mut b = WriteBatch::new();
    b.put(b"c", b"3");
    db.apply_unlogged(&b, Some((7, 11))).expect("apply");
    // A crash loses the unflushed, unlogged batch: its raft entry would be re-applied.
    crash(&fs, db, Some(nokv::fs::PowerLoss::default()));
    let db = Db::open("/db", fault_options(&fs)).expect("reopen");
    assert_eq!(db.applied_index(7), Some(10));
    assert_eq!(db.get(b"a").expect("get"), Some(b"1".to_vec()));
    assert_eq!(db.get(b"c").expect("get"), None);
    // Re-applying from index 11 on is exact.
    db.apply_unlogged(&b, Some((7, 11))).expect("re-apply");
    db.flush().expect("flush");
    assert_eq!(db.applied_index(7), Some(11));
    assert_eq!(db.get(b"c").expect("get"), Some(b"3".to_vec()));
}

#[test]
fn namespaces_and_column_families_are_separate_key_spaces() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", fault_options(&fs)).expect("open");
    let redis = KeySpace::new(nokv::NS_REDIS, nokv::CF_DEFAULT);
    let lock = KeySpace::kv(nokv::CF_LOCK);
    let mut b = WriteBatch::new();
    b.put_in(redis, b"k", b"redis")
        .put_in(lock, b"k", b"lock")
        .put_in(KeySpace::new(nokv::NS_KV, 255), b"k", b"last cf")
        .put(b"k", b"kv");
    db.write(&b, &WriteOptions::default()).expect("write");
    let ro = ReadOptions::default();
    assert_eq!(db.get(b"k").expect("get"), Some(b"kv".to_vec()));
    assert_eq!(
        db.get_in(redis, b"k", &ro).expect("get"),
        Some(b"redis".to_vec())
    );
    assert_eq!(
        db.get_in(lock, b"k", &ro).expect("get"),
        Some(b"lock".to_vec())
    );
    assert_eq!(
        db.get_in(KeySpace::kv(nokv::CF_WRITE), b"k", &ro)
            .expect("get"),
        None
    );
    assert_eq!(
        scan_all(&db),
        vec![(b"k".to_vec(), b"kv".to_vec())],
        "iterators stay in their key space"
    );
    for (space, want) in [
        (redis, &b"redis"[..]),
        (lock, &b"lock"[..]),
        (KeySpace::new(nokv::NS_KV, 255), &b"last cf"[..]),
    ] {
        let mut it = db.iter_in(space, ReadOptions::default()).expect("iter");
        it.seek_to_first();
        assert!(it.valid());
        assert_eq!((it.key(), it.value()), (&b"k"[..], want));
        it.next();
        assert!(!it.valid(), "{space:?} holds one key");
        it.seek_to_last();
        assert_eq!(it.key(), &b"k"[..]);
    }
    // A batch across column families is one atomic WAL record: it survives a reopen whole.
    db.close().expect("close");
    let db = Db::open("/db", fault_options(&fs)).expect("reopen");
    assert_eq!(
        db.get_in(lock, b"k", &ro).expect("get"),
        Some(b"lock".to_vec())
    );
    assert_eq!(db.get(b"k").expect("get"), Some(b"kv".to_vec()));
}

/// Opens `/db`, sets the opaque floor as the raft side does at its start (`to_zero`: at
/// segment 0, as it did before; else at the oldest live segment), crashes, and reopens.
fn restart_setting_the_floor(fs: &FaultFs, seen: &Seen, to_zero: bool) -> nokv::Result<Db> {
    let db = Db::open("/db", replaying(fs, seen)).expect("reopen");
    let floor = if to_zero {
        0
    } else {
        db.oldest_live_wal_segment()
    };
    db.set_opaque_floor(Some(floor)).expect("floor");
    crash(fs, db, None);
    Db::open("/db", replaying(fs, seen))
}

/// Released segments, their files kept for reuse, then two restarts in a row before the
/// owner moves its floor: each open reuses one of those files as its new segment.
fn twice_restarted(to_zero: bool) -> nokv::Result<Db> {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let seen: Seen = Arc::default();
    let db = Db::open("/db", replaying(&fs, &seen)).expect("open");
    let first = db
        .append_opaque(&[(1, b"entry-1")], &WriteOptions::default())
        .expect("append");
    db.set_opaque_floor(Some(first.segment)).expect("retain");
    for k in 0..600 {
        db.put(&key(k), &value_for(k, 1, 300)).expect("put");
    }
    let later = db
        .append_opaque(&[(1, b"entry-2")], &WriteOptions::default())
        .expect("append");
    assert!(
        later.segment > first.segment + 2,
        "the WAL rotated a few times"
    );
    db.set_opaque_floor(Some(later.segment)).expect("release");
    db.flush().expect("flush");
    crash(&fs, db, None);
    let db = restart_setting_the_floor(&fs, &seen, to_zero)?;
    crash(&fs, db, None);
    let db = restart_setting_the_floor(&fs, &seen, to_zero)?;
    for k in (0..600).step_by(37) {
        assert_eq!(db.get(&key(k)).expect("get"), Some(value_for(k, 1, 300)));
    }
    Ok(db)
}

#[test]
fn a_floor_at_the_oldest_live_segment_survives_restarts_in_a_row() {
    twice_restarted(false).expect("restarted");
}

#[test]
fn negative_control_a_floor_at_segment_zero_makes_a_reused_segment_a_gap() {
    match twice_restarted(true) {
        Err(e) => assert!(e.to_string().contains("WAL segment is missing"), "{e}"),
        Ok(_) => panic!("the checker missed the gap a floor of 0 makes"),
    }
}
