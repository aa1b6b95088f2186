//! Scenarios for logical region snapshots: export a key range (every column family,
//! every version or the latest at a timestamp) and ingest it elsewhere, all or nothing;
//! bad snapshots are refused without changing anything; power loss during an ingest
//! leaves each snapshot entirely present or entirely absent (with a negative control).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nokv::fs::{FaultFs, FileSystem, PowerLoss};
use nokv::{
    Db, Error, ExportOptions, KeySpace, ReadOptions, RegionRange, WriteBatch, CF_DEFAULT, CF_LOCK,
    CF_WRITE, NS_REDIS,
};

fn mvcc_options() -> nokv::Options {
    nokv::Options {
        retain_versions: true,
        ..small_options()
    }
}

fn k(i: u32) -> Vec<u8> {
    format!("user{i:05}").into_bytes()
}

/// Writes versions 10, 20, 30 of keys 0..n in three column families of the Redis
/// namespace (a delete at version 30 for every fifth key), flushing between versions.
fn fill(db: &Db, n: u32) {
    for (round, version) in [10u64, 20, 30].into_iter().enumerate() {
        let mut b = WriteBatch::new();
        for i in 0..n {
            for cf in [CF_DEFAULT, CF_LOCK, CF_WRITE] {
                let space = KeySpace::new(NS_REDIS, cf);
                if version == 30 && i % 5 == 0 {
                    b.delete_at(space, &k(i), version);
                } else {
                    b.put_at(
                        space,
                        &k(i),
                        version,
                        &value_for(i as u64, version + cf as u64, 40),
                    );
                }
            }
            if b.len() > 300 {
                db.write(&b, &Default::default()).expect("write");
                b.clear();
            }
        }
        db.write(&b, &Default::default()).expect("write");
        if round < 2 {
            db.flush().expect("flush");
        }
    }
}

fn read(db: &Db, cf: u8, i: u32, ts: Option<u64>) -> Option<Vec<u8>> {
    let ro = ReadOptions {
        read_ts: ts,
        ..Default::default()
    };
    db.get_in(KeySpace::new(NS_REDIS, cf), &k(i), &ro)
        .expect("get")
}

fn range(lo: u32, hi: u32) -> RegionRange {
    RegionRange {
        ns: NS_REDIS,
        start: k(lo),
        end: Some(k(hi)),
    }
}

fn table_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        })
        .count()
}

#[test]
fn every_version_of_a_range_moves_to_another_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Db::open(tmp.path().join("src"), mvcc_options()).expect("open");
    fill(&src, 400);
    let snap = tmp.path().join("snap");
    let opts = ExportOptions {
        target_file_bytes: 16 << 10,
        ..Default::default()
    };
    let m = src
        .export_range(&range(100, 300), &snap, &opts)
        .expect("export");
    assert!(m.files.len() > 1, "the export was cut into several tables");
    // 200 keys x 3 families x 3 versions.
    assert_eq!(m.total_entries(), 200 * 3 * 3);

    let dst = Db::open(tmp.path().join("dst"), mvcc_options()).expect("open");
    dst.put(b"unrelated", b"stays").expect("put");
    let report = dst.ingest(&snap, Some(&range(0, 1000))).expect("ingest");
    assert!(report.linked, "same filesystem: tables are hard-linked");
    assert_eq!(report.entries, m.total_entries());
    for i in [0u32, 99, 100, 150, 255, 299, 300, 399] {
        for cf in [CF_DEFAULT, CF_LOCK, CF_WRITE] {
            for ts in [Some(9), Some(10), Some(25), Some(30), None] {
                let want = if (100..300).contains(&i) {
                    read(&src, cf, i, ts)
                } else {
                    None
                };
                assert_eq!(read(&dst, cf, i, ts), want, "key {i} cf {cf} ts {ts:?}");
            }
        }
    }
    assert_eq!(dst.get(b"unrelated").expect("get"), Some(b"stays".to_vec()));
    // Survives compaction and a reopen; new writes get sequence numbers above the ingest.
    dst.compact_all().expect("compact");
    let before = read(&dst, CF_WRITE, 150, Some(20));
    dst.close().expect("close");
    let dst = Db::open(tmp.path().join("dst"), mvcc_options()).expect("reopen");
    assert!(dst.stats().last_sequence >= report.global_seq);
    assert_eq!(read(&dst, CF_WRITE, 150, Some(20)), before);
    let mut b = WriteBatch::new();
    b.put_at(
        KeySpace::new(NS_REDIS, CF_WRITE),
        &k(150),
        30,
        b"rewritten at 30",
    );
    dst.write(&b, &Default::default()).expect("write");
    assert_eq!(
        read(&dst, CF_WRITE, 150, None),
        Some(b"rewritten at 30".to_vec()),
        "a later write of the same version wins over the ingested one"
    );
}

#[test]
fn latest_values_at_a_timestamp_drop_history_and_deletes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Db::open(tmp.path().join("src"), mvcc_options()).expect("open");
    fill(&src, 100);
    let snap = tmp.path().join("snap");
    let opts = ExportOptions {
        read_ts: Some(30),
        ..Default::default()
    };
    let m = src
        .export_range(&RegionRange::namespace(NS_REDIS), &snap, &opts)
        .expect("export");
    // 80 live keys x 3 families; the deleted fifth of them is left out.
    assert_eq!(m.total_entries(), 80 * 3);
    let dst = Db::open(tmp.path().join("dst"), mvcc_options()).expect("open");
    dst.ingest(&snap, None).expect("ingest");
    for i in 0..100 {
        assert_eq!(
            read(&dst, CF_LOCK, i, None),
            read(&src, CF_LOCK, i, Some(30))
        );
        assert_eq!(
            read(&dst, CF_LOCK, i, Some(20)),
            None,
            "history was not exported"
        );
    }
}

#[test]
fn a_snapshot_taken_before_an_ingest_does_not_see_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Db::open(tmp.path().join("src"), mvcc_options()).expect("open");
    fill(&src, 50);
    let snap = tmp.path().join("snap");
    src.export_range(
        &RegionRange::namespace(NS_REDIS),
        &snap,
        &Default::default(),
    )
    .expect("export");
    let dst = Db::open(tmp.path().join("dst"), mvcc_options()).expect("open");
    let before = dst.snapshot();
    dst.ingest(&snap, None).expect("ingest");
    let ro = ReadOptions {
        snapshot: Some(before),
        ..Default::default()
    };
    let space = KeySpace::new(NS_REDIS, CF_DEFAULT);
    assert_eq!(dst.get_in(space, &k(1), &ro).expect("get"), None);
    assert!(read(&dst, CF_DEFAULT, 1, None).is_some());
}

/// Rewrites a snapshot manifest's body with a valid crc line.
fn rewrite_manifest(snap: &Path, edit: impl Fn(&str) -> String) {
    let p = snap.join("SNAPSHOT");
    let text = std::fs::read_to_string(&p).expect("read");
    let body_end = text.trim_end().rfind('\n').expect("crc line") + 1;
    let body = edit(&text[..body_end]);
    let fixed = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
    std::fs::write(&p, fixed).expect("write");
}

#[test]
fn bad_snapshots_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Db::open(tmp.path().join("src"), mvcc_options()).expect("open");
    fill(&src, 200);
    let export = |name: &str| -> PathBuf {
        let d = tmp.path().join(name);
        src.export_range(&range(0, 200), &d, &Default::default())
            .expect("export");
        d
    };
    let dst_dir = tmp.path().join("dst");
    let dst = Db::open(&dst_dir, mvcc_options()).expect("open");
    dst.put(b"keep", b"me").expect("put");
    dst.flush().expect("flush");
    let tables_before = table_files(&dst_dir);

    // A flipped byte inside a table.
    let d = export("flip");
    let t = d.join("000001.sst");
    let mut bytes = std::fs::read(&t).expect("read");
    bytes[100] ^= 0x40;
    std::fs::write(&t, bytes).expect("write");
    assert!(matches!(
        dst.ingest(&d, None),
        Err(Error::Corruption { .. })
    ));

    // A damaged manifest.
    let d = export("manifest");
    let p = d.join("SNAPSHOT");
    let mut text = std::fs::read(&p).expect("read");
    text[30] ^= 1;
    std::fs::write(&p, text).expect("write");
    assert!(matches!(
        dst.ingest(&d, None),
        Err(Error::Corruption { .. })
    ));

    // A range other than the one the caller expects.
    let d = export("range");
    assert!(matches!(
        dst.ingest(&d, Some(&range(0, 100))),
        Err(Error::InvalidArgument(_))
    ));

    // A manifest that claims a narrower range than its tables hold.
    let d = export("narrow");
    rewrite_manifest(&d, |b| {
        b.replace(
            &format!("end {}", hex(&k(200))),
            &format!("end {}", hex(&k(50))),
        )
    });
    assert!(matches!(
        dst.ingest(&d, None),
        Err(Error::InvalidArgument(_))
    ));

    // A newer format.
    let d = export("newer");
    rewrite_manifest(&d, |b| {
        b.replace("nokv-region-snapshot 1", "nokv-region-snapshot 2")
    });
    assert!(matches!(
        dst.ingest(&d, None),
        Err(Error::UnsupportedFormat { version: 2, .. })
    ));

    // A missing table.
    let d = export("missing");
    std::fs::remove_file(d.join("000001.sst")).expect("rm");
    assert!(matches!(dst.ingest(&d, None), Err(Error::Io { .. })));

    assert_eq!(table_files(&dst_dir), tables_before, "no table was added");
    assert_eq!(read(&dst, CF_DEFAULT, 5, None), None);
    assert_eq!(dst.get(b"keep").expect("get"), Some(b"me".to_vec()));
    // An export never overwrites another snapshot.
    let d = export("twice");
    assert!(src
        .export_range(&range(0, 200), &d, &Default::default())
        .is_err());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Power fails at a random point while a thread ingests snapshots one after another.
/// After reboot: acknowledged writes and ingests are all there; every other snapshot is
/// entirely present or entirely absent.
fn ingest_power_loss_round(seed: u64, skip_sync: bool) -> Result<(), String> {
    let fs = FaultFs::new();
    for d in ["/src", "/db"] {
        fs.create_dir_all(Path::new(d)).map_err(|e| e.to_string())?;
    }
    let src_opts = nokv::Options {
        retain_versions: true,
        ..fault_options(&fs)
    };
    let src = Db::open("/src", src_opts).map_err(|e| e.to_string())?;
    fill(&src, 120);
    const SNAPSHOTS: u32 = 6;
    for s in 0..SNAPSHOTS {
        let r = range(s * 20, s * 20 + 20);
        src.export_range(&r, Path::new(&format!("/snap{s}")), &Default::default())
            .map_err(|e| e.to_string())?;
    }
    src.close().map_err(|e| e.to_string())?;

    let opts = nokv::Options {
        retain_versions: true,
        unsafe_ingest_skip_sync: skip_sync,
        ..fault_options(&fs)
    };
    let db = Db::open("/db", opts.clone()).map_err(|e| e.to_string())?;
    db.put(b"before", b"ingest").map_err(|e| e.to_string())?;
    let acked = Arc::new(AtomicUsize::new(0));
    let syncs_at_start = fs.sync_count();
    let t = {
        let (db, acked) = (db.clone(), acked.clone());
        std::thread::spawn(move || {
            for s in 0..SNAPSHOTS {
                if db.ingest(Path::new(&format!("/snap{s}")), None).is_err() {
                    return;
                }
                acked.fetch_add(1, Ordering::AcqRel);
            }
        })
    };
    // Crash after a random number of syncs: somewhere inside one of the ingests.
    let target = seed % 40;
    let deadline = Instant::now() + Duration::from_secs(20);
    while fs.sync_count() < syncs_at_start + target && !t.is_finished() && Instant::now() < deadline
    {
        std::thread::yield_now();
    }
    freeze(
        &fs,
        Some(PowerLoss {
            tear_last_unsynced_page: seed.is_multiple_of(2),
            seed,
        }),
    );
    let acked_at_crash = acked.load(Ordering::Acquire) as u32;
    t.join().map_err(|_| "ingest thread panicked".to_string())?;
    drop(db);
    thaw(&fs);
    let db = Db::open("/db", opts).map_err(|e| format!("reopen after power loss: {e}"))?;
    if db.get(b"before").map_err(|e| e.to_string())? != Some(b"ingest".to_vec()) {
        return Err("an acknowledged write was lost".into());
    }
    let src = Db::open(
        "/src",
        nokv::Options {
            retain_versions: true,
            ..fault_options(&fs)
        },
    )
    .map_err(|e| e.to_string())?;
    for s in 0..SNAPSHOTS {
        let mut present = 0;
        let mut absent = 0;
        for i in s * 20..s * 20 + 20 {
            for ts in [Some(10), Some(20), None] {
                let got = read(&db, CF_WRITE, i, ts);
                if got == read(&src, CF_WRITE, i, ts) {
                    present += 1;
                }
                if got.is_none() {
                    absent += 1;
                }
            }
        }
        let all = 60;
        if s < acked_at_crash && present != all {
            return Err(format!(
                "acknowledged ingest {s} lost data ({present}/{all})"
            ));
        }
        if present != all && absent != all {
            return Err(format!(
                "ingest {s} is half there ({present}/{all} present)"
            ));
        }
    }
    Ok(())
}

#[test]
fn ingest_is_all_or_nothing_across_power_loss() {
    for seed in 0..crash_rounds(24) {
        if let Err(e) = ingest_power_loss_round(seed, false) {
            panic!("round {seed}: {e}");
        }
    }
}

#[test]
fn negative_control_ingest_without_sync_is_detected() {
    let detected = (0..16u64)
        .filter(|seed| ingest_power_loss_round(*seed, true).is_err())
        .count();
    assert!(
        detected > 0,
        "the checker did not notice ingested tables that were never made durable"
    );
}

#[test]
fn range_deletes_hide_data_from_exports_but_not_from_later_ingests() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = Db::open(tmp.path().join("src"), mvcc_options()).expect("open");
    fill(&src, 100);
    // Deleted on the source before the export: not exported.
    let mut b = WriteBatch::new();
    for cf in [CF_DEFAULT, CF_LOCK, CF_WRITE] {
        b.delete_range_in(KeySpace::new(NS_REDIS, cf), &k(0), Some(&k(50)));
    }
    src.write(&b, &Default::default()).expect("delete_range");
    let snap = tmp.path().join("snap");
    let m = src
        .export_range(
            &RegionRange::namespace(NS_REDIS),
            &snap,
            &Default::default(),
        )
        .expect("export");
    assert_eq!(m.total_entries(), 50 * 3 * 3);

    // The target replaces the range: delete it, then ingest. The ingested data is newer
    // than the range delete, so it is visible; data outside the snapshot stays deleted.
    let dst = Db::open(tmp.path().join("dst"), mvcc_options()).expect("open");
    fill(&dst, 100);
    dst.flush().expect("flush");
    let mut b = WriteBatch::new();
    for cf in [CF_DEFAULT, CF_LOCK, CF_WRITE] {
        b.delete_range_in(KeySpace::new(NS_REDIS, cf), &k(0), None);
    }
    dst.write(&b, &Default::default()).expect("delete_range");
    dst.ingest(&snap, None).expect("ingest");
    for i in [0u32, 10, 49, 50, 75, 99] {
        for ts in [Some(10), Some(20), None] {
            assert_eq!(
                read(&dst, CF_WRITE, i, ts),
                read(&src, CF_WRITE, i, ts),
                "key {i} ts {ts:?}"
            );
        }
    }
    dst.compact_all().expect("compact");
    assert_eq!(
        read(&dst, CF_WRITE, 75, None),
        read(&src, CF_WRITE, 75, None)
    );
    assert_eq!(read(&dst, CF_WRITE, 10, None), None);
}

#[test]
fn value_log_values_are_exported_inline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = nokv::Options {
        value_threshold_bytes: 1024,
        ..mvcc_options()
    };
    let src = Db::open(tmp.path().join("src"), opts.clone()).expect("open");
    let space = KeySpace::new(NS_REDIS, CF_DEFAULT);
    for i in 0..200u32 {
        let mut b = WriteBatch::new();
        b.put_at(space, &k(i), 5, &value_for(i as u64, 5, 3000));
        src.write(&b, &Default::default()).expect("write");
    }
    src.compact_all().expect("compact");
    assert!(
        src.stats().vlog_segments > 0,
        "values went to the value log"
    );
    let snap = tmp.path().join("snap");
    src.export_range(
        &RegionRange::namespace(NS_REDIS),
        &snap,
        &Default::default(),
    )
    .expect("export");
    let dst = Db::open(tmp.path().join("dst"), opts).expect("open");
    dst.ingest(&snap, None).expect("ingest");
    for i in (0..200u32).step_by(7) {
        assert_eq!(
            read(&dst, CF_DEFAULT, i, None),
            Some(value_for(i as u64, 5, 3000))
        );
    }
    // Compaction on the target separates them into its own value log.
    dst.compact_all().expect("compact");
    assert_eq!(
        read(&dst, CF_DEFAULT, 14, None),
        Some(value_for(14, 5, 3000))
    );
}
