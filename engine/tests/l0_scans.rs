//! Scenario: L0 gathers files past its trigger while only writes arrive (fewer, larger
//! merges into a big base level), but compacts at the plain trigger once iterators scan
//! the data, since every iterator seeks each L0 file; a flush ends the scan pressure.

mod common;

use common::*;
use nokv::{Db, ReadOptions};

/// Writes every `stride`-th key of 0..4000 (offset `round`) and flushes: one L0 file
/// spanning the key range, overlapping the base level.
fn flush_round(db: &Db, round: u64, stride: u64) {
    for k in (round % stride..4000).step_by(stride as usize) {
        db.put(&key(k), &value_for(k, round, 100)).expect("put");
    }
    db.flush().expect("flush");
}

fn l0_files(db: &Db) -> usize {
    db.stats().levels[0].files
}

#[test]
fn scans_make_l0_compact_at_the_plain_trigger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = small_options(); // trigger 2, stretched up to 4 over a large base level
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    // A base level far larger than the L0 files to come.
    for k in 0..4000u64 {
        db.put(&key(k), &value_for(k, 0, 100)).expect("put");
    }
    db.compact_all().expect("compact");

    // Writes only: L0 files reach the plain trigger but the stretched one waits.
    flush_round(&db, 1, 40);
    flush_round(&db, 2, 40);
    db.wait_for_compaction().expect("wait");
    assert!(
        l0_files(&db) >= opts.l0_compaction_trigger,
        "without scans L0 gathers past the plain trigger: {}",
        db.stats()
    );

    // Scans: L0 now compacts at the plain trigger.
    for i in 0..nokv::compaction::SCAN_PRESSURE_ITERATORS {
        let mut it = db.iter(ReadOptions::default()).expect("iter");
        it.seek(&key(i % 4000));
        assert!(it.valid());
        it.status().expect("status");
    }
    db.wait_for_compaction().expect("wait");
    assert_eq!(l0_files(&db), 0, "{}", db.stats());

    // A flush ends the pressure: L0 gathers again.
    flush_round(&db, 3, 40);
    flush_round(&db, 4, 40);
    db.wait_for_compaction().expect("wait");
    assert!(
        l0_files(&db) >= opts.l0_compaction_trigger,
        "{}",
        db.stats()
    );

    // Nothing was lost on the way.
    let all = scan_all(&db);
    assert_eq!(all.len(), 4000);
    for (k, v) in all.iter().enumerate() {
        let k = k as u64;
        let round = (1..=4).rev().find(|r| k % 40 == r % 40).unwrap_or(0);
        assert_eq!(v.1, value_for(k, round, 100), "key {k}");
    }
}
