//! Scenario: power fails at a random instant while writers commit large values, which the
//! write path appends to the value log before the WAL record that holds only their
//! pointers (memtables switch often, segments roll over inside a memtable, flushes turn
//! write-path segments into live ones, value-log GC runs and the write path reuses the files
//! of collected segments). After "reboot":
//!
//! * `Sync` writes: every acknowledged batch is readable with the value it wrote (gets and
//!   a scan agree, no read fails: no pointer dangles), and the batch in flight is all there
//!   or absent;
//! * `Relaxed` writes: what survives is a prefix of each writer's batches.
//!
//! Negative control: the write path never fdatasyncs the value log (its WAL still does), so
//! acknowledged WAL records point at values a power loss takes away; the checker must see
//! lost writes (or a database that no longer opens).
//!
//! A deterministic test pins down the recovery rule: a batch whose values are not in the
//! value log cuts the WAL there, durably, so later restarts agree.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use nokv::fs::{FaultFs, FileSystem, PowerLoss};
use nokv::{Db, Durability, Options, WriteBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WRITERS: usize = 2;
const KEYS_PER_WRITER: u64 = 80;
/// Far in the future: TTL writes that must still read back after the crash.
const FAR_EXPIRY_MS: u64 = 1 << 50;

/// The writer's keys as the database has them, by gets; a scan must agree.
fn read_writer(db: &Db, w: usize) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    read_writer_keys(db, w, KEYS_PER_WRITER)
}

/// Mostly large values (the write path's), some small ones and deletes; every fifth large
/// value carries a (far) expiry. A value with an expiry is logged with its expiry prefix
/// stripped from the model: the model holds what a read returns.
fn random_batch(rng: &mut StdRng, w: usize, version: u64) -> (Batch, Vec<bool>) {
    let lo = w as u64 * 10_000;
    let mut b: Batch = Vec::new();
    let mut ttl = Vec::new();
    for _ in 0..rng.gen_range(1..=3) {
        let k = lo + rng.gen_range(0..KEYS_PER_WRITER);
        if b.iter().any(|(x, _)| *x == k) {
            continue;
        }
        if rng.gen_bool(0.08) {
            b.push((k, None));
            ttl.push(false);
        } else {
            let len = if rng.gen_bool(0.85) {
                rng.gen_range(300..2500)
            } else {
                rng.gen_range(1..100)
            };
            b.push((k, Some(value_for(k, version, len))));
            ttl.push(len >= 300 && rng.gen_bool(0.2));
        }
    }
    (b, ttl)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `Sync` writes, everything as built.
    Sync,
    /// `Relaxed` writes (synced in the background): a prefix survives.
    Relaxed,
    /// Negative control: `Sync` writes, the write path's value log never fdatasynced.
    SkipVlogSync,
}

/// What happened before the crash (to show the crashes land where they should).
struct Outcome {
    values_at_commit: u64,
    segments_live: usize,
    segments_reused: u64,
}

fn round(seed: u64, mode: Mode) -> Result<Outcome, String> {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db"))
        .map_err(|e| e.to_string())?;
    let opts = Options {
        durability: if mode == Mode::Relaxed {
            Durability::Relaxed
        } else {
            Durability::Sync
        },
        relaxed_sync_interval_bytes: 32 << 10,
        value_threshold_bytes: 256,
        vlog_segment_bytes: 12 << 10,
        vlog_gc_min_discard_ratio: 0.25,
        vlog_gc_space_amp: 1.0,
        vlog_gc_bytes_per_round: 8 << 10,
        unsafe_vlog_skip_write_sync: mode == Mode::SkipVlogSync,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).map_err(|e| e.to_string())?;
    let mut rng = StdRng::seed_from_u64(seed);
    let crash_after = rng.gen_range(20..700);
    let mut writers = CrashWriters::start(&db, WRITERS, seed, 20_000, |_, rng, w, version| {
        let (b, ttl) = random_batch(rng, w, version);
        let mut wb = WriteBatch::new();
        for ((k, v), ttl) in b.iter().zip(&ttl) {
            match v {
                Some(v) if *ttl => wb.put_with_expiry(&key(*k), v, FAR_EXPIRY_MS),
                Some(v) => wb.put(&key(*k), v),
                None => wb.delete(&key(*k)),
            };
        }
        (b, wb)
    });
    writers.wait_until(|| writers.acked() >= crash_after);
    let s = db.stats();
    power_cut(&fs, db, &mut writers, &mut rng, seed)?;
    let db = Db::open("/db", opts.clone())
        .map_err(|e| format!("reopen after power loss failed: {e}"))?;
    for (w, log) in writers.logs.iter().enumerate() {
        let actual = read_writer(&db, w)?;
        let log = log.lock().expect("log");
        match mode {
            Mode::Relaxed => check_prefix(&actual, w, &log)?,
            _ => check_acked(&actual, w, &log)?,
        }
    }
    // The recovered database takes large writes, survives a clean cycle, and reads the same.
    let before: Vec<_> = (0..WRITERS)
        .map(|w| read_writer(&db, w))
        .collect::<Result<_, _>>()?;
    db.put(b"after", &[5u8; 900]).map_err(|e| e.to_string())?;
    db.close().map_err(|e| e.to_string())?;
    let db = Db::open("/db", opts).map_err(|e| format!("second reopen failed: {e}"))?;
    for (w, want) in before.iter().enumerate() {
        if &read_writer(&db, w)? != want {
            return Err(format!("writer {w}: the second restart reads differently"));
        }
    }
    if db.get(b"after").map_err(|e| e.to_string())? != Some(vec![5u8; 900]) {
        return Err("the write after recovery is lost".into());
    }
    db.close().map_err(|e| e.to_string())?;
    Ok(Outcome {
        values_at_commit: s.vlog_write_values,
        segments_live: s.vlog_segments,
        segments_reused: s.vlog_segments_reused,
    })
}

fn rounds() -> u64 {
    crash_rounds(24)
}

#[test]
fn acknowledged_large_values_survive_power_loss() {
    let (mut at_commit, mut with_segments, mut reused) = (0, 0, 0);
    for seed in 0..rounds() {
        match round(seed, Mode::Sync) {
            Ok(o) => {
                at_commit += (o.values_at_commit > 0) as u64;
                with_segments += (o.segments_live > 0) as u64;
                reused += (o.segments_reused > 0) as u64;
            }
            Err(e) => panic!("round {seed}: {e}"),
        }
    }
    println!(
        "{at_commit} of {} crashes after values went to the value log at commit; \
         {with_segments} after write-path segments became live; {reused} after the write \
         path reused a collected segment's file",
        rounds()
    );
    assert!(
        reused * 4 >= rounds(),
        "only {reused} crashes came after a segment file was reused"
    );
    assert_eq!(at_commit, rounds(), "some rounds never used the write path");
    assert!(
        with_segments * 2 >= rounds(),
        "only {with_segments} crashes came after a flush made segments live"
    );
}

#[test]
fn relaxed_large_values_recover_to_a_prefix() {
    for seed in 500..500 + rounds() {
        if let Err(e) = round(seed, Mode::Relaxed) {
            panic!("round {seed}: {e}");
        }
    }
}

#[test]
fn negative_control_unsynced_write_path_values_are_detected() {
    expect_detected(
        "acknowledged values lost with an unsynced write-path value log",
        100..112,
        |seed| round(seed, Mode::SkipVlogSync),
    );
}

/// A `Sync` batch whose value never reached the disk (the write path skipped the value-log
/// fdatasync, the WAL did not) cuts the WAL at that batch: it and everything after it are
/// gone, everything before it is there, and the cut is durable (a second restart agrees
/// and new writes survive).
#[test]
fn recovery_cuts_the_wal_at_a_batch_whose_values_are_missing() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let opts = Options {
        value_threshold_bytes: 256,
        unsafe_vlog_skip_write_sync: true,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).expect("open");
    db.put(b"a", b"small, in the WAL").expect("put a");
    db.put(b"b", &[7u8; 1000]).expect("put b");
    db.put(b"c", b"small too").expect("put c");
    assert_eq!(db.stats().vlog_write_values, 1);
    crash(&fs, db, Some(PowerLoss::default()));
    let db = Db::open("/db", opts.clone()).expect("reopen");
    assert_eq!(
        db.get(b"a").expect("get"),
        Some(b"small, in the WAL".to_vec())
    );
    assert_eq!(
        db.get(b"b").expect("get"),
        None,
        "b's value was never durable"
    );
    assert_eq!(db.get(b"c").expect("get"), None, "c comes after the cut");
    db.put(b"d", &[9u8; 1000]).expect("put d");
    db.close().expect("close");
    let safe = Options {
        unsafe_vlog_skip_write_sync: false,
        ..opts
    };
    let db = Db::open("/db", safe).expect("second reopen");
    assert_eq!(
        db.get(b"a").expect("get"),
        Some(b"small, in the WAL".to_vec())
    );
    assert_eq!(db.get(b"b").expect("get"), None);
    assert_eq!(db.get(b"c").expect("get"), None);
    assert_eq!(db.get(b"d").expect("get"), Some(vec![9u8; 1000]));
    db.close().expect("close");
}

/// Large values written at commit and never flushed come back after a clean close (from
/// the unfinished segment the WAL points into) and after a process crash, and the
/// recovered segments are live ones.
#[test]
fn unflushed_large_values_come_back_after_close_and_crash() {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let opts = Options {
        value_threshold_bytes: 256,
        write_buffer_bytes: 4 << 20,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).expect("open");
    for i in 0..40u64 {
        db.put(&key(i), &value_for(i, 1, 300 + i as usize * 10))
            .expect("put");
    }
    let s = db.stats();
    assert_eq!(s.vlog_write_values, 40, "{s}");
    assert_eq!(s.vlog_segments, 0, "nothing flushed yet\n{s}");
    db.close().expect("close");
    let db = Db::open("/db", opts.clone()).expect("reopen");
    for i in 0..40u64 {
        assert_eq!(
            db.get(&key(i)).expect("get"),
            Some(value_for(i, 1, 300 + i as usize * 10))
        );
    }
    let s = db.stats();
    assert_eq!(s.vlog_segments, 1, "the recovered segment is live\n{s}");
    for i in 40..60u64 {
        db.put(&key(i), &value_for(i, 1, 500)).expect("put");
    }
    crash(&fs, db, None);
    let db = Db::open("/db", opts).expect("reopen after crash");
    for i in 0..60u64 {
        let want = if i < 40 {
            value_for(i, 1, 300 + i as usize * 10)
        } else {
            value_for(i, 1, 500)
        };
        assert_eq!(db.get(&key(i)).expect("get"), Some(want), "key {i}");
    }
    db.close().expect("close");
}
