//! Logical region snapshots: a key range exported as SST files plus a checksummed
//! `SNAPSHOT` manifest, and the checks an ingest runs before it changes anything.
//!
//! Exported tables hold every entry with sequence number 0 and unique (logical key,
//! version) pairs; the ingesting database gives all of them one fresh sequence number
//! (the table's *global sequence*, recorded in its manifest edit), so they are newer
//! than anything already there, including range deletes, and appear atomically.
//! The byte format is in `docs/format.md` ("Region snapshots").

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, IoContext, Result};
use crate::fs::{FileSystem, OpenMode};
use crate::iter::InternalIterator;
use crate::key::{
    first_key, logical_key, make_internal_key, parse_trailer, parse_version, resolve, KeySpace,
    Resolved, PREFIX_LEN,
};
use crate::range_del::{self, RangeDelCursor};
use crate::sst::{Table, TableBuilder, TableBuilderOptions};

/// Name of the manifest file inside a snapshot directory.
pub const MANIFEST_NAME: &str = "SNAPSHOT";
/// Snapshot manifest format written by this build (and the only one it reads).
pub const SNAPSHOT_FORMAT: u32 = 1;
const HEADER: &str = "nokv-region-snapshot";
/// Largest manifest this build reads (a snapshot lists at most a few thousand files).
const MANIFEST_BYTES_MAX: u64 = 16 << 20;

/// A range of user keys in one namespace, across every column family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionRange {
    /// Namespace byte.
    pub ns: u8,
    /// Inclusive start user key (empty: from the first key).
    pub start: Vec<u8>,
    /// Exclusive end user key (`None`: to the end of the namespace).
    pub end: Option<Vec<u8>>,
}

impl RegionRange {
    /// The whole namespace `ns`.
    pub fn namespace(ns: u8) -> RegionRange {
        RegionRange {
            ns,
            start: Vec::new(),
            end: None,
        }
    }

    /// True when user key `user` (of any column family of `ns`) lies in the range.
    pub fn contains_user_key(&self, user: &[u8]) -> bool {
        user >= &self.start[..] && self.end.as_deref().is_none_or(|e| user < e)
    }

    /// True when the logical key (namespace, column family, user key) lies in the range.
    pub fn contains_logical(&self, logical: &[u8]) -> bool {
        logical.len() >= PREFIX_LEN
            && logical[0] == self.ns
            && self.contains_user_key(&logical[PREFIX_LEN..])
    }

    /// True when every key of `inner` also lies in `self`.
    pub fn covers(&self, inner: &RegionRange) -> bool {
        self.ns == inner.ns
            && inner.start >= self.start
            && match (&self.end, &inner.end) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b <= a,
            }
    }

    fn validate(&self) -> Result<()> {
        if let Some(e) = &self.end {
            if e <= &self.start {
                return Err(Error::InvalidArgument(format!(
                    "region range end {} is not above its start {}",
                    hex(e),
                    hex(&self.start)
                )));
            }
        }
        Ok(())
    }
}

/// What an export writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// `None`: every version (tombstones included); `Some(ts)`: only the newest live
    /// value at or below `ts` of each key.
    pub read_ts: Option<u64>,
    /// Output tables are cut near this size.
    pub target_file_bytes: u64,
    /// Export the data as of this snapshot (`None`: as of the call), e.g. a raft peer's
    /// data at an applied index, exported later on another thread.
    pub snapshot: Option<crate::Snapshot>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            read_ts: None,
            snapshot: None,
            target_file_bytes: 64 << 20,
        }
    }
}

/// One exported table as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// File name inside the snapshot directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// crc32 of the whole file.
    pub crc32: u32,
    /// Number of entries.
    pub entries: u64,
}

/// The parsed `SNAPSHOT` manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotManifest {
    /// The exported range.
    pub range: RegionRange,
    /// The read timestamp of a latest-value export (`None`: every version).
    pub read_ts: Option<u64>,
    /// The exporter's transaction GC safe point, for an `NS_KV` range (`None`: none set):
    /// the data may lack records below it, so the ingesting database raises its own.
    pub txn_safe_point: Option<u64>,
    /// The tables, in key order.
    pub files: Vec<SnapshotFile>,
}

impl SnapshotManifest {
    /// Total bytes of the listed tables.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Total entries of the listed tables.
    pub fn total_entries(&self) -> u64 {
        self.files.iter().map(|f| f.entries).sum()
    }

    /// The manifest text, its last line the crc32 of everything before it.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{HEADER} {SNAPSHOT_FORMAT}");
        let _ = writeln!(s, "ns {:02x}", self.range.ns);
        let _ = writeln!(s, "start {}", hex(&self.range.start));
        let _ = writeln!(
            s,
            "end {}",
            self.range.end.as_deref().map_or("-".to_string(), hex)
        );
        let _ = writeln!(
            s,
            "read_ts {}",
            self.read_ts.map_or("all".to_string(), |t| t.to_string())
        );
        if let Some(t) = self.txn_safe_point {
            let _ = writeln!(s, "txn_safe_point {t}");
        }
        for f in &self.files {
            let _ = writeln!(
                s,
                "file {} {} {:08x} {}",
                f.name, f.size, f.crc32, f.entries
            );
        }
        let crc = crc32fast::hash(s.as_bytes());
        let _ = writeln!(s, "crc {crc:08x}");
        s
    }

    /// Parses manifest text read from `path`; any damage is corruption naming the line.
    pub fn decode(text: &[u8], path: &Path) -> Result<SnapshotManifest> {
        let bad = |offset: usize, msg: String| Error::corruption(path, offset as u64, msg);
        let text =
            std::str::from_utf8(text).map_err(|e| bad(e.valid_up_to(), "not UTF-8".into()))?;
        let unterminated = || bad(text.len(), "manifest does not end with a newline".into());
        let last = text.strip_suffix('\n').ok_or_else(unterminated)?;
        let body_end = last
            .rfind('\n')
            .map(|i| i + 1)
            .ok_or_else(|| bad(0, "manifest has no crc line".into()))?;
        let (body, crc_line) = text.split_at(body_end);
        let want = crc_line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix("crc "))
            .and_then(hex_u32)
            .ok_or_else(|| bad(body_end, "last line is not `crc <hex>`".into()))?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err(bad(body_end, "manifest checksum mismatch".into()));
        }
        let mut lines = body.lines();
        let mut offset = 0usize;
        let mut next = |what: &str| -> Result<(usize, Vec<&str>)> {
            let line = lines
                .next()
                .ok_or_else(|| bad(offset, format!("missing {what} line")))?;
            let at = offset;
            offset += line.len() + 1;
            Ok((at, line.split(' ').collect()))
        };
        let (at, head) = next("header")?;
        match head.as_slice() {
            [HEADER, v] => {
                let v: u32 = v
                    .parse()
                    .map_err(|_| bad(at, "bad format version".into()))?;
                if v != SNAPSHOT_FORMAT {
                    return Err(Error::UnsupportedFormat {
                        path: path.to_path_buf(),
                        version: v,
                        max: SNAPSHOT_FORMAT,
                    });
                }
            }
            _ => return Err(bad(at, "not a NoKV region snapshot manifest".into())),
        }
        let field = |parts: &[&str], name: &str, at: usize| -> Result<String> {
            match parts {
                [n, v] if *n == name => Ok(v.to_string()),
                _ => Err(bad(at, format!("expected `{name} <value>`"))),
            }
        };
        let (at, p) = next("ns")?;
        let ns = unhex(&field(&p, "ns", at)?)
            .filter(|b| b.len() == 1)
            .map(|b| b[0])
            .ok_or_else(|| bad(at, "bad namespace byte".into()))?;
        let (at, p) = next("start")?;
        let start =
            unhex(&field(&p, "start", at)?).ok_or_else(|| bad(at, "bad start key".into()))?;
        let (at, p) = next("end")?;
        let end = match field(&p, "end", at)?.as_str() {
            "-" => None,
            h => Some(unhex(h).ok_or_else(|| bad(at, "bad end key".into()))?),
        };
        let (at, p) = next("read_ts")?;
        let read_ts = match field(&p, "read_ts", at)?.as_str() {
            "all" => None,
            t => Some(t.parse().map_err(|_| bad(at, "bad read_ts".into()))?),
        };
        let mut files = Vec::new();
        let mut txn_safe_point = None;
        while let Ok((at, p)) = next("file") {
            match p.as_slice() {
                ["txn_safe_point", t] if files.is_empty() && txn_safe_point.is_none() => {
                    txn_safe_point = Some(
                        t.parse()
                            .map_err(|_| bad(at, "bad txn_safe_point".into()))?,
                    );
                }
                ["file", name, size, crc, entries] if is_plain_name(name) => {
                    files.push(SnapshotFile {
                        name: name.to_string(),
                        size: size.parse().map_err(|_| bad(at, "bad file size".into()))?,
                        crc32: hex_u32(crc).ok_or_else(|| bad(at, "bad file crc".into()))?,
                        entries: entries
                            .parse()
                            .map_err(|_| bad(at, "bad entry count".into()))?,
                    })
                }
                _ => {
                    return Err(bad(
                        at,
                        "expected `file <name> <size> <crc> <entries>`".into(),
                    ))
                }
            }
        }
        let range = RegionRange { ns, start, end };
        range.validate().map_err(|e| bad(0, e.to_string()))?;
        Ok(SnapshotManifest {
            range,
            read_ts,
            txn_safe_point,
            files,
        })
    }
}

/// What [`crate::Db::ingest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// The sequence number all ingested entries read as.
    pub global_seq: u64,
    /// (file number, level) of each ingested table.
    pub placed: Vec<(u64, usize)>,
    /// Total bytes and entries ingested.
    pub bytes: u64,
    /// Total entries ingested.
    pub entries: u64,
    /// True when the tables were hard-linked rather than copied.
    pub linked: bool,
}

/// A file name without directory parts (a manifest must not point outside its folder).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "~".to_string();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Eight lowercase hex digits as a u32 (the manifest writes no other form).
fn hex_u32(s: &str) -> Option<u32> {
    let b = unhex(s)?;
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

/// Lowercase hex (or "~" for empty) back to bytes; anything else is `None`.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s == "~" {
        return Some(Vec::new());
    }
    if s.is_empty()
        || !s.len().is_multiple_of(2)
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// crc32 of a whole file, read in chunks.
pub(crate) fn file_crc(fs: &dyn FileSystem, path: &Path) -> Result<(u64, u32)> {
    let f = fs.open(path, OpenMode::Read).ctx("open", path)?;
    let len = f.len().ctx("stat", path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], off).ctx("read", path)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok((len, h.finalize()))
}

/// Turns a stored (kind, value) into one with the value inline (value-log pointers).
pub(crate) type InlineValue = Box<dyn Fn(u8, &[u8]) -> Result<(u8, Vec<u8>)>>;

/// Where an export reads from: a merged cursor over every layer, pinned at one sequence.
pub(crate) struct ExportSource {
    /// Merged cursor over memtables and tables (entries of all column families).
    pub iter: Box<dyn InternalIterator>,
    /// Sequence number of the read view.
    pub seq: u64,
    /// Wall-clock time expiry is judged at (latest-value exports drop expired values).
    pub now_ms: u64,
    /// Turns a stored (kind, value) into one with the value inline.
    pub inline: InlineValue,
    /// Range tombstones of the read view (entries they hide are not exported).
    pub range_dels: Option<RangeDelCursor>,
    /// The database's transaction GC safe point (0: none), recorded for `NS_KV` ranges.
    pub txn_safe_point: u64,
}

/// Writes the range's entries from `src` into tables plus a manifest in `dir`.
pub(crate) fn export(
    fs: &Arc<dyn FileSystem>,
    mut src: ExportSource,
    range: &RegionRange,
    dir: &Path,
    opts: &ExportOptions,
    table_opts: TableBuilderOptions,
) -> Result<SnapshotManifest> {
    range.validate()?;
    fs.create_dir_all(dir).ctx("create dir", dir)?;
    if fs.exists(&dir.join(MANIFEST_NAME)) {
        return Err(Error::InvalidArgument(format!(
            "{} already holds a region snapshot",
            dir.display()
        )));
    }
    let mut writer = ExportWriter {
        fs: fs.clone(),
        dir: dir.to_path_buf(),
        table_opts,
        target: opts.target_file_bytes.max(1),
        current: None,
        files: Vec::new(),
        key: Vec::new(),
    };
    let result = export_entries(&mut src, range, opts.read_ts, &mut writer);
    let result = result.and_then(|()| writer.finish_current());
    if let Err(e) = result {
        writer.abandon();
        return Err(e);
    }
    let manifest = SnapshotManifest {
        range: range.clone(),
        read_ts: opts.read_ts,
        txn_safe_point: (range.ns == crate::key::NS_KV && src.txn_safe_point > 0)
            .then_some(src.txn_safe_point),
        files: writer.files.clone(),
    };
    let text = manifest.encode();
    let tmp = dir.join(format!("{MANIFEST_NAME}.tmp"));
    let write = || -> Result<()> {
        let f = fs
            .open(&tmp, OpenMode::CreateTruncate)
            .ctx("create", &tmp)?;
        f.write_all_at(text.as_bytes(), 0).ctx("write", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
        let dst = dir.join(MANIFEST_NAME);
        fs.rename(&tmp, &dst).ctx("rename", &dst)?;
        fs.sync_dir(dir).ctx("fsync dir", dir)
    };
    if let Err(e) = write() {
        writer.abandon();
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    Ok(manifest)
}

fn export_entries(
    src: &mut ExportSource,
    range: &RegionRange,
    read_ts: Option<u64>,
    w: &mut ExportWriter,
) -> Result<()> {
    let mut cf: u16 = 0;
    while cf <= u8::MAX as u16 {
        let space = KeySpace::new(range.ns, cf as u8);
        let lo = space.logical(&range.start);
        let hi = match &range.end {
            Some(e) => space.logical(e),
            None => space.end(),
        };
        src.iter.seek(&first_key(&lo));
        if !src.iter.valid() {
            break;
        }
        let at = logical_key(src.iter.key());
        if at.len() < PREFIX_LEN || at[0] != range.ns {
            break;
        }
        if at[1] as u16 != cf {
            // Skip straight to the next column family that holds anything.
            cf = at[1] as u16;
            continue;
        }
        let mut last: Option<(Vec<u8>, u64)> = None;
        let mut done_key: Option<Vec<u8>> = None;
        while src.iter.valid() {
            let ikey = src.iter.key();
            let logical = logical_key(ikey);
            if logical >= &hi[..] {
                break;
            }
            let (seq, kind) = parse_trailer(ikey);
            let version = parse_version(ikey);
            let mut covered = || {
                src.range_dels
                    .as_mut()
                    .is_some_and(|c| c.hides(logical, range_del::entry_stamp(seq)))
            };
            let skip = seq > src.seq
                || done_key.as_deref() == Some(logical)
                || last
                    .as_ref()
                    .is_some_and(|(k, v)| k == logical && *v == version)
                || covered();
            if !skip {
                match read_ts {
                    None => {
                        let (kind, value) = (src.inline)(kind, src.iter.value())?;
                        w.add(logical, version, kind, &value)?;
                        last = Some((logical.to_vec(), version));
                    }
                    Some(ts) if version <= ts => {
                        let (kind, value) = (src.inline)(kind, src.iter.value())?;
                        if resolve(kind, &value, src.now_ms) != Resolved::Gone {
                            w.add(logical, version, kind, &value)?;
                        }
                        done_key = Some(logical.to_vec());
                    }
                    Some(_) => {}
                }
            }
            src.iter.next();
        }
        src.iter.status()?;
        cf += 1;
    }
    src.iter.status()
}

/// True when `iter` holds any entry whose logical key lies in `range` (any column family).
pub(crate) fn has_keys_in(iter: &mut dyn InternalIterator, range: &RegionRange) -> bool {
    let mut cf: u16 = 0;
    while cf <= u8::MAX as u16 {
        let space = KeySpace::new(range.ns, cf as u8);
        iter.seek(&first_key(&space.logical(&range.start)));
        if !iter.valid() {
            return false;
        }
        let at = logical_key(iter.key());
        if at.len() < PREFIX_LEN || at[0] != range.ns {
            return false;
        }
        if at[1] as u16 != cf {
            cf = at[1] as u16;
            continue;
        }
        if range.contains_user_key(&at[PREFIX_LEN..]) {
            return true;
        }
        cf += 1;
    }
    false
}

struct ExportWriter {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    table_opts: TableBuilderOptions,
    target: u64,
    current: Option<(String, PathBuf, TableBuilder, Vec<u8>)>,
    files: Vec<SnapshotFile>,
    key: Vec<u8>,
}

impl ExportWriter {
    fn add(&mut self, logical: &[u8], version: u64, kind: u8, value: &[u8]) -> Result<()> {
        let new_key = self
            .current
            .as_ref()
            .is_none_or(|(_, _, _, last)| last != logical);
        if new_key
            && self
                .current
                .as_ref()
                .is_some_and(|(_, _, b, _)| b.estimated_size() >= self.target)
        {
            self.finish_current()?;
        }
        if self.current.is_none() {
            let name = format!("{:06}.sst", self.files.len() + 1);
            let path = self.dir.join(&name);
            let file = self
                .fs
                .open(&path, OpenMode::CreateTruncate)
                .ctx("create", &path)?;
            let b = TableBuilder::new(file, path.clone(), self.table_opts);
            self.current = Some((name, path, b, Vec::new()));
        }
        let (_, _, b, last) = self
            .current
            .as_mut()
            .expect("an output table was just started");
        self.key.clear();
        self.key
            .extend_from_slice(&make_internal_key(logical, version, 0, kind));
        b.add(&self.key, value)?;
        if new_key {
            last.clear();
            last.extend_from_slice(logical);
        }
        Ok(())
    }

    fn finish_current(&mut self) -> Result<()> {
        let Some((name, path, b, _)) = self.current.take() else {
            return Ok(());
        };
        let props = match b.finish() {
            Ok(p) => p,
            Err(e) => {
                let _ = self.fs.remove_file(&path);
                return Err(e);
            }
        };
        let (size, crc32) = file_crc(&*self.fs, &path)?;
        debug_assert_eq!(size, props.file_size);
        self.files.push(SnapshotFile {
            name,
            size,
            crc32,
            entries: props.num_entries,
        });
        Ok(())
    }

    fn abandon(&mut self) {
        if let Some((_, path, _, _)) = self.current.take() {
            let _ = self.fs.remove_file(&path);
        }
        for f in &self.files {
            let _ = self.fs.remove_file(&self.dir.join(&f.name));
        }
    }
}

/// Reads and checks a snapshot directory: manifest checksum and format, each table's
/// size, whole-file crc and block checksums, and that every key lies in the declared
/// range (and in `expected`, when given). Returns the manifest and the tables opened
/// (file number 0, for checking only).
pub(crate) fn verify(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    expected: Option<&RegionRange>,
) -> Result<(SnapshotManifest, Vec<Arc<Table>>)> {
    let mpath = dir.join(MANIFEST_NAME);
    let f = fs.open(&mpath, OpenMode::Read).ctx("open", &mpath)?;
    let len = f.len().ctx("stat", &mpath)?;
    if len > MANIFEST_BYTES_MAX {
        return Err(Error::corruption(
            &mpath,
            0,
            format!("manifest of {len} bytes is larger than {MANIFEST_BYTES_MAX}"),
        ));
    }
    let mut text = vec![0u8; len as usize];
    f.read_exact_at(&mut text, 0).ctx("read", &mpath)?;
    let manifest = SnapshotManifest::decode(&text, &mpath)?;
    if let Some(exp) = expected {
        if !exp.covers(&manifest.range) {
            return Err(Error::InvalidArgument(format!(
                "snapshot range (ns {:02x}, {}..{}) is not inside the expected range (ns {:02x}, {}..{})",
                manifest.range.ns,
                hex(&manifest.range.start),
                manifest.range.end.as_deref().map_or("end".into(), hex),
                exp.ns,
                hex(&exp.start),
                exp.end.as_deref().map_or("end".into(), hex),
            )));
        }
    }
    let mut tables = Vec::with_capacity(manifest.files.len());
    let mut prev_largest: Option<Vec<u8>> = None;
    for sf in &manifest.files {
        let path = dir.join(&sf.name);
        let (size, crc) = file_crc(&**fs, &path)?;
        if size != sf.size {
            return Err(Error::corruption(
                &path,
                size,
                format!(
                    "file is {size} bytes but the snapshot manifest says {}",
                    sf.size
                ),
            ));
        }
        if crc != sf.crc32 {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "file crc {crc:08x} does not match the snapshot manifest's {:08x}",
                    sf.crc32
                ),
            ));
        }
        let file = fs.open(&path, OpenMode::Read).ctx("open", &path)?;
        let table = Table::open(file, path.clone(), 0, size, None)?;
        table.verify_checksums()?;
        let props = table.properties();
        if props.num_entries != sf.entries || props.num_entries == 0 {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "table holds {} entries but the snapshot manifest says {}",
                    props.num_entries, sf.entries
                ),
            ));
        }
        let (lo, hi) = (logical_key(&props.smallest), logical_key(&props.largest));
        if !manifest.range.contains_logical(lo) || !manifest.range.contains_logical(hi) {
            return Err(Error::InvalidArgument(format!(
                "{}: keys {}..{} lie outside the snapshot's range",
                path.display(),
                hex(lo),
                hex(hi)
            )));
        }
        if let Some(p) = &prev_largest {
            if lo <= logical_key(p) {
                return Err(Error::InvalidArgument(format!(
                    "{}: tables of a snapshot must not overlap",
                    path.display()
                )));
            }
        }
        if !props.vlog_refs.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{}: not an exported table (entries point into a value log)",
                path.display()
            )));
        }
        if parse_trailer(&props.smallest).0 != 0 || parse_trailer(&props.largest).0 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: not an exported table (entries carry sequence numbers)",
                path.display()
            )));
        }
        prev_largest = Some(props.largest.clone());
        tables.push(table);
    }
    Ok((manifest, tables))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> SnapshotManifest {
        SnapshotManifest {
            range: RegionRange {
                ns: b'r',
                start: b"a".to_vec(),
                end: Some(b"m".to_vec()),
            },
            read_ts: Some(42),
            txn_safe_point: None,
            files: vec![SnapshotFile {
                name: "000001.sst".into(),
                size: 1234,
                crc32: 0xdead_beef,
                entries: 10,
            }],
        }
    }

    #[test]
    fn manifest_round_trips() {
        let m = manifest();
        let text = m.encode();
        assert_eq!(
            SnapshotManifest::decode(text.as_bytes(), Path::new("S")).expect("decode"),
            m
        );
        let all = SnapshotManifest {
            range: RegionRange::namespace(b'k'),
            read_ts: None,
            txn_safe_point: Some(77),
            files: Vec::new(),
        };
        let text = all.encode();
        assert_eq!(
            SnapshotManifest::decode(text.as_bytes(), Path::new("S")).expect("decode"),
            all
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let text = manifest().encode().into_bytes();
        for i in 0..text.len() {
            for mask in [0x01u8, 0x20, 0x80] {
                let mut t = text.clone();
                t[i] ^= mask;
                assert!(
                    SnapshotManifest::decode(&t, Path::new("S")).is_err(),
                    "flip at {i} mask {mask:#x} accepted"
                );
            }
        }
        for cut in 0..text.len() {
            assert!(SnapshotManifest::decode(&text[..cut], Path::new("S")).is_err());
        }
    }

    #[test]
    fn newer_format_is_unsupported_and_paths_are_refused() {
        let text = manifest().encode().replace(
            &format!("{HEADER} {SNAPSHOT_FORMAT}"),
            &format!("{HEADER} 9"),
        );
        let body = &text[..text.trim_end().rfind('\n').expect("crc line") + 1];
        let fixed = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
        assert!(matches!(
            SnapshotManifest::decode(fixed.as_bytes(), Path::new("S")),
            Err(Error::UnsupportedFormat { version: 9, .. })
        ));
        let text = manifest().encode().replace("000001.sst", "../x.sst");
        let body = &text[..text.trim_end().rfind('\n').expect("crc line") + 1];
        let fixed = format!("{body}crc {:08x}\n", crc32fast::hash(body.as_bytes()));
        assert!(SnapshotManifest::decode(fixed.as_bytes(), Path::new("S")).is_err());
    }

    #[test]
    fn ranges_cover_and_contain() {
        let outer = RegionRange {
            ns: b'r',
            start: b"b".to_vec(),
            end: Some(b"x".to_vec()),
        };
        assert!(outer.contains_logical(b"r\x02c"));
        assert!(!outer.contains_logical(b"r\x02x"));
        assert!(!outer.contains_logical(b"k\x00c"));
        assert!(outer.covers(&RegionRange {
            ns: b'r',
            start: b"c".to_vec(),
            end: Some(b"d".to_vec())
        }));
        assert!(!outer.covers(&RegionRange::namespace(b'r')));
        assert!(RegionRange::namespace(b'r').covers(&outer));
        assert!(RegionRange {
            ns: b'r',
            start: b"b".to_vec(),
            end: Some(b"b".to_vec())
        }
        .validate()
        .is_err());
    }
}
