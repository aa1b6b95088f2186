//! Segment tests: round trips, corruption and truncation detection, power loss.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::segment::{
    RECORD_HEADER_LEN, SEGMENT_FOOTER_LEN, SEGMENT_FORMAT_VERSION, SEGMENT_HEADER_LEN,
};
use super::*;
use crate::error::Error;
use crate::fs::{FaultFs, FaultRule, FileSystem, Op, OpenMode, PowerLoss, StdFs};

type Entry = (Vec<u8>, Vec<u8>, ValuePointer);

fn dir() -> &'static Path {
    Path::new("/db")
}

fn mem_fs() -> (Arc<dyn FileSystem>, FaultFs) {
    let fs = FaultFs::new();
    fs.create_dir_all(dir()).unwrap();
    (Arc::new(fs.clone()), fs)
}

fn small_buffer() -> SegmentWriterOptions {
    SegmentWriterOptions {
        write_buffer_bytes: 4096,
        ..Default::default()
    }
}

/// Writes `(key, value)` pairs to segment `id`; returns the entries with their pointers.
fn write(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    id: u64,
    opts: SegmentWriterOptions,
    kvs: &[(Vec<u8>, Vec<u8>)],
) -> (Vec<Entry>, SegmentMeta) {
    let mut w = SegmentWriter::create(fs.clone(), dir, id, opts).unwrap();
    let mut out = Vec::new();
    for (k, v) in kvs {
        let before = w.bytes();
        let p = w.add(k, v).unwrap();
        assert_eq!(w.bytes() - before, p.len as u64);
        out.push((k.clone(), v.clone(), p));
    }
    let expect_bytes = w.bytes();
    let meta = w.finish().unwrap();
    assert_eq!(meta.file_bytes, expect_bytes);
    (out, meta)
}

/// Random keys of 0..40 bytes and values of 0..=64 KiB (plus the edge sizes).
fn random_kvs(seed: u64, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kvs: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|_| {
            let k: Vec<u8> = (0..rng.gen_range(0..40)).map(|_| rng.gen()).collect();
            let vlen = rng.gen_range(0..=64 << 10);
            let fill: u8 = rng.gen();
            let v: Vec<u8> = (0..vlen).map(|i| fill ^ (i as u8)).collect();
            (k, v)
        })
        .collect();
    kvs.push((Vec::new(), Vec::new()));
    kvs.push((b"k".to_vec(), vec![7; 64 << 10]));
    kvs.push((b"edge".to_vec(), vec![1; 4096 - RECORD_HEADER_LEN - 4]));
    kvs
}

fn check_all(fs: &dyn FileSystem, dir: &Path, id: u64, entries: &[Entry], meta: SegmentMeta) {
    let r = SegmentReader::open(fs, dir, id).unwrap();
    assert_eq!(r.meta(), meta);
    assert_eq!(r.id(), id);
    assert_eq!(meta.records, entries.len() as u64);
    assert_eq!(
        meta.record_bytes,
        entries.iter().map(|e| e.2.len as u64).sum::<u64>()
    );
    assert_eq!(
        meta.file_bytes,
        meta.record_bytes + (SEGMENT_HEADER_LEN + SEGMENT_FOOTER_LEN) as u64
    );
    // Reads by pointer, in a scrambled order.
    for i in 0..entries.len() {
        let (k, v, p) = &entries[(i * 7919) % entries.len()];
        let rec = r.read(*p).unwrap();
        assert_eq!((&rec.key, &rec.value, rec.pointer), (k, v, *p));
        assert_eq!(&r.read_value(*p).unwrap(), v);
        assert_eq!(p.value_len(k.len()), Some(v.len()));
    }
    // Iteration, both as a cursor and as an Iterator, with a small and a large read-ahead.
    for readahead in [1, 5000, 1 << 20] {
        let mut it = r.iter();
        it.set_readahead(readahead);
        let mut n = 0;
        while let Some(rec) = it.next_record().unwrap() {
            let (k, v, p) = &entries[n];
            assert_eq!((rec.key, rec.value, rec.pointer), (&k[..], &v[..], *p));
            n += 1;
        }
        assert_eq!(n, entries.len());
        assert_eq!(it.records_seen(), meta.records);
        assert!(it.next_record().unwrap().is_none(), "end is sticky");
    }
    let all: Vec<Record> = r.iter().collect::<crate::Result<_>>().unwrap();
    assert_eq!(all.len(), entries.len());
    for (rec, (k, v, p)) in all.iter().zip(entries) {
        assert_eq!((&rec.key, &rec.value, rec.pointer), (k, v, *p));
    }
}

#[test]
fn roundtrip_in_memory_with_sizes_up_to_64k() {
    let (fs, _) = mem_fs();
    for (id, opts) in [(1, small_buffer()), (2, SegmentWriterOptions::default())] {
        let kvs = random_kvs(id, 300);
        let (entries, meta) = write(&fs, dir(), id, opts, &kvs);
        assert_eq!(meta.id, id);
        check_all(&*fs, dir(), id, &entries, meta);
    }
}

#[test]
fn roundtrip_on_std_fs() {
    let tmp = tempfile::tempdir().unwrap();
    let fs: Arc<dyn FileSystem> = Arc::new(StdFs::new());
    let kvs = random_kvs(42, 120);
    let (entries, meta) = write(&fs, tmp.path(), 77, small_buffer(), &kvs);
    let path = crate::filename::vlog(tmp.path(), 77);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), meta.file_bytes);
    check_all(&*fs, tmp.path(), 77, &entries, meta);
    assert_eq!(list_segments(&*fs, tmp.path()).unwrap(), vec![77]);
    remove_segment(&*fs, tmp.path(), 77).unwrap();
    assert!(list_segments(&*fs, tmp.path()).unwrap().is_empty());
}

#[test]
fn empty_segment_roundtrip() {
    let (fs, _) = mem_fs();
    let (entries, meta) = write(&fs, dir(), 3, small_buffer(), &[]);
    assert_eq!(meta.records, 0);
    assert_eq!(meta.record_bytes, 0);
    check_all(&*fs, dir(), 3, &entries, meta);
}

#[test]
fn target_size_reports_full() {
    let (fs, _) = mem_fs();
    let opts = SegmentWriterOptions {
        target_segment_bytes: 10_000,
        write_buffer_bytes: 4096,
        ..Default::default()
    };
    let mut w = SegmentWriter::create(fs.clone(), dir(), 1, opts).unwrap();
    assert_eq!(w.bytes(), (SEGMENT_HEADER_LEN + SEGMENT_FOOTER_LEN) as u64);
    let mut n = 0;
    while !w.is_full() {
        w.add(b"key", &[0u8; 1000]).unwrap();
        n += 1;
    }
    assert_eq!(n, 10);
    assert!(w.bytes() >= 10_000);
    assert_eq!(w.records(), 10);
    assert_eq!(w.finish().unwrap().records, 10);
}

/// Opens segment `id`, iterates it to the end and reads every pointer in `ptrs`
/// (which must point into segment `id`).
fn verify(fs: &dyn FileSystem, id: u64, ptrs: &[ValuePointer]) -> crate::Result<()> {
    let r = SegmentReader::open(fs, dir(), id)?;
    for rec in r.iter() {
        rec?;
    }
    for p in ptrs {
        r.read(*p)?;
    }
    Ok(())
}

fn put_image(fs: &dyn FileSystem, id: u64, image: &[u8]) -> PathBuf {
    let path = crate::filename::vlog(dir(), id);
    let f = fs.open(&path, OpenMode::CreateTruncate).unwrap();
    f.write_all_at(image, 0).unwrap();
    path
}

fn image(fs: &dyn FileSystem, id: u64) -> Vec<u8> {
    let f = fs
        .open(&crate::filename::vlog(dir(), id), OpenMode::Read)
        .unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    f.read_exact_at(&mut b, 0).unwrap();
    b
}

fn assert_reported(e: &Error, path: &Path, what: &str) {
    match e {
        Error::Corruption { path: p, .. } => assert_eq!(p, path, "{what}"),
        Error::UnsupportedFormat { path: p, .. } => assert_eq!(p, path, "{what}"),
        other => panic!("{what}: expected corruption, got {other:?}"),
    }
}

#[test]
fn every_single_byte_corruption_is_reported() {
    let (fs, _) = mem_fs();
    let kvs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"alpha".to_vec(), b"one".to_vec()),
        (Vec::new(), b"empty key".to_vec()),
        (b"gamma".to_vec(), Vec::new()),
        (b"delta".to_vec(), vec![9u8; 40]),
    ];
    let (entries, _) = write(&fs, dir(), 1, small_buffer(), &kvs);
    let good = image(&*fs, 1);
    let ptrs: Vec<ValuePointer> = entries.iter().map(|e| e.2).collect();
    verify(&*fs, 1, &ptrs).unwrap();
    for i in 0..good.len() {
        for flip in [0x01u8, 0x10, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            let path = put_image(&*fs, 1, &bad);
            let what = format!("byte {i} ^ {flip:#x}");
            let err = verify(&*fs, 1, &ptrs).expect_err(&what);
            assert_reported(&err, &path, &what);
            // A point read of the damaged record fails too (when the segment opens at all).
            if let Ok(r) = SegmentReader::open(&*fs, dir(), 1) {
                for p in &ptrs {
                    if (p.offset..p.end()).contains(&(i as u64)) {
                        let e = r.read(*p).expect_err(&what);
                        assert_reported(&e, &path, &what);
                        match e {
                            Error::Corruption { offset, .. } => assert_eq!(offset, p.offset),
                            other => panic!("{what}: {other:?}"),
                        }
                    }
                }
            }
        }
    }
    put_image(&*fs, 1, &good);
    verify(&*fs, 1, &ptrs).unwrap();
}

#[test]
fn truncated_segment_is_reported() {
    let (fs, _) = mem_fs();
    let kvs = random_kvs(5, 6);
    let (entries, _) = write(&fs, dir(), 1, small_buffer(), &kvs);
    let good = image(&*fs, 1);
    let ptrs: Vec<ValuePointer> = entries.iter().map(|e| e.2).collect();
    let mut cuts: Vec<usize> = (0..good.len()).step_by(97).collect();
    cuts.extend(good.len() - 64..good.len());
    cuts.extend(0..64);
    for cut in cuts {
        let path = put_image(&*fs, 1, &good[..cut]);
        let err = verify(&*fs, 1, &ptrs).expect_err(&format!("cut at {cut}"));
        assert_reported(&err, &path, &format!("cut at {cut}"));
    }
    // Extra bytes after the footer are not a valid segment either.
    let mut long = good.clone();
    long.extend_from_slice(&[0u8; 5]);
    let path = put_image(&*fs, 1, &long);
    assert_reported(&verify(&*fs, 1, &ptrs).unwrap_err(), &path, "padded");
    // A footer moved up over the last record: the count no longer matches.
    let last = entries[entries.len() - 1].2;
    let mut short = good[..last.offset as usize].to_vec();
    short.extend_from_slice(&good[good.len() - SEGMENT_FOOTER_LEN..]);
    let path = put_image(&*fs, 1, &short);
    assert_reported(&verify(&*fs, 1, &[]).unwrap_err(), &path, "moved footer");
    // The untouched image still verifies (the checks above failed for the damage alone).
    put_image(&*fs, 1, &good);
    verify(&*fs, 1, &ptrs).unwrap();
}

/// `image` with its footer replaced by one for `count` records ending at `end` (valid crc).
fn forge_footer(image: &[u8], count: u64, end: u64) -> Vec<u8> {
    let mut b = image[..image.len() - SEGMENT_FOOTER_LEN].to_vec();
    let at = b.len();
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&end.to_le_bytes());
    let crc = crc32fast::hash(&b[at..]);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(b"NoKVVEND");
    b
}

#[test]
fn footer_fields_are_checked_against_the_records() {
    let (fs, _) = mem_fs();
    let kvs = random_kvs(9, 5);
    let (entries, meta) = write(&fs, dir(), 1, small_buffer(), &kvs);
    let good = image(&*fs, 1);
    let ptrs: Vec<ValuePointer> = entries.iter().map(|e| e.2).collect();
    let n = meta.records;
    let end = SEGMENT_HEADER_LEN as u64 + meta.record_bytes;
    assert_eq!(forge_footer(&good, n, end), good);
    let cases: [(u64, u64, &str); 6] = [
        (n + 1, end, "footer counts"),
        (n - 1, end, "more records than"),
        (0, end, "more records than"),
        (n, end - 1, "records end at"),
        (n, end + 1, "records end at"),
        (u64::MAX, end, "claims"),
    ];
    for (count, records_end, msg) in cases {
        let path = put_image(&*fs, 1, &forge_footer(&good, count, records_end));
        let err = verify(&*fs, 1, &[]).unwrap_err();
        assert_reported(&err, &path, msg);
        assert!(err.to_string().contains(msg), "{msg}: {err}");
    }
    put_image(&*fs, 1, &good);
    verify(&*fs, 1, &ptrs).unwrap();
}

#[test]
fn header_checks_version_and_id() {
    let (fs, _) = mem_fs();
    write(
        &fs,
        dir(),
        1,
        small_buffer(),
        &[(b"k".to_vec(), b"v".to_vec())],
    );
    let mut img = image(&*fs, 1);
    // The file of segment 1 renamed to segment 2: the header names the wrong segment.
    let path = put_image(&*fs, 2, &img);
    let err = SegmentReader::open(&*fs, dir(), 2).unwrap_err();
    assert_reported(&err, &path, "id");
    assert!(err.to_string().contains("segment 1, expected 2"), "{err}");
    // A newer version with a valid header crc is "unsupported", not corruption.
    img[8..12].copy_from_slice(&(SEGMENT_FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&img[0..20]);
    img[20..24].copy_from_slice(&crc.to_le_bytes());
    put_image(&*fs, 1, &img);
    match SegmentReader::open(&*fs, dir(), 1).unwrap_err() {
        Error::UnsupportedFormat { version, max, .. } => {
            assert_eq!((version, max), (2, SEGMENT_FORMAT_VERSION));
        }
        other => panic!("expected unsupported format, got {other:?}"),
    }
}

#[test]
fn bad_pointers_are_rejected() {
    let (fs, _) = mem_fs();
    let kvs = vec![
        (b"a".to_vec(), b"value-a".to_vec()),
        (b"b".to_vec(), b"value-b".to_vec()),
    ];
    let (entries, meta) = write(&fs, dir(), 4, small_buffer(), &kvs);
    let r = SegmentReader::open(&*fs, dir(), 4).unwrap();
    let p = entries[0].2;
    assert!(matches!(
        r.read(ValuePointer { segment: 5, ..p }),
        Err(Error::InvalidArgument(_))
    ));
    let records_end = SEGMENT_HEADER_LEN as u64 + meta.record_bytes;
    // A pointer one byte too long: the record's own lengths disagree with it.
    let err = r
        .read(ValuePointer {
            len: p.len + 1,
            ..p
        })
        .unwrap_err();
    assert!(err.to_string().contains("do not add up"), "{err}");
    for bad in [
        ValuePointer {
            len: p.len + 1,
            ..p
        },
        ValuePointer {
            len: p.len - 1,
            ..p
        },
        ValuePointer {
            offset: p.offset + 1,
            ..p
        },
        ValuePointer { offset: 0, ..p },
        ValuePointer { len: 3, ..p },
        ValuePointer {
            offset: records_end - 5,
            ..p
        },
        ValuePointer {
            offset: u64::MAX - 2,
            ..p
        },
        ValuePointer {
            len: p.len + entries[1].2.len,
            ..p
        },
    ] {
        match r.read(bad) {
            Err(Error::Corruption { path, offset, .. }) => {
                assert_eq!(path, crate::filename::vlog(dir(), 4));
                assert_eq!(offset, bad.offset);
            }
            other => panic!("{bad:?}: expected corruption, got {other:?}"),
        }
    }
}

#[test]
fn abandon_removes_the_file_and_create_refuses_existing_ids() {
    let (fs, _) = mem_fs();
    let path = crate::filename::vlog(dir(), 8);
    let mut w = SegmentWriter::create(fs.clone(), dir(), 8, small_buffer()).unwrap();
    assert_eq!(w.path(), path);
    for i in 0..100u32 {
        w.add(&i.to_le_bytes(), &[1u8; 500]).unwrap();
    }
    assert!(fs.exists(&path));
    w.abandon().unwrap();
    assert!(!fs.exists(&path));

    write(&fs, dir(), 8, small_buffer(), &[]);
    match SegmentWriter::create(fs.clone(), dir(), 8, small_buffer()) {
        Err(Error::Io { op, path: p, .. }) => {
            assert_eq!(op, "create");
            assert_eq!(p, path);
        }
        other => panic!("expected an io error, got {other:?}"),
    }
}

#[test]
fn write_and_sync_faults_are_reported_and_sticky() {
    let (fs, ffs) = mem_fs();
    let path = crate::filename::vlog(dir(), 1);
    ffs.add_rule(FaultRule::on_nth(Op::Write, 2).path_contains(".vlog"));
    let mut w = SegmentWriter::create(fs.clone(), dir(), 1, small_buffer()).unwrap();
    let err = loop {
        if let Err(e) = w.add(b"key", &[3u8; 1000]) {
            break e;
        }
    };
    match err {
        Error::Io { op, path: p, .. } => assert_eq!((op, p), ("write", path.clone())),
        other => panic!("expected an io error, got {other:?}"),
    }
    assert!(w.add(b"k", b"v").is_err(), "the writer stays failed");
    assert!(w.finish().is_err());
    ffs.clear_rules();
    remove_segment(&*fs, dir(), 1).unwrap();

    ffs.add_rule(FaultRule::once(Op::Sync).path_contains(".vlog"));
    let mut w = SegmentWriter::create(fs.clone(), dir(), 1, small_buffer()).unwrap();
    w.add(b"k", b"v").unwrap();
    match w.finish() {
        Err(Error::Io { op, path: p, .. }) => assert_eq!((op, p), ("fdatasync", path.clone())),
        other => panic!("expected an fdatasync error, got {other:?}"),
    }
}

#[test]
fn power_loss_keeps_finished_segments_and_exposes_unfinished_ones() {
    for seed in 0..16u64 {
        let (fs, ffs) = mem_fs();
        // Segment 1: finished and its name made durable by a directory sync.
        let kvs = random_kvs(seed, 40);
        let (entries, meta) = write(&fs, dir(), 1, small_buffer(), &kvs);
        fs.sync_dir(dir()).unwrap();
        // Segment 2: its name is durable, but it is never finished.
        let mut w = SegmentWriter::create(fs.clone(), dir(), 2, small_buffer()).unwrap();
        fs.sync_dir(dir()).unwrap();
        for (k, v) in random_kvs(seed + 100, 10) {
            w.add(&k, &v).unwrap();
        }
        // Segment 3: finished, but its directory entry never synced.
        write(&fs, dir(), 3, small_buffer(), &kvs[..3]);
        ffs.power_loss(PowerLoss {
            tear_last_unsynced_page: seed % 2 == 0,
            seed,
        });
        drop(w);
        check_all(&*fs, dir(), 1, &entries, meta);
        let path2 = crate::filename::vlog(dir(), 2);
        assert!(fs.exists(&path2));
        let err = SegmentReader::open(&*fs, dir(), 2).unwrap_err();
        assert_reported(&err, &path2, &format!("seed {seed}"));
        // finish() syncs the data, not the name: the caller must sync the directory.
        assert!(!fs.exists(&crate::filename::vlog(dir(), 3)));
        assert_eq!(list_segments(&*fs, dir()).unwrap(), vec![1, 2]);
    }
}

#[test]
fn power_loss_after_a_failed_finish_leaves_no_valid_segment() {
    let (fs, ffs) = mem_fs();
    let mut w = SegmentWriter::create(fs.clone(), dir(), 1, small_buffer()).unwrap();
    fs.sync_dir(dir()).unwrap();
    for i in 0..50u32 {
        w.add(&i.to_le_bytes(), &[5u8; 300]).unwrap();
    }
    ffs.add_rule(FaultRule::once(Op::Sync).path_contains(".vlog"));
    assert!(w.finish().is_err());
    ffs.clear_rules();
    // Before the crash the bytes are all there (the page cache holds them) ...
    assert!(SegmentReader::open(&*fs, dir(), 1).is_ok());
    ffs.power_loss(PowerLoss {
        tear_last_unsynced_page: true,
        seed: 3,
    });
    // ... after it they are not, and the damage is reported.
    let err = SegmentReader::open(&*fs, dir(), 1).unwrap_err();
    assert_reported(&err, &crate::filename::vlog(dir(), 1), "after crash");
}

#[test]
fn bytes_match_docs_format_md() {
    use super::segment::{SEGMENT_FOOTER_MAGIC, SEGMENT_MAGIC};
    assert_eq!(SEGMENT_MAGIC, 0x31474c56564b6f4e);
    assert_eq!(SEGMENT_FOOTER_MAGIC, 0x444e4556564b6f4e);
    let (fs, _) = mem_fs();
    let (entries, _) = write(
        &fs,
        dir(),
        5,
        small_buffer(),
        &[(b"ab".to_vec(), b"xyz".to_vec())],
    );
    let img = image(&*fs, 5);
    let mut want = Vec::new();
    want.extend_from_slice(b"NoKVVLG1");
    want.extend_from_slice(&1u32.to_le_bytes());
    want.extend_from_slice(&5u64.to_le_bytes());
    let crc = crc32fast::hash(&want);
    want.extend_from_slice(&crc.to_le_bytes());
    let mut rec = Vec::new();
    rec.extend_from_slice(&2u32.to_le_bytes());
    rec.extend_from_slice(&3u32.to_le_bytes());
    rec.extend_from_slice(b"abxyz");
    want.extend_from_slice(&crc32fast::hash(&rec).to_le_bytes());
    want.extend_from_slice(&rec);
    let mut footer = Vec::new();
    footer.extend_from_slice(&1u64.to_le_bytes());
    footer.extend_from_slice(&(24u64 + 17).to_le_bytes());
    let crc = crc32fast::hash(&footer);
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(b"NoKVVEND");
    want.extend_from_slice(&footer);
    assert_eq!(img, want);
    assert_eq!(
        entries[0].2,
        ValuePointer {
            segment: 5,
            offset: 24,
            len: 17
        }
    );
}

#[test]
fn types_can_be_shared_and_moved_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<SegmentReader>();
    send_sync::<DiscardStats>();
    send_sync::<ValuePointer>();
    send::<SegmentWriter>();
    send::<SegmentIter>();
    send::<GcJob>();
}
