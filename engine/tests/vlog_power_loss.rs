//! Scenario: power fails at a random instant while value-log GC is running (two writers
//! overwrite large values on small segments, so flushes, compactions and GC rounds keep
//! coming). After "reboot" every acknowledged `sync` batch must be readable, with the value
//! it wrote, and the batch in flight must be all there or absent.
//!
//! Negative controls: finishing segments without fdatasync, and deleting a collected segment
//! before the edit that re-points its values is durable, must each make the checker report
//! lost values (or a database that no longer opens).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nokv::fs::{FaultFs, FileSystem, PowerLoss};
use nokv::{Db, Options, WriteBatch, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 2;
const KEYS_PER_WRITER: u64 = 60;

/// Checks one writer's keys (gets and a scan) against its log.
fn check_writer(db: &Db, w: usize, log: &WriterLog) -> Result<(), String> {
    let mut expected = BTreeMap::new();
    for b in &log.acked {
        apply(&mut expected, b);
    }
    let mut with_inflight = expected.clone();
    if let Some(b) = &log.in_flight {
        apply(&mut with_inflight, b);
    }
    let lo = w as u64 * 10_000;
    let mut actual = BTreeMap::new();
    for k in lo..lo + KEYS_PER_WRITER {
        if let Some(v) = db.get(&key(k)).map_err(|e| format!("get failed: {e}"))? {
            actual.insert(k, v);
        }
    }
    let mut scanned = BTreeMap::new();
    let mut it = db
        .iter(nokv::ReadOptions {
            lower_bound: Some(key(lo)),
            upper_bound: Some(key(lo + KEYS_PER_WRITER)),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    it.seek_to_first();
    while it.valid() {
        let k: u64 = std::str::from_utf8(&it.key()[3..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad key")?;
        scanned.insert(k, it.value().to_vec());
        it.next();
    }
    it.status().map_err(|e| format!("scan failed: {e}"))?;
    if scanned != actual {
        return Err(format!("writer {w}: scan and gets disagree"));
    }
    if actual == expected || actual == with_inflight {
        return Ok(());
    }
    let lost = expected
        .iter()
        .filter(|(k, v)| actual.get(k) != Some(v) && with_inflight.get(k) != actual.get(k))
        .count();
    Err(format!(
        "writer {w}: {} acked batches; {lost} keys lost or wrong",
        log.acked.len()
    ))
}

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
    let acked_total = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Arc<Mutex<WriterLog>>> = (0..WRITERS)
        .map(|_| Arc::new(Mutex::new(WriterLog::default())))
        .collect();
    let mut handles = Vec::new();
    for (w, log) in logs.iter().enumerate() {
        let (db, log, acked_total, stop) =
            (db.clone(), log.clone(), acked_total.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(w as u64));
        handles.push(std::thread::spawn(move || {
            for version in 1..20_000u64 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                let b = random_batch(&mut rng, w, version);
                let mut wb = WriteBatch::new();
                for (k, v) in &b {
                    match v {
                        Some(v) => wb.put(&key(*k), v),
                        None => wb.delete(&key(*k)),
                    };
                }
                log.lock().expect("log").in_flight = Some(b.clone());
                if db.write(&wb, &WriteOptions::default()).is_err() {
                    break;
                }
                let mut l = log.lock().expect("log");
                l.in_flight = None;
                l.acked.push(b);
                drop(l);
                acked_total.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while db.stats().vlog_gc_rounds < crash_after_rounds
        && Instant::now() < deadline
        && !handles.iter().all(|h| h.is_finished())
    {
        std::thread::sleep(Duration::from_micros(100));
    }
    std::thread::sleep(extra_delay);
    let s = db.stats();
    let (gc_rounds_before_crash, gc_segments_before_crash) = (s.vlog_gc_rounds, s.vlog_gc_segments);
    freeze(
        &fs,
        Some(PowerLoss {
            tear_last_unsynced_page: rng.gen_bool(0.5),
            seed,
        }),
    );
    stop.store(true, Ordering::Release);
    for h in handles {
        h.join().map_err(|_| "writer panicked".to_string())?;
    }
    drop(db);
    thaw(&fs);
    let db = Db::open("/db", opts).map_err(|e| format!("reopen after power loss failed: {e}"))?;
    for (w, log) in logs.iter().enumerate() {
        check_writer(&db, w, &log.lock().expect("log"))?;
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

fn detected(mode: Mode) -> Vec<String> {
    (200..212)
        .filter_map(|seed| round(seed, mode).err().map(|e| format!("seed {seed}: {e}")))
        .collect()
}

#[test]
fn negative_control_unsynced_segments_lose_values() {
    let found = detected(Mode::SkipSegmentSync);
    println!(
        "skip segment fdatasync: {} of 12 rounds detected",
        found.len()
    );
    for f in &found {
        println!("  {f}");
    }
    assert!(
        !found.is_empty(),
        "the checker missed values lost with unsynced value-log segments"
    );
}

#[test]
fn negative_control_deleting_the_old_segment_before_the_commit_loses_values() {
    let found = detected(Mode::DeleteBeforeCommit);
    println!(
        "delete before commit: {} of 12 rounds detected",
        found.len()
    );
    for f in &found {
        println!("  {f}");
    }
    assert!(
        !found.is_empty(),
        "the checker missed values lost by deleting a segment before its GC commit"
    );
}
