//! The filesystem boundary: every byte the engine reads or writes goes through [`FileSystem`].
//!
//! Backends: [`StdFs`] (plain syscalls), [`UringFs`] (writes and syncs through an
//! io_uring instance) and, for tests, [`FaultFs`] (failure injection and
//! simulated power loss) wrapping either of them. [`IoQueue`] is the completion-based
//! interface writers use to overlap their work with IO. [`guard`] marks threads that
//! must never block on file IO (executor threads) and checks it in debug builds.

mod fault;
pub mod guard;
mod queue;
mod std_fs;
mod uring;

pub use fault::{FaultFs, FaultMode, FaultRule, Op, PowerLoss};
pub use guard::{forbid_blocking_io, AllowBlockingIo, GuardedFs};
pub use queue::{
    new_queue, Completion, InlineQueue, IoQueue, QueueKind, ThreadQueue, Ticket, UringQueue,
    DEFAULT_QUEUE_DEPTH,
};
pub use std_fs::StdFs;
pub use uring::UringFs;

use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

/// How [`FileSystem::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read-only; the file must exist.
    Read,
    /// Read-write; the file must exist.
    ReadWrite,
    /// Read-write; the file must not exist yet.
    CreateNew,
    /// Read-write; created if missing, truncated to zero if present.
    CreateTruncate,
}

/// An open file addressed by offset. All methods take `&self`: positional IO is thread-safe.
pub trait File: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes written data durable (fdatasync).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes data and metadata durable (fsync).
    fn sync_all(&self) -> io::Result<()>;
    /// Sets the file length (truncates or extends with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves disk space up to `len` bytes, extending the visible size (fallocate).
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Current file length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// The OS descriptor, for backends that submit IO on it directly (`None`: not a real file).
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// True when the file is zero bytes long.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Reads exactly `len` bytes at `offset` into a new buffer, failing with
    /// `UnexpectedEof` on a short file (backends may skip zeroing the buffer first).
    fn read_exact_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, failing with `UnexpectedEof` on a short file.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than expected",
                    ))
                }
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A held directory lock; released on drop.
pub trait DirLock: Send + Sync {}

/// Directory and file operations the engine needs.
pub trait FileSystem: Send + Sync + 'static {
    /// Opens `path` in `mode`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>>;
    /// Renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Lists the file names (not paths) in a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries durable (fsync on the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// True when `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Takes an exclusive lock on `path` (created if missing); fails with `WouldBlock` if held.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>>;
    /// Creates `to` as a hard link to `from`; `Unsupported` where links cannot be made
    /// (callers then copy).
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _ = (from, to);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this filesystem makes no hard links",
        ))
    }
}
