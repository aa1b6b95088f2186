//! Scenario: power fails at a random instant under a concurrent workload of batches with
//! flushes and compactions running. After "reboot", every acknowledged `sync` batch must
//! be there, and an unacknowledged batch must be entirely present or entirely absent.
//!
//! The negative control acknowledges before fdatasync and must make the checker fail.
//! With `Relaxed` durability acknowledged batches may be lost, but what survives is a
//! prefix of each writer's batches: no holes, no partial batch.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use nokv::fs::{FaultFs, FileSystem};
use nokv::Db;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 2;
const KEYS_PER_WRITER: u64 = 150;

/// Writer `w`'s keys as the database has them (gets, and a scan that must agree).
fn read_writer(db: &Db, w: usize) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    read_writer_keys(db, w, KEYS_PER_WRITER)
}

fn random_batch(rng: &mut StdRng, w: usize, version: u64) -> Batch {
    let lo = w as u64 * 10_000;
    let n = rng.gen_range(1..=4);
    let mut b: Batch = Vec::new();
    for _ in 0..n {
        let k = lo + rng.gen_range(0..KEYS_PER_WRITER);
        if b.iter().any(|(x, _)| *x == k) {
            continue;
        }
        if rng.gen_bool(0.15) {
            b.push((k, None));
        } else {
            let len = if rng.gen_bool(0.1) {
                rng.gen_range(1000..3000)
            } else {
                rng.gen_range(1..200)
            };
            b.push((k, Some(value_for(k, version, len))));
        }
    }
    b
}

/// Runs one round; returns the checker's verdict.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `Sync` writes: every acknowledged batch must survive.
    Sync,
    /// Negative control: `Sync` writes acknowledged before fdatasync.
    AckBeforeSync,
    /// `Relaxed` writes: a prefix must survive.
    Relaxed,
}

fn round(seed: u64, mode: Mode) -> Result<(), String> {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db"))
        .map_err(|e| e.to_string())?;
    let opts = nokv::Options {
        unsafe_ack_before_sync: mode == Mode::AckBeforeSync,
        durability: if mode == Mode::Relaxed {
            nokv::Durability::Relaxed
        } else {
            nokv::Durability::Sync
        },
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let crash_after = rng.gen_range(20..600);
    let mut writers = CrashWriters::start(&db, WRITERS, seed, 5_000, |db, rng, w, version| {
        if version % 97 == 0 {
            let _ = db.flush();
        }
        let b = random_batch(rng, w, version);
        let wb = write_batch(&b);
        (b, wb)
    });
    writers.wait_until(|| writers.acked() >= crash_after);
    power_cut(&fs, db, &mut writers, &mut rng, seed)?;
    let db = Db::open("/db", opts).map_err(|e| format!("reopen after power loss failed: {e}"))?;
    for (w, log) in writers.logs.iter().enumerate() {
        let actual = read_writer(&db, w)?;
        let log = log.lock().expect("log");
        match mode {
            Mode::Relaxed => check_prefix(&actual, w, &log)?,
            _ => check_acked(&actual, w, &log)?,
        }
    }
    // The recovered database accepts writes and survives another clean cycle.
    db.put(b"after", b"crash").map_err(|e| e.to_string())?;
    db.close().map_err(|e| e.to_string())?;
    Ok(())
}

fn rounds() -> u64 {
    crash_rounds(24)
}

#[test]
fn acknowledged_sync_writes_survive_power_loss() {
    for seed in 0..rounds() {
        if let Err(e) = round(seed, Mode::Sync) {
            panic!("round {seed}: {e}");
        }
    }
}

#[test]
fn negative_control_ack_before_fdatasync_is_detected() {
    expect_detected("acks before fdatasync", 100..108, |seed| {
        round(seed, Mode::AckBeforeSync)
    });
}

#[test]
fn relaxed_writes_recover_to_a_prefix_after_power_loss() {
    for seed in 1000..1000 + rounds() {
        if let Err(e) = round(seed, Mode::Relaxed) {
            panic!("round {seed}: {e}");
        }
    }
}
