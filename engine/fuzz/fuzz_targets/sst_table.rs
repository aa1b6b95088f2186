//! Table open and reads from arbitrary file bytes (footer, index, filter, properties and
//! range-deletion blocks at open; data blocks on reads), and tables built from fuzzed
//! entries, possibly damaged afterwards.
//!
//! Input: `[mode u8][bytes]`. Mode 0: the bytes are the table file. Otherwise the bytes
//! are entries (`nokv_fuzz::entries_from`) written with `TableBuilder` (block size, restart
//! interval, filter and compression from the mode byte); with mode bit 7, the last three
//! bytes are `[offset u16 LE][xor u8]`, one damaged byte of the file.
//!
//! Checks: no panic, bounded iteration; an undamaged built table opens, passes
//! `verify_checksums`, and reads back exactly its entries (forward, backward, seeks and
//! point gets); a damaged one either fails to open or verify, or reads back exactly too.
#![no_main]

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nokv::fs::{FileSystem, OpenMode};
use nokv::iter::InternalIterator;
use nokv::key::{compare_internal, first_key, logical_key};
use nokv::options::BlockRead;
use nokv::sst::{Table, TableBuilder, TableBuilderOptions};
use nokv::Compression;
use nokv_fuzz::{entries_from, mem_fs, read_file, write_file};

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads everything a table yields, bounded by `cap` entries per walk; `None` when a read
/// reports an error.
fn read_table(t: &Arc<Table>, cap: usize, probes: &[Vec<u8>]) -> Option<(Entries, Entries)> {
    let mut it = t.iter(BlockRead::Fill);
    let mut fwd = Vec::new();
    it.seek_to_first();
    while it.valid() && fwd.len() <= cap {
        fwd.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    it.status().ok()?;
    let mut back = Vec::new();
    it.seek_to_last();
    while it.valid() && back.len() <= cap {
        back.push((it.key().to_vec(), it.value().to_vec()));
        it.prev();
    }
    it.status().ok()?;
    back.reverse();
    for p in probes {
        it.seek(p);
        it.seek_for_prev(p);
        let _ = t.approximate_offset(p);
    }
    it.status().ok()?;
    Some((fwd, back))
}

fn open(fs: &dyn FileSystem, path: &Path) -> Option<Arc<Table>> {
    let file = fs.open(path, OpenMode::Read).ok()?;
    let size = file.len().ok()?;
    Table::open(file, path.to_path_buf(), 1, size, None).ok()
}

fn raw(bytes: &[u8]) {
    let dir = Path::new("/t");
    let fs = mem_fs(dir);
    let path = dir.join("000001.sst");
    write_file(&*fs, &path, bytes);
    let Some(t) = open(&*fs, &path) else {
        return;
    };
    let _ = t.verify_checksums();
    let probes: Vec<Vec<u8>> = bytes
        .chunks(20)
        .take(6)
        .filter(|c| c.len() >= 17)
        .map(|c| c.to_vec())
        .collect();
    // Each entry takes at least three bytes of a data block.
    let _ = read_table(&t, bytes.len() / 3 + 1, &probes);
    for p in &probes {
        let _ = t.get(p, BlockRead::Fill);
    }
}

fn built(mode: u8, bytes: &[u8]) {
    // One damaged byte at most: CRC-32 detects every error within 32 bits, so a table
    // that still passes its checks must read back exactly.
    let edits_len = if mode & 0x80 != 0 && bytes.len() >= 3 {
        3
    } else {
        0
    };
    let (body, edits) = bytes.split_at(bytes.len() - edits_len);
    let entries = entries_from(body);
    let dir = Path::new("/t");
    let fs = mem_fs(dir);
    let path: PathBuf = dir.join("000001.sst");
    let file = fs
        .open(&path, OpenMode::CreateNew)
        .expect("in-memory create cannot fail");
    let opts = TableBuilderOptions {
        block_bytes: [64, 256, 4096][usize::from(mode >> 1) % 3],
        restart_interval: usize::from(mode >> 3) % 4 * 5 + 1,
        bloom_bits_per_key: if mode & 0x20 != 0 { 10 } else { 0 },
        compression: if mode & 0x40 != 0 {
            Compression::Lz4
        } else {
            Compression::None
        },
    };
    let mut b = TableBuilder::new(file, path.clone(), opts);
    for (k, v) in &entries {
        b.add(k, v).expect("in-memory table write cannot fail");
    }
    b.finish().expect("in-memory table write cannot fail");
    let mut image = read_file(&*fs, &path).expect("the table was just written");
    let damaged = !edits.is_empty();
    for e in edits.chunks(3) {
        let off = usize::from(u16::from_le_bytes([e[0], e[1]])) % image.len().max(1);
        if let Some(b) = image.get_mut(off) {
            *b ^= e[2] | 1;
        }
    }
    write_file(&*fs, &path, &image);
    let t = match open(&*fs, &path) {
        Some(t) => t,
        None if damaged => return,
        None => panic!("a table just built does not open"),
    };
    if t.verify_checksums().is_err() {
        assert!(damaged, "a table just built fails verify_checksums");
        return;
    }
    let probes: Vec<Vec<u8>> = entries
        .iter()
        .map(|(k, _)| first_key(logical_key(k)))
        .collect();
    let got = read_table(&t, entries.len() + 1, &probes);
    let Some((fwd, back)) = got else {
        assert!(damaged, "a table just built fails a read");
        return;
    };
    assert_eq!(fwd, entries, "forward scan differs from what was written");
    assert_eq!(back, entries, "backward scan differs from what was written");
    for p in &probes {
        let want = entries
            .iter()
            .find(|(k, _)| compare_internal(k, p) != Ordering::Less)
            .filter(|(k, _)| logical_key(k) == logical_key(p));
        let got = t.get(p, BlockRead::Fill).expect("reads passed above");
        assert_eq!(got.as_ref(), want, "get differs from what was written");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(rest);
    } else {
        built(mode, rest);
    }
});
