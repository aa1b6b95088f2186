//! Model test: random put/put-with-TTL/delete/range-delete/batch/flush/compact/reopen/snapshot
//! sequences, with an injectable clock that moves forward, against a `BTreeMap`,
//! comparing point reads and full scans in both directions, bounds and prefixes.
//! About a quarter of the values are above the value-log threshold, segments are small and
//! value-log GC runs (in the background and as an operation), so reads go through pointers,
//! including relocated ones.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nokv::clock::{Clock, ManualClock};
use nokv::{Db, ReadOptions, WriteBatch};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum OpKind {
    Put(u16, u16),
    Delete(u16),
    Batch(Vec<(u16, Option<u16>)>),
    Get(u16),
    Scan {
        lo: Option<u16>,
        hi: Option<u16>,
        reverse: bool,
    },
    Prefix(u8),
    Flush,
    Compact,
    CompactFull,
    Reopen,
    TakeSnapshot,
    CheckSnapshot(u8, bool),
    PutTtl(u16, u16, u16),
    Advance(u16),
    /// Delete the keys in `[k(lo), k(hi))` (bytewise; an empty or inverted range is refused).
    DeleteRange(u16, u16),
    /// One batch: put `a`, delete `[k(lo), k(hi))`, put `b` (the first put may be deleted, the second not).
    PutRangePut(u16, u16, u16, u16),
    /// Delete every key with prefix `kNN` (a whole "region" of the key space).
    DeletePrefix(u8),
    Gc,
}

fn k(i: u16) -> Vec<u8> {
    format!("k{:02}{i:05}", i % 37).into_bytes()
}

fn v(i: u16, len: u16) -> Vec<u8> {
    value_for(i as u64, len as u64, (len % 700) as usize + 1)
}

fn op() -> impl Strategy<Value = OpKind> {
    let key = 0u16..400;
    prop_oneof![
        30 => (key.clone(), any::<u16>()).prop_map(|(a, b)| OpKind::Put(a, b)),
        8 => key.clone().prop_map(OpKind::Delete),
        6 => proptest::collection::vec((key.clone(), proptest::option::of(any::<u16>())), 1..12).prop_map(OpKind::Batch),
        10 => key.clone().prop_map(OpKind::Get),
        3 => (proptest::option::of(key.clone()), proptest::option::of(key.clone()), any::<bool>())
            .prop_map(|(lo, hi, reverse)| OpKind::Scan { lo, hi, reverse }),
        2 => (0u8..37).prop_map(OpKind::Prefix),
        2 => Just(OpKind::Flush),
        1 => Just(OpKind::Compact),
        1 => Just(OpKind::CompactFull),
        1 => Just(OpKind::Reopen),
        2 => Just(OpKind::TakeSnapshot),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(i, r)| OpKind::CheckSnapshot(i, r)),
        6 => (key.clone(), any::<u16>(), 1u16..3000).prop_map(|(a, b, t)| OpKind::PutTtl(a, b, t)),
        3 => (0u16..2000).prop_map(OpKind::Advance),
        4 => (key.clone(), key.clone()).prop_map(|(a, b)| OpKind::DeleteRange(a, b)),
        2 => (key.clone(), key.clone(), key.clone(), key.clone()).prop_map(|(a, l, h, b)| OpKind::PutRangePut(a, l, h, b)),
        1 => (0u8..37).prop_map(OpKind::DeletePrefix),
        2 => Just(OpKind::Gc),
    ]
}

/// The expected contents: user key -> value.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// What was written: user key -> (value, expiry in unix ms).
type Stored = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

/// The keys a reader sees at `now_ms`: values whose expiry is still ahead.
fn visible(stored: &Stored, now_ms: u64) -> Model {
    stored
        .iter()
        .filter(|(_, (_, exp))| exp.is_none_or(|e| e > now_ms))
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

fn scan(db: &Db, ro: ReadOptions, reverse: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    walk(db.iter(ro).expect("iter"), reverse)
}

/// Small buffers, a 512-byte value-log threshold, 8 KiB segments and an eager GC.
fn vlog_model_options() -> nokv::Options {
    nokv::Options {
        value_threshold_bytes: 512,
        vlog_segment_bytes: 8 << 10,
        vlog_gc_min_discard_ratio: 0.2,
        vlog_gc_bytes_per_round: 4 << 10,
        ..small_options()
    }
}

fn run(ops: Vec<OpKind>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let opts = nokv::Options {
        clock: clock.clone(),
        ..vlog_model_options()
    };
    let mut db = Db::open(dir.path(), opts.clone()).expect("open");
    let mut stored: Stored = BTreeMap::new();
    let mut snapshots: Vec<(nokv::Snapshot, Stored)> = Vec::new();
    for (step, o) in ops.into_iter().enumerate() {
        let now = clock.now_ms();
        match o {
            OpKind::Put(a, b) => {
                db.put(&k(a), &v(a, b)).expect("put");
                stored.insert(k(a), (v(a, b), None));
            }
            OpKind::PutTtl(a, b, ttl) => {
                db.put_with_ttl(&k(a), &v(a, b), Duration::from_millis(ttl as u64))
                    .expect("put_with_ttl");
                stored.insert(k(a), (v(a, b), Some(now + ttl as u64)));
            }
            OpKind::Advance(ms) => clock.advance(ms as u64),
            OpKind::Delete(a) => {
                db.delete(&k(a)).expect("delete");
                stored.remove(&k(a));
            }
            OpKind::DeleteRange(lo, hi) => {
                let (lo, hi) = (k(lo), k(hi));
                match db.delete_range(&lo, &hi) {
                    Ok(()) => {
                        assert!(lo < hi, "step {step}: an empty range was accepted");
                        stored.retain(|key, _| !(lo <= *key && *key < hi));
                    }
                    Err(nokv::Error::InvalidArgument(_)) => assert!(lo >= hi, "step {step}"),
                    Err(e) => panic!("step {step}: delete_range: {e}"),
                }
            }
            OpKind::PutRangePut(a, lo, hi, b) => {
                let (lo, hi) = (k(lo).min(k(hi)), k(lo).max(k(hi)));
                let mut batch = WriteBatch::new();
                batch.put(&k(a), &v(a, b));
                if lo < hi {
                    batch.delete_range(&lo, &hi);
                }
                batch.put(&k(b), &v(b, a));
                db.write(&batch, &Default::default())
                    .expect("batch with a range delete");
                stored.insert(k(a), (v(a, b), None));
                if lo < hi {
                    stored.retain(|key, _| !(lo <= *key && *key < hi));
                }
                stored.insert(k(b), (v(b, a), None));
            }
            OpKind::DeletePrefix(p) => {
                let (lo, hi) = (
                    format!("k{p:02}").into_bytes(),
                    format!("k{:02}", p + 1).into_bytes(),
                );
                db.delete_range(&lo, &hi).expect("delete a prefix");
                stored.retain(|key, _| !key.starts_with(&lo));
            }
            OpKind::Batch(entries) => {
                let mut b = WriteBatch::new();
                for (a, val) in &entries {
                    match val {
                        Some(x) if x % 3 == 0 => {
                            let exp = now + (*x as u64 % 2000) + 1;
                            b.put_with_expiry(&k(*a), &v(*a, *x), exp);
                            stored.insert(k(*a), (v(*a, *x), Some(exp)));
                        }
                        Some(x) => {
                            b.put(&k(*a), &v(*a, *x));
                            stored.insert(k(*a), (v(*a, *x), None));
                        }
                        None => {
                            b.delete(&k(*a));
                            stored.remove(&k(*a));
                        }
                    }
                }
                db.write(&b, &Default::default()).expect("batch");
            }
            OpKind::Get(a) => {
                let model = visible(&stored, now);
                assert_eq!(
                    db.get(&k(a)).expect("get"),
                    model.get(&k(a)).cloned(),
                    "step {step}"
                );
            }
            OpKind::Scan { lo, hi, reverse } => {
                let (lo, hi) = (lo.map(k), hi.map(k));
                if lo.is_some() && hi.is_some() && lo > hi {
                    continue;
                }
                let ro = ReadOptions {
                    lower_bound: lo.clone(),
                    upper_bound: hi.clone(),
                    ..Default::default()
                };
                let model = visible(&stored, now);
                let want: Vec<_> = model
                    .range::<Vec<u8>, _>((
                        lo.as_ref().map_or(Bound::Unbounded, Bound::Included),
                        hi.as_ref().map_or(Bound::Unbounded, Bound::Excluded),
                    ))
                    .map(|(a, b)| (a.clone(), b.clone()))
                    .collect();
                assert_eq!(
                    scan(&db, ro, reverse),
                    want,
                    "step {step} reverse {reverse}"
                );
            }
            OpKind::Prefix(p) => {
                let prefix = format!("k{p:02}").into_bytes();
                let ro = ReadOptions {
                    prefix: Some(prefix.clone()),
                    ..Default::default()
                };
                let want: Vec<_> = visible(&stored, now)
                    .into_iter()
                    .filter(|(a, _)| a.starts_with(&prefix))
                    .collect();
                assert_eq!(scan(&db, ro.clone(), false), want, "step {step}");
                assert_eq!(scan(&db, ro, true), want, "step {step} reverse");
            }
            OpKind::Flush => db.flush().expect("flush"),
            OpKind::Compact => db.compact_all().expect("compact"),
            OpKind::CompactFull => {
                db.compact_full().expect("full compaction");
                let levels = db.stats().levels;
                let last = levels.len() - 1;
                assert!(
                    levels[..last].iter().all(|l| l.files == 0),
                    "step {step}: files above the last level after a full compaction: {levels:?}"
                );
            }
            OpKind::Gc => {
                for _ in 0..4 {
                    if !db.run_value_log_gc(0.05).expect("value-log gc") {
                        break;
                    }
                }
            }
            OpKind::TakeSnapshot => {
                if snapshots.len() == 3 {
                    snapshots.remove(0);
                }
                snapshots.push((db.snapshot(), stored.clone()));
            }
            OpKind::CheckSnapshot(i, reverse) => {
                if let Some((snap, then)) = snapshots.get(i as usize % snapshots.len().max(1)) {
                    // A snapshot fixes which writes are seen; expiry is judged at read time.
                    let then = visible(then, now);
                    let want: Vec<_> = then.iter().map(|(a, b)| (a.clone(), b.clone())).collect();
                    let at = ReadOptions {
                        snapshot: Some(snap.clone()),
                        ..Default::default()
                    };
                    let it = db.iter(at.clone()).expect("iter at snapshot");
                    assert_eq!(walk(it, reverse), want, "step {step}: snapshot scan");
                    for a in (0..400).step_by(23) {
                        assert_eq!(
                            db.get_in(nokv::KeySpace::KV, &k(a), &at)
                                .expect("get at snapshot"),
                            then.get(&k(a)).cloned(),
                            "step {step}: snapshot get"
                        );
                    }
                }
            }
            OpKind::Reopen => {
                snapshots.clear();
                db.close().expect("close");
                db = Db::open(dir.path(), opts.clone()).expect("reopen");
            }
        }
    }
    let all: Vec<_> = visible(&stored, clock.now_ms()).into_iter().collect();
    assert_eq!(scan(&db, ReadOptions::default(), false), all);
    assert_eq!(scan(&db, ReadOptions::default(), true), all);
    // Collect everything collectable, then read it all back after a reopen.
    db.compact_all().expect("compact");
    while db.run_value_log_gc(0.01).expect("value-log gc") {}
    db.close().expect("close");
    let db = Db::open(dir.path(), opts).expect("reopen");
    let all: Vec<_> = visible(&stored, clock.now_ms()).into_iter().collect();
    assert_eq!(scan(&db, ReadOptions::default(), true), all);
    for (k, v) in &all {
        assert_eq!(db.get(k).expect("get").as_ref(), Some(v));
    }
    db.close().expect("close");
}

proptest! {
    // 24 cases in CI; PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_btreemap_model(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops);
    }
}

#[test]
fn mixed_direction_iteration_matches_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), small_options()).expect("open");
    let mut model = BTreeMap::new();
    for i in 0..2000u16 {
        let a = ((i as u32 * 7919) % 1000) as u16;
        if i % 5 == 0 {
            db.delete(&k(a)).expect("delete");
            model.remove(&k(a));
        } else {
            db.put(&k(a), &v(a, i)).expect("put");
            model.insert(k(a), v(a, i));
        }
        if i % 500 == 499 {
            db.flush().expect("flush");
        }
    }
    let keys: Vec<_> = model.keys().cloned().collect();
    let mut it = db.iter(ReadOptions::default()).expect("iter");
    it.seek(&keys[keys.len() / 2]);
    let mut pos = keys.len() / 2;
    // Walk a zig-zag: 3 forward, 2 back, repeatedly, checking each step.
    for step in 0..400 {
        assert!(it.valid(), "step {step}");
        assert_eq!(it.key(), &keys[pos][..], "step {step}");
        assert_eq!(it.value(), &model[&keys[pos]][..]);
        if step % 5 < 3 {
            if pos + 1 == keys.len() {
                break;
            }
            it.next();
            pos += 1;
        } else {
            it.prev();
            pos -= 1;
        }
    }
}
