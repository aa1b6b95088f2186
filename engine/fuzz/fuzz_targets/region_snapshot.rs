//! Region snapshots as `Db::ingest` receives them: the `SNAPSHOT` manifest text and the
//! checks run on a snapshot directory before anything is ingested (`region_snapshot::verify`:
//! sizes, whole-file crcs, table open, block checksums, key ranges).
//!
//! Input: parts separated by `SEP`. The first part is manifest text, decoded as is. The
//! others are table files: they are written to a snapshot directory with a manifest the
//! harness writes for them (the range of the first part when it decodes, sizes and crcs
//! right, entry counts from the tables), so the checks behind the crcs are reached.
//!
//! Checks: no panic; a manifest that decodes re-encodes to the same manifest; a snapshot
//! that verifies lists exactly the tables written, each inside the range.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nokv::fs::{FileSystem, OpenMode};
use nokv::region_snapshot::{SnapshotFile, MANIFEST_NAME};
use nokv::sst::Table;
use nokv::{RegionRange, SnapshotManifest};
use nokv_fuzz::{mem_fs, split_parts, write_file};

fn entries_of(fs: &dyn FileSystem, path: &Path, size: u64) -> u64 {
    let Ok(file) = fs.open(path, OpenMode::Read) else {
        return 1;
    };
    Table::open(file, path.to_path_buf(), 0, size, None).map_or(1, |t| t.properties().num_entries)
}

fuzz_target!(|data: &[u8]| {
    let parts = split_parts(data, 5);
    let path = Path::new("/snap/SNAPSHOT");
    let decoded = SnapshotManifest::decode(parts[0], path);
    if let Ok(m) = &decoded {
        let again = SnapshotManifest::decode(m.encode().as_bytes(), path);
        assert_eq!(again.as_ref().ok(), Some(m), "manifest round trip");
    }
    if parts.len() < 2 {
        return;
    }
    let dir = Path::new("/snap");
    let fs = mem_fs(dir);
    let mut files = Vec::new();
    for (i, t) in parts[1..].iter().enumerate() {
        let name = format!("{:06}.sst", i + 1);
        let p = dir.join(&name);
        write_file(&*fs, &p, t);
        files.push(SnapshotFile {
            size: t.len() as u64,
            crc32: crc32fast::hash(t),
            entries: entries_of(&*fs, &p, t.len() as u64),
            name,
        });
    }
    let (range, read_ts, txn_safe_point) = match decoded {
        Ok(m) => (m.range, m.read_ts, m.txn_safe_point),
        Err(_) => (RegionRange::namespace(nokv::NS_KV), None, None),
    };
    let manifest = SnapshotManifest {
        range: range.clone(),
        read_ts,
        txn_safe_point,
        files,
    };
    write_file(&*fs, &dir.join(MANIFEST_NAME), manifest.encode().as_bytes());
    let fs: Arc<dyn FileSystem> = fs;
    if let Ok((m, tables)) = nokv::fuzzing::verify_snapshot(&fs, dir, Some(&range)) {
        assert_eq!(m, manifest, "verify read another manifest");
        assert_eq!(tables, manifest.files.len());
    }
});
