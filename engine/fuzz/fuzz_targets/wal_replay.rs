//! WAL recovery from arbitrary segment bytes: record framing (`record::scan`), batch
//! decoding, and a whole `Db::open` on an in-memory filesystem holding the segments.
//!
//! Input: `[mode u8]` then up to three WAL segments separated by `SEP`. Mode bit 0 frames
//! each segment's bytes as records with valid checksums (`[type u8][len u8][payload]`
//! chunks), so the decoders behind the checksum are reached; otherwise the bytes are the
//! segment as is.
//!
//! Checks: no panic; every record `scan` returns lies inside the buffer and re-encodes to
//! the same bytes; an open that succeeds reads the same entries after a close and a
//! second open (recovery is stable).
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nokv::clock::ManualClock;
use nokv::fs::FileSystem;
use nokv::record::{self, HEADER_LEN};
use nokv::{Db, KeySpace, Options, ReadOptions};
use nokv_fuzz::{mem_fs, split_parts, write_file};

/// Most entries read back per key space (bounds a run).
const MAX_READ: usize = 10_000;

fn frame_records(gen: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut r = bytes;
    while let [rtype, len, rest @ ..] = r {
        let n = (*len as usize).min(rest.len());
        record::encode(&mut out, gen, *rtype, &rest[..n]);
        r = &rest[n..];
    }
    out
}

fn check_scan(buf: &[u8], gen: u64) {
    let scan = record::scan(buf, gen);
    assert!(scan.end <= buf.len());
    let mut prev_end = 0;
    for (rtype, range) in &scan.records {
        assert!(range.start >= prev_end + HEADER_LEN && range.end <= scan.end);
        let start = range.start - HEADER_LEN;
        let mut again = Vec::new();
        record::encode(&mut again, gen, *rtype, &buf[range.clone()]);
        assert_eq!(
            &buf[start..range.end],
            &again[..],
            "record does not re-encode"
        );
        prev_end = range.end;
        if *rtype == nokv::wal::REC_BATCH {
            let _ = nokv_fuzz_decode_batch(&buf[range.clone()]);
        }
    }
    assert_eq!(prev_end, scan.end);
}

fn nokv_fuzz_decode_batch(payload: &[u8]) -> Option<(u64, usize)> {
    let out = nokv::fuzzing::decode_batch(payload);
    if let Some((_, n)) = out {
        // Every operation takes at least two bytes after the 12-byte header.
        assert!(n <= payload.len());
    }
    out
}

/// The key spaces the seeds write (fuzzed keys may use others, which are simply not read).
fn spaces() -> Vec<KeySpace> {
    let mut out = Vec::new();
    for ns in [nokv::NS_KV, nokv::NS_REDIS, nokv::NS_META] {
        for cf in [nokv::CF_DEFAULT, nokv::CF_LOCK, nokv::CF_WRITE] {
            out.push(KeySpace::new(ns, cf));
        }
    }
    out
}

fn read_all(db: &Db) -> Vec<(KeySpace, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for space in spaces() {
        let Ok(mut it) = db.iter_in(space, ReadOptions::default()) else {
            continue;
        };
        it.seek_to_first();
        let mut n = 0;
        while it.valid() && n < MAX_READ {
            out.push((space, it.key().to_vec(), it.value().to_vec()));
            it.next();
            n += 1;
        }
    }
    out
}

fn options(fs: &Arc<nokv::fs::FaultFs>) -> Options {
    let fs: Arc<dyn FileSystem> = fs.clone();
    Options {
        fs: Some(fs),
        wal_segment_bytes: 64 << 10,
        max_batch_bytes: 32 << 10,
        write_buffer_bytes: 1 << 20,
        block_cache_bytes: 1 << 20,
        clock: Arc::new(ManualClock::new(1_000_000)),
        ..Options::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = Path::new("/db");
    let fs = mem_fs(dir);
    for (i, part) in split_parts(rest, 3).into_iter().enumerate() {
        let gen = i as u64 + 1;
        let seg = if mode & 1 == 1 {
            frame_records(gen, part)
        } else {
            part.to_vec()
        };
        check_scan(&seg, gen);
        write_file(&*fs, &nokv::filename::wal(dir, gen), &seg);
    }
    let Ok(db) = Db::open(dir, options(&fs)) else {
        return;
    };
    let first = read_all(&db);
    db.close().expect("closing a database that opened");
    let db = Db::open(dir, options(&fs)).expect("a database that opened and closed must reopen");
    assert_eq!(read_all(&db), first, "recovery is not stable");
    db.close().expect("closing a database that opened");
});
