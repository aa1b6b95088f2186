//! Key-value separation end to end: which values move to the value log, reads through
//! pointers (gets, scans both ways, snapshots, TTL), reopen, orphan cleanup, corruption
//! reports, and value-log GC (re-pointing, reclaiming, pinning by old iterators).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nokv::clock::ManualClock;
use nokv::fs::{FaultFs, FileSystem, OpenMode};
use nokv::{Db, Error, KeySpace, Options, ReadOptions, WriteBatch, CF_DEFAULT, CF_WRITE};

/// Small buffers, a 256-byte threshold and 16 KiB segments; background GC effectively off
/// (tests call `run_value_log_gc`) unless a test lowers the ratio.
fn vlog_options() -> Options {
    Options {
        value_threshold_bytes: 256,
        vlog_segment_bytes: 16 << 10,
        vlog_gc_min_discard_ratio: 1.0,
        ..small_options()
    }
}

fn files_with_suffix(fs: &dyn FileSystem, dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs
        .list_dir(dir)
        .expect("list")
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn std_fs() -> nokv::fs::StdFs {
    nokv::fs::StdFs::new()
}

#[test]
fn large_values_live_in_the_value_log_and_read_back_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = vlog_options();
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    for i in 0..300u64 {
        let len = if i % 2 == 0 {
            1000 + (i as usize % 7) * 100
        } else {
            40
        };
        db.put(&key(i), &value_for(i, 1, len)).expect("put");
    }
    db.flush().expect("flush");
    let s = db.stats();
    assert!(s.vlog_segments > 0, "{s}");
    assert_eq!(s.vlog_values_separated, 150, "{s}");
    let check = |db: &Db| {
        for i in 0..300u64 {
            let len = if i % 2 == 0 {
                1000 + (i as usize % 7) * 100
            } else {
                40
            };
            assert_eq!(db.get(&key(i)).expect("get"), Some(value_for(i, 1, len)));
        }
        let all = scan_all(db);
        assert_eq!(all.len(), 300);
        let mut it = db.iter(ReadOptions::default()).expect("iter");
        it.seek_to_last();
        let mut back = Vec::new();
        while it.valid() {
            back.push((it.key().to_vec(), it.value().to_vec()));
            it.prev();
        }
        it.status().expect("status");
        back.reverse();
        assert_eq!(back, all);
    };
    check(&db);
    // Table bytes stay small: the large values are not in them.
    let sst: u64 = s.levels.iter().map(|l| l.bytes).sum();
    assert!(sst < 60_000, "tables hold {sst} bytes\n{s}");
    db.compact_all().expect("compact");
    check(&db);
    assert!(db.stats().vlog_reads > 0);
    db.close().expect("close");
    let db = Db::open(dir.path(), opts).expect("reopen");
    check(&db);
    db.close().expect("close");
}

#[test]
fn thresholds_apply_per_column_family_and_can_be_disabled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = vlog_options();
    opts.value_threshold_per_cf.insert(CF_WRITE, 0);
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    let mut b = WriteBatch::new();
    b.put_in(KeySpace::kv(CF_DEFAULT), b"big", &[7u8; 600]);
    b.put_in(KeySpace::kv(CF_WRITE), b"big", &[8u8; 600]);
    db.write(&b, &Default::default()).expect("write");
    db.flush().expect("flush");
    assert_eq!(db.stats().vlog_values_separated, 1);
    let ro = ReadOptions::default();
    assert_eq!(
        db.get_in(KeySpace::kv(CF_WRITE), b"big", &ro).expect("get"),
        Some(vec![8u8; 600])
    );
    assert_eq!(
        db.get_in(KeySpace::kv(CF_DEFAULT), b"big", &ro)
            .expect("get"),
        Some(vec![7u8; 600])
    );
    db.close().expect("close");

    // Disabled everywhere: nothing is separated, and the old pointers still read.
    let off = Options {
        value_threshold_bytes: 0,
        value_threshold_per_cf: Default::default(),
        ..opts
    };
    let db = Db::open(dir.path(), off).expect("reopen");
    db.put(b"other", &[9u8; 5000]).expect("put");
    db.compact_all().expect("compact");
    assert_eq!(db.stats().vlog_values_separated, 0);
    assert_eq!(db.get(b"other").expect("get"), Some(vec![9u8; 5000]));
    assert_eq!(
        db.get_in(KeySpace::kv(CF_DEFAULT), b"big", &ReadOptions::default())
            .expect("get"),
        Some(vec![7u8; 600])
    );
    db.close().expect("close");
}

#[test]
fn bad_value_log_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for o in [
        Options {
            vlog_segment_bytes: 100,
            ..vlog_options()
        },
        Options {
            vlog_gc_min_discard_ratio: 0.0,
            ..vlog_options()
        },
        Options {
            vlog_gc_min_discard_ratio: f64::NAN,
            ..vlog_options()
        },
        Options {
            vlog_gc_bytes_per_round: 10,
            ..vlog_options()
        },
    ] {
        assert!(matches!(
            Db::open(dir.path(), o),
            Err(Error::InvalidArgument(_))
        ));
    }
}

#[test]
fn ttl_values_in_the_value_log_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let opts = Options {
        clock: clock.clone(),
        ..vlog_options()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    db.put(b"k", &[1u8; 900]).expect("put");
    db.put_with_ttl(b"k", &[2u8; 900], Duration::from_millis(500))
        .expect("put ttl");
    db.flush().expect("flush");
    let e = db
        .get_entry(KeySpace::KV, b"k", &ReadOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!(e.value, vec![2u8; 900]);
    assert_eq!(e.expiry_unix_ms, Some(1_000_500));
    clock.advance(600);
    assert_eq!(
        db.get(b"k").expect("get"),
        None,
        "expired, older value hidden"
    );
    db.compact_all().expect("compact");
    assert_eq!(db.get(b"k").expect("get"), None);
    assert!(scan_all(&db).is_empty());
    db.close().expect("close");
}

#[test]
fn orphan_segments_are_deleted_on_open_and_missing_ones_fail_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = vlog_options();
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    db.put(b"a", &[3u8; 1000]).expect("put");
    db.flush().expect("flush");
    db.close().expect("close");
    let fs = std_fs();
    let live = files_with_suffix(&fs, dir.path(), ".vlog");
    assert_eq!(live.len(), 1);
    // A segment no edit references (an unfinished flush or GC) is removed on open.
    let orphan = dir.path().join("999999.vlog");
    std::fs::write(&orphan, b"half a segment").expect("write orphan");
    let db = Db::open(dir.path(), opts.clone()).expect("reopen");
    assert!(!orphan.exists());
    assert_eq!(db.get(b"a").expect("get"), Some(vec![3u8; 1000]));
    db.close().expect("close");
    // A live segment that is missing fails the open and deletes nothing.
    let seg = dir.path().join(&live[0]);
    let saved = std::fs::read(&seg).expect("read");
    std::fs::remove_file(&seg).expect("remove");
    let err = Db::open(dir.path(), opts.clone())
        .err()
        .expect("open must fail");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    std::fs::write(&seg, &saved).expect("restore");
    let db = Db::open(dir.path(), opts).expect("reopen");
    assert_eq!(db.get(b"a").expect("get"), Some(vec![3u8; 1000]));
    db.close().expect("close");
}

#[test]
fn damaged_values_are_reported_with_the_segment_and_offset() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let opts = Options {
        value_threshold_bytes: 256,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts).expect("open");
    db.put(b"a", &[1u8; 700]).expect("put");
    db.put(b"b", &[2u8; 700]).expect("put");
    db.flush().expect("flush");
    let seg = files_with_suffix(&fs, Path::new("/db"), ".vlog");
    assert_eq!(seg.len(), 1);
    let path = Path::new("/db").join(&seg[0]);
    // Flip a byte inside the second record's value (records start at 24).
    let f = fs.open(&path, OpenMode::ReadWrite).expect("open segment");
    let rec_len = 12 + 3 + 16 + 700;
    let at = 24 + rec_len as u64 + 100;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x40], at).expect("write");
    assert_eq!(db.get(b"a").expect("get a"), Some(vec![1u8; 700]));
    match db.get(b"b") {
        Err(Error::Corruption {
            path: p, offset, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(offset, 24 + rec_len as u64);
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let mut it = db.iter(ReadOptions::default()).expect("iter");
    it.seek_to_first();
    assert!(it.valid());
    assert_eq!(it.key(), b"a");
    it.next();
    assert!(!it.valid());
    assert!(matches!(it.status(), Err(Error::Corruption { .. })));
    drop(it);
    db.close().expect("close");
}

#[test]
fn gc_moves_live_values_and_deletes_the_old_segment_once_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = vlog_options();
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    let fs = std_fs();
    let v = |i: u64, g: u64| value_for(i, g, 700);
    // Generation 1: 60 keys. Generation 2 overwrites a third of them (garbage in gen 1's
    // segments once compacted); a snapshot then pins generation 1 of another third, which
    // generation 3 overwrites: GC must move those values too.
    for i in 0..60u64 {
        db.put(&key(i), &v(i, 1)).expect("put");
    }
    db.flush().expect("flush");
    let first_gen = files_with_suffix(&fs, dir.path(), ".vlog");
    assert!(first_gen.len() >= 2, "{first_gen:?}");
    for i in (0..60u64).filter(|i| i % 3 == 1) {
        db.put(&key(i), &v(i, 2)).expect("put");
    }
    db.compact_all().expect("compact");
    let s = db.stats();
    assert!(s.vlog_garbage_bytes > 0, "compaction counted discards\n{s}");
    let snap = db.snapshot();
    for i in (0..60u64).filter(|i| i % 3 == 2) {
        db.put(&key(i), &v(i, 3)).expect("put");
    }
    db.compact_all().expect("compact");
    let now = |i: u64| v(i, [1, 2, 3][i as usize % 3]);
    let then = |i: u64| v(i, [1, 2, 1][i as usize % 3]);
    // An iterator opened before GC keeps reading the segments GC collects.
    let mut old_it = db.iter(ReadOptions::default()).expect("iter");
    let mut collected = 0;
    while db.run_value_log_gc(0.2).expect("gc") {
        collected += 1;
    }
    let s = db.stats();
    assert!(collected > 0 && s.vlog_gc_segments > 0, "{s}");
    assert!(s.vlog_gc_bytes_rewritten > 0, "{s}");
    assert!(
        first_gen.iter().all(|f| dir.path().join(f).exists()),
        "the old iterator still holds the collected segments"
    );
    old_it.seek_to_first();
    let mut n = 0;
    while old_it.valid() {
        let i: u64 = std::str::from_utf8(&old_it.key()[3..])
            .expect("utf8")
            .parse()
            .expect("key");
        assert_eq!(old_it.value(), &now(i)[..]);
        n += 1;
        old_it.next();
    }
    old_it.status().expect("old iterator");
    assert_eq!(n, 60);
    drop(old_it);
    // Once unreachable, a collected segment's file is deleted or kept (two at most) for the
    // write path to reuse; closing deletes the kept ones.
    let s = db.stats();
    assert!(s.vlog_segments_kept <= 2, "{s}");
    assert_eq!(
        files_with_suffix(&fs, dir.path(), ".vlog").len(),
        s.vlog_segments + s.vlog_segments_kept,
        "collected segments are deleted or kept once unreachable\n{s}"
    );
    let gone = first_gen
        .iter()
        .filter(|f| !dir.path().join(f).exists())
        .count();
    assert!(
        gone + s.vlog_segments_kept >= collected.min(first_gen.len()),
        "{gone} of {first_gen:?} gone, {} kept, {collected} collected",
        s.vlog_segments_kept
    );
    let at = ReadOptions {
        snapshot: Some(snap.clone()),
        ..Default::default()
    };
    for i in 0..60u64 {
        assert_eq!(db.get(&key(i)).expect("get"), Some(now(i)));
        assert_eq!(
            db.get_in(KeySpace::KV, &key(i), &at)
                .expect("get at snapshot"),
            Some(then(i)),
            "the snapshot still reads what it saw, moved by GC"
        );
    }
    drop(snap);
    // Relocated values survive compaction (duplicate keys dropped) and reopen.
    db.compact_all().expect("compact");
    for i in 0..60u64 {
        assert_eq!(db.get(&key(i)).expect("get"), Some(now(i)));
    }
    let live = db.stats().vlog_segments;
    db.close().expect("close");
    assert_eq!(
        files_with_suffix(&fs, dir.path(), ".vlog").len(),
        live,
        "close deletes the kept files"
    );
    let db = Db::open(dir.path(), opts).expect("reopen");
    for i in 0..60u64 {
        assert_eq!(db.get(&key(i)).expect("get"), Some(now(i)));
    }
    assert_eq!(scan_all(&db).len(), 60);
    db.close().expect("close");
}

#[test]
fn background_gc_reclaims_overwritten_values_without_manual_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        vlog_gc_min_discard_ratio: 0.5,
        ..vlog_options()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    for round in 1..=20u64 {
        for i in 0..50u64 {
            db.put(&key(i), &value_for(i, round, 800)).expect("put");
        }
    }
    // Bounded wait for background flush, compaction and GC to settle.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = db.stats();
        if s.vlog_gc_segments > 0 && s.vlog_gc_candidates == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background GC did not run\n{s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..50u64 {
        assert_eq!(db.get(&key(i)).expect("get"), Some(value_for(i, 20, 800)));
    }
    db.close().expect("close");
}

#[test]
fn gc_postpones_a_segment_whose_value_is_hidden_by_a_tombstone_a_snapshot_still_sees_past() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), vlog_options()).expect("open");
    let v = |i: u64, g: u64| value_for(i, g, 700);
    for i in 0..10u64 {
        db.put(&key(i), &v(i, 1)).expect("put");
    }
    db.flush().expect("flush");
    for i in 5..10u64 {
        db.put(&key(i), &v(i, 2)).expect("put");
    }
    db.compact_all().expect("compact");
    // The snapshot sees key 0's value; the delete hides it from everyone else. Moving the
    // value above the tombstone would resurrect it once the tombstone is reclaimed.
    let snap = db.snapshot();
    db.delete(&key(0)).expect("delete");
    db.compact_all().expect("compact");
    assert!(!db.run_value_log_gc(0.2).expect("gc"));
    let s = db.stats();
    assert!(s.vlog_gc_deferred > 0 && s.vlog_gc_segments == 0, "{s}");
    let at = ReadOptions {
        snapshot: Some(snap.clone()),
        ..Default::default()
    };
    assert_eq!(
        db.get_in(KeySpace::KV, &key(0), &at).expect("get"),
        Some(v(0, 1))
    );
    // Once the snapshot is gone the value is garbage and the segment can be collected.
    drop(at);
    drop(snap);
    db.compact_all().expect("compact");
    assert!(db.run_value_log_gc(0.2).expect("gc"), "{}", db.stats());
    assert_eq!(db.get(&key(0)).expect("get"), None);
    for i in 1..10u64 {
        assert_eq!(
            db.get(&key(i)).expect("get"),
            Some(v(i, if i < 5 { 1 } else { 2 }))
        );
    }
    db.close().expect("close");
}

#[test]
fn a_range_delete_that_drops_tables_unread_still_counts_their_values_as_garbage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), vlog_options()).expect("open");
    let space = KeySpace::kv(CF_DEFAULT);
    for i in 0..3000u64 {
        let mut b = WriteBatch::new();
        b.put_in(space, &key(i), &value_for(i, 1, 600));
        db.write(&b, &Default::default()).expect("put");
    }
    db.compact_all().expect("compact");
    let before = db.stats();
    assert!(
        before.vlog_segments > 0 && before.vlog_garbage_bytes == 0,
        "{before}"
    );
    db.delete_range(&key(0), &key(3000)).expect("delete_range");
    db.compact_all().expect("compact");
    let after = db.stats();
    assert!(
        after.range_del_files_dropped > 0,
        "the fast path dropped tables unread ({} files)\n{after}",
        after.range_del_files_dropped
    );
    // Every value of the deleted range is garbage now: GC can reclaim all of it.
    assert!(
        after.vlog_garbage_bytes * 10 >= before.vlog_live_bytes * 9,
        "discards of unread tables were counted ({} files dropped unread)\n{after}",
        after.range_del_files_dropped
    );
    db.run_value_log_gc(0.5).expect("gc");
    assert_eq!(db.get(&key(5)).expect("get"), None);
}
