//! Threads that must never block on file IO (an async executor's threads) and the
//! debug-build check that holds the engine to it.
//!
//! A thread calls [`forbid_blocking_io`] once (the node does it when a core's
//! executor starts). From then on, in debug builds, every file operation of an
//! engine on that thread panics ([`GuardedFs`], which `Db::open` puts around its
//! filesystem in debug builds), and so does an engine write (which can wait on
//! the WAL's fdatasync or on a write stall). Release builds keep the mark but do
//! not check. Work that would only happen as a side effect of dropping something
//! (deleting an obsolete table or value-log segment when the last reader lets go
//! of it) is handed to a background thread instead, in every build: see
//! [`run_off_marked_thread`].

use super::{DirLock, File, FileSystem, OpenMode};
use std::cell::Cell;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};

thread_local! {
    static FORBIDDEN: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that must never block on file IO.
pub fn forbid_blocking_io() {
    FORBIDDEN.with(|f| f.set(true));
}

/// True when the calling thread is marked by [`forbid_blocking_io`].
pub fn blocking_io_forbidden() -> bool {
    FORBIDDEN.with(|f| f.get())
}

/// Lifts the calling thread's mark until dropped (for deliberate, commented exceptions).
#[must_use = "the mark comes back when this is dropped"]
pub struct AllowBlockingIo {
    prev: bool,
}

impl AllowBlockingIo {
    /// Unmarks the calling thread; the previous state returns on drop.
    pub fn new() -> AllowBlockingIo {
        let prev = FORBIDDEN.with(|f| f.replace(false));
        AllowBlockingIo { prev }
    }
}

impl Default for AllowBlockingIo {
    fn default() -> Self {
        AllowBlockingIo::new()
    }
}

impl Drop for AllowBlockingIo {
    fn drop(&mut self) {
        FORBIDDEN.with(|f| f.set(self.prev));
    }
}

/// Panics (debug builds only) when the calling thread is marked: `op` would block it.
#[inline]
pub fn check(op: &str) {
    #[cfg(debug_assertions)]
    if blocking_io_forbidden() {
        panic!(
            "blocking operation `{op}` on a thread marked non-blocking \
             (an executor thread must hand engine IO to a blocking thread)"
        );
    }
    #[cfg(not(debug_assertions))]
    let _ = op;
}

type Job = Box<dyn FnOnce() + Send>;

/// The background thread that runs [`run_off_marked_thread`] work (started on first use).
fn offload_sender() -> Option<Sender<Job>> {
    static SENDER: OnceLock<Option<Mutex<Sender<Job>>>> = OnceLock::new();
    let slot = SENDER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("nokv-offload".into())
            // Ends when every sender is gone, i.e. never before the process exits.
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        match spawned {
            Ok(_) => Some(Mutex::new(tx)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the offload thread; marked threads will do their own file deletions");
                None
            }
        }
    });
    slot.as_ref()
        .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Runs `job` now, or on a background thread when the calling thread is marked
/// (the job is queued, unbounded: it is for rare work such as deleting a file).
pub fn run_off_marked_thread(job: impl FnOnce() + Send + 'static) {
    if !blocking_io_forbidden() {
        job();
        return;
    }
    match offload_sender() {
        Some(tx) => {
            if let Err(mpsc::SendError(job)) = tx.send(Box::new(job)) {
                let _allow = AllowBlockingIo::new();
                job();
            }
        }
        None => {
            // No thread to hand it to: doing it here is better than leaking the file.
            let _allow = AllowBlockingIo::new();
            job();
        }
    }
}

/// A filesystem whose every operation first runs [`check`].
pub struct GuardedFs {
    inner: Arc<dyn FileSystem>,
}

impl GuardedFs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn FileSystem>) -> GuardedFs {
        GuardedFs { inner }
    }
}

struct GuardedFile {
    inner: Arc<dyn File>,
}

impl File for GuardedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        check("file read");
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check("file write");
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        check("fdatasync");
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        check("fsync");
        self.inner.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        check("truncate");
        self.inner.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        check("fallocate");
        self.inner.allocate(len)
    }
    fn len(&self) -> io::Result<u64> {
        check("stat");
        self.inner.len()
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }
    fn read_exact_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        check("file read");
        self.inner.read_exact_vec(len, offset)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check("file read");
        self.inner.read_exact_at(buf, offset)
    }
}

impl FileSystem for GuardedFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        check("open");
        let inner = self.inner.open(path, mode)?;
        Ok(Arc::new(GuardedFile { inner }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        check("rename");
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        check("unlink");
        self.inner.remove_file(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        check("mkdir");
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        check("list directory");
        self.inner.list_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        check("directory fsync");
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        check("stat");
        self.inner.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        check("flock");
        self.inner.lock(path)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        check("link");
        self.inner.hard_link(from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::StdFs;

    #[test]
    fn unmarked_threads_do_file_io_and_marks_are_per_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = GuardedFs::new(Arc::new(StdFs::new()));
        let f = fs
            .open(&dir.path().join("a"), OpenMode::CreateNew)
            .expect("open");
        f.write_all_at(b"x", 0).expect("write");
        let marked = std::thread::spawn(|| {
            forbid_blocking_io();
            blocking_io_forbidden()
        })
        .join()
        .expect("join");
        assert!(marked);
        assert!(!blocking_io_forbidden(), "the mark stays on its thread");
    }

    #[test]
    fn allow_lifts_the_mark_for_a_scope() {
        let r = std::thread::spawn(|| {
            forbid_blocking_io();
            let inside = {
                let _allow = AllowBlockingIo::new();
                check("test");
                blocking_io_forbidden()
            };
            (inside, blocking_io_forbidden())
        })
        .join()
        .expect("join");
        assert_eq!(r, (false, true));
    }

    #[cfg(debug_assertions)]
    #[test]
    fn a_file_operation_on_a_marked_thread_panics_in_debug_builds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        let r = std::thread::spawn(move || {
            let fs = GuardedFs::new(Arc::new(StdFs::new()));
            forbid_blocking_io();
            fs.open(&path, OpenMode::CreateNew).map(|_| ())
        })
        .join();
        assert!(r.is_err(), "the guard must panic on a marked thread");
    }

    #[test]
    fn offloaded_work_runs_off_the_marked_thread() {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            forbid_blocking_io();
            let me = std::thread::current().id();
            run_off_marked_thread(move || {
                let _ = tx.send(std::thread::current().id() != me);
            });
        })
        .join()
        .expect("join");
        let moved = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("offloaded job ran");
        assert!(moved);
    }
}
