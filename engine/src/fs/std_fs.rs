//! [`StdFs`]: the plain-syscall backend (std::fs plus positional IO, fallocate and flock).

use super::{DirLock, File, FileSystem, OpenMode};
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// The default backend: every operation is a direct system call through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

impl StdFs {
    /// Creates the backend (it holds no state).
    pub fn new() -> Self {
        StdFs
    }
}

/// Opens `path` as a `std::fs::File` with the flags `mode` asks for.
pub(crate) fn open_std(path: &Path, mode: OpenMode) -> io::Result<std::fs::File> {
    let mut opts = OpenOptions::new();
    match mode {
        OpenMode::Read => opts.read(true),
        OpenMode::ReadWrite => opts.read(true).write(true),
        OpenMode::CreateNew => opts.read(true).write(true).create_new(true),
        OpenMode::CreateTruncate => opts.read(true).write(true).create(true).truncate(true),
    };
    let file = opts.open(path)?;
    if file.metadata()?.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    Ok(file)
}

/// A file opened through [`StdFs`] (also the base of the io_uring backend's files).
#[derive(Debug)]
pub(crate) struct StdFile {
    pub(crate) file: std::fs::File,
}

impl StdFile {
    /// Extends the file with `fallocate(2)` mode 0; falls back to `set_len` where unsupported.
    pub(crate) fn allocate_impl(&self, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let off_len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "allocation too large"))?;
        loop {
            // SAFETY: fallocate only reads its integer arguments; the fd is owned by
            // `self.file`, which is open for the duration of the call.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, off_len) };
            if rc == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) => {
                    if self.file.metadata()?.len() < len {
                        self.file.set_len(len)?;
                    }
                    return Ok(());
                }
                _ => return Err(err),
            }
        }
    }

    /// Positional read, retrying on `EINTR`.
    pub(crate) fn read_at_impl(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl File for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.read_at_impl(buf, offset)
    }

    fn read_exact_vec(&self, len: usize, offset: u64) -> io::Result<Vec<u8>> {
        // pread straight into the spare capacity: no zeroing of a buffer about to be
        // overwritten (block reads of scans spent ~8% of their CPU on it).
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let done = buf.len();
            let off = libc::off_t::try_from(offset + done as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
            // SAFETY: the destination is the vector's unused capacity (`len - done` bytes
            // from `done`); the kernel writes at most that many bytes there.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().add(done).cast::<libc::c_void>(),
                    len - done,
                    off,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than expected",
                ));
            }
            // SAFETY: the kernel initialised `n` more bytes, within the capacity.
            unsafe { buf.set_len(done + n as usize) };
        }
        Ok(buf)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.allocate_impl(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }
}

/// An exclusive `flock` held for as long as the descriptor stays open.
#[derive(Debug)]
struct StdLock {
    _file: std::fs::File,
}

impl DirLock for StdLock {}

/// Takes `flock(LOCK_EX | LOCK_NB)` on `path` (created if missing).
pub(crate) fn lock_std(path: &Path) -> io::Result<Box<dyn DirLock>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    loop {
        // SAFETY: flock only takes the fd (owned by `file`, open across the call) and flags.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Box::new(StdLock { _file: file }));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(code) if code == libc::EWOULDBLOCK || code == libc::EAGAIN => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("lock {} is held by another owner", path.display()),
                ))
            }
            _ => return Err(err),
        }
    }
}

/// Lists the entry names in `path`; non-UTF-8 names are an `InvalidData` error.
pub(crate) fn list_dir_std(path: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let name = entry?.file_name().into_string().map_err(|n| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("non-UTF-8 file name {n:?} in {}", path.display()),
            )
        })?;
        names.push(name);
    }
    Ok(names)
}

/// Fsyncs the directory at `path` so its entries are durable.
pub(crate) fn sync_dir_std(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl FileSystem for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        Ok(Arc::new(StdFile {
            file: open_std(path, mode)?,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        list_dir_std(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        sync_dir_std(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        lock_std(path)
    }
}

/// The conformance suite every [`FileSystem`] backend must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use super::super::{File, FileSystem, OpenMode};
    use std::io;
    use std::path::Path;
    use std::sync::Arc;

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn read_all(f: &dyn File) -> Vec<u8> {
        let len = f.len().unwrap() as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    /// Runs the whole suite in `root` (which must exist and be empty).
    pub(crate) fn run(fs: &dyn FileSystem, root: &Path) {
        let dir = root.join("db");
        fs.create_dir_all(&dir.join("sub/deeper")).unwrap();
        fs.create_dir_all(&dir).unwrap(); // idempotent
        assert!(fs.exists(&dir));
        assert!(fs.exists(&dir.join("sub/deeper")));
        assert!(!fs.exists(&dir.join("missing")));

        // Open modes.
        let a = dir.join("a.log");
        let err = fs.open(&a, OpenMode::Read).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = fs.open(&a, OpenMode::ReadWrite).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let f = fs.open(&a, OpenMode::CreateNew).unwrap();
        assert!(fs.exists(&a));
        let err = fs.open(&a, OpenMode::CreateNew).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        let err = fs
            .open(&dir.join("nodir/x"), OpenMode::CreateNew)
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);

        // Positional writes and reads.
        assert_eq!(f.len().unwrap(), 0);
        f.write_all_at(b"hello", 0).unwrap();
        f.write_all_at(b"world", 10).unwrap();
        assert_eq!(f.len().unwrap(), 15);
        assert_eq!(read_all(&*f), b"hello\0\0\0\0\0world");
        f.write_all_at(b"HE", 0).unwrap();
        let mut buf = [0u8; 4];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"HEll");
        let mut big = [0u8; 64];
        assert_eq!(f.read_at(&mut big, 15).unwrap(), 0);
        assert_eq!(f.read_at(&mut big, 100).unwrap(), 0);
        let n = f.read_at(&mut big, 12).unwrap();
        assert!((1..=3).contains(&n));
        assert_eq!(&big[..n], &b"rld"[..n]);
        let err = f.read_exact_at(&mut big, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        f.write_all_at(b"", 1000).unwrap();
        f.sync_data().unwrap();
        f.sync_all().unwrap();

        // A large write spanning many pages.
        let big_data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let g = fs.open(&dir.join("big.sst"), OpenMode::CreateNew).unwrap();
        g.write_all_at(&big_data, 7).unwrap();
        assert_eq!(g.len().unwrap(), 300_007);
        let mut back = vec![0u8; big_data.len()];
        g.read_exact_at(&mut back, 7).unwrap();
        assert_eq!(back, big_data);
        g.sync_all().unwrap();
        drop(g);

        // set_len: shrink then extend with zeros.
        f.set_len(3).unwrap();
        assert_eq!(read_all(&*f), b"HEl");
        f.set_len(6).unwrap();
        assert_eq!(read_all(&*f), b"HEl\0\0\0");

        // allocate grows the visible size and never shrinks.
        f.allocate(1 << 20).unwrap();
        assert_eq!(f.len().unwrap(), 1 << 20);
        f.allocate(10).unwrap();
        assert_eq!(f.len().unwrap(), 1 << 20);
        let mut tail = [1u8; 16];
        f.read_exact_at(&mut tail, (1 << 20) - 16).unwrap();
        assert_eq!(tail, [0u8; 16]);
        let mut head = [0u8; 3];
        f.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(&head, b"HEl");
        f.set_len(5).unwrap();
        f.sync_all().unwrap();

        // Read-only handles refuse writes; ReadWrite handles see existing data.
        let ro = fs.open(&a, OpenMode::Read).unwrap();
        assert!(ro.write_all_at(b"x", 0).is_err());
        assert_eq!(read_all(&*ro), b"HEl\0\0");
        let rw = fs.open(&a, OpenMode::ReadWrite).unwrap();
        rw.write_all_at(b"Z", 4).unwrap();
        assert_eq!(read_all(&*ro), b"HEl\0Z");
        drop(rw);

        // CreateTruncate empties an existing file and creates a missing one.
        let t = fs.open(&a, OpenMode::CreateTruncate).unwrap();
        assert_eq!(t.len().unwrap(), 0);
        assert_eq!(f.len().unwrap(), 0);
        t.write_all_at(b"fresh", 0).unwrap();
        let c = dir.join("c.tmp");
        let ct = fs.open(&c, OpenMode::CreateTruncate).unwrap();
        ct.write_all_at(b"CURRENT-1", 0).unwrap();
        ct.sync_all().unwrap();
        fs.sync_dir(&dir).unwrap();

        // list_dir returns names, subdirectories included.
        assert_eq!(
            sorted(fs.list_dir(&dir).unwrap()),
            vec!["a.log", "big.sst", "c.tmp", "sub"]
        );
        assert!(fs.list_dir(&dir.join("nope")).is_err());

        // rename replaces the target; open handles follow the inode.
        let cur = dir.join("CURRENT");
        fs.rename(&c, &cur).unwrap();
        assert!(!fs.exists(&c));
        assert_eq!(
            read_all(&*fs.open(&cur, OpenMode::Read).unwrap()),
            b"CURRENT-1"
        );
        let c2 = fs.open(&c, OpenMode::CreateNew).unwrap();
        c2.write_all_at(b"CURRENT-2", 0).unwrap();
        fs.rename(&c, &cur).unwrap();
        assert_eq!(
            read_all(&*fs.open(&cur, OpenMode::Read).unwrap()),
            b"CURRENT-2"
        );
        assert_eq!(read_all(&*ct), b"CURRENT-1"); // the replaced inode is still readable
        let err = fs.rename(&c, &cur).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        fs.rename(&cur, &dir.join("sub/CURRENT")).unwrap();
        assert_eq!(
            sorted(fs.list_dir(&dir.join("sub")).unwrap()),
            vec!["CURRENT", "deeper"]
        );
        fs.sync_dir(&dir).unwrap();
        fs.sync_dir(&dir.join("sub")).unwrap();

        // remove_file; an open handle keeps the data readable.
        fs.remove_file(&a).unwrap();
        assert!(!fs.exists(&a));
        assert_eq!(read_all(&*t), b"fresh");
        let err = fs.remove_file(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(sorted(fs.list_dir(&dir).unwrap()), vec!["big.sst", "sub"]);

        // Locks: exclusive, WouldBlock while held (even from this process), released on drop.
        let lock_path = dir.join("LOCK");
        let l1 = fs.lock(&lock_path).unwrap();
        assert!(fs.exists(&lock_path));
        let err = fs.lock(&lock_path).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(l1);
        let l2 = fs.lock(&lock_path).unwrap();
        drop(l2);

        // Concurrent positional writes from several threads.
        let shared: Arc<dyn File> = fs.open(&dir.join("par.log"), OpenMode::CreateNew).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let file = shared.clone();
                s.spawn(move || {
                    for i in 0..64u64 {
                        let off = (i * 4 + t as u64) * 100;
                        file.write_all_at(&[t + 1; 100], off).unwrap();
                    }
                    file.sync_data().unwrap();
                });
            }
        });
        let all = read_all(&*shared);
        assert_eq!(all.len(), 64 * 4 * 100);
        for (chunk_idx, chunk) in all.chunks(100).enumerate() {
            let want = (chunk_idx % 4) as u8 + 1;
            assert!(chunk.iter().all(|&b| b == want));
        }
        // Reads into a fresh buffer: exact bytes, empty reads, short files fail.
        let v = shared.read_exact_vec(300, 150).unwrap();
        assert_eq!(v, all[150..450].to_vec());
        assert!(shared.read_exact_vec(0, 7).unwrap().is_empty());
        let short = shared
            .read_exact_vec(200, all.len() as u64 - 100)
            .unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn std_fs_conformance() {
        let tmp = tempfile::tempdir().unwrap();
        conformance::run(&StdFs::new(), tmp.path());
    }

    #[test]
    fn std_fs_lock_conflicts_across_handles_and_open_of_dir_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
        let p = tmp.path().join("LOCK");
        let guard = fs.lock(&p).unwrap();
        let fs2 = StdFs::new();
        assert_eq!(
            fs2.lock(&p).err().unwrap().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(guard);
        assert!(fs2.lock(&p).is_ok());
        assert!(fs.open(tmp.path(), OpenMode::Read).is_err());
    }
}
