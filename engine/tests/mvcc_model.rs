//! MVCC model test: explicit versions written out of order across keys and column
//! families, range deletes (physical: every version written before them vanishes, whatever
//! its version), reads at any timestamp at or above an advancing GC safe point, snapshots,
//! flushes, compactions, value-log GC and reopens, against a model that keeps every
//! version. Most values are above the value-log threshold.

mod common;

use std::collections::BTreeMap;

use common::*;
use nokv::{Db, Error, KeySpace, ReadOptions, WriteBatch, CF_DEFAULT, CF_WRITE};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Put (space, key, version offset above the safe point, value seed).
    Put(bool, u8, u16, u16),
    /// Delete (space, key, version offset).
    Delete(bool, u8, u16),
    /// A batch of (space, key, version offset, value seed or delete).
    Batch(Vec<(bool, u8, u16, Option<u16>)>),
    /// Get (space, key, read timestamp offset above the safe point; None = latest).
    Get(bool, u8, Option<u16>),
    /// Scan a space at a timestamp offset, either direction.
    Scan(bool, Option<u16>, bool),
    AdvanceSafePoint(u16),
    Flush,
    Compact,
    Reopen,
    TakeSnapshot,
    /// Check snapshot i at a timestamp offset.
    CheckSnapshot(u8, Option<u16>),
    /// Delete the keys `[lo, hi)` of a space (`hi` None: to the end of the space).
    DeleteRange(bool, u8, Option<u8>),
    /// One batch: put (key, version offset), the range delete, put (key, version offset).
    PutRangePut(bool, (u8, u16), u8, Option<u8>, (u8, u16)),
    /// Run value-log GC a few times.
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..24;
    let off = 0u16..300;
    prop_oneof![
        30 => (any::<bool>(), key.clone(), off.clone(), any::<u16>()).prop_map(|(s, k, o, v)| Op::Put(s, k, o, v)),
        8 => (any::<bool>(), key.clone(), off.clone()).prop_map(|(s, k, o)| Op::Delete(s, k, o)),
        5 => proptest::collection::vec((any::<bool>(), key.clone(), off.clone(), proptest::option::of(any::<u16>())), 1..8).prop_map(Op::Batch),
        14 => (any::<bool>(), key.clone(), proptest::option::of(off.clone())).prop_map(|(s, k, t)| Op::Get(s, k, t)),
        3 => (any::<bool>(), proptest::option::of(off.clone()), any::<bool>()).prop_map(|(s, t, r)| Op::Scan(s, t, r)),
        4 => (0u16..120).prop_map(Op::AdvanceSafePoint),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        2 => Just(Op::TakeSnapshot),
        3 => (any::<u8>(), proptest::option::of(off.clone())).prop_map(|(i, t)| Op::CheckSnapshot(i, t)),
        3 => (any::<bool>(), key.clone(), proptest::option::of(key.clone())).prop_map(|(s, lo, hi)| Op::DeleteRange(s, lo, hi)),
        2 => (any::<bool>(), (key.clone(), off.clone()), key.clone(), proptest::option::of(key.clone()), (key.clone(), off.clone()))
            .prop_map(|(s, a, lo, hi, b)| Op::PutRangePut(s, a, lo, hi, b)),
        2 => Just(Op::Gc),
    ]
}

fn space(write_cf: bool) -> KeySpace {
    KeySpace::kv(if write_cf { CF_WRITE } else { CF_DEFAULT })
}

fn key(k: u8) -> Vec<u8> {
    format!("key{k:03}").into_bytes()
}

/// One write of a key: (version, seq, value or tombstone).
type Version = (u64, u64, Option<Vec<u8>>);

/// A range delete: (space, start, end or None for the end of the space, seq).
type RangeDelete = (KeySpace, Vec<u8>, Option<Vec<u8>>, u64);

/// Every version ever written, per (space, key).
#[derive(Default, Clone)]
struct Model {
    entries: BTreeMap<(KeySpace, Vec<u8>), Vec<Version>>,
    /// Per key, the highest version of a delete: later writes go above it (the documented rule).
    delete_floor: BTreeMap<(KeySpace, Vec<u8>), u64>,
    /// Every range delete.
    range_deletes: Vec<RangeDelete>,
    seq: u64,
}

impl Model {
    /// The version a write at `offset` above the safe point gets, respecting the delete floor.
    fn version_for(&self, s: KeySpace, k: &[u8], safe_point: u64, offset: u16) -> u64 {
        let floor = self
            .delete_floor
            .get(&(s, k.to_vec()))
            .copied()
            .unwrap_or(0);
        (safe_point + 1 + offset as u64).max(floor + 1)
    }

    fn write(&mut self, s: KeySpace, k: &[u8], version: u64, value: Option<Vec<u8>>) {
        self.seq += 1;
        if value.is_none() {
            let f = self.delete_floor.entry((s, k.to_vec())).or_insert(0);
            *f = (*f).max(version);
        }
        self.entries
            .entry((s, k.to_vec()))
            .or_default()
            .push((version, self.seq, value));
    }

    /// Records a range delete of `[lo, hi)` in `s`; it takes the next sequence number.
    fn delete_range(&mut self, s: KeySpace, lo: &[u8], hi: Option<&[u8]>) {
        self.seq += 1;
        self.range_deletes
            .push((s, lo.to_vec(), hi.map(|h| h.to_vec()), self.seq));
    }

    /// The sequence number of the newest range delete over `k` a reader at `seq` sees (0: none).
    fn range_floor(&self, s: KeySpace, k: &[u8], seq: u64) -> u64 {
        self.range_deletes
            .iter()
            .filter(|(sp, lo, hi, q)| {
                *sp == s && *q <= seq && lo.as_slice() <= k && hi.as_ref().is_none_or(|h| k < h)
            })
            .map(|r| r.3)
            .max()
            .unwrap_or(0)
    }

    /// What a reader at (`ts`, `seq`) sees for one key.
    fn read(&self, s: KeySpace, k: &[u8], ts: u64, seq: u64) -> Option<Vec<u8>> {
        // Entries older than a range delete the reader sees are gone, whatever their version.
        let floor = self.range_floor(s, k, seq);
        self.entries
            .get(&(s, k.to_vec()))?
            .iter()
            .filter(|(v, q, _)| *v <= ts && *q <= seq && *q > floor)
            .max_by_key(|(v, q, _)| (*v, *q))
            .and_then(|(_, _, val)| val.clone())
    }

    fn scan(&self, s: KeySpace, ts: u64, seq: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
            .keys()
            .filter(|(sp, _)| *sp == s)
            .filter_map(|(_, k)| self.read(s, k, ts, seq).map(|v| (k.clone(), v)))
            .collect()
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = nokv::Options {
        retain_versions: true,
        value_threshold_bytes: 128,
        vlog_segment_bytes: 8 << 10,
        vlog_gc_min_discard_ratio: 0.2,
        vlog_gc_bytes_per_round: 4 << 10,
        ..small_options()
    };
    let mut db = Db::open(dir.path(), opts.clone()).expect("open");
    let mut model = Model::default();
    let mut safe_point = 0u64;
    let mut snapshots: Vec<(nokv::Snapshot, u64)> = Vec::new();
    let ts_of = |sp: u64, t: Option<u16>| t.map_or(u64::MAX, |o| sp + o as u64);
    for (step, o) in ops.into_iter().enumerate() {
        match o {
            Op::Put(s, k, off, v) => {
                let (s, k) = (space(s), key(k));
                let version = model.version_for(s, &k, safe_point, off);
                let val = value_for(k[5] as u64, v as u64, (v % 300) as usize + 1);
                let mut b = WriteBatch::new();
                b.put_at(s, &k, version, &val);
                db.write(&b, &Default::default()).expect("put_at");
                model.write(s, &k, version, Some(val));
            }
            Op::Delete(s, k, off) => {
                let (s, k) = (space(s), key(k));
                let version = model.version_for(s, &k, safe_point, off);
                let mut b = WriteBatch::new();
                b.delete_at(s, &k, version);
                db.write(&b, &Default::default()).expect("delete_at");
                model.write(s, &k, version, None);
            }
            Op::Batch(entries) => {
                let mut b = WriteBatch::new();
                for (s, k, off, v) in entries {
                    let (s, k) = (space(s), key(k));
                    let version = model.version_for(s, &k, safe_point, off);
                    match v {
                        Some(v) => {
                            let val = value_for(k[5] as u64, v as u64, (v % 300) as usize + 1);
                            b.put_at(s, &k, version, &val);
                            model.write(s, &k, version, Some(val));
                        }
                        None => {
                            b.delete_at(s, &k, version);
                            model.write(s, &k, version, None);
                        }
                    }
                }
                db.write(&b, &Default::default()).expect("batch");
            }
            Op::Get(s, k, t) => {
                let (s, k) = (space(s), key(k));
                let ts = ts_of(safe_point, t);
                let ro = ReadOptions {
                    read_ts: Some(ts),
                    ..Default::default()
                };
                assert_eq!(
                    db.get_in(s, &k, &ro).expect("get"),
                    model.read(s, &k, ts, model.seq),
                    "step {step}: get {s:?} {k:?} at {ts}"
                );
            }
            Op::Scan(s, t, reverse) => {
                let s = space(s);
                let ts = ts_of(safe_point, t);
                let ro = ReadOptions {
                    read_ts: Some(ts),
                    ..Default::default()
                };
                assert_eq!(
                    walk(db.iter_in(s, ro).expect("iter"), reverse),
                    model.scan(s, ts, model.seq),
                    "step {step}: scan {s:?} at {ts} reverse {reverse}"
                );
            }
            Op::AdvanceSafePoint(d) => {
                safe_point += d as u64;
                db.set_gc_safe_point(safe_point);
                if safe_point > 0 {
                    let below = ReadOptions {
                        read_ts: Some(safe_point - 1),
                        ..Default::default()
                    };
                    assert!(matches!(
                        db.get_in(space(false), &key(0), &below),
                        Err(Error::BelowSafePoint { .. })
                    ));
                }
            }
            Op::DeleteRange(s, lo, hi) => {
                let s = space(s);
                let (lo, hi) = match hi {
                    Some(hi) if hi <= lo => continue,
                    other => (key(lo), other.map(key)),
                };
                let mut b = WriteBatch::new();
                b.delete_range_in(s, &lo, hi.as_deref());
                db.write(&b, &Default::default()).expect("delete_range");
                model.delete_range(s, &lo, hi.as_deref());
            }
            Op::PutRangePut(s, (a, aoff), lo, hi, (c, coff)) => {
                let s = space(s);
                let mut b = WriteBatch::new();
                let (ka, kc) = (key(a), key(c));
                let va = model.version_for(s, &ka, safe_point, aoff);
                let vala = value_for(a as u64, aoff as u64, 20);
                b.put_at(s, &ka, va, &vala);
                model.write(s, &ka, va, Some(vala));
                let range = match hi {
                    Some(hi) if hi <= lo => None,
                    other => Some((key(lo), other.map(key))),
                };
                if let Some((lo, hi)) = &range {
                    b.delete_range_in(s, lo, hi.as_deref());
                    model.delete_range(s, lo, hi.as_deref());
                }
                let vc = model.version_for(s, &kc, safe_point, coff);
                let valc = value_for(c as u64, coff as u64, 30);
                b.put_at(s, &kc, vc, &valc);
                model.write(s, &kc, vc, Some(valc));
                db.write(&b, &Default::default())
                    .expect("batch with a range delete");
            }
            Op::Flush => db.flush().expect("flush"),
            Op::Compact => db.compact_all().expect("compact"),
            Op::Gc => {
                for _ in 0..4 {
                    if !db.run_value_log_gc(0.05).expect("value-log gc") {
                        break;
                    }
                }
            }
            Op::Reopen => {
                snapshots.clear();
                db.close().expect("close");
                db = Db::open(dir.path(), opts.clone()).expect("reopen");
                // The safe point is the owner's to restore after an open.
                db.set_gc_safe_point(safe_point);
            }
            Op::TakeSnapshot => {
                if snapshots.len() == 3 {
                    snapshots.remove(0);
                }
                snapshots.push((db.snapshot(), model.seq));
            }
            Op::CheckSnapshot(i, t) => {
                if let Some((snap, seq)) = snapshots.get(i as usize % snapshots.len().max(1)) {
                    let ts = ts_of(safe_point, t);
                    let ro = ReadOptions {
                        read_ts: Some(ts),
                        snapshot: Some(snap.clone()),
                        ..Default::default()
                    };
                    for s in [space(false), space(true)] {
                        assert_eq!(
                            walk(db.iter_in(s, ro.clone()).expect("iter"), false),
                            model.scan(s, ts, *seq),
                            "step {step}: snapshot scan at {ts}"
                        );
                        for k in (0..24).step_by(5) {
                            assert_eq!(
                                db.get_in(s, &key(k), &ro).expect("get"),
                                model.read(s, &key(k), ts, *seq),
                                "step {step}: snapshot get at {ts}"
                            );
                        }
                    }
                }
            }
        }
    }
    db.compact_all().expect("compact");
    for s in [space(false), space(true)] {
        for t in [None, Some(0), Some(50), Some(200)] {
            let ts = ts_of(safe_point, t);
            let ro = ReadOptions {
                read_ts: Some(ts),
                ..Default::default()
            };
            assert_eq!(
                walk(db.iter_in(s, ro.clone()).expect("iter"), true),
                model.scan(s, ts, model.seq),
                "final scan at {ts}"
            );
        }
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
    fn versioned_engine_matches_model(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops);
    }
}

#[test]
fn higher_version_in_a_lower_level_wins_over_a_newer_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = nokv::Options {
        retain_versions: true,
        ..small_options()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    db.put_at(b"k", 10, b"v10").expect("put");
    db.compact_all().expect("compact");
    // Written later, but an older version: the newer version in the table still wins.
    db.put_at(b"k", 5, b"v5").expect("put");
    assert_eq!(db.get(b"k").expect("get"), Some(b"v10".to_vec()));
    assert_eq!(db.get_at(b"k", 9).expect("get"), Some(b"v5".to_vec()));
    assert_eq!(db.get_at(b"k", 4).expect("get"), None);
    let e = db
        .get_entry(KeySpace::KV, b"k", &ReadOptions::default())
        .expect("get")
        .expect("present");
    assert_eq!((e.version, e.expiry_unix_ms), (10, None));
    db.delete_at(b"k", 11).expect("delete");
    assert_eq!(db.get(b"k").expect("get"), None);
    assert_eq!(db.get_at(b"k", 10).expect("get"), Some(b"v10".to_vec()));
    assert!(matches!(
        db.put_at(b"k", 0, b"x"),
        Err(Error::InvalidVersion)
    ));
}

#[test]
fn without_retained_versions_reads_at_a_timestamp_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path(), small_options()).expect("open");
    db.put(b"k", b"v").expect("put");
    assert!(matches!(
        db.get_at(b"k", 1),
        Err(Error::BelowSafePoint { .. })
    ));
    assert_eq!(
        db.get_at(b"k", u64::MAX).expect("latest"),
        Some(b"v".to_vec())
    );
}

/// A newer version hidden by a range delete only for readers after it must not shadow an
/// older version written after the delete: compaction keeps the older one.
#[test]
fn a_partly_hidden_version_does_not_shadow_an_older_version_written_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = nokv::Options {
        retain_versions: true,
        ..small_options()
    };
    let db = Db::open(dir.path(), opts.clone()).expect("open");
    db.put_at(b"k", 100, b"v100").expect("put");
    let before = db.snapshot();
    db.delete_range(b"a", b"z").expect("delete_range");
    db.put_at(b"k", 50, b"v50").expect("put");
    db.set_gc_safe_point(200);
    let at_snapshot = ReadOptions {
        snapshot: Some(before.clone()),
        ..Default::default()
    };
    let check = |db: &Db, with_snapshot: bool| {
        assert_eq!(db.get(b"k").expect("get"), Some(b"v50".to_vec()));
        if with_snapshot {
            assert_eq!(
                db.get_in(KeySpace::KV, b"k", &at_snapshot).expect("get"),
                Some(b"v100".to_vec())
            );
        }
        assert_eq!(
            walk(db.iter(ReadOptions::default()).expect("iter"), false),
            vec![(b"k".to_vec(), b"v50".to_vec())]
        );
    };
    check(&db, true);
    db.compact_all().expect("compact");
    check(&db, true);
    drop(before);
    db.put(b"other", b"x").expect("put");
    db.compact_all().expect("compact");
    assert_eq!(db.get(b"k").expect("get"), Some(b"v50".to_vec()));
    db.close().expect("close");
    let db = Db::open(dir.path(), opts).expect("reopen");
    db.set_gc_safe_point(200);
    assert_eq!(db.get(b"k").expect("get"), Some(b"v50".to_vec()));
    db.close().expect("close");
}
