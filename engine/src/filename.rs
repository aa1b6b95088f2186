//! Names of the files in a database directory.

use std::path::{Path, PathBuf};

/// The directory lock file.
pub const LOCK: &str = "LOCK";
/// The file naming the live manifest.
pub const CURRENT: &str = "CURRENT";

/// What a file in the database directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// An SST table with its file number.
    Table(u64),
    /// A WAL segment with its generation.
    Wal(u64),
    /// A manifest with its file number.
    Manifest(u64),
    /// A value-log segment with its id (ids share the file-number space with tables).
    ValueLog(u64),
    /// A temporary file left by an interrupted write.
    Temp,
}

/// Path of SST table `number`.
pub fn table(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:06}.sst"))
}

/// Path of WAL segment `gen`.
pub fn wal(dir: &Path, gen: u64) -> PathBuf {
    dir.join(format!("wal-{gen:08}.log"))
}

/// Path of value-log segment `id`.
pub fn vlog(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:06}.vlog"))
}

/// File name (no directory) of manifest `number`.
pub fn manifest_name(number: u64) -> String {
    format!("MANIFEST-{number:06}")
}

/// Parses a directory entry name into its kind; `None` for files the engine does not own.
pub fn parse(name: &str) -> Option<FileKind> {
    if let Some(n) = name.strip_suffix(".sst") {
        return n.parse().ok().map(FileKind::Table);
    }
    if let Some(n) = name.strip_suffix(".vlog") {
        return n.parse().ok().map(FileKind::ValueLog);
    }
    if let Some(n) = name
        .strip_prefix("wal-")
        .and_then(|n| n.strip_suffix(".log"))
    {
        return n.parse().ok().map(FileKind::Wal);
    }
    if let Some(n) = name.strip_prefix("MANIFEST-") {
        return n.parse().ok().map(FileKind::Manifest);
    }
    if name.ends_with(".tmp") {
        return Some(FileKind::Temp);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let d = Path::new("/x");
        let t = table(d, 42);
        assert_eq!(
            parse(t.file_name().and_then(|n| n.to_str()).unwrap_or("")),
            Some(FileKind::Table(42))
        );
        let w = wal(d, 7);
        assert_eq!(
            parse(w.file_name().and_then(|n| n.to_str()).unwrap_or("")),
            Some(FileKind::Wal(7))
        );
        let v = vlog(d, 1234567);
        assert_eq!(v, Path::new("/x/1234567.vlog"));
        assert_eq!(
            parse(v.file_name().and_then(|n| n.to_str()).unwrap_or("")),
            Some(FileKind::ValueLog(1234567))
        );
        assert_eq!(parse("000009.vlog"), Some(FileKind::ValueLog(9)));
        assert_eq!(parse("x.vlog"), None);
        assert_eq!(parse(&manifest_name(3)), Some(FileKind::Manifest(3)));
        assert_eq!(parse("CURRENT.tmp"), Some(FileKind::Temp));
        assert_eq!(parse("LOCK"), None);
    }
}
