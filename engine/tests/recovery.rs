//! Scenario: a database is reopened after a clean close, a process crash, a torn WAL tail,
//! and a crash between writing an SST and recording it in the manifest.

mod common;

use std::path::Path;

use common::*;
use nokv::fs::{FaultFs, FaultRule, FileSystem, Op, OpenMode};
use nokv::{Db, WriteBatch};

#[test]
fn reopen_after_clean_close_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), small_options()).expect("open");
    for k in 0..3000 {
        db.put(&key(k), &value_for(k, 1, 100)).expect("put");
    }
    for k in (0..3000).step_by(3) {
        db.delete(&key(k)).expect("delete");
    }
    db.close().expect("close");
    for round in 0..2 {
        let db = Db::open(dir.path(), small_options()).expect("reopen");
        for k in 0..3000 {
            let want = (k % 3 != 0).then(|| value_for(k, 1, 100));
            assert_eq!(db.get(&key(k)).expect("get"), want, "key {k} round {round}");
        }
        assert_eq!(scan_all(&db).len(), 2000);
        db.close().expect("close");
    }
}

#[test]
fn second_open_of_the_same_directory_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), small_options()).expect("open");
    match Db::open(dir.path(), small_options()) {
        Err(nokv::Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    db.close().expect("close");
    Db::open(dir.path(), small_options())
        .expect("reopen after close")
        .close()
        .expect("close");
}

#[test]
fn process_crash_loses_no_relaxed_write() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let opts = nokv::Options {
        durability: nokv::Durability::Relaxed,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).expect("open");
    for k in 0..2000 {
        db.put(&key(k), &value_for(k, 7, 50)).expect("put");
    }
    crash(&fs, db, None);
    let db = Db::open("/db", opts).expect("reopen");
    for k in 0..2000 {
        assert_eq!(
            db.get(&key(k)).expect("get"),
            Some(value_for(k, 7, 50)),
            "key {k}"
        );
    }
}

/// Finds the newest WAL segment and the byte range of its last record.
fn last_wal_record(fs: &FaultFs) -> (std::path::PathBuf, usize, usize) {
    let mut gens: Vec<u64> = fs
        .list_dir(Path::new("/db"))
        .expect("list")
        .iter()
        .filter_map(|n| match nokv::filename::parse(n) {
            Some(nokv::filename::FileKind::Wal(g)) => Some(g),
            _ => None,
        })
        .collect();
    gens.sort_unstable();
    let gen = *gens.last().expect("a WAL segment");
    let path = nokv::filename::wal(Path::new("/db"), gen);
    let f = fs.open(&path, OpenMode::Read).expect("open wal");
    let mut buf = vec![0u8; f.len().expect("len") as usize];
    f.read_exact_at(&mut buf, 0).expect("read");
    let scan = nokv::record::scan(&buf, gen);
    let (_, range) = scan.records.last().expect("records").clone();
    (path, range.start - nokv::record::HEADER_LEN, range.end)
}

fn torn_workload(fs: &FaultFs) -> (std::path::PathBuf, usize, usize) {
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", fault_options(fs)).expect("open");
    for k in 0..20 {
        db.put(&key(k), &value_for(k, 1, 20)).expect("put");
    }
    let mut b = WriteBatch::new();
    b.put(&key(100), b"a").put(&key(101), b"b").delete(&key(3));
    db.write(&b, &Default::default()).expect("batch");
    let found = last_wal_record(fs);
    crash(fs, db, None);
    found
}

#[test]
fn torn_tail_at_every_byte_offset_of_the_last_record() {
    let (_, start, end) = torn_workload(&FaultFs::new());
    assert!(end - start > 30, "last record is the 3-entry batch");
    for cut in start..end {
        let fs = FaultFs::new();
        let (path, s2, e2) = torn_workload(&fs);
        assert_eq!((s2, e2), (start, end), "workload is deterministic");
        // Everything from `cut` to the record's end never reached the disk.
        let fill = if cut % 2 == 0 { 0u8 } else { 0xab };
        let f = fs.open(&path, OpenMode::ReadWrite).expect("open wal");
        f.write_all_at(&vec![fill; end - cut], cut as u64)
            .expect("tear");
        f.sync_data().expect("sync");
        drop(f);
        let db = Db::open("/db", fault_options(&fs))
            .unwrap_or_else(|e| panic!("cut {cut}: open failed: {e}"));
        for k in 0..20 {
            assert_eq!(
                db.get(&key(k)).expect("get"),
                Some(value_for(k, 1, 20)),
                "cut {cut} key {k}"
            );
        }
        // The torn batch is invisible as a whole.
        assert_eq!(db.get(&key(100)).expect("get"), None, "cut {cut}");
        assert_eq!(db.get(&key(101)).expect("get"), None, "cut {cut}");
        // A second recovery after the repair sees the same state and accepts new writes.
        db.put(&key(200), b"after").expect("write after recovery");
        drop(db);
        let db = Db::open("/db", fault_options(&fs)).expect("second reopen");
        assert_eq!(db.get(&key(3)).expect("get"), Some(value_for(3, 1, 20)));
        assert_eq!(db.get(&key(200)).expect("get"), Some(b"after".to_vec()));
    }
}

#[test]
fn crash_between_sst_write_and_manifest_edit_recovers_from_the_wal() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", fault_options(&fs)).expect("open");
    for k in 0..200 {
        db.put(&key(k), &value_for(k, 2, 30)).expect("put");
    }
    fs.add_rule(FaultRule::once(Op::Write).path_contains("MANIFEST"));
    assert!(
        db.flush().is_err(),
        "flush must report the failed manifest edit"
    );
    // The failed manifest edit poisons the handle; what it held stays readable.
    assert!(matches!(db.put(b"x", b"y"), Err(nokv::Error::Poisoned(_))));
    for k in 0..200 {
        assert_eq!(
            db.get(&key(k)).expect("get"),
            Some(value_for(k, 2, 30)),
            "key {k} before crash"
        );
    }
    assert_eq!(scan_all(&db).len(), 200);
    crash(
        &fs,
        db,
        Some(nokv::fs::PowerLoss {
            tear_last_unsynced_page: true,
            seed: 1,
        }),
    );
    let db = Db::open("/db", fault_options(&fs)).expect("reopen");
    for k in 0..200 {
        assert_eq!(
            db.get(&key(k)).expect("get"),
            Some(value_for(k, 2, 30)),
            "key {k}"
        );
    }
    let tables = fs
        .list_dir(Path::new("/db"))
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(".sst"))
        .count();
    let live: usize = db.stats().levels.iter().map(|l| l.files).sum();
    assert_eq!(tables, live, "the orphaned table was removed");
}
