//! `Options::tracked_spaces` and `Db::may_hold`: a tracked key space answers "empty" until
//! a record is put into it, ingested into it, or found in it at open; never "empty" while
//! it holds one. Untracked spaces always answer "may hold".

use nokv::{Db, ExportOptions, KeySpace, RegionRange, WriteBatch, CF_DEFAULT, CF_LOCK, NS_REDIS};

const LOCKS: KeySpace = KeySpace::new(NS_REDIS, CF_LOCK);
const META: KeySpace = KeySpace::new(NS_REDIS, CF_DEFAULT);

fn options() -> nokv::Options {
    nokv::Options {
        tracked_spaces: vec![LOCKS],
        ..nokv::Options::default()
    }
}

fn put(db: &Db, space: KeySpace, key: &[u8]) {
    let mut b = WriteBatch::new();
    b.put_at(space, key, 1, b"v");
    db.apply_unlogged(&b, None).expect("put");
}

#[test]
fn a_tracked_space_is_empty_until_a_record_arrives_and_stays_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), options()).expect("open");
    assert!(!db.may_hold(LOCKS));
    assert!(
        db.may_hold(META),
        "untracked spaces may always hold records"
    );
    put(&db, META, b"k");
    assert!(!db.may_hold(LOCKS), "a put elsewhere leaves it empty");
    let mut del = WriteBatch::new();
    del.delete_at(LOCKS, b"k", 2);
    db.write(&del, &Default::default()).expect("delete");
    assert!(!db.may_hold(LOCKS), "a delete brings no record");
    put(&db, LOCKS, b"k");
    assert!(db.may_hold(LOCKS));
    let mut del = WriteBatch::new();
    del.delete_at(LOCKS, b"k", 3);
    db.write(&del, &Default::default()).expect("delete");
    assert!(
        db.may_hold(LOCKS),
        "marked until the database is opened again"
    );
}

#[test]
fn open_finds_records_from_the_log_and_tables_and_forgets_deleted_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Db::open(dir.path(), options()).expect("open");
        let mut b = WriteBatch::new();
        b.put_at(LOCKS, b"k", 1, b"v");
        db.write(&b, &Default::default()).expect("put");
    }
    let db = Db::open(dir.path(), options()).expect("reopen");
    assert!(db.may_hold(LOCKS), "found in the replayed log");
    db.flush().expect("flush");
    drop(db);
    let db = Db::open(dir.path(), options()).expect("reopen");
    assert!(db.may_hold(LOCKS), "found in a table");
    let mut del = WriteBatch::new();
    del.delete_at(LOCKS, b"k", 2);
    db.write(&del, &Default::default()).expect("delete");
    drop(db);
    let db = Db::open(dir.path(), options()).expect("reopen");
    assert!(!db.may_hold(LOCKS), "only deleted records: empty");
}

#[test]
fn an_ingest_that_brings_records_marks_the_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Db::open(dir.path().join("src"), options()).expect("open");
    put(&src, LOCKS, b"k");
    put(&src, META, b"k");
    let dst = Db::open(dir.path().join("dst"), options()).expect("open");
    let snap = dir.path().join("snap");
    src.export_range(
        &RegionRange::namespace(NS_REDIS),
        &snap,
        &ExportOptions::default(),
    )
    .expect("export");
    assert!(!dst.may_hold(LOCKS));
    dst.ingest(&snap, None).expect("ingest");
    assert!(dst.may_hold(LOCKS));
    // An ingest without such records leaves a space empty.
    let other = Db::open(dir.path().join("other"), options()).expect("open");
    let src2 = Db::open(dir.path().join("src2"), options()).expect("open");
    put(&src2, META, b"k");
    let snap2 = dir.path().join("snap2");
    src2.export_range(
        &RegionRange::namespace(NS_REDIS),
        &snap2,
        &ExportOptions::default(),
    )
    .expect("export");
    other.ingest(&snap2, None).expect("ingest");
    assert!(!other.may_hold(LOCKS));
}
