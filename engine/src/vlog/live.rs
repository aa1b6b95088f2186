//! The engine's live segments: handles that delete a collected segment once no reader can
//! reach it ([`LiveSegment`]), a bounded cache of open readers ([`ReaderCache`]), and
//! [`ValueFetcher`], which resolves the value pointers a read meets.
//!
//! Every super version (and so every point read and iterator) holds an `Arc` of the segment
//! set it was built with. Value-log GC removes a collected segment from the set and marks
//! its handle obsolete; the file is deleted when the last set holding the handle drops, so a
//! reader that still sees the old pointers can always follow them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::pointer::ValuePointer;
use super::segment::{SegmentMeta, SegmentReader};
use crate::error::{Error, Result};
use crate::filename;
use crate::fs::FileSystem;
use crate::key::{Kind, EXPIRY_LEN};

/// Default number of segment readers (open files) a [`ReaderCache`] keeps.
pub const DEFAULT_OPEN_READERS: usize = 256;

/// Files of collected segments kept for the write path to write its next segments into:
/// overwriting blocks that are allocated (and usually still cached) costs the kernel and
/// the disk less than appending to a new file, and its fdatasync need not record a new
/// size. A kept file is an orphan (no manifest names it): if the process stops before it
/// is reused, the next open deletes it.
#[derive(Debug)]
pub struct Recycler {
    /// The kept files; `None` once closed (files are deleted, not kept).
    pool: Mutex<Option<Vec<PathBuf>>>,
    max: usize,
}

impl Recycler {
    /// A pool holding at most `max` files.
    pub fn new(max: usize) -> Recycler {
        Recycler {
            pool: Mutex::new(Some(Vec::new())),
            max,
        }
    }

    /// Keeps `path` for reuse if the pool is open and has room; false when the caller must
    /// delete it.
    pub fn offer(&self, path: &Path) -> bool {
        let mut pool = self.pool.lock();
        match pool.as_mut() {
            Some(p) if p.len() < self.max => {
                p.push(path.to_path_buf());
                true
            }
            _ => false,
        }
    }

    /// A kept file to reuse, if any.
    pub fn take(&self) -> Option<PathBuf> {
        self.pool.lock().as_mut().and_then(|p| p.pop())
    }

    /// Stops keeping files and returns those kept (the caller deletes them).
    pub fn close(&self) -> Vec<PathBuf> {
        self.pool.lock().take().unwrap_or_default()
    }

    /// Files kept now.
    pub fn len(&self) -> usize {
        self.pool.lock().as_ref().map_or(0, |p| p.len())
    }

    /// True when no file is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One live segment; deletes its file on drop once marked obsolete (or hands it to a
/// [`Recycler`]).
pub struct LiveSegment {
    meta: SegmentMeta,
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    readers: Arc<ReaderCache>,
    recycler: Option<Arc<Recycler>>,
    obsolete: AtomicBool,
}

impl std::fmt::Debug for LiveSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSegment")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

impl LiveSegment {
    /// A handle on the finished segment `meta` in `dir`.
    pub fn new(
        meta: SegmentMeta,
        dir: &Path,
        fs: Arc<dyn FileSystem>,
        readers: Arc<ReaderCache>,
    ) -> LiveSegment {
        LiveSegment {
            path: filename::vlog(dir, meta.id),
            meta,
            fs,
            readers,
            recycler: None,
            obsolete: AtomicBool::new(false),
        }
    }

    /// Hands the file to `recycler` instead of deleting it once collected and unreachable.
    pub fn with_recycler(mut self, recycler: Option<Arc<Recycler>>) -> LiveSegment {
        self.recycler = recycler;
        self
    }

    /// What the manifest records about the segment.
    pub fn meta(&self) -> SegmentMeta {
        self.meta
    }

    /// Deletes the file once the last handle drops (the segment was collected).
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }
}

impl Drop for LiveSegment {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            self.readers.evict(self.meta.id);
            if self.recycler.as_ref().is_some_and(|r| r.offer(&self.path)) {
                return;
            }
            // The last reader may be an executor thread: delete from a background thread then.
            let (fs, path) = (self.fs.clone(), std::mem::take(&mut self.path));
            crate::fs::guard::run_off_marked_thread(move || {
                if let Err(e) = fs.remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete a collected value-log segment");
                }
            });
        }
    }
}

/// The live segments by id, as one version of the database sees them.
pub type SegmentSet = BTreeMap<u64, Arc<LiveSegment>>;

/// A bounded cache of open [`SegmentReader`]s, least recently used evicted first.
pub struct ReaderCache {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    capacity: usize,
    map: Mutex<HashMap<u64, (Arc<SegmentReader>, u64)>>,
    tick: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
}

impl std::fmt::Debug for ReaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ReaderCache {
    /// A cache of at most `capacity` (>= 1) open segments of `dir`.
    pub fn new(fs: Arc<dyn FileSystem>, dir: &Path, capacity: usize) -> ReaderCache {
        ReaderCache {
            fs,
            dir: dir.to_path_buf(),
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
        }
    }

    /// The directory the segments are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The reader of segment `id`, opened (header and footer verified) on a miss.
    pub fn get(&self, id: u64) -> Result<Arc<SegmentReader>> {
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some((r, used)) = self.map.lock().get_mut(&id) {
            *used = now;
            return Ok(r.clone());
        }
        // Open outside the lock: a miss costs two small reads.
        let r = Arc::new(SegmentReader::open(&*self.fs, &self.dir, id)?);
        let mut map = self.map.lock();
        if map.len() >= self.capacity && !map.contains_key(&id) {
            if let Some(victim) = map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                map.remove(&victim);
            }
        }
        map.entry(id).or_insert((r.clone(), now));
        Ok(r)
    }

    /// Forgets segment `id` (its file is being deleted).
    pub fn evict(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    /// Number of open readers.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// True when no reader is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values read through the cache so far, and their bytes.
    pub fn reads(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
        )
    }

    fn note_read(&self, bytes: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        metrics::counter!("nokv_vlog_reads_total").increment(1);
        metrics::counter!("nokv_vlog_read_bytes_total").increment(bytes as u64);
    }
}

/// Resolves value pointers against one segment set (which it keeps alive).
#[derive(Clone)]
pub struct ValueFetcher {
    segments: Arc<SegmentSet>,
    readers: Arc<ReaderCache>,
}

impl std::fmt::Debug for ValueFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValueFetcher")
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

impl ValueFetcher {
    /// A fetcher reading the segments of `segments` through `readers`.
    pub fn new(segments: Arc<SegmentSet>, readers: Arc<ReaderCache>) -> ValueFetcher {
        ValueFetcher { segments, readers }
    }

    /// True when segment `id` is in this fetcher's set.
    pub fn contains(&self, id: u64) -> bool {
        self.segments.contains_key(&id)
    }

    /// Decodes an encoded pointer; malformed bytes are corruption of the value log directory.
    pub fn decode(&self, ptr: &[u8]) -> Result<ValuePointer> {
        ValuePointer::decode(ptr).map_err(|e| {
            Error::corruption(
                self.readers.dir(),
                0,
                format!("malformed value pointer in a table entry: {e}"),
            )
        })
    }

    /// Reads the value an encoded pointer names.
    pub fn fetch(&self, ptr: &[u8]) -> Result<Vec<u8>> {
        let p = self.decode(ptr)?;
        self.fetch_pointer(p)
    }

    /// The (kind, stored value) of an entry with any value-log pointer replaced by the value
    /// itself: kind 3 becomes a put, kind 4 a put with its expiry in front.
    pub fn inline(&self, kind: u8, raw: &[u8]) -> Result<(u8, Vec<u8>)> {
        match Kind::from_u8(kind) {
            Some(Kind::ValuePointer) => Ok((Kind::Put as u8, self.fetch(raw)?)),
            Some(Kind::ValuePointerWithExpiry) => {
                let (expiry, ptr) = raw.split_at(raw.len().min(EXPIRY_LEN));
                let mut v = expiry.to_vec();
                v.extend_from_slice(&self.fetch(ptr)?);
                Ok((Kind::PutWithExpiry as u8, v))
            }
            _ => Ok((kind, raw.to_vec())),
        }
    }

    /// Reads the value `p` names; the segment must be in this fetcher's set.
    pub fn fetch_pointer(&self, p: ValuePointer) -> Result<Vec<u8>> {
        if !self.contains(p.segment) {
            return Err(Error::corruption(
                filename::vlog(self.readers.dir(), p.segment),
                p.offset,
                format!("value-log segment {} is not live", p.segment),
            ));
        }
        let v = self.readers.get(p.segment)?.read_value(p)?;
        self.readers.note_read(v.len());
        Ok(v)
    }
}
