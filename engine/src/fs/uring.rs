//! [`UringFs`]: writes, reads and syncs go through a per-thread io_uring instance.
//!
//! Each thread that does IO lazily creates its own small ring (32 entries, no
//! registered buffers or files) and submits exactly one operation at a time,
//! waiting for its completion before returning. If a thread cannot create a
//! ring (for example because a memory limit is hit), that thread falls back to
//! the plain syscalls of [`StdFs`]; the semantics are the same either way.
//! Metadata operations (open, rename, set_len, fallocate, ...) always use
//! [`StdFs`].

use super::std_fs::{lock_std, open_std, StdFile};
use super::{DirLock, File, FileSystem, OpenMode, StdFs};
use io_uring::{opcode, squeue, types, IoUring};
use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Submission-queue size of each per-thread ring.
const RING_ENTRIES: u32 = 32;
/// Largest byte count submitted in one read or write SQE.
const MAX_CHUNK: usize = 1 << 30;
/// `user_data` tag of the (single) in-flight request.
const USER_DATA: u64 = 0x4e6f_4b56;

thread_local! {
    /// This thread's ring; `None` until first use or after ring creation failed.
    static RING: RefCell<RingSlot> = const { RefCell::new(RingSlot::Untried) };
}

/// State of a thread's ring.
enum RingSlot {
    /// Not created yet.
    Untried,
    /// Ready for use.
    Ready(Box<IoUring>),
    /// Creation failed (or the ring broke); use plain syscalls on this thread.
    Unavailable,
}

/// Creates a ring of [`RING_ENTRIES`] entries.
fn new_ring() -> io::Result<IoUring> {
    IoUring::new(RING_ENTRIES)
}

/// True for completion or enter errors that mean "try again".
fn is_transient(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN || errno == libc::EBUSY
}

/// Runs `op` on this thread's ring, or returns `None` when no ring is available
/// (the caller then falls back to a plain syscall).
fn with_ring<R>(op: impl FnOnce(&mut IoUring) -> R) -> Option<R> {
    RING.try_with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if matches!(*slot, RingSlot::Untried) {
            *slot = match new_ring() {
                Ok(ring) => RingSlot::Ready(Box::new(ring)),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable on this thread; using syscalls");
                    RingSlot::Unavailable
                }
            };
        }
        match &mut *slot {
            RingSlot::Ready(ring) => Some(op(ring)),
            _ => None,
        }
    })
    .ok()
    .flatten()
}

/// Marks this thread's ring as unusable (after an unrecoverable enter error).
fn discard_ring() {
    let _ = RING.try_with(|cell| {
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = RingSlot::Unavailable;
        }
    });
}

/// Outcome of submitting one SQE.
enum Submitted {
    /// The kernel's result value (`cqe.res`).
    Done(i32),
    /// The ring failed before the kernel took the SQE; the ring must be discarded.
    RingBroken(io::Error),
}

/// Pushes `entry`, submits it and waits for its completion.
///
/// # Safety
///
/// Every buffer `entry` points at must stay valid (and, for reads, exclusively
/// borrowed) until this function returns. This function only returns once the
/// kernel has either completed the request or provably never received it.
unsafe fn submit_one(ring: &mut IoUring, entry: squeue::Entry) -> Submitted {
    let entry = entry.user_data(USER_DATA);
    // Drain any stale completions so the next CQE is ours.
    ring.completion().for_each(drop);
    // SAFETY: the caller guarantees the buffers outlive the request; see below for
    // how we make sure the request is finished before returning.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        return Submitted::RingBroken(io::Error::other("io_uring submission queue full"));
    }
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                if is_transient(errno) {
                    continue;
                }
                if !ring.submission().is_empty() {
                    // The kernel never consumed the SQE: discarding the ring makes sure
                    // it is never submitted, so the buffer is no longer referenced.
                    return Submitted::RingBroken(e);
                }
                // The kernel owns the request: we must keep waiting for it before the
                // buffer may be released, whatever enter says.
                tracing::warn!(error = %e, "io_uring_enter failed with a request in flight; retrying");
                std::thread::yield_now();
                continue;
            }
        }
        if let Some(cqe) = ring.completion().find(|c| c.user_data() == USER_DATA) {
            return Submitted::Done(cqe.result());
        }
    }
}

/// Submits one request, mapping a broken ring to an error (and discarding it).
///
/// # Safety
///
/// Same contract as [`submit_one`].
unsafe fn run(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<i32> {
    // SAFETY: forwarded contract.
    match unsafe { submit_one(ring, entry) } {
        Submitted::Done(res) => Ok(res),
        Submitted::RingBroken(e) => Err(e),
    }
}

/// A file whose data path goes through io_uring.
#[derive(Debug)]
struct UringFile {
    inner: StdFile,
}

impl UringFile {
    /// Raw descriptor of the underlying file.
    fn fd(&self) -> types::Fd {
        types::Fd(self.inner.file.as_raw_fd())
    }

    /// Submits one fsync / fdatasync and maps its result.
    fn fsync(&self, flags: types::FsyncFlags) -> Option<io::Result<()>> {
        let fd = self.fd();
        let outcome = with_ring(|ring| loop {
            let entry = opcode::Fsync::new(fd).flags(flags).build();
            // SAFETY: fsync references no user memory; the fd stays open (owned by self).
            match unsafe { run(ring, entry) } {
                Ok(res) if res < 0 && is_transient(-res) => continue,
                Ok(res) if res < 0 => return Ok(Err(io::Error::from_raw_os_error(-res))),
                Ok(_) => return Ok(Ok(())),
                Err(e) => return Err(e),
            }
        })?;
        match outcome {
            Ok(result) => Some(result),
            Err(ring_err) => {
                tracing::warn!(error = %ring_err, "io_uring broke; falling back to syscalls");
                discard_ring();
                None
            }
        }
    }
}

impl File for UringFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let fd = self.fd();
        let len = buf.len().min(MAX_CHUNK) as u32;
        let ptr = buf.as_mut_ptr();
        let outcome = with_ring(|ring| loop {
            let entry = opcode::Read::new(fd, ptr, len).offset(offset).build();
            // SAFETY: `buf` is exclusively borrowed for this whole call, `len` is within
            // it, and `run` returns only after the kernel finished with it.
            match unsafe { run(ring, entry) } {
                Ok(res) if res < 0 && is_transient(-res) => continue,
                Ok(res) if res < 0 => return Ok(Err(io::Error::from_raw_os_error(-res))),
                Ok(res) => return Ok(Ok(res as usize)),
                Err(e) => return Err(e),
            }
        });
        match outcome {
            Some(Ok(result)) => result,
            Some(Err(ring_err)) => {
                tracing::warn!(error = %ring_err, "io_uring broke; falling back to syscalls");
                discard_ring();
                self.inner.read_at_impl(buf, offset)
            }
            None => self.inner.read_at_impl(buf, offset),
        }
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let fd = self.fd();
        let mut done = 0usize;
        let outcome = with_ring(|ring| -> io::Result<io::Result<()>> {
            while done < buf.len() {
                let rest = &buf[done..];
                let len = rest.len().min(MAX_CHUNK) as u32;
                let entry = opcode::Write::new(fd, rest.as_ptr(), len)
                    .offset(offset + done as u64)
                    .build();
                // SAFETY: `buf` is borrowed for this whole call, `len` is within it,
                // and `run` returns only after the kernel finished with it.
                let res = unsafe { run(ring, entry) }?;
                if res < 0 {
                    if is_transient(-res) {
                        continue;
                    }
                    return Ok(Err(io::Error::from_raw_os_error(-res)));
                }
                if res == 0 {
                    return Ok(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "io_uring write returned 0 bytes",
                    )));
                }
                // Short writes: resubmit the remainder.
                done += res as usize;
            }
            Ok(Ok(()))
        });
        match outcome {
            Some(Ok(result)) => result,
            Some(Err(ring_err)) => {
                tracing::warn!(error = %ring_err, "io_uring broke; falling back to syscalls");
                discard_ring();
                self.inner.write_all_at(&buf[done..], offset + done as u64)
            }
            None => self.inner.write_all_at(&buf[done..], offset + done as u64),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        match self.fsync(types::FsyncFlags::DATASYNC) {
            Some(result) => result,
            None => self.inner.sync_data(),
        }
    }

    fn sync_all(&self) -> io::Result<()> {
        match self.fsync(types::FsyncFlags::empty()) {
            Some(result) => result,
            None => self.inner.sync_all(),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.inner.file.as_raw_fd())
    }
}

/// Backend that submits file reads, writes and syncs through io_uring; metadata goes through [`StdFs`].
#[derive(Debug, Clone, Copy)]
pub struct UringFs {
    std: StdFs,
}

impl UringFs {
    /// Probes io_uring (creating this thread's ring); fails if the kernel refuses it.
    pub fn new() -> io::Result<UringFs> {
        let ring = new_ring()?;
        // Keep the probe ring as this thread's ring when the slot is free.
        let _ = RING.try_with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                if !matches!(*slot, RingSlot::Ready(_)) {
                    *slot = RingSlot::Ready(Box::new(ring));
                }
            }
        });
        Ok(UringFs { std: StdFs::new() })
    }
}

impl FileSystem for UringFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(UringFile {
            inner: StdFile {
                file: open_std(path, mode)?,
            },
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.std.rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.std.hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.std.remove_file(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.std.create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.std.list_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.std.sync_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        self.std.exists(path)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        lock_std(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the backend, or `None` (with a note) when io_uring is unavailable here.
    fn uring_or_skip() -> Option<UringFs> {
        match UringFs::new() {
            Ok(fs) => Some(fs),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES)
                ) =>
            {
                eprintln!("skipping io_uring test: io_uring unavailable ({e})");
                None
            }
            Err(e) => panic!("io_uring setup failed unexpectedly: {e}"),
        }
    }

    #[test]
    fn uring_fs_conformance() {
        let Some(fs) = uring_or_skip() else { return };
        let tmp = tempfile::tempdir().unwrap();
        crate::fs::std_fs::conformance::run(&fs, tmp.path());
    }

    #[test]
    fn uring_errors_map_to_os_errors() {
        let Some(fs) = uring_or_skip() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs.open(&p, OpenMode::CreateNew)
            .unwrap()
            .write_all_at(b"abc", 0)
            .unwrap();
        let ro = fs.open(&p, OpenMode::Read).unwrap();
        let err = ro.write_all_at(b"x", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        // The ring stays usable after a failed request.
        let mut buf = [0u8; 3];
        ro.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"abc");
        ro.sync_all().unwrap();
        // The operations really went through this thread's ring (no syscall fallback).
        let ready = RING.with(|c| matches!(*c.borrow(), RingSlot::Ready(_)));
        assert!(ready, "io_uring ring should be in use on this thread");
    }

    #[test]
    fn uring_many_threads_and_large_writes() {
        let Some(fs) = uring_or_skip() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let f = fs
            .open(&tmp.path().join("big"), OpenMode::CreateNew)
            .unwrap();
        let data: Vec<u8> = (0..(4u32 << 20)).map(|i| (i * 7 % 253) as u8).collect();
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let f = f.clone();
                let data = &data;
                s.spawn(move || {
                    f.write_all_at(data, t * data.len() as u64).unwrap();
                    f.sync_data().unwrap();
                });
            }
        });
        assert_eq!(f.len().unwrap(), 8 * data.len() as u64);
        let mut back = vec![0u8; data.len()];
        f.read_exact_at(&mut back, 3 * data.len() as u64).unwrap();
        assert!(back == data);
    }
}
