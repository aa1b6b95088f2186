//! The transaction GC (`Db::set_txn_safe_point`): compaction drops `NS_KV`'s Percolator
//! write records no transaction reading at or above the safe point can see. Checked on
//! random histories of puts (short and long values), deletes, lock-only commits and
//! rollbacks (with and without a prewrite) on a few keys: every read at or above the safe
//! point answers as before the GC, the newest write record of every key (what a latest
//! read such as a consistency check sees, delete records aside) is unchanged, records were
//! dropped (write records and long values), and the safe point survives a reopen. The
//! negative controls (`Options::unsafe_txn_gc_any_record_shadows`, a plain version GC's
//! rule; `Options::unsafe_txn_gc_drop_referenced_values`) lose committed values the check
//! must catch.

mod common;

use common::{apply_txn as apply, txn_reader as reader};
use nokv::txn::{self, Mutation, MvccRead, PrewriteOptions};
use nokv::{Db, KeySpace, ReadOptions, CF_WRITE, NS_KV};
use rand::{Rng, SeedableRng};

const KEYS: u8 = 6;

/// A fault of the transaction GC a negative control switches on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    AnyRecordShadows,
    DropReferencedValues,
}

fn open(dir: &std::path::Path, fault: Fault) -> Db {
    let opts = nokv::Options {
        retain_versions: true,
        unsafe_txn_gc_any_record_shadows: fault == Fault::AnyRecordShadows,
        unsafe_txn_gc_drop_referenced_values: fault == Fault::DropReferencedValues,
        ..common::small_options()
    };
    Db::open(dir, opts).expect("open")
}

fn key(i: u8) -> Vec<u8> {
    format!("key-{i}").into_bytes()
}

fn prewrite(db: &Db, muts: &[Mutation], start_ts: u64) {
    let opts = PrewriteOptions {
        lock_ttl_ms: 1000,
        ..Default::default()
    };
    let b = txn::prewrite(&reader(db), muts, &muts[0].key, start_ts, &opts).expect("prewrite");
    apply(db, &b);
}

/// Writes `steps` random transactions, one at a time with increasing timestamps, from
/// `ts`; returns the next unused timestamp.
fn random_history(db: &Db, seed: u64, steps: usize, mut ts: u64) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for step in 0..steps {
        let a = rng.gen_range(0..KEYS);
        let b = (a + rng.gen_range(1..KEYS)) % KEYS;
        let keys = if rng.gen_bool(0.5) {
            vec![key(a)]
        } else {
            vec![key(a), key(b)]
        };
        let (start_ts, commit_ts) = (ts, ts + 1);
        ts += 2;
        let value = |k: &[u8]| {
            let mut v = format!("{}@{start_ts}", String::from_utf8_lossy(k)).into_bytes();
            if step % 5 == 0 {
                // Longer than a short value: stored in CF_DEFAULT.
                v.resize(txn::SHORT_VALUE_MAX_LEN + 40, b'.');
            }
            v
        };
        let muts: Vec<Mutation> = match rng.gen_range(0..10) {
            0..=4 => keys.iter().map(|k| Mutation::put(k, &value(k))).collect(),
            5 => keys.iter().map(|k| Mutation::delete(k)).collect(),
            6 => keys.iter().map(|k| Mutation::lock(k)).collect(),
            7 | 8 => {
                prewrite(
                    db,
                    &keys
                        .iter()
                        .map(|k| Mutation::put(k, &value(k)))
                        .collect::<Vec<_>>(),
                    start_ts,
                );
                apply(
                    db,
                    &txn::rollback(&reader(db), &keys, start_ts).expect("rollback"),
                );
                continue;
            }
            _ => {
                // A rollback record left by a reader for a writer that never came.
                apply(
                    db,
                    &txn::rollback(&reader(db), &keys, start_ts).expect("rollback"),
                );
                continue;
            }
        };
        prewrite(db, &muts, start_ts);
        let c = txn::commit(&reader(db), &keys, start_ts, commit_ts).expect("commit");
        apply(db, &c);
    }
    ts
}

/// One read: key index, timestamp, and its answer (an error as its text).
type Read = (u8, u64, Result<Option<Vec<u8>>, String>);

/// What every read at `from..=to` answers, per key.
fn reads(db: &Db, from: u64, to: u64) -> Vec<Read> {
    let mut out = Vec::new();
    for i in 0..KEYS {
        for ts in from..=to {
            let v = txn::get(&reader(db), &key(i), ts).map_err(|e| e.to_string());
            out.push((i, ts, v));
        }
    }
    out
}

/// The newest write record of every key, delete records skipped (a latest read).
fn latest_records(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut it = db
        .iter_in(KeySpace::new(NS_KV, CF_WRITE), ReadOptions::default())
        .expect("iter");
    it.seek_to_first();
    let mut out = Vec::new();
    while it.valid() {
        if it.value().first() != Some(&b'D') {
            out.push((it.key().to_vec(), it.value().to_vec()));
        }
        it.next();
    }
    out
}

/// Entries of `keys` in column family `cf` of `NS_KV`, all versions (down to the first
/// tombstone).
fn record_count(db: &Db, cf: u8, keys: &[Vec<u8>]) -> usize {
    let r = reader(db);
    let mut n = 0;
    for k in keys {
        let mut at = u64::MAX;
        while let Some((v, _)) = r.get_versioned(cf, k, at).expect("versions") {
            n += 1;
            match v.checked_sub(1) {
                Some(x) => at = x,
                None => break,
            }
        }
    }
    n
}

/// A full compaction: every entry passes through a bottommost merge.
fn compact(db: &Db) {
    db.compact_full().expect("full compaction");
}

/// Runs one history, the GC at its middle timestamp, and returns the reads at or above
/// the safe point that changed, and the long values collected.
fn gc_changes(seed: u64, fault: Fault) -> (Vec<String>, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), fault);
    let end = random_history(&db, seed, 160, 10);
    // Flush some of the history to its own files, so records meet in several levels.
    db.flush().expect("flush");
    let end = random_history(&db, seed + 1, 40, end);
    let safe_point = 10 + (end - 10) / 2;
    let before = reads(&db, safe_point, end);
    let latest = latest_records(&db);
    let all: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    let records = record_count(&db, CF_WRITE, &all);
    db.set_txn_safe_point(safe_point);
    compact(&db);
    let after = reads(&db, safe_point, end);
    let mut changed: Vec<String> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, a)| format!("key {} at {}: {:?} became {:?}", b.0, b.1, b.2, a.2))
        .collect();
    if latest_records(&db) != latest {
        changed.push("the newest write records changed".into());
    }
    let stats = db.stats();
    assert!(
        stats.txn_records_collected > 0,
        "seed {seed}: nothing collected"
    );
    assert!(
        record_count(&db, CF_WRITE, &all) < records,
        "seed {seed}: as many records as before"
    );
    drop(db);
    let db = open(dir.path(), fault);
    assert_eq!(db.txn_safe_point(), safe_point, "persisted safe point");
    let reopened = reads(&db, safe_point, end);
    if reopened != after {
        changed.push("reads changed across the reopen".into());
    }
    (changed, stats.txn_values_collected)
}

#[test]
fn reads_at_or_above_the_txn_safe_point_are_unchanged_by_gc() {
    let mut values = 0;
    for seed in 0..6 {
        let (changed, collected) = gc_changes(seed, Fault::None);
        assert!(changed.is_empty(), "seed {seed}: {changed:#?}");
        values += collected;
    }
    eprintln!("{values} long values collected over 6 histories");
    assert!(values > 0, "no long value collected");
}

#[test]
fn negative_controls_lose_values_the_check_catches() {
    for fault in [Fault::AnyRecordShadows, Fault::DropReferencedValues] {
        let caught = (0..6)
            .filter(|&s| !gc_changes(s, fault).0.is_empty())
            .count();
        eprintln!("{fault:?}: caught in {caught} of 6 histories");
        assert!(caught > 0, "no seed caught {fault:?}");
    }
}

#[test]
fn a_rollback_record_above_a_commit_below_the_safe_point_keeps_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path(), Fault::None);
    for (start, commit, v) in [(10, 11, "old"), (20, 21, "new")] {
        prewrite(&db, &[Mutation::put(b"a", v.as_bytes())], start);
        apply(
            &db,
            &txn::commit(&reader(&db), &[b"a".to_vec()], start, commit).expect("commit"),
        );
    }
    apply(
        &db,
        &txn::rollback(&reader(&db), &[b"a".to_vec()], 30).expect("rollback"),
    );
    // A newer put above the safe point, so the rollback is not the newest record.
    prewrite(&db, &[Mutation::put(b"a", b"newest")], 50);
    apply(
        &db,
        &txn::commit(&reader(&db), &[b"a".to_vec()], 50, 51).expect("commit"),
    );
    db.set_txn_safe_point(40);
    compact(&db);
    let r = reader(&db);
    assert_eq!(txn::get(&r, b"a", 40).expect("get"), Some(b"new".to_vec()));
    assert_eq!(
        txn::get(&r, b"a", 60).expect("get"),
        Some(b"newest".to_vec())
    );
    // The older commit and the rollback are gone: 2 records remain.
    assert_eq!(record_count(&db, CF_WRITE, &[b"a".to_vec()]), 2);
}

#[test]
fn a_region_snapshot_hands_its_txn_safe_point_to_the_ingesting_database() {
    let (a_dir, b_dir, snap) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = open(a_dir.path(), Fault::None);
    let end = random_history(&a, 7, 40, 10);
    a.set_txn_safe_point(end / 2);
    compact(&a);
    let range = nokv::RegionRange::namespace(NS_KV);
    let out = snap.path().join("s");
    a.export_range(&range, &out, &nokv::ExportOptions::default())
        .expect("export");
    let b = open(b_dir.path(), Fault::None);
    assert_eq!(b.txn_safe_point(), 0);
    b.ingest(&out, Some(&range)).expect("ingest");
    assert_eq!(b.txn_safe_point(), end / 2);
    assert_eq!(reads(&b, end / 2, end), reads(&a, end / 2, end));
    drop(b);
    let b = open(b_dir.path(), Fault::None);
    assert_eq!(b.txn_safe_point(), end / 2, "persisted by the ingest");
}
