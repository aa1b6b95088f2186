//! Scenario: a writer far faster than compaction runs into the L0 slowdown and stop
//! triggers and the frozen-memtable limit; it is held back, never deadlocks, and loses nothing.

mod common;

use common::*;
use nokv::{Db, Durability, Options};

#[test]
fn writes_under_l0_pressure_stall_then_resume_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 3,
        l0_stop_trigger: 5,
        max_immutable_memtables: 1,
        durability: Durability::Relaxed,
        ..small_options()
    };
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..3000u64 {
                    let k = w * 100_000 + i;
                    db.put(&key(k), &value_for(k, 1, 200)).expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    db.compact_all().expect("compact");
    let stats = db.stats();
    assert!(
        stats.levels[0].files < opts.l0_compaction_trigger,
        "{stats}"
    );
    db.close().expect("close");
    let db = Db::open(dir.path(), opts).expect("reopen");
    for w in 0..3u64 {
        for i in (0..3000u64).step_by(7) {
            let k = w * 100_000 + i;
            assert_eq!(
                db.get(&key(k)).expect("get"),
                Some(value_for(k, 1, 200)),
                "key {k}"
            );
        }
    }
    assert_eq!(scan_all(&db).len(), 9000);
}

#[test]
fn value_log_gc_commits_while_writers_stall_on_l0() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 3,
        l0_stop_trigger: 4,
        max_immutable_memtables: 1,
        durability: Durability::Relaxed,
        value_threshold_bytes: 256,
        vlog_segment_bytes: 16 << 10,
        vlog_gc_min_discard_ratio: 0.2,
        vlog_gc_bytes_per_round: 8 << 10,
        ..small_options()
    };
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    // Three writers overwrite 100 keys each with large values: L0 fills up while GC runs.
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                for round in 1..=20u64 {
                    for i in 0..100u64 {
                        let k = w * 100_000 + i;
                        db.put(&key(k), &value_for(k, round, 600)).expect("put");
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    db.compact_all().expect("compact");
    assert!(db.stats().vlog_gc_segments > 0, "{}", db.stats());
    for w in 0..3u64 {
        for i in 0..100u64 {
            let k = w * 100_000 + i;
            assert_eq!(db.get(&key(k)).expect("get"), Some(value_for(k, 20, 600)));
        }
    }
    db.close().expect("close");
}
