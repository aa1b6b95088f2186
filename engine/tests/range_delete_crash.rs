//! Range deletes across crashes: a writer commits batches mixing puts, deletes and range
//! deletes while flushes and compactions run; the process dies (or the power fails, tearing
//! the last unsynced page) at a random instant. After "reboot" every acknowledged batch,
//! its range deletes included, must be there, and the batch in flight must be entirely
//! present or entirely absent — never a range delete without the rest of its batch, nor
//! a range delete applied to only part of its range.
//!
//! Negative control: acknowledging before fdatasync must make the power-loss check fail.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use nokv::fs::{FaultFs, FileSystem, PowerLoss};
use nokv::{Db, WriteBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: u64 = 200;

#[derive(Debug, Clone)]
enum Op {
    Put(u64, Vec<u8>),
    Delete(u64),
    /// Delete keys `[lo, hi)`.
    Range(u64, u64),
}

type Batch = Vec<Op>;

fn apply(state: &mut BTreeMap<u64, Vec<u8>>, b: &Batch) {
    for op in b {
        match op {
            Op::Put(k, v) => {
                state.insert(*k, v.clone());
            }
            Op::Delete(k) => {
                state.remove(k);
            }
            Op::Range(lo, hi) => state.retain(|k, _| !(lo..hi).contains(&k)),
        }
    }
}

fn random_batch(rng: &mut StdRng, version: u64) -> Batch {
    let mut b = Vec::new();
    for _ in 0..rng.gen_range(1..=5) {
        let k = rng.gen_range(0..KEYS);
        match rng.gen_range(0..10) {
            0 => b.push(Op::Delete(k)),
            1 | 2 => b.push(Op::Range(k, (k + rng.gen_range(1..60)).min(KEYS))),
            _ => b.push(Op::Put(k, value_for(k, version, rng.gen_range(1..300)))),
        }
    }
    b
}

fn to_write_batch(b: &Batch) -> WriteBatch {
    let mut wb = WriteBatch::new();
    for op in b {
        match op {
            Op::Put(k, v) => wb.put(&key(*k), v),
            Op::Delete(k) => wb.delete(&key(*k)),
            Op::Range(lo, hi) => wb.delete_range(&key(*lo), &key(*hi)),
        };
    }
    wb
}

/// The recovered contents, read with gets and checked against a scan.
fn contents(db: &Db) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    for k in 0..KEYS {
        if let Some(v) = db.get(&key(k)).map_err(|e| format!("get: {e}"))? {
            out.insert(k, v);
        }
    }
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = scan_all(db);
    let want: Vec<(Vec<u8>, Vec<u8>)> = out.iter().map(|(k, v)| (key(*k), v.clone())).collect();
    if scanned != want {
        return Err("a scan disagrees with point reads".into());
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Crash {
    Process,
    Power,
    /// Negative control: power loss with acks before fdatasync.
    PowerAckBeforeSync,
}

fn round(seed: u64, crash: Crash) -> Result<(), String> {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db"))
        .map_err(|e| e.to_string())?;
    let opts = nokv::Options {
        unsafe_ack_before_sync: crash == Crash::PowerAckBeforeSync,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let crash_after = rng.gen_range(10..300);
    let mut writers = CrashWriters::start(&db, 1, seed, 5_000, |db, rng, _, version| {
        if version % 61 == 0 {
            let _ = db.flush();
        }
        let b = random_batch(rng, version);
        let wb = to_write_batch(&b);
        (b, wb)
    });
    writers.wait_until(|| writers.acked() >= crash_after);
    let power = match crash {
        Crash::Process => None,
        Crash::Power | Crash::PowerAckBeforeSync => Some(PowerLoss {
            tear_last_unsynced_page: rng.gen_bool(0.5),
            seed,
        }),
    };
    freeze(&fs, power);
    writers.stop()?;
    drop(db);
    thaw(&fs);
    let db = Db::open("/db", opts.clone()).map_err(|e| format!("reopen failed: {e}"))?;
    let log = writers.logs[0].lock().expect("log");
    let mut expected = BTreeMap::new();
    for b in &log.acked {
        apply(&mut expected, b);
    }
    let mut with_in_flight = expected.clone();
    if let Some(b) = &log.in_flight {
        apply(&mut with_in_flight, b);
    }
    let check = |db: &Db, when: &str| -> Result<(), String> {
        let actual = contents(db)?;
        if actual == expected || actual == with_in_flight {
            Ok(())
        } else {
            Err(format!(
                "{when}: after {} acked batches the state is neither the acked prefix nor the \
                 prefix plus the batch in flight ({:?})",
                log.acked.len(),
                log.in_flight
            ))
        }
    };
    check(&db, "after recovery")?;
    // The recovered state is stable: flush, compact and reopen change nothing.
    db.compact_all().map_err(|e| e.to_string())?;
    check(&db, "after compaction")?;
    db.close().map_err(|e| e.to_string())?;
    let db = Db::open("/db", opts).map_err(|e| format!("second reopen failed: {e}"))?;
    check(&db, "after a clean reopen")?;
    db.close().map_err(|e| e.to_string())?;
    Ok(())
}

fn rounds() -> u64 {
    crash_rounds(16)
}

#[test]
fn range_deletes_survive_a_process_crash_whole() {
    for seed in 0..rounds() {
        if let Err(e) = round(seed, Crash::Process) {
            panic!("round {seed}: {e}");
        }
    }
}

#[test]
fn range_deletes_survive_power_loss_whole() {
    for seed in 500..500 + rounds() {
        if let Err(e) = round(seed, Crash::Power) {
            panic!("round {seed}: {e}");
        }
    }
}

#[test]
fn negative_control_ack_before_fdatasync_is_detected() {
    let detected = (900..908)
        .filter(|seed| round(*seed, Crash::PowerAckBeforeSync).is_err())
        .count();
    assert!(
        detected > 0,
        "lost acknowledged range deletes went unnoticed"
    );
}
