//! [`FaultFs`]: a test filesystem with rule-based failure injection and simulated
//! power loss.
//!
//! [`FaultFs::new`] is an in-memory filesystem that models the page cache versus
//! the disk:
//!
//! * every file has its current bytes and its durable bytes; `sync_data` /
//!   `sync_all` make the current bytes durable. Unsynced changes are tracked per
//!   4 KiB page (an undo log of the durable contents), so a sync costs time
//!   proportional to what changed since the previous one, not to the file size;
//! * every directory has its current entries and its durable entries (name ->
//!   inode); `sync_dir` makes the current entries durable. A new file, a rename
//!   and a removal therefore only survive a crash after `sync_dir` of the
//!   affected directories. Directories themselves (made by `create_dir_all`)
//!   are durable immediately;
//! * [`FaultFs::power_loss`] reverts everything to its durable state (optionally
//!   keeping a torn prefix of one unsynced page per file), kills every open
//!   handle and releases every lock; [`FaultFs::crash_process`] only kills
//!   handles and releases locks (nothing is lost).
//!
//! [`FaultFs::wrapping`] instead forwards to another backend and only injects
//! failures (and kills handles / releases locks on a simulated crash).

use super::{DirLock, File, FileSystem, OpenMode};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Granularity of change tracking and of torn writes.
const PAGE: u64 = 4096;

/// A class of filesystem operation, for fault rules and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`FileSystem::open`].
    Open,
    /// [`File::write_all_at`].
    Write,
    /// [`File::sync_data`], [`File::sync_all`] and [`FileSystem::sync_dir`].
    Sync,
    /// [`FileSystem::rename`].
    Rename,
    /// [`File::set_len`] and [`File::allocate`].
    Truncate,
    /// [`FileSystem::remove_file`].
    Remove,
    /// [`File::read_at`] (and so `read_exact_at`).
    Read,
    /// [`FileSystem::open`] of a file it creates (`CreateNew`, `CreateTruncate`), after
    /// the `Open` check: a full disk fails these but not opens for reading.
    Create,
}

impl Op {
    /// Number of variants.
    const COUNT: usize = 8;

    /// Dense index of the variant, for counter arrays.
    fn index(self) -> usize {
        match self {
            Op::Open => 0,
            Op::Write => 1,
            Op::Sync => 2,
            Op::Rename => 3,
            Op::Truncate => 4,
            Op::Remove => 5,
            Op::Read => 6,
            Op::Create => 7,
        }
    }
}

/// When a [`FaultRule`] fires, counted over the calls it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Fail the first matching call only.
    Once,
    /// Fail only the n-th matching call (1-based); `OnNth(1)` equals `Once`.
    OnNth(u64),
    /// Let the first n matching calls succeed, then fail every later one.
    AfterN(u64),
}

/// A failure-injection rule: which operation, on which paths, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Operation class the rule applies to.
    pub op: Op,
    /// Only paths whose display form contains this substring match (`None`: every path).
    pub path_contains: Option<String>,
    /// When the rule fires.
    pub mode: FaultMode,
    /// Raw errno of the injected error (e.g. `libc::ENOSPC`); `None` gives `io::Error::other`.
    pub errno: Option<i32>,
    /// For `Op::Write`: how many leading bytes a failed write still applies (default 0: none).
    pub write_prefix: usize,
}

impl FaultRule {
    /// A rule for `op` on every path, firing per `mode`, with a generic error.
    pub fn new(op: Op, mode: FaultMode) -> Self {
        FaultRule {
            op,
            path_contains: None,
            mode,
            errno: None,
            write_prefix: 0,
        }
    }

    /// Shorthand for `FaultRule::new(op, FaultMode::Once)`.
    pub fn once(op: Op) -> Self {
        Self::new(op, FaultMode::Once)
    }

    /// Shorthand for `FaultRule::new(op, FaultMode::OnNth(n))`.
    pub fn on_nth(op: Op, n: u64) -> Self {
        Self::new(op, FaultMode::OnNth(n))
    }

    /// Shorthand for `FaultRule::new(op, FaultMode::AfterN(n))`.
    pub fn after_n(op: Op, n: u64) -> Self {
        Self::new(op, FaultMode::AfterN(n))
    }

    /// Restricts the rule to paths containing `needle`.
    pub fn path_contains(mut self, needle: impl Into<String>) -> Self {
        self.path_contains = Some(needle.into());
        self
    }

    /// Makes the injected error carry raw OS error `errno`.
    pub fn errno(mut self, errno: i32) -> Self {
        self.errno = Some(errno);
        self
    }

    /// Makes a failed write apply its first `n` bytes before failing.
    pub fn write_prefix(mut self, n: usize) -> Self {
        self.write_prefix = n;
        self
    }
}

/// Parameters of [`FaultFs::power_loss`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PowerLoss {
    /// For each file with unsynced changes, keep a random non-empty proper prefix of its
    /// last (highest-offset) unsynced page instead of losing the page entirely.
    pub tear_last_unsynced_page: bool,
    /// Seed of the prefix-length choice (same seed and history: same result).
    pub seed: u64,
}

/// A rule plus its match counter.
#[derive(Debug)]
struct ActiveRule {
    rule: FaultRule,
    matched: u64,
}

impl ActiveRule {
    /// Counts one matching call and says whether it must fail.
    fn fires(&mut self) -> bool {
        self.matched += 1;
        match self.rule.mode {
            FaultMode::Once => self.matched == 1,
            FaultMode::OnNth(n) => self.matched == n,
            FaultMode::AfterN(n) => self.matched > n,
        }
    }
}

/// An injected failure.
struct Injected {
    err: io::Error,
    write_prefix: usize,
}

/// A lock held through the filesystem; dropped (released) on a simulated crash.
struct HeldLock {
    path: PathBuf,
    _inner: Option<Box<dyn DirLock>>,
}

/// What a [`FaultFs`] stores files in.
enum Backend {
    /// The in-memory, power-loss-capable model.
    Memory(Mutex<MemFs>),
    /// Another backend; only failure injection is added.
    Wrapped(Arc<dyn FileSystem>),
}

/// State shared by a [`FaultFs`], its clones, its files and its lock guards.
struct Shared {
    backend: Backend,
    /// Bumped by every simulated crash; handles from an older epoch are dead.
    epoch: AtomicU64,
    rules: Mutex<Vec<ActiveRule>>,
    /// Fast path: false while `rules` is empty.
    has_rules: AtomicBool,
    ops: [AtomicU64; Op::COUNT],
    syncs: AtomicU64,
    locks: Mutex<HashMap<u64, HeldLock>>,
    next_lock_id: AtomicU64,
}

impl Shared {
    /// Counts `op` and applies the fault rules to it.
    fn check(&self, op: Op, path: &Path) -> Result<(), Injected> {
        self.ops[op.index()].fetch_add(1, Ordering::Relaxed);
        if !self.has_rules.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut rules = self.rules.lock();
        let mut hit: Option<(Option<i32>, usize)> = None;
        let shown = path.to_string_lossy();
        for active in rules.iter_mut() {
            if active.rule.op != op {
                continue;
            }
            if let Some(needle) = &active.rule.path_contains {
                if !shown.contains(needle.as_str()) {
                    continue;
                }
            }
            if active.fires() && hit.is_none() {
                hit = Some((active.rule.errno, active.rule.write_prefix));
            }
        }
        match hit {
            None => Ok(()),
            Some((errno, write_prefix)) => {
                let err = match errno {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => {
                        io::Error::other(format!("injected fault: {op:?} on {}", path.display()))
                    }
                };
                Err(Injected { err, write_prefix })
            }
        }
    }

    /// Like [`Shared::check`] but just the error.
    fn check_err(&self, op: Op, path: &Path) -> io::Result<()> {
        self.check(op, path).map_err(|i| i.err)
    }

    /// Simulated crash: kill handles and release locks (the caller handles data).
    fn kill_process(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let dropped: Vec<HeldLock> = self.locks.lock().drain().map(|(_, l)| l).collect();
        drop(dropped);
    }
}

/// Fault-injecting, power-loss-simulating filesystem for tests; clones share state.
#[derive(Clone)]
pub struct FaultFs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultFs")
            .field(
                "in_memory",
                &matches!(self.shared.backend, Backend::Memory(_)),
            )
            .field("epoch", &self.shared.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for FaultFs {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultFs {
    /// Builds a FaultFs over `backend`.
    fn with_backend(backend: Backend) -> Self {
        FaultFs {
            shared: Arc::new(Shared {
                backend,
                epoch: AtomicU64::new(0),
                rules: Mutex::new(Vec::new()),
                has_rules: AtomicBool::new(false),
                ops: std::array::from_fn(|_| AtomicU64::new(0)),
                syncs: AtomicU64::new(0),
                locks: Mutex::new(HashMap::new()),
                next_lock_id: AtomicU64::new(1),
            }),
        }
    }

    /// An empty in-memory filesystem (roots `/` and the empty relative root exist) with power-loss simulation.
    pub fn new() -> Self {
        Self::with_backend(Backend::Memory(Mutex::new(MemFs::new())))
    }

    /// Failure injection over `inner`; `power_loss` then acts like `crash_process`.
    pub fn wrapping(inner: Arc<dyn FileSystem>) -> Self {
        Self::with_backend(Backend::Wrapped(inner))
    }

    /// True for the in-memory model (where `power_loss` really loses data).
    pub fn is_in_memory(&self) -> bool {
        matches!(self.shared.backend, Backend::Memory(_))
    }

    /// Adds a failure-injection rule (rules are checked in insertion order; all matching rules count the call).
    pub fn add_rule(&self, rule: FaultRule) {
        let mut rules = self.shared.rules.lock();
        rules.push(ActiveRule { rule, matched: 0 });
        self.shared.has_rules.store(true, Ordering::Release);
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        let mut rules = self.shared.rules.lock();
        rules.clear();
        self.shared.has_rules.store(false, Ordering::Release);
    }

    /// Number of successful `sync_data`, `sync_all` and `sync_dir` calls.
    pub fn sync_count(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Number of calls of class `op` made through live handles (failed ones included).
    pub fn op_count(&self, op: Op) -> u64 {
        self.shared.ops[op.index()].load(Ordering::Relaxed)
    }

    /// Resets `sync_count` and every `op_count` to zero.
    pub fn reset_counters(&self) {
        self.shared.syncs.store(0, Ordering::Relaxed);
        for c in &self.shared.ops {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Simulates SIGKILL: open handles die and locks are released; no data is lost.
    pub fn crash_process(&self) {
        match &self.shared.backend {
            Backend::Memory(mem) => {
                let _state = mem.lock();
                self.shared.kill_process();
            }
            Backend::Wrapped(_) => self.shared.kill_process(),
        }
    }

    /// Simulates power loss: unsynced data and directory changes are lost, handles die, locks are released.
    pub fn power_loss(&self, how: PowerLoss) {
        match &self.shared.backend {
            Backend::Memory(mem) => {
                let mut state = mem.lock();
                self.shared.kill_process();
                state.power_loss(how);
            }
            Backend::Wrapped(_) => self.shared.kill_process(),
        }
    }

    /// A new, independent in-memory filesystem holding what a power loss at this instant
    /// would leave (`how` as for [`FaultFs::power_loss`]); this filesystem, its handles and
    /// its locks go on unaffected. A test keeps the image while the "dead" process winds
    /// down on the original, which nothing it does can reach. `None` for
    /// [`FaultFs::wrapping`], which has no durable state of its own.
    pub fn durable_image(&self, how: PowerLoss) -> Option<FaultFs> {
        match &self.shared.backend {
            Backend::Memory(mem) => {
                let image = mem.lock().durable_image(how);
                Some(Self::with_backend(Backend::Memory(Mutex::new(image))))
            }
            Backend::Wrapped(_) => None,
        }
    }

    /// The current epoch (consistent with the memory state when called under its lock).
    fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }
}

/// Error for an operation on a handle from before a simulated crash.
fn dead_handle(path: &Path) -> io::Error {
    io::Error::other(format!(
        "file handle for {} belongs to a crashed process",
        path.display()
    ))
}

/// An `io::Error` carrying `errno`.
fn os(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// Lexically normalizes a path (drops `.`, resolves `..`) to use it as a key.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Splits a normalized path into its parent directory and file name.
fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .ok_or_else(|| os(libc::EISDIR))?
        .to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "non-UTF-8 file name"))?
        .to_string();
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((parent, name))
}

/// One directory: current and durable entries (name -> inode number).
#[derive(Debug, Default, Clone)]
struct Dir {
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

/// A file's contents plus what is needed to roll back to its durable state.
#[derive(Debug, Default, Clone)]
struct Inode {
    /// Current contents (what a reader sees).
    data: Vec<u8>,
    /// Length at the last sync.
    durable_len: u64,
    /// Page index -> durable contents of that page (clipped to `durable_len`; empty past
    /// it) for every page changed since the last sync.
    ///
    /// Invariant: a page below `durable_len` that is not in `undo` holds durable bytes in `data`.
    undo: BTreeMap<u64, Vec<u8>>,
}

impl Inode {
    /// Records page `p`'s durable contents before it is first changed after a sync.
    fn save_page(&mut self, p: u64) {
        if self.undo.contains_key(&p) {
            return;
        }
        let start = p * PAGE;
        let end = (start + PAGE)
            .min(self.durable_len)
            .min(self.data.len() as u64);
        let saved = if start < end {
            self.data[start as usize..end as usize].to_vec()
        } else {
            Vec::new()
        };
        self.undo.insert(p, saved);
    }

    /// Positional write, extending with zeros as needed.
    fn write(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| usize::try_from(e).is_ok())
            .ok_or_else(|| os(libc::EFBIG))?;
        for p in offset / PAGE..=(end - 1) / PAGE {
            self.save_page(p);
        }
        if (self.data.len() as u64) < end {
            self.data.resize(end as usize, 0);
        }
        self.data[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    /// Positional read; 0 at or past the end.
    fn read(&self, buf: &mut [u8], offset: u64) -> usize {
        let len = self.data.len() as u64;
        if offset >= len {
            return 0;
        }
        let n = (len - offset).min(buf.len() as u64) as usize;
        buf[..n].copy_from_slice(&self.data[offset as usize..offset as usize + n]);
        n
    }

    /// Truncates or zero-extends to `new_len`.
    fn set_len(&mut self, new_len: u64) -> io::Result<()> {
        let new = usize::try_from(new_len).map_err(|_| os(libc::EFBIG))?;
        let old = self.data.len() as u64;
        if new_len < old {
            let upto = old.min(self.durable_len);
            if new_len < upto {
                for p in new_len / PAGE..=(upto - 1) / PAGE {
                    self.save_page(p);
                }
            }
            self.data.truncate(new);
        } else {
            self.data.resize(new, 0);
        }
        Ok(())
    }

    /// Makes the current contents durable; O(pages changed since the last sync).
    fn sync(&mut self) {
        self.durable_len = self.data.len() as u64;
        self.undo.clear();
    }

    /// Reverts to the durable contents, optionally keeping a torn prefix of the last changed page.
    fn crash(&mut self, tear: bool, rng: &mut u64) {
        let torn = if tear {
            let len = self.data.len() as u64;
            self.undo.keys().rev().find(|&&p| p * PAGE < len).map(|&p| {
                let start = p * PAGE;
                let page_len = (start + PAGE).min(len) - start;
                let keep = if page_len >= 2 {
                    1 + splitmix64(rng) % (page_len - 1)
                } else {
                    0
                };
                let s = start as usize;
                (s, self.data[s..s + keep as usize].to_vec())
            })
        } else {
            None
        };
        self.data.resize(self.durable_len as usize, 0);
        for (&p, saved) in &self.undo {
            if saved.is_empty() {
                continue; // the page lay past the durable end
            }
            let s = (p * PAGE) as usize;
            self.data[s..s + saved.len()].copy_from_slice(saved);
        }
        self.undo.clear();
        if let Some((start, bytes)) = torn {
            let end = start + bytes.len();
            if self.data.len() < end {
                self.data.resize(end, 0);
            }
            self.data[start..end].copy_from_slice(&bytes);
        }
        self.durable_len = self.data.len() as u64;
    }
}

/// SplitMix64 step: a tiny deterministic PRNG for torn-write choices.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An inode plus its link counts in current and durable directory entries.
#[derive(Debug)]
struct InodeSlot {
    node: Arc<Mutex<Inode>>,
    cur_links: u32,
    dur_links: u32,
}

/// The in-memory filesystem model.
#[derive(Debug)]
struct MemFs {
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: BTreeMap<u64, InodeSlot>,
    next_ino: u64,
}

impl MemFs {
    /// An empty filesystem whose roots (`/` and the relative root ``) exist.
    fn new() -> Self {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::new(), Dir::default());
        dirs.insert(PathBuf::from("/"), Dir::default());
        MemFs {
            dirs,
            inodes: BTreeMap::new(),
            next_ino: 1,
        }
    }

    /// The inode number `path` names, if it is a file.
    fn lookup(&self, path: &Path) -> Option<u64> {
        let (parent, name) = split(path).ok()?;
        self.dirs.get(&parent)?.current.get(&name).copied()
    }

    /// The directory `parent` for creating or finding an entry in it.
    fn parent_dir(&mut self, parent: &Path) -> io::Result<&mut Dir> {
        if self.dirs.contains_key(parent) {
            return self.dirs.get_mut(parent).ok_or_else(|| os(libc::ENOENT));
        }
        if self.lookup(parent).is_some() {
            return Err(os(libc::ENOTDIR));
        }
        Err(os(libc::ENOENT))
    }

    /// Drops an inode nothing refers to any more (open handles keep their own `Arc`).
    fn gc(&mut self, ino: u64) {
        if let Some(slot) = self.inodes.get(&ino) {
            if slot.cur_links == 0 && slot.dur_links == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    /// Changes the current link count of `ino` by `delta`.
    fn link_current(&mut self, ino: u64, delta: i32) {
        if let Some(slot) = self.inodes.get_mut(&ino) {
            slot.cur_links = slot.cur_links.saturating_add_signed(delta);
        }
    }

    /// Creates a new file entry `name` in `parent` (which must exist).
    fn create(&mut self, parent: &Path, name: String) -> io::Result<Arc<Mutex<Inode>>> {
        let ino = self.next_ino;
        self.parent_dir(parent)?.current.insert(name, ino);
        self.next_ino += 1;
        let node = Arc::new(Mutex::new(Inode::default()));
        self.inodes.insert(
            ino,
            InodeSlot {
                node: node.clone(),
                cur_links: 1,
                dur_links: 0,
            },
        );
        Ok(node)
    }

    /// The inode of file `ino`.
    fn node(&self, ino: u64) -> io::Result<Arc<Mutex<Inode>>> {
        self.inodes
            .get(&ino)
            .map(|s| s.node.clone())
            .ok_or_else(|| io::Error::other("FaultFs: dangling directory entry"))
    }

    /// Opens (and maybe creates or truncates) the file at normalized `path`.
    fn open(&mut self, path: &Path, mode: OpenMode) -> io::Result<Arc<Mutex<Inode>>> {
        if self.dirs.contains_key(path) {
            return Err(os(libc::EISDIR));
        }
        let (parent, name) = split(path)?;
        let existing = self.parent_dir(&parent)?.current.get(&name).copied();
        match (existing, mode) {
            (Some(_), OpenMode::CreateNew) => Err(os(libc::EEXIST)),
            (Some(ino), OpenMode::CreateTruncate) => {
                let node = self.node(ino)?;
                node.lock().set_len(0)?;
                Ok(node)
            }
            (Some(ino), _) => self.node(ino),
            (None, OpenMode::Read | OpenMode::ReadWrite) => Err(os(libc::ENOENT)),
            (None, OpenMode::CreateNew | OpenMode::CreateTruncate) => self.create(&parent, name),
        }
    }

    /// Creates the file at `path` if missing (for lock files).
    fn ensure_file(&mut self, path: &Path) -> io::Result<()> {
        if self.dirs.contains_key(path) {
            return Err(os(libc::EISDIR));
        }
        if self.lookup(path).is_none() {
            let (parent, name) = split(path)?;
            self.create(&parent, name)?;
        }
        Ok(())
    }

    /// Renames file `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        if self.dirs.contains_key(from) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "FaultFs cannot rename directories",
            ));
        }
        if self.dirs.contains_key(to) {
            return Err(os(libc::EISDIR));
        }
        let (from_parent, from_name) = split(from)?;
        let (to_parent, to_name) = split(to)?;
        let ino = self
            .parent_dir(&from_parent)?
            .current
            .get(&from_name)
            .copied()
            .ok_or_else(|| os(libc::ENOENT))?;
        self.parent_dir(&to_parent)?;
        if from == to {
            return Ok(());
        }
        self.parent_dir(&from_parent)?.current.remove(&from_name);
        let replaced = self.parent_dir(&to_parent)?.current.insert(to_name, ino);
        if let Some(old) = replaced {
            self.link_current(old, -1);
            self.gc(old);
        }
        Ok(())
    }

    /// Removes the file entry at `path`.
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        if self.dirs.contains_key(path) {
            return Err(os(libc::EISDIR));
        }
        let (parent, name) = split(path)?;
        let ino = self
            .parent_dir(&parent)?
            .current
            .remove(&name)
            .ok_or_else(|| os(libc::ENOENT))?;
        self.link_current(ino, -1);
        self.gc(ino);
        Ok(())
    }

    /// Creates `path` and its ancestors (durable immediately).
    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        let chain: Vec<&Path> = path.ancestors().collect();
        for dir in chain.into_iter().rev() {
            if self.dirs.contains_key(dir) {
                continue;
            }
            if self.lookup(dir).is_some() {
                return Err(os(libc::EEXIST));
            }
            self.dirs.insert(dir.to_path_buf(), Dir::default());
        }
        Ok(())
    }

    /// Names of the files and subdirectories in `path`.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let Some(dir) = self.dirs.get(path) else {
            return Err(if self.lookup(path).is_some() {
                os(libc::ENOTDIR)
            } else {
                os(libc::ENOENT)
            });
        };
        let mut names: Vec<String> = dir.current.keys().cloned().collect();
        for sub in self.dirs.keys() {
            if sub.as_path() != path && sub.parent() == Some(path) {
                if let Some(n) = sub.file_name().and_then(|n| n.to_str()) {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Makes the current entries of directory `path` durable.
    fn sync_dir(&mut self, path: &Path) -> io::Result<()> {
        let Some(dir) = self.dirs.get_mut(path) else {
            return Err(os(libc::ENOENT));
        };
        if dir.current == dir.durable {
            return Ok(());
        }
        let old = std::mem::replace(&mut dir.durable, dir.current.clone());
        let new: Vec<u64> = dir.durable.values().copied().collect();
        for &ino in &new {
            if let Some(slot) = self.inodes.get_mut(&ino) {
                slot.dur_links += 1;
            }
        }
        for &ino in old.values() {
            if let Some(slot) = self.inodes.get_mut(&ino) {
                slot.dur_links = slot.dur_links.saturating_sub(1);
            }
        }
        for ino in old.into_values() {
            self.gc(ino);
        }
        Ok(())
    }

    /// A copy reverted to its durable state (see [`FaultFs::durable_image`]).
    fn durable_image(&self, how: PowerLoss) -> MemFs {
        // Every inode is locked at once (the caller holds the directory lock), so the copy is
        // one instant: a sync finishing between the copies of two files could otherwise be
        // seen without an earlier sync of the other file that it depends on.
        let locked: Vec<_> = self
            .inodes
            .iter()
            .map(|(&ino, slot)| (ino, slot, slot.node.lock()))
            .collect();
        let inodes = locked
            .iter()
            .map(|(ino, slot, inode)| {
                let copy = InodeSlot {
                    node: Arc::new(Mutex::new((**inode).clone())),
                    cur_links: slot.cur_links,
                    dur_links: slot.dur_links,
                };
                (*ino, copy)
            })
            .collect();
        drop(locked);
        let mut image = MemFs {
            dirs: self.dirs.clone(),
            inodes,
            next_ino: self.next_ino,
        };
        image.power_loss(how);
        image
    }

    /// Reverts every directory and file to its durable state.
    fn power_loss(&mut self, how: PowerLoss) {
        for dir in self.dirs.values_mut() {
            dir.current = dir.durable.clone();
        }
        self.inodes.retain(|_, slot| slot.dur_links > 0);
        let mut rng = how.seed;
        for (&ino, slot) in self.inodes.iter_mut() {
            slot.cur_links = slot.dur_links;
            let mut file_rng = rng ^ ino.wrapping_mul(0xA24B_AED4_963E_E407);
            slot.node
                .lock()
                .crash(how.tear_last_unsynced_page, &mut file_rng);
            splitmix64(&mut rng);
        }
    }
}

/// What a [`FaultFile`] forwards to.
enum FileKind {
    /// An in-memory inode.
    Memory {
        node: Arc<Mutex<Inode>>,
        writable: bool,
    },
    /// A file of the wrapped backend.
    Wrapped(Arc<dyn File>),
}

/// What a file operation acts on.
enum Target<'a> {
    /// The locked in-memory inode and whether the handle may write.
    Memory(&'a mut Inode, bool),
    /// The wrapped backend's file.
    Wrapped(&'a dyn File),
}

/// A file handle of a [`FaultFs`]; dead once its epoch is over.
struct FaultFile {
    shared: Arc<Shared>,
    path: PathBuf,
    epoch: u64,
    kind: FileKind,
}

impl FaultFile {
    /// Fails if a simulated crash happened since this handle was opened.
    fn live(&self) -> io::Result<()> {
        if self.shared.epoch.load(Ordering::Acquire) == self.epoch {
            Ok(())
        } else {
            Err(dead_handle(&self.path))
        }
    }

    /// Runs `f` on the in-memory inode (under its lock, liveness re-checked there) or on the wrapped file.
    fn with<R>(&self, f: impl FnOnce(Target<'_>) -> io::Result<R>) -> io::Result<R> {
        match &self.kind {
            FileKind::Memory { node, writable } => {
                let mut inode = node.lock();
                self.live()?;
                f(Target::Memory(&mut inode, *writable))
            }
            FileKind::Wrapped(file) => {
                self.live()?;
                f(Target::Wrapped(&**file))
            }
        }
    }

    /// Shared body of `sync_data` / `sync_all`.
    fn sync(&self, all: bool) -> io::Result<()> {
        self.live()?;
        self.shared.check_err(Op::Sync, &self.path)?;
        self.with(|t| match t {
            Target::Memory(inode, _) => {
                inode.sync();
                Ok(())
            }
            Target::Wrapped(f) if all => f.sync_all(),
            Target::Wrapped(f) => f.sync_data(),
        })?;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Error for a write through a read-only handle.
fn read_only() -> io::Error {
    os(libc::EBADF)
}

impl File for FaultFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.live()?;
        self.shared.check_err(Op::Read, &self.path)?;
        self.with(|t| match t {
            Target::Memory(inode, _) => Ok(inode.read(buf, offset)),
            Target::Wrapped(f) => f.read_at(buf, offset),
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.live()?;
        if let Err(injected) = self.shared.check(Op::Write, &self.path) {
            let prefix = &buf[..injected.write_prefix.min(buf.len())];
            if !prefix.is_empty() {
                self.with(|t| match t {
                    Target::Memory(inode, true) => inode.write(prefix, offset),
                    Target::Memory(_, false) => Ok(()),
                    Target::Wrapped(f) => f.write_all_at(prefix, offset),
                })?;
            }
            return Err(injected.err);
        }
        self.with(|t| match t {
            Target::Memory(inode, true) => inode.write(buf, offset),
            Target::Memory(_, false) => Err(read_only()),
            Target::Wrapped(f) => f.write_all_at(buf, offset),
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync(false)
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync(true)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.live()?;
        self.shared.check_err(Op::Truncate, &self.path)?;
        self.with(|t| match t {
            Target::Memory(inode, true) => inode.set_len(len),
            Target::Memory(_, false) => Err(os(libc::EINVAL)),
            Target::Wrapped(f) => f.set_len(len),
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.live()?;
        self.shared.check_err(Op::Truncate, &self.path)?;
        self.with(|t| match t {
            Target::Memory(inode, true) if (inode.data.len() as u64) < len => inode.set_len(len),
            Target::Memory(_, true) => Ok(()),
            Target::Memory(_, false) => Err(read_only()),
            Target::Wrapped(f) => f.allocate(len),
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|t| match t {
            Target::Memory(inode, _) => Ok(inode.data.len() as u64),
            Target::Wrapped(f) => f.len(),
        })
    }
}

/// A lock guard of a [`FaultFs`]; a simulated crash releases the lock before the guard drops.
struct FaultLock {
    shared: Arc<Shared>,
    id: u64,
}

impl DirLock for FaultLock {}

impl Drop for FaultLock {
    fn drop(&mut self) {
        let released = self.shared.locks.lock().remove(&self.id);
        drop(released);
    }
}

impl FileSystem for FaultFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        self.shared.check_err(Op::Open, path)?;
        if matches!(mode, OpenMode::CreateNew | OpenMode::CreateTruncate) {
            self.shared.check_err(Op::Create, path)?;
        }
        let (kind, epoch) = match &self.shared.backend {
            Backend::Memory(mem) => {
                let mut state = mem.lock();
                let node = state.open(&normalize(path), mode)?;
                let writable = mode != OpenMode::Read;
                (FileKind::Memory { node, writable }, self.epoch())
            }
            Backend::Wrapped(inner) => {
                let epoch = self.epoch();
                (FileKind::Wrapped(inner.open(path, mode)?), epoch)
            }
        };
        Ok(Arc::new(FaultFile {
            shared: self.shared.clone(),
            path: path.to_path_buf(),
            epoch,
            kind,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.shared.check_err(Op::Rename, from)?;
        match &self.shared.backend {
            Backend::Memory(mem) => mem.lock().rename(&normalize(from), &normalize(to)),
            Backend::Wrapped(inner) => inner.rename(from, to),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.shared.check_err(Op::Remove, path)?;
        match &self.shared.backend {
            Backend::Memory(mem) => mem.lock().remove(&normalize(path)),
            Backend::Wrapped(inner) => inner.remove_file(path),
        }
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        match &self.shared.backend {
            Backend::Memory(mem) => mem.lock().create_dir_all(&normalize(path)),
            Backend::Wrapped(inner) => inner.create_dir_all(path),
        }
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        match &self.shared.backend {
            Backend::Memory(mem) => mem.lock().list_dir(&normalize(path)),
            Backend::Wrapped(inner) => inner.list_dir(path),
        }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.shared.check_err(Op::Sync, path)?;
        match &self.shared.backend {
            Backend::Memory(mem) => mem.lock().sync_dir(&normalize(path))?,
            Backend::Wrapped(inner) => inner.sync_dir(path)?,
        }
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        match &self.shared.backend {
            Backend::Memory(mem) => {
                let state = mem.lock();
                let p = normalize(path);
                state.dirs.contains_key(&p) || state.lookup(&p).is_some()
            }
            Backend::Wrapped(inner) => inner.exists(path),
        }
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn DirLock>> {
        let key = normalize(path);
        let inner_guard = match &self.shared.backend {
            Backend::Memory(mem) => {
                mem.lock().ensure_file(&key)?;
                None
            }
            Backend::Wrapped(inner) => Some(inner.lock(path)?),
        };
        let mut locks = self.shared.locks.lock();
        if locks.values().any(|l| l.path == key) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("lock {} is held by another owner", path.display()),
            ));
        }
        let id = self.shared.next_lock_id.fetch_add(1, Ordering::Relaxed);
        locks.insert(
            id,
            HeldLock {
                path: key,
                _inner: inner_guard,
            },
        );
        Ok(Box::new(FaultLock {
            shared: self.shared.clone(),
            id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::std_fs::conformance;
    use crate::fs::StdFs;

    fn read_all(f: &dyn File) -> Vec<u8> {
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        f.read_exact_at(&mut buf, 0).unwrap();
        buf
    }

    fn contents(fs: &FaultFs, path: &str) -> Option<Vec<u8>> {
        let f = fs.open(Path::new(path), OpenMode::Read).ok()?;
        Some(read_all(&*f))
    }

    fn setup() -> FaultFs {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/db")).unwrap();
        fs
    }

    fn create_synced(fs: &FaultFs, path: &str, data: &[u8]) -> Arc<dyn File> {
        let f = fs.open(Path::new(path), OpenMode::CreateNew).unwrap();
        f.write_all_at(data, 0).unwrap();
        f.sync_data().unwrap();
        let parent = Path::new(path).parent().unwrap();
        fs.sync_dir(parent).unwrap();
        f
    }

    const CRASH: PowerLoss = PowerLoss {
        tear_last_unsynced_page: false,
        seed: 0,
    };

    #[test]
    fn fault_fs_memory_conformance() {
        let fs = FaultFs::new();
        conformance::run(&fs, Path::new("/conf"));
        let rel = FaultFs::new();
        conformance::run(&rel, Path::new("rel/root"));
    }

    #[test]
    fn fault_fs_wrapping_conformance() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = FaultFs::wrapping(Arc::new(StdFs::new()));
        conformance::run(&fs, tmp.path());
    }

    #[test]
    fn is_send_sync_and_usable_as_dyn() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<FaultFs>();
        let fs = FaultFs::new();
        let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        dynfs.create_dir_all(Path::new("/x")).unwrap();
        assert!(fs.exists(Path::new("/x")));
    }

    #[test]
    fn unsynced_data_lost_synced_data_kept() {
        let fs = setup();
        let f = create_synced(&fs, "/db/1.wal", b"synced-");
        f.write_all_at(b"unsynced", 7).unwrap();
        assert_eq!(read_all(&*f), b"synced-unsynced");
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/1.wal").unwrap(), b"synced-");

        // Overwrites inside synced data are rolled back too, and sync_all also counts.
        let f = fs
            .open(Path::new("/db/1.wal"), OpenMode::ReadWrite)
            .unwrap();
        f.write_all_at(b"SYNCED", 0).unwrap();
        f.sync_all().unwrap();
        f.write_all_at(b"xx", 1).unwrap();
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/1.wal").unwrap(), b"SYNCED-");
    }

    #[test]
    fn durable_image_is_the_power_loss_state_and_independent_of_the_original() {
        let fs = setup();
        let f = create_synced(&fs, "/db/1.wal", b"synced-");
        f.write_all_at(b"unsynced", 7).unwrap();
        let g = fs.open(Path::new("/db/new"), OpenMode::CreateNew).unwrap();
        g.write_all_at(b"data", 0).unwrap();
        g.sync_all().unwrap(); // synced file, unsynced directory entry
        let _lock = fs.lock(Path::new("/db/LOCK")).unwrap();

        let image = fs.durable_image(CRASH).unwrap();
        assert!(image.is_in_memory());
        assert_eq!(contents(&image, "/db/1.wal").unwrap(), b"synced-");
        assert!(!image.exists(Path::new("/db/new")));
        // The image's locks are free although the original still holds its lock.
        drop(image.lock(Path::new("/db/LOCK")).unwrap());

        // The original is untouched and keeps working; nothing it does reaches the image.
        assert_eq!(read_all(&*f), b"synced-unsynced");
        f.write_all_at(b"more", 15).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        assert_eq!(contents(&image, "/db/1.wal").unwrap(), b"synced-");
        assert!(!image.exists(Path::new("/db/new")));
        // And the image is a filesystem of its own, with its own power loss.
        let h = image
            .open(Path::new("/db/1.wal"), OpenMode::ReadWrite)
            .unwrap();
        h.write_all_at(b"IMAGE", 0).unwrap();
        image.power_loss(CRASH);
        assert_eq!(contents(&image, "/db/1.wal").unwrap(), b"synced-");
        assert_eq!(contents(&fs, "/db/1.wal").unwrap(), b"synced-unsyncedmore");

        let wrapped = FaultFs::wrapping(Arc::new(StdFs::new()));
        assert!(wrapped.durable_image(CRASH).is_none());
    }

    #[test]
    fn unsynced_create_lost_unless_dir_synced() {
        let fs = setup();
        let f = fs.open(Path::new("/db/a"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap(); // the file is synced, its directory entry is not
        let g = fs.open(Path::new("/db/b"), OpenMode::CreateNew).unwrap();
        g.write_all_at(b"data", 0).unwrap();
        g.sync_all().unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        let h = fs.open(Path::new("/db/c"), OpenMode::CreateNew).unwrap();
        h.sync_all().unwrap();
        fs.power_loss(CRASH);
        assert!(fs.exists(Path::new("/db/a")));
        assert!(fs.exists(Path::new("/db/b")));
        assert!(!fs.exists(Path::new("/db/c")));
        assert_eq!(contents(&fs, "/db/b").unwrap(), b"data");
        assert_eq!(fs.list_dir(Path::new("/db")).unwrap(), vec!["a", "b"]);
        // Directories survive (durable on creation).
        assert!(fs.exists(Path::new("/db")));
    }

    #[test]
    fn rename_undone_unless_dir_synced() {
        let fs = setup();
        create_synced(&fs, "/db/CURRENT", b"MANIFEST-1");
        let tmp = fs
            .open(Path::new("/db/CURRENT.tmp"), OpenMode::CreateNew)
            .unwrap();
        tmp.write_all_at(b"MANIFEST-2", 0).unwrap();
        tmp.sync_all().unwrap();
        fs.rename(Path::new("/db/CURRENT.tmp"), Path::new("/db/CURRENT"))
            .unwrap();
        assert_eq!(contents(&fs, "/db/CURRENT").unwrap(), b"MANIFEST-2");
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/CURRENT").unwrap(), b"MANIFEST-1");
        assert!(!fs.exists(Path::new("/db/CURRENT.tmp")));

        let tmp = fs
            .open(Path::new("/db/CURRENT.tmp"), OpenMode::CreateNew)
            .unwrap();
        tmp.write_all_at(b"MANIFEST-3", 0).unwrap();
        tmp.sync_all().unwrap();
        fs.rename(Path::new("/db/CURRENT.tmp"), Path::new("/db/CURRENT"))
            .unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/CURRENT").unwrap(), b"MANIFEST-3");
        assert_eq!(fs.list_dir(Path::new("/db")).unwrap(), vec!["CURRENT"]);

        // A durable rename of a file whose old name was durable: across directories.
        fs.create_dir_all(Path::new("/db/archive")).unwrap();
        create_synced(&fs, "/db/old.log", b"log");
        fs.rename(Path::new("/db/old.log"), Path::new("/db/archive/old.log"))
            .unwrap();
        fs.sync_dir(Path::new("/db/archive")).unwrap();
        fs.power_loss(CRASH);
        // Only the target directory was synced: the file now has both names.
        assert_eq!(contents(&fs, "/db/old.log").unwrap(), b"log");
        assert_eq!(contents(&fs, "/db/archive/old.log").unwrap(), b"log");
    }

    #[test]
    fn remove_undone_unless_dir_synced() {
        let fs = setup();
        create_synced(&fs, "/db/1.sst", b"table-1");
        create_synced(&fs, "/db/2.sst", b"table-2");
        fs.remove_file(Path::new("/db/1.sst")).unwrap();
        assert!(!fs.exists(Path::new("/db/1.sst")));
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/1.sst").unwrap(), b"table-1");

        fs.remove_file(Path::new("/db/1.sst")).unwrap();
        fs.sync_dir(Path::new("/db")).unwrap();
        fs.power_loss(CRASH);
        assert!(!fs.exists(Path::new("/db/1.sst")));
        assert_eq!(contents(&fs, "/db/2.sst").unwrap(), b"table-2");
        if let Backend::Memory(mem) = &fs.shared.backend {
            assert_eq!(mem.lock().inodes.len(), 1, "removed inode reclaimed");
        }
    }

    #[test]
    fn truncate_and_extend_undone_by_power_loss() {
        let fs = setup();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 256) as u8).collect();
        let f = create_synced(&fs, "/db/t", &data);
        f.set_len(100).unwrap();
        f.set_len(20_000).unwrap();
        f.write_all_at(b"zz", 5000).unwrap();
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/t").unwrap(), data);

        // CreateTruncate on a durable file is undone as well.
        let f = fs
            .open(Path::new("/db/t"), OpenMode::CreateTruncate)
            .unwrap();
        f.write_all_at(b"new", 0).unwrap();
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/t").unwrap(), data);

        // Allocation survives only once synced.
        let f = fs.open(Path::new("/db/t"), OpenMode::ReadWrite).unwrap();
        f.allocate(1 << 16).unwrap();
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/t").unwrap().len(), 10_000);
        let f = fs.open(Path::new("/db/t"), OpenMode::ReadWrite).unwrap();
        f.allocate(1 << 16).unwrap();
        f.sync_data().unwrap();
        fs.power_loss(CRASH);
        let back = contents(&fs, "/db/t").unwrap();
        assert_eq!(back.len(), 1 << 16);
        assert_eq!(&back[..10_000], &data[..]);
    }

    #[test]
    fn sync_cost_is_proportional_to_changes() {
        let fs = setup();
        let f = create_synced(&fs, "/db/big.wal", b"");
        f.allocate(64 << 20).unwrap();
        f.sync_data().unwrap();
        let FileKind::Memory { node, .. } = &fs_file_kind(&fs, "/db/big.wal") else {
            panic!("memory backend expected")
        };
        for i in 0..2000u64 {
            f.write_all_at(&[1u8; 100], i * 100).unwrap();
            assert!(node.lock().undo.len() <= 2);
            f.sync_data().unwrap();
            assert!(node.lock().undo.is_empty());
        }
        f.write_all_at(&[2u8; 100], 30 << 20).unwrap();
        fs.power_loss(CRASH);
        let g = fs.open(Path::new("/db/big.wal"), OpenMode::Read).unwrap();
        let mut buf = [9u8; 100];
        g.read_exact_at(&mut buf, 30 << 20).unwrap();
        assert_eq!(buf, [0u8; 100]);
        g.read_exact_at(&mut buf, 199_900).unwrap();
        assert_eq!(buf, [1u8; 100]);
    }

    fn fs_file_kind(fs: &FaultFs, path: &str) -> FileKind {
        let Backend::Memory(mem) = &fs.shared.backend else {
            panic!("memory backend expected")
        };
        let state = mem.lock();
        let ino = state.lookup(Path::new(path)).unwrap();
        FileKind::Memory {
            node: state.node(ino).unwrap(),
            writable: true,
        }
    }

    #[test]
    fn torn_page_keeps_a_prefix_only() {
        let mut kept_lengths = std::collections::BTreeSet::new();
        for seed in 0..32u64 {
            let fs = setup();
            let f = create_synced(&fs, "/db/w", &[7u8; 5000]);
            let new: Vec<u8> = (0..8192u32).map(|i| (i % 200 + 1) as u8).collect();
            // Pages 1 (partially synced) and 2 (new): the last one, page 2, tears.
            f.write_all_at(&new, 4096).unwrap();
            fs.power_loss(PowerLoss {
                tear_last_unsynced_page: true,
                seed,
            });
            let back = contents(&fs, "/db/w").unwrap();
            assert!(
                back.len() > 8192 && back.len() < 12288,
                "len {}",
                back.len()
            );
            assert_eq!(&back[..5000], &[7u8; 5000][..], "page 1 rolled back");
            assert!(back[5000..8192].iter().all(|&b| b == 0), "gap is a hole");
            assert_eq!(&back[8192..], &new[4096..4096 + (back.len() - 8192)]);
            kept_lengths.insert(back.len());
        }
        assert!(kept_lengths.len() > 10, "prefix length depends on the seed");

        // Same seed, same history: same result. No tearing without unsynced writes.
        let run = |seed| {
            let fs = setup();
            let f = create_synced(&fs, "/db/w", b"base");
            f.write_all_at(&[5u8; 3000], 4).unwrap();
            fs.power_loss(PowerLoss {
                tear_last_unsynced_page: true,
                seed,
            });
            contents(&fs, "/db/w").unwrap()
        };
        assert_eq!(run(42), run(42));
        let torn = run(42);
        assert!(torn.len() < 3004 && torn.starts_with(b"base"));
        let fs = setup();
        create_synced(&fs, "/db/s", b"all synced");
        fs.power_loss(PowerLoss {
            tear_last_unsynced_page: true,
            seed: 3,
        });
        assert_eq!(contents(&fs, "/db/s").unwrap(), b"all synced");
    }

    #[test]
    fn handles_die_and_locks_release_on_crash() {
        for power in [false, true] {
            let fs = setup();
            let lock = fs.lock(Path::new("/db/LOCK")).unwrap();
            let f = create_synced(&fs, "/db/x", b"1");
            f.write_all_at(b"2", 1).unwrap();
            if power {
                fs.power_loss(CRASH);
            } else {
                fs.crash_process();
            }
            assert!(f.write_all_at(b"3", 2).is_err());
            assert!(f.read_at(&mut [0u8; 1], 0).is_err());
            assert!(f.sync_data().is_err());
            assert!(f.sync_all().is_err());
            assert!(f.set_len(0).is_err());
            assert!(f.allocate(10).is_err());
            assert!(f.len().is_err());
            let relock = fs.lock(Path::new("/db/LOCK")).unwrap();
            drop(lock); // the stale guard must not release the new holder's lock
            assert_eq!(
                fs.lock(Path::new("/db/LOCK")).err().unwrap().kind(),
                io::ErrorKind::WouldBlock
            );
            drop(relock);
            let want: &[u8] = if power { b"1" } else { b"12" };
            assert_eq!(contents(&fs, "/db/x").unwrap(), want);
            // Fresh handles work.
            let g = fs.open(Path::new("/db/x"), OpenMode::ReadWrite).unwrap();
            g.write_all_at(b"9", 0).unwrap();
            g.sync_data().unwrap();
        }
        // crash_process keeps unsynced creates, renames and removes.
        let fs = setup();
        fs.open(Path::new("/db/new"), OpenMode::CreateNew).unwrap();
        create_synced(&fs, "/db/gone", b"");
        fs.remove_file(Path::new("/db/gone")).unwrap();
        fs.crash_process();
        assert!(fs.exists(Path::new("/db/new")));
        assert!(!fs.exists(Path::new("/db/gone")));
    }

    #[test]
    fn rule_once_fires_exactly_once() {
        let fs = setup();
        let f = create_synced(&fs, "/db/a.wal", b"");
        let base = fs.op_count(Op::Write);
        fs.add_rule(FaultRule::once(Op::Write));
        let err = f.write_all_at(b"x", 0).unwrap_err();
        assert!(err.to_string().contains("injected fault"));
        assert_eq!(f.len().unwrap(), 0, "failed write applied nothing");
        for _ in 0..5 {
            f.write_all_at(b"x", 0).unwrap();
        }
        assert_eq!(fs.op_count(Op::Write) - base, 6);
    }

    #[test]
    fn rule_on_nth_fires_only_on_nth() {
        let fs = setup();
        let f = create_synced(&fs, "/db/a.wal", b"");
        let base = fs.sync_count();
        fs.add_rule(FaultRule::on_nth(Op::Sync, 3));
        let results: Vec<bool> = (0..6).map(|_| f.sync_data().is_ok()).collect();
        assert_eq!(results, [true, true, false, true, true, true]);
        assert_eq!(fs.sync_count() - base, 5);
    }

    #[test]
    fn rule_after_n_fails_everything_after_n() {
        let fs = setup();
        fs.add_rule(FaultRule::after_n(Op::Open, 2).errno(libc::ENOSPC));
        let results: Vec<Option<i32>> = (0..5)
            .map(|i| {
                fs.open(Path::new(&format!("/db/{i}")), OpenMode::CreateNew)
                    .err()
                    .map(|e| e.raw_os_error().unwrap())
            })
            .collect();
        assert_eq!(
            results,
            [
                None,
                None,
                Some(libc::ENOSPC),
                Some(libc::ENOSPC),
                Some(libc::ENOSPC)
            ]
        );
        assert!(
            !fs.exists(Path::new("/db/2")),
            "failed open created nothing"
        );
        fs.clear_rules();
        assert!(fs.open(Path::new("/db/9"), OpenMode::CreateNew).is_ok());
    }

    #[test]
    fn rule_path_filter_and_other_ops() {
        let fs = setup();
        let wal = create_synced(&fs, "/db/000001.wal", b"abc");
        let sst = create_synced(&fs, "/db/000002.sst", b"abc");
        fs.add_rule(FaultRule::after_n(Op::Read, 0).path_contains(".sst"));
        fs.add_rule(FaultRule::once(Op::Truncate).path_contains("wal"));
        fs.add_rule(FaultRule::once(Op::Rename));
        fs.add_rule(FaultRule::once(Op::Remove).errno(libc::EIO));
        fs.add_rule(FaultRule::once(Op::Sync).path_contains("/db"));
        let mut buf = [0u8; 3];
        assert!(wal.read_exact_at(&mut buf, 0).is_ok());
        assert!(sst.read_exact_at(&mut buf, 0).is_err());
        assert!(sst.read_exact_at(&mut buf, 0).is_err());
        assert!(wal.allocate(100).is_err());
        assert!(wal.set_len(1).is_ok());
        assert!(sst.set_len(1).is_ok());
        let a = Path::new("/db/000001.wal");
        let b = Path::new("/db/x");
        assert!(fs.rename(a, b).is_err());
        assert!(fs.exists(a), "failed rename changed nothing");
        fs.rename(a, b).unwrap();
        assert_eq!(
            fs.remove_file(b).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert!(fs.exists(b));
        // The sync rule matches the directory path and every file under /db.
        assert!(fs.sync_dir(Path::new("/db")).is_err());
        assert!(fs.sync_dir(Path::new("/db")).is_ok());
        assert_eq!(fs.op_count(Op::Read), 3);
        assert_eq!(fs.op_count(Op::Truncate), 3);
        assert_eq!(fs.op_count(Op::Rename), 2);
        assert_eq!(fs.op_count(Op::Remove), 1);
        fs.reset_counters();
        assert_eq!(fs.op_count(Op::Read), 0);
        assert_eq!(fs.sync_count(), 0);
    }

    #[test]
    fn failed_write_can_apply_a_prefix_and_failed_sync_keeps_nothing() {
        let fs = setup();
        let f = create_synced(&fs, "/db/w", b"");
        fs.add_rule(FaultRule::once(Op::Write).write_prefix(3));
        assert!(f.write_all_at(b"abcdef", 0).is_err());
        assert_eq!(read_all(&*f), b"abc");
        fs.add_rule(FaultRule::once(Op::Sync).errno(libc::EIO));
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        fs.power_loss(CRASH);
        assert_eq!(contents(&fs, "/db/w").unwrap(), b"");
    }

    #[test]
    fn multiple_rules_each_count_their_matches() {
        let fs = setup();
        let f = create_synced(&fs, "/db/w", b"");
        fs.add_rule(FaultRule::on_nth(Op::Write, 2));
        fs.add_rule(FaultRule::on_nth(Op::Write, 4));
        let results: Vec<bool> = (0..5).map(|_| f.write_all_at(b"x", 0).is_ok()).collect();
        assert_eq!(results, [true, false, true, false, true]);
    }

    #[test]
    fn wrapping_injects_and_crash_releases_real_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = FaultFs::wrapping(Arc::new(StdFs::new()));
        assert!(!fs.is_in_memory());
        let p = tmp.path().join("f");
        let f = fs.open(&p, OpenMode::CreateNew).unwrap();
        fs.add_rule(
            FaultRule::once(Op::Write)
                .write_prefix(2)
                .errno(libc::ENOSPC),
        );
        let err = f.write_all_at(b"hello", 0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(read_all(&*f), b"he");
        let lock_path = tmp.path().join("LOCK");
        let guard = fs.lock(&lock_path).unwrap();
        assert_eq!(
            StdFs::new().lock(&lock_path).err().unwrap().kind(),
            io::ErrorKind::WouldBlock
        );
        fs.power_loss(PowerLoss::default());
        assert!(f.read_at(&mut [0u8; 1], 0).is_err());
        // The real flock was released by the simulated crash.
        drop(StdFs::new().lock(&lock_path).unwrap());
        drop(guard);
        assert_eq!(read_all(&*fs.open(&p, OpenMode::Read).unwrap()), b"he");
    }

    #[test]
    fn concurrent_writers_and_power_loss() {
        let fs = setup();
        let f = create_synced(&fs, "/db/c", b"");
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let f = f.clone();
                s.spawn(move || {
                    for i in 0..200u64 {
                        if f.write_all_at(&[t as u8; 64], (i * 4 + t) * 64).is_err() {
                            return;
                        }
                        if i % 10 == 0 && f.sync_data().is_err() {
                            return;
                        }
                    }
                });
            }
            s.spawn(|| {
                std::thread::yield_now();
                fs.power_loss(CRASH);
            });
        });
        // Whatever survived is a prefix-consistent image of synced writes; the fs works again.
        let g = fs.open(Path::new("/db/c"), OpenMode::ReadWrite).unwrap();
        let len = g.len().unwrap();
        assert_eq!(len % 64, 0);
        g.write_all_at(b"ok", len).unwrap();
        g.sync_data().unwrap();
    }
}
