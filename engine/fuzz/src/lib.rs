//! Helpers shared by the engine's fuzz targets and their seed generator (`examples/seeds.rs`).

use std::path::Path;
use std::sync::Arc;

use nokv::fs::{FaultFs, FileSystem, OpenMode};
use nokv::key::{make_internal_key, Kind, PREFIX_LEN};

/// Separates the parts of one input (WAL segments, manifest and tables, ...).
pub const SEP: &[u8] = b"\xffNOKVSEP";

/// Splits `data` at [`SEP`] into at most `max` parts (the last one keeps any later separator).
pub fn split_parts(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < max {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// The inverse of [`split_parts`] (for seeds).
pub fn join_parts(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        out.extend_from_slice(p);
    }
    out
}

/// A fresh in-memory filesystem with the directory `dir`.
pub fn mem_fs(dir: &Path) -> Arc<FaultFs> {
    let fs = Arc::new(FaultFs::new());
    fs.create_dir_all(dir).expect("in-memory mkdir cannot fail");
    fs
}

/// Writes `bytes` as the whole of `path` (in-memory: cannot fail).
pub fn write_file(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) {
    let f = fs
        .open(path, OpenMode::CreateTruncate)
        .expect("in-memory create cannot fail");
    if !bytes.is_empty() {
        f.write_all_at(bytes, 0)
            .expect("in-memory write cannot fail");
    }
}

/// Reads the whole of `path`.
pub fn read_file(fs: &dyn FileSystem, path: &Path) -> std::io::Result<Vec<u8>> {
    let f = fs.open(path, OpenMode::Read)?;
    let len = f.len()?;
    f.read_exact_vec(len as usize, 0)
}

/// Distinct internal keys in increasing order, with values, read from `bytes` as
/// `[key len u8][logical key][version u8][kind u8][value len u8][value]` records (a
/// truncated record ends the list). Logical keys get a namespace and column family.
pub fn entries_from(bytes: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut r = bytes;
    // Each round consumes at least one byte.
    loop {
        let Some((&klen, rest)) = r.split_first() else {
            break;
        };
        let klen = (klen % 24) as usize;
        if rest.len() < klen + 3 {
            break;
        }
        let (key, rest) = rest.split_at(klen);
        let (version, kind, vlen) = (rest[0], rest[1], rest[2] as usize % 48);
        let rest = &rest[3..];
        let value = &rest[..vlen.min(rest.len())];
        r = &rest[value.len()..];
        let mut logical = vec![b'k', 0];
        logical.extend_from_slice(key);
        let kind = match kind % 3 {
            0 => Kind::Put,
            1 => Kind::Delete,
            _ => Kind::PutWithExpiry,
        };
        let mut value = value.to_vec();
        match kind {
            Kind::Delete => value.clear(),
            Kind::PutWithExpiry => value.splice(0..0, u64::MAX.to_le_bytes()).for_each(drop),
            _ => {}
        }
        debug_assert!(logical.len() >= PREFIX_LEN);
        let ikey = make_internal_key(&logical, u64::from(version) + 1, 0, kind as u8);
        out.push((ikey, value));
    }
    out.sort_by(|a, b| nokv::key::compare_internal(&a.0, &b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}
