//! `Db::sync_logs`: relaxed writes acknowledged before it survive a power loss (the
//! node calls it every second); the same writes without it are lost (negative control).

mod common;

use common::{crash, fault_options};
use nokv::fs::{FaultFs, FileSystem, PowerLoss};
use nokv::{Db, Durability};
use std::path::Path;

/// Writes `n` relaxed keys with a byte interval far above what they log, optionally
/// calls `sync_logs`, cuts the power and counts the keys the reopened database has.
fn survivors(n: usize, sync: bool) -> usize {
    let fs = FaultFs::new();
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let opts = nokv::Options {
        durability: Durability::Relaxed,
        relaxed_sync_interval_bytes: 1 << 30,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).expect("open");
    for i in 0..n {
        db.put(format!("k{i:04}").as_bytes(), b"value")
            .expect("put");
    }
    if sync {
        db.sync_logs().expect("sync_logs");
    }
    crash(
        &fs,
        db,
        Some(PowerLoss {
            tear_last_unsynced_page: false,
            seed: 7,
        }),
    );
    let db = Db::open("/db", opts).expect("reopen");
    (0..n)
        .filter(|i| {
            db.get(format!("k{i:04}").as_bytes())
                .expect("get")
                .is_some()
        })
        .count()
}

#[test]
fn relaxed_writes_before_sync_logs_survive_power_loss() {
    assert_eq!(survivors(200, true), 200);
}

#[test]
fn negative_control_relaxed_writes_without_sync_logs_are_lost() {
    assert!(
        survivors(200, false) < 200,
        "the power cut must lose unsynced relaxed writes, or the test above proves nothing"
    );
}
