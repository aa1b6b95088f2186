//! Scenario: power fails at a random instant while value-log GC is running (two writers
//! overwrite large values on small segments, so flushes, compactions and GC rounds keep
//! coming). After "reboot" every acknowledged `sync` batch must be readable, with the value
//! it wrote, and the batch in flight must be all there or absent.
//!
//! Negative controls: finishing segments without fdatasync, and deleting a collected segment
//! before the edit that re-points its values is durable, must each make the checker report
//! lost values (or a database that no longer opens).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use nokv::fs::{FaultFs, FileSystem};
use nokv::{Db, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 2;
const KEYS_PER_WRITER: u64 = 60;

fn random_batch(rng: &mut StdRng, w: usize, version: u64) -> Batch {
    let lo = w as u64 * 10_000;
    let mut b: Batch = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let k = lo + rng.gen_range(0..KEYS_PER_WRITER);
        if b.iter().any(|(x, _)| *x == k) {
            continue;
        }
        if rng.gen_bool(0.08) {
            b.push((k, None));
        } else {
            let len = if rng.gen_bool(0.85) {
                rng.gen_range(300..1500)
            } else {
                rng.gen_range(1..100)
            };
            b.push((k, Some(value_for(k, version, len))));
        }
    }
    b
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Everything as built: every acknowledged batch must survive.
    Safe,
    /// Negative control: segments are finished without fdatasync.
    SkipSegmentSync,
    /// Negative control: GC deletes the old segment before its edit is durable.
    DeleteBeforeCommit,
}

/// GC rounds seen before the crash, per round (to show the crashes land inside GC).
struct Outcome {
    gc_rounds_before_crash: u64,
    gc_segments_before_crash: u64,
}

fn round(seed: u64, mode: Mode) -> Result<Outcome, String> {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db"))
        .map_err(|e| e.to_string())?;
    let opts = Options {
        value_threshold_bytes: 256,
        vlog_segment_bytes: 8 << 10,
        vlog_gc_min_discard_ratio: 0.25,
        vlog_gc_bytes_per_round: 4 << 10,
        unsafe_vlog_skip_segment_sync: mode == Mode::SkipSegmentSync,
        unsafe_vlog_delete_before_commit: mode == Mode::DeleteBeforeCommit,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    // Crash once GC has run this many rounds, plus a little.
    let crash_after_rounds = rng.gen_range(1..40u64);
    let extra_delay = Duration::from_micros(rng.gen_range(0..1500));
    let mut writers = CrashWriters::start(&db, WRITERS, seed, 20_000, |_, rng, w, version| {
        let b = random_batch(rng, w, version);
        let wb = write_batch(&b);
        (b, wb)
    });
    writers.wait_until(|| db.stats().vlog_gc_rounds >= crash_after_rounds);
    std::thread::sleep(extra_delay);
    let s = db.stats();
    let (gc_rounds_before_crash, gc_segments_before_crash) = (s.vlog_gc_rounds, s.vlog_gc_segments);
    power_cut(&fs, db, &mut writers, &mut rng, seed)?;
    let db = Db::open("/db", opts).map_err(|e| format!("reopen after power loss failed: {e}"))?;
    for (w, log) in writers.logs.iter().enumerate() {
        check_acked(
            &read_writer_keys(&db, w, KEYS_PER_WRITER)?,
            w,
            &log.lock().expect("log"),
        )?;
    }
    // The recovered database keeps collecting and survives another clean cycle.
    db.put(b"after", &[5u8; 600]).map_err(|e| e.to_string())?;
    db.run_value_log_gc(0.01).map_err(|e| e.to_string())?;
    db.close().map_err(|e| e.to_string())?;
    Ok(Outcome {
        gc_rounds_before_crash,
        gc_segments_before_crash,
    })
}

fn rounds() -> u64 {
    crash_rounds(24)
}

#[test]
fn acknowledged_values_survive_power_loss_during_value_log_gc() {
    let (mut during_gc, mut collected) = (0, 0);
    for seed in 0..rounds() {
        match round(seed, Mode::Safe) {
            Ok(o) => {
                during_gc += (o.gc_rounds_before_crash > 0) as u64;
                collected += o.gc_segments_before_crash;
            }
            Err(e) => panic!("round {seed}: {e}"),
        }
    }
    println!(
        "{during_gc} of {} power losses came after value-log GC started; {collected} segments collected before them",
        rounds()
    );
    assert!(
        during_gc * 2 >= rounds(),
        "only {during_gc} of {} crashes came after GC started",
        rounds()
    );
}

#[test]
fn negative_control_unsynced_segments_lose_values() {
    expect_detected(
        "values lost with unsynced value-log segments",
        200..212,
        |seed| round(seed, Mode::SkipSegmentSync),
    );
}

#[test]
fn negative_control_deleting_the_old_segment_before_the_commit_loses_values() {
    expect_detected(
        "values lost by deleting a segment before its GC commit",
        200..212,
        |seed| round(seed, Mode::DeleteBeforeCommit),
    );
}
