//! Property: flipping any byte of any file of a database never makes the engine panic
//! and never returns wrong data silently — opening or reading reports an error, or every
//! key reads back exactly as written.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::*;
use nokv::fs::{FaultFs, FileSystem, OpenMode};
use nokv::{Db, Result};
use proptest::prelude::*;

const KEYS: u64 = 300;

/// Every (key, value) a full scan returned.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// `fault_options` with a value-log threshold that a fifth of the values reach.
fn options(fs: &FaultFs) -> nokv::Options {
    nokv::Options {
        value_threshold_bytes: 256,
        ..fault_options(fs)
    }
}

/// Builds a database with tables in two levels, value-log segments, a manifest and a WAL
/// holding unflushed writes.
fn build(fs: &FaultFs) -> BTreeMap<Vec<u8>, Vec<u8>> {
    fs.create_dir_all(Path::new("/db")).expect("mkdir");
    let db = Db::open("/db", options(fs)).expect("open");
    let mut model = BTreeMap::new();
    for round in 0..3u64 {
        for k in (round..KEYS).step_by(2) {
            let v = value_for(k, round, if k % 5 == 0 { 400 } else { 90 });
            db.put(&key(k), &v).expect("put");
            model.insert(key(k), v);
        }
        db.flush().expect("flush");
    }
    db.compact_all().expect("compact");
    for k in (0..KEYS).step_by(7) {
        db.delete(&key(k)).expect("delete");
        model.remove(&key(k));
    }
    crash(fs, db, None);
    model
}

/// Opens and reads everything; `Ok(None)` when the engine reported the damage.
fn read_back(fs: &FaultFs) -> Result<Option<Pairs>> {
    let db = match Db::open("/db", options(fs)) {
        Ok(db) => db,
        Err(_) => return Ok(None),
    };
    let mut it = db.iter(Default::default())?;
    it.seek_to_first();
    let mut out = Vec::new();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    if it.status().is_err() {
        return Ok(None);
    }
    for k in 0..KEYS {
        if db.get(&key(k)).is_err() {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_flipped_byte_is_reported_or_harmless(file_pick in any::<prop::sample::Index>(), offset_pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let fs = FaultFs::new();
        let model = build(&fs);
        let mut files: Vec<String> = fs.list_dir(Path::new("/db")).expect("list").into_iter().filter(|n| n != "LOCK").collect();
        files.sort();
        let name = file_pick.get(&files).clone();
        let path = Path::new("/db").join(&name);
        let f = fs.open(&path, OpenMode::ReadWrite).expect("open file");
        let len = f.len().expect("len") as usize;
        prop_assume!(len > 0);
        // WAL segments are preallocated: aim at the written part most of the time.
        let off = offset_pick.index(len.min(if name.starts_with("wal-") { 64 << 10 } else { len })) as u64;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).expect("read");
        f.write_all_at(&[b[0] ^ (1 << bit)], off).expect("write");
        drop(f);
        let outcome = catch_unwind(AssertUnwindSafe(|| read_back(&fs)));
        let outcome = match outcome {
            Ok(o) => o,
            Err(_) => panic!("the engine panicked after flipping bit {bit} at {name}:{off}"),
        };
        if let Ok(Some(got)) = outcome {
            let want: Vec<_> = model.into_iter().collect();
            prop_assert!(got == want, "silent corruption: {name}:{off} bit {bit} changed what reads return");
        }
    }
}
