//! Scenario: bad input, failing syscalls and damaged files each get a clear error and lose
//! nothing that was acknowledged.

mod common;

use std::path::Path;

use common::*;
use nokv::fs::{FaultFs, FaultRule, FileSystem, Op, OpenMode};
use nokv::{Db, Error, WriteBatch};

fn mem_db() -> (FaultFs, Db) {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", fault_options(&fs)).expect("open");
    (fs, db)
}

#[test]
fn bad_keys_values_and_batches_get_typed_errors_and_write_nothing() {
    let (_fs, db) = mem_db();
    assert!(matches!(db.put(b"", b"v"), Err(Error::EmptyKey)));
    let big_key = vec![b'k'; (64 << 10) + 1];
    assert!(matches!(
        db.put(&big_key, b"v"),
        Err(Error::KeyTooLarge { .. })
    ));
    let big_value = vec![0u8; (64 << 10) + 1];
    assert!(matches!(
        db.put(b"k", &big_value),
        Err(Error::ValueTooLarge { .. })
    ));
    let mut b = WriteBatch::new();
    for i in 0..5000u32 {
        b.put(&i.to_be_bytes(), &[7u8; 40]);
    }
    assert!(matches!(
        db.write(&b, &Default::default()),
        Err(Error::BatchTooLarge { .. })
    ));
    let mut b = WriteBatch::new();
    b.put(b"good", b"1").put(b"", b"2");
    assert!(matches!(
        db.write(&b, &Default::default()),
        Err(Error::EmptyKey)
    ));
    assert_eq!(
        db.get(b"good").expect("get"),
        None,
        "a rejected batch writes nothing"
    );
    assert_eq!(db.stats().user_writes, 0);
    db.put(b"k", b"v").expect("valid writes still work");
}

#[test]
fn failed_fsync_poisons_the_database_until_reopen() {
    let (fs, db) = mem_db();
    db.put(b"before", b"1").expect("put");
    fs.add_rule(FaultRule::once(Op::Sync).path_contains("wal-"));
    assert!(db.put(b"failed", b"2").is_err());
    match db.put(b"after", b"3") {
        Err(Error::Poisoned(msg)) => assert!(msg.contains("wal-"), "names the file: {msg}"),
        other => panic!("expected Poisoned, got {other:?}"),
    }
    assert_eq!(
        db.get(b"before").expect("reads still work"),
        Some(b"1".to_vec())
    );
    drop(db);
    let db = Db::open("/db", fault_options(&fs)).expect("reopen");
    assert_eq!(db.get(b"before").expect("get"), Some(b"1".to_vec()));
    db.put(b"after", b"3").expect("writable after reopen");
}

#[test]
fn disk_full_during_flush_is_reported_cleaned_up_and_retried() {
    let (fs, db) = mem_db();
    for k in 0..300 {
        db.put(&key(k), &value_for(k, 1, 40)).expect("put");
    }
    fs.add_rule(
        FaultRule::after_n(Op::Write, 0)
            .path_contains(".sst")
            .errno(libc::ENOSPC),
    );
    let err = db.flush().expect_err("flush must fail on a full disk");
    assert!(
        err.to_string().contains("No space") || err.to_string().contains("space"),
        "{err}"
    );
    let ssts = |fs: &FaultFs| {
        fs.list_dir(Path::new("/db"))
            .expect("list")
            .into_iter()
            .filter(|n| n.ends_with(".sst"))
            .count()
    };
    assert_eq!(ssts(&fs), 0, "the partial table was removed");
    for k in 0..300 {
        assert_eq!(
            db.get(&key(k)).expect("readable"),
            Some(value_for(k, 1, 40))
        );
    }
    fs.clear_rules();
    db.flush().expect("the flush is retried once space is back");
    assert!(ssts(&fs) >= 1);
    drop(db);
    let db = Db::open("/db", fault_options(&fs)).expect("reopen");
    assert_eq!(db.get(&key(7)).expect("get"), Some(value_for(7, 1, 40)));
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).expect("write");
}

fn files_with(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.to_string_lossy().ends_with(suffix)
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(suffix))
        })
        .collect();
    v.sort();
    v
}

fn flushed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), small_options()).expect("open");
    for k in 0..500 {
        db.put(&key(k), &value_for(k, 1, 60)).expect("put");
    }
    db.flush().expect("flush");
    db.close().expect("close");
    dir
}

#[test]
fn corrupt_table_footer_fails_open_naming_the_file_and_nothing_is_deleted() {
    let dir = flushed_dir();
    let sst = files_with(dir.path(), ".sst").pop().expect("a table");
    let len = std::fs::metadata(&sst).expect("stat").len();
    flip_byte(&sst, len - 3);
    let before = files_with(dir.path(), "").len();
    let err = Db::open(dir.path(), small_options())
        .err()
        .expect("open must fail");
    let msg = err.to_string();
    assert!(
        msg.contains(&*sst.file_name().expect("name").to_string_lossy()),
        "{msg}"
    );
    assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
    assert_eq!(
        files_with(dir.path(), "").len(),
        before,
        "nothing was deleted"
    );
}

#[test]
fn corrupt_data_block_is_reported_on_read_with_file_and_offset() {
    let dir = flushed_dir();
    let sst = files_with(dir.path(), ".sst").pop().expect("a table");
    flip_byte(&sst, 100);
    let db = Db::open(dir.path(), small_options()).expect("open reads only metadata blocks");
    let mut saw = None;
    for k in 0..500 {
        if let Err(e) = db.get(&key(k)) {
            saw = Some(e);
            break;
        }
    }
    match saw {
        Some(Error::Corruption { path, offset, .. }) => {
            assert_eq!(path, sst);
            assert_eq!(offset, 0, "the first data block is damaged");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn missing_table_fails_open_and_nothing_is_deleted() {
    let dir = flushed_dir();
    let sst = files_with(dir.path(), ".sst").pop().expect("a table");
    std::fs::remove_file(&sst).expect("remove");
    let before = files_with(dir.path(), "").len();
    let err = Db::open(dir.path(), small_options())
        .err()
        .expect("open must fail");
    assert!(err.to_string().contains(&*sst.to_string_lossy()), "{err}");
    assert_eq!(files_with(dir.path(), "").len(), before);
}

#[test]
fn corrupt_manifest_fails_open_naming_the_file() {
    let dir = flushed_dir();
    let manifest = files_with(dir.path(), "MANIFEST-")
        .pop()
        .expect("a manifest");
    flip_byte(&manifest, 20);
    let err = Db::open(dir.path(), small_options())
        .err()
        .expect("open must fail");
    match &err {
        Error::Corruption { path, .. } => assert_eq!(path, &manifest),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn checksum_mismatch_in_the_middle_of_the_wal_fails_open_with_file_and_offset() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", fault_options(&fs)).expect("open");
    for k in 0..10 {
        db.put(&key(k), b"value").expect("put");
    }
    let wal = fs
        .list_dir(Path::new("/db"))
        .expect("list")
        .into_iter()
        .filter(|n| n.starts_with("wal-"))
        .max()
        .expect("a wal segment");
    crash(&fs, db, None);
    let path = Path::new("/db").join(&wal);
    let f = fs.open(&path, OpenMode::ReadWrite).expect("open wal");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 20).expect("read");
    f.write_all_at(&[b[0] ^ 1], 20).expect("write");
    drop(f);
    let err = Db::open("/db", fault_options(&fs))
        .err()
        .expect("open must fail");
    match &err {
        Error::Corruption {
            path: p, offset, ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, 0, "the first record is damaged");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(
        fs.exists(&path),
        "the damaged segment is kept for inspection"
    );
}

#[test]
fn disk_full_during_compaction_is_reported_cleaned_up_and_retried() {
    let (fs, db) = mem_db();
    // Two flushes write one table each; the third table write (the compaction's output) fails.
    fs.add_rule(
        FaultRule::after_n(Op::Write, 2)
            .path_contains(".sst")
            .errno(libc::ENOSPC),
    );
    for round in 0..2u64 {
        for k in 0..200 {
            db.put(&key(k), &value_for(k, round, 40)).expect("put");
        }
        db.flush().expect("flush");
    }
    let err = db
        .wait_for_compaction()
        .expect_err("compaction must fail on a full disk");
    assert!(matches!(err, nokv::Error::Background(_)), "{err:?}");
    let tables = |fs: &FaultFs| {
        fs.list_dir(Path::new("/db"))
            .expect("list")
            .into_iter()
            .filter(|n| n.ends_with(".sst"))
            .count()
    };
    assert_eq!(
        tables(&fs),
        2,
        "only the two flushed tables remain; the partial output is gone"
    );
    for k in 0..200 {
        assert_eq!(
            db.get(&key(k)).expect("readable"),
            Some(value_for(k, 1, 40))
        );
    }
    fs.clear_rules();
    db.wait_for_compaction()
        .expect("the compaction is retried once space is back");
    assert_eq!(db.stats().levels[0].files, 0);
    assert_eq!(scan_all(&db).len(), 200);
}
