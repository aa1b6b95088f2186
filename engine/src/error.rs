//! The engine's error type: every failure names what it was doing and where.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the embedded engine can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An IO call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the engine was doing ("open", "write", "fdatasync", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Persistent data failed a checksum or structural check.
    #[error("corruption in {path} at offset {offset}: {msg}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damaged record or block.
        offset: u64,
        /// What was wrong.
        msg: String,
    },
    /// A file written by a newer or unknown format version.
    #[error("{path}: unsupported format version {version} (this build reads up to {max})")]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Version found in the file.
        version: u32,
        /// Highest version this build understands.
        max: u32,
    },
    /// A key of length zero was given.
    #[error("empty key")]
    EmptyKey,
    /// A key longer than `Options::max_key_bytes`.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the key.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A value longer than `Options::max_value_bytes`.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the value.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// A batch whose encoded size exceeds `Options::max_batch_bytes`.
    #[error("write batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Encoded size of the batch.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The directory is already open in this or another process.
    #[error("database directory {path} is locked: it is open in another process or handle")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// A durability failure happened earlier; the database refuses writes until reopened.
    #[error("database is read-only after an earlier failure ({0}); close and reopen it")]
    Poisoned(String),
    /// A flush or compaction failed (e.g. disk full); it is retried in the background.
    #[error("background work failed: {0}")]
    Background(String),
    /// The database was closed.
    #[error("database is closed")]
    Closed,
    /// An argument or option is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Concurrent activity kept the operation from finishing; it changed nothing and may be retried.
    #[error("busy: {0}")]
    Busy(String),
    /// An explicit version of 0 (reserved: it means "the write's sequence number").
    #[error("version 0 is reserved; explicit versions start at 1")]
    InvalidVersion,
    /// A `ReadTier::CacheOnly` read needed disk IO (it did none); retry with `ReadTier::All`
    /// on a thread that may block.
    #[error("the read needs disk IO ({0}) and its read tier allows only memory")]
    WouldBlock(&'static str),
    /// A read below the GC safe point, whose older versions may already be reclaimed.
    #[error("read timestamp {ts} is below the GC safe point {safe_point}")]
    BelowSafePoint {
        /// The requested read timestamp.
        ts: u64,
        /// The current GC safe point.
        safe_point: u64,
    },
}

impl Error {
    /// Wraps an IO error with the operation and path it came from.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds a corruption error for `path` at `offset`.
    pub fn corruption(path: impl Into<PathBuf>, offset: u64, msg: impl Into<String>) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            msg: msg.into(),
        }
    }

    /// A copy of this error for a second reader (an IO error keeps its kind and message).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Io { op, path, source } => Error::Io {
                op,
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::Corruption { path, offset, msg } => Error::Corruption {
                path: path.clone(),
                offset: *offset,
                msg: msg.clone(),
            },
            Error::UnsupportedFormat { path, version, max } => Error::UnsupportedFormat {
                path: path.clone(),
                version: *version,
                max: *max,
            },
            Error::EmptyKey => Error::EmptyKey,
            Error::KeyTooLarge { len, max } => Error::KeyTooLarge {
                len: *len,
                max: *max,
            },
            Error::ValueTooLarge { len, max } => Error::ValueTooLarge {
                len: *len,
                max: *max,
            },
            Error::BatchTooLarge { len, max } => Error::BatchTooLarge {
                len: *len,
                max: *max,
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Poisoned(m) => Error::Poisoned(m.clone()),
            Error::Background(m) => Error::Background(m.clone()),
            Error::Closed => Error::Closed,
            Error::Busy(m) => Error::Busy(m.clone()),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::InvalidVersion => Error::InvalidVersion,
            Error::WouldBlock(what) => Error::WouldBlock(what),
            Error::BelowSafePoint { ts, safe_point } => Error::BelowSafePoint {
                ts: *ts,
                safe_point: *safe_point,
            },
        }
    }

    /// True for [`Error::WouldBlock`]: a cache-only read that must be retried where IO may block.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Error::WouldBlock(_))
    }

    /// True when the error is the OS reporting a full disk.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Attaches an operation and path to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    /// Converts the IO error into [`Error::Io`] naming `op` and `path`.
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
