//! An arena-backed skiplist with one writer at a time and lock-free readers.
//!
//! Every node lives in an [`Arena`]: a fixed header, a tower of `height`
//! atomic next pointers, then the internal key (logical key + 8-byte
//! trailer), contiguously. Values live in a second arena so that nodes and
//! keys stay densely packed (searches touch far fewer cache lines and pages
//! when values are large). Nothing moves or is freed before the list drops,
//! so readers can follow raw pointers without any reclamation scheme.
//!
//! Publication: the writer fully initializes a node, then links it level by
//! level from the bottom with `Release` stores; readers follow links with
//! `Acquire` loads, which makes the node's header, key and value visible.
//!
//! Point lookups by logical key skip the descent: a hash index (buckets of
//! intrusive chains through the nodes) holds every node that became the first
//! entry of its logical key when inserted. The newest such node of a key in a
//! chain is the key's current first entry; a key with no node in its chain is
//! not in the list. Chains are pushed at the front with `Release` stores, after
//! the node is linked into the list.

use std::cmp::Ordering as CmpOrdering;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::arena::{Arena, ALIGN};
use crate::key::TRAILER_LEN;

/// Highest tower a node can have (branching factor 1/4: enough for ~16M entries per level span).
pub(crate) const MAX_HEIGHT: usize = 12;

/// Fixed node header; the tower, key and value follow it in the same arena block.
#[repr(C)]
pub(crate) struct Node {
    /// The value bytes, in the separate value arena (dangling when empty).
    value: *const u8,
    /// Length of the internal key (logical key + trailer).
    key_len: u32,
    /// Length of the value.
    value_len: u32,
    /// Number of next pointers in the tower.
    height: u32,
    /// Keeps the tower pointer-aligned.
    _pad: u32,
    /// Next node in this node's hash-index chain (null: end, or not in a chain).
    chain: AtomicPtr<Node>,
    /// Start of the tower: `height` next pointers, level 0 first.
    tower: [AtomicPtr<Node>; 0],
}

/// Byte size of the node header (the tower starts right after it).
const HEADER: usize = std::mem::size_of::<Node>();
/// Byte size of one tower slot.
const SLOT: usize = std::mem::size_of::<AtomicPtr<Node>>();

const _: () = {
    assert!(std::mem::align_of::<Node>() <= ALIGN);
    assert!(std::mem::align_of::<AtomicPtr<Node>>() <= ALIGN);
    assert!(HEADER.is_multiple_of(std::mem::align_of::<AtomicPtr<Node>>()));
    assert!(MAX_HEIGHT <= 32);
};

/// A search key split once into logical key and trailer (as a big-endian integer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// Namespace byte + user key.
    pub(crate) logical: &'a [u8],
    /// The trailer bytes read as a big-endian `u128`; ascending = internal key order.
    pub(crate) trailer: u128,
}

impl<'a> Target<'a> {
    /// Splits an internal key; keys shorter than a trailer sort before every entry of that logical key.
    #[inline]
    pub(crate) fn from_internal(ikey: &'a [u8]) -> Target<'a> {
        if ikey.len() < TRAILER_LEN {
            return Target {
                logical: ikey,
                trailer: 0,
            };
        }
        let (logical, t) = ikey.split_at(ikey.len() - TRAILER_LEN);
        Target {
            logical,
            trailer: read_trailer(t),
        }
    }
}

/// Reads the trailer bytes as a big-endian integer.
#[inline]
fn read_trailer(t: &[u8]) -> u128 {
    let mut b = [0u8; TRAILER_LEN];
    b.copy_from_slice(t);
    u128::from_be_bytes(b)
}

/// A published node of a live skiplist, valid for `'a`.
///
/// Invariant: `ptr` points at a fully initialized node that was reached
/// through the list's links (or is the head) and the list outlives `'a`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct NodeRef<'a> {
    ptr: NonNull<Node>,
    _list: PhantomData<&'a SkipList>,
}

impl<'a> NodeRef<'a> {
    /// Wraps a raw node pointer.
    ///
    /// # Safety
    /// `ptr` must point at an initialized node of a skiplist that stays alive for `'a`.
    #[inline]
    pub(crate) unsafe fn from_raw(ptr: NonNull<Node>) -> NodeRef<'a> {
        NodeRef {
            ptr,
            _list: PhantomData,
        }
    }

    /// The raw pointer, for storing in a cursor that keeps the list alive by other means.
    #[inline]
    pub(crate) fn as_raw(self) -> NonNull<Node> {
        self.ptr
    }

    /// The node header.
    #[inline]
    fn header(self) -> &'a Node {
        // SAFETY: by the type invariant the header is initialized and lives for 'a;
        // its plain fields are never written after publication.
        unsafe { self.ptr.as_ref() }
    }

    /// The tower slot for `level` (< height).
    #[inline]
    fn slot(self, level: usize) -> &'a AtomicPtr<Node> {
        debug_assert!(level < self.header().height as usize);
        // SAFETY: `level < height`, so the slot lies inside this node's arena block
        // (the raw pointer keeps the block's provenance); it was initialized with
        // `ptr::write` before the node was published and lives as long as the list.
        unsafe {
            &*ptr::addr_of!((*self.ptr.as_ptr()).tower)
                .cast::<AtomicPtr<Node>>()
                .add(level)
        }
    }

    /// The next node at `level`, if any (Acquire: sees the node fully initialized).
    #[inline]
    pub(crate) fn next(self, level: usize) -> Option<NodeRef<'a>> {
        let p = self.slot(level).load(Ordering::Acquire);
        // SAFETY: non-null links only ever point at initialized nodes of this list,
        // published with a Release store that this Acquire load synchronizes with.
        NonNull::new(p).map(|p| unsafe { NodeRef::from_raw(p) })
    }

    /// Address of the key bytes.
    #[inline]
    fn key_ptr(self) -> *const u8 {
        let h = self.header().height as usize;
        // SAFETY: the key starts right after the tower, inside the node's block.
        unsafe { self.ptr.as_ptr().cast::<u8>().add(HEADER + h * SLOT) }
    }

    /// The internal key (logical key + trailer).
    #[inline]
    pub(crate) fn key(self) -> &'a [u8] {
        let len = self.header().key_len as usize;
        // SAFETY: `key_len` initialized bytes follow the tower; they are never
        // written again after publication and live as long as the list.
        unsafe { std::slice::from_raw_parts(self.key_ptr(), len) }
    }

    /// The value.
    #[inline]
    pub(crate) fn value(self) -> &'a [u8] {
        let hdr = self.header();
        // SAFETY: `value` points at `value_len` initialized bytes in the value arena
        // (or is dangling with length 0), immutable after publication and alive as
        // long as the list.
        unsafe { std::slice::from_raw_parts(hdr.value, hdr.value_len as usize) }
    }

    /// Compares this node's key with `t` in internal key order.
    #[inline]
    pub(crate) fn cmp(self, t: &Target<'_>) -> CmpOrdering {
        let k = self.key();
        let (logical, trailer) = k.split_at(k.len() - TRAILER_LEN);
        match logical.cmp(t.logical) {
            CmpOrdering::Equal => read_trailer(trailer).cmp(&t.trailer),
            o => o,
        }
    }
}

/// State only the (single, serialized) writer touches.
struct Writer {
    /// Where nodes (header, tower, key) are allocated: dense, so searches touch few pages.
    arena: Arena,
    /// Where values are allocated (byte-aligned).
    values: Arena,
    /// xorshift64 state for tower heights.
    rng: u64,
    /// Last node inserted (null before the first insert).
    last: *const Node,
    /// For each level, the last node at that level positioned at or before `last` (head if none).
    splice: [*const Node; MAX_HEIGHT],
}

impl Writer {
    /// Draws a tower height: 1 + geometric with p = 1/4, capped at MAX_HEIGHT.
    #[inline]
    fn random_height(&mut self) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let mut h = 1;
        let mut bits = x;
        while h < MAX_HEIGHT && bits & 3 == 0 {
            h += 1;
            bits >>= 2;
        }
        h
    }
}

/// The skiplist: ordered by internal key, insert-only, one writer at a time.
pub(crate) struct SkipList {
    /// Sentinel with a MAX_HEIGHT tower and an empty key; never compared.
    head: NonNull<Node>,
    /// Current tower height of the list (only grows).
    max_height: AtomicUsize,
    /// Number of entries.
    len: AtomicUsize,
    /// Arena bytes used, mirrored for lock-free readers.
    bytes: AtomicUsize,
    /// Hash index by logical key: chain heads (see the module docs); a power-of-two count.
    buckets: Box<[AtomicPtr<Node>]>,
    /// Writer state; the mutex serializes inserts.
    writer: Mutex<Writer>,
}

/// Searches [`SkipList::insert_many`] runs side by side.
const INTERLEAVE: usize = 8;

/// One entry for [`SkipList::insert_many`].
pub(crate) struct NewEntry<'a> {
    /// Namespace byte + column family byte + user key.
    pub(crate) logical: &'a [u8],
    /// Encoded (version, sequence, kind).
    pub(crate) trailer: [u8; TRAILER_LEN],
    /// Stored value.
    pub(crate) value: &'a [u8],
}

impl NewEntry<'_> {
    /// The entry's position in internal key order.
    #[inline]
    fn target(&self) -> Target<'_> {
        Target {
            logical: self.logical,
            trailer: u128::from_be_bytes(self.trailer),
        }
    }
}

/// The state of one search of [`SkipList::insert_many`].
struct Search<'l> {
    /// Last node known to sort before the key, at `level`.
    x: NodeRef<'l>,
    level: usize,
    /// `x`'s successor at `level` (prefetched), to compare next.
    next: Option<NodeRef<'l>>,
    /// Predecessor per level, filled from the top down.
    prev: [NodeRef<'l>; MAX_HEIGHT],
    done: bool,
}

/// Asks the CPU to start loading a node's header and the start of its key.
#[inline]
fn prefetch(n: NodeRef<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = n.ptr.as_ptr().cast::<i8>();
        // SAFETY: prefetching is a hint without memory effects; the addresses lie in (or
        // just past) a live node of the arena, and prefetches never fault.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                p.wrapping_add(64),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = n;
}

/// Expected memtable bytes per hash-index bucket: with 100-byte values about one entry
/// per chain; the 8-byte buckets add ~6% to the arena.
const BYTES_PER_BUCKET: usize = 128;
/// Fewest hash-index buckets.
const MIN_BUCKETS: usize = 64;

/// Hash of a logical key for the index (fast, not DoS-resistant: chains only cost time).
#[inline]
fn hash_key(k: &[u8]) -> u64 {
    const M: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (k.len() as u64).wrapping_mul(M);
    let mut chunks = k.chunks_exact(8);
    for c in &mut chunks {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(M).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(M).rotate_left(29);
    }
    h ^ (h >> 32)
}

/// The logical-key part of an internal key.
#[inline]
fn logical_of(ikey: &[u8]) -> &[u8] {
    &ikey[..ikey.len() - TRAILER_LEN]
}

// SAFETY: the raw pointers inside point into the list's own arena, which is
// freed only on drop. Nodes are immutable after publication except their
// atomic links; mutation of links and the arena happens only under the writer
// mutex, and readers use Acquire loads that pair with the writer's Release stores.
unsafe impl Send for SkipList {}
// SAFETY: see the `Send` impl; shared access is either atomic or read-only.
unsafe impl Sync for SkipList {}

impl SkipList {
    /// Creates an empty list whose arena expects about `capacity_hint` bytes.
    pub(crate) fn new(capacity_hint: usize) -> SkipList {
        let mut arena = Arena::new(capacity_hint);
        let head = arena.alloc(HEADER + MAX_HEIGHT * SLOT).cast::<Node>();
        // SAFETY: the block is large enough for a header plus MAX_HEIGHT slots and
        // aligned to ALIGN (>= the alignment of Node and AtomicPtr); we are its only user.
        unsafe { init_node(head, NonNull::dangling(), 0, 0, MAX_HEIGHT) };
        let nbuckets = (capacity_hint / BYTES_PER_BUCKET)
            .max(MIN_BUCKETS)
            .next_power_of_two();
        let buckets: Box<[AtomicPtr<Node>]> = (0..nbuckets)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect();
        let index_bytes = nbuckets * std::mem::size_of::<AtomicPtr<Node>>();
        SkipList {
            head,
            max_height: AtomicUsize::new(1),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(arena.used() + index_bytes),
            buckets,
            writer: Mutex::new(Writer {
                arena,
                values: Arena::new(capacity_hint),
                rng: 0x2545_f491_4f6c_dd1d,
                last: ptr::null(),
                splice: [head.as_ptr().cast_const(); MAX_HEIGHT],
            }),
        }
    }

    /// The head sentinel.
    #[inline]
    pub(crate) fn head(&self) -> NodeRef<'_> {
        // SAFETY: the head was initialized in `new` and lives as long as `self`.
        unsafe { NodeRef::from_raw(self.head) }
    }

    /// Number of entries.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Arena bytes used.
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Arena bytes obtained from the system (test introspection).
    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        let w = self.writer.lock();
        w.arena.reserved() + w.values.reserved()
    }

    /// Inserts `logical ++ trailer` → `value`; an identical key already present is shadowed.
    pub(crate) fn insert(&self, logical: &[u8], trailer: [u8; TRAILER_LEN], value: &[u8]) {
        let mut w = self.writer.lock();
        self.insert_locked(&mut w, logical, trailer, value);
    }

    /// Inserts several entries under one lock; the same result as inserting them one by
    /// one, in any order. A batch that sorts after every entry of the list goes
    /// through the append path of [`SkipList::insert`]; otherwise the entries are sorted
    /// and the searches of [`INTERLEAVE`] of them are interleaved, each prefetching the
    /// next node it needs, so their cache misses overlap instead of following each other.
    pub(crate) fn insert_many(&self, entries: &mut [NewEntry<'_>]) {
        entries.sort_unstable_by(|a, b| {
            a.logical
                .cmp(b.logical)
                .then_with(|| u128::from_be_bytes(a.trailer).cmp(&u128::from_be_bytes(b.trailer)))
        });
        let mut w = self.writer.lock();
        // Appends: the batch sorts after the list's last node, which the last insert was.
        let appends = match (NonNull::new(w.last.cast_mut()), entries.first()) {
            (Some(last), Some(first)) => {
                // SAFETY: `last` is a published node of this list.
                let last = unsafe { NodeRef::from_raw(last) };
                last.next(0).is_none() && last.cmp(&first.target()).is_lt()
            }
            _ => true,
        };
        if appends || entries.len() < 2 {
            for e in entries.iter() {
                self.insert_locked(&mut w, e.logical, e.trailer, e.value);
            }
            return;
        }
        let head = self.head();
        for chunk in entries.chunks(INTERLEAVE) {
            let top = self.max_height.load(Ordering::Relaxed) - 1;
            let mut searches: [Search<'_>; INTERLEAVE] = std::array::from_fn(|_| Search {
                x: head,
                level: top,
                next: head.next(top),
                prev: [head; MAX_HEIGHT],
                done: false,
            });
            let mut running = chunk.len();
            while running > 0 {
                for (s, e) in searches.iter_mut().zip(chunk) {
                    if s.done {
                        continue;
                    }
                    // One step per search and turn: the node compared now was prefetched
                    // one turn ago.
                    match s.next {
                        Some(n) if n.cmp(&e.target()).is_lt() => {
                            s.x = n;
                            s.next = n.next(s.level);
                        }
                        _ => {
                            s.prev[s.level] = s.x;
                            if s.level == 0 {
                                s.done = true;
                                running -= 1;
                                continue;
                            }
                            s.level -= 1;
                            s.next = s.x.next(s.level);
                        }
                    }
                    if let Some(n) = s.next {
                        prefetch(n);
                    }
                }
            }
            for (s, e) in searches.iter_mut().zip(chunk) {
                // Entries of this chunk linked since the search may now sit between a
                // predecessor and the new key: step over them (they are in cache).
                let t = e.target();
                for (level, p) in s.prev.iter_mut().enumerate() {
                    while let Some(n) = p.next(level) {
                        if !n.cmp(&t).is_lt() {
                            break;
                        }
                        *p = n;
                    }
                }
                let node = self.new_node(&mut w, e.logical, e.trailer, e.value);
                self.link(&mut w, node, &s.prev, e.logical);
            }
        }
    }

    /// Allocates and fills an unpublished node with a random height.
    fn new_node<'l>(
        &'l self,
        w: &mut Writer,
        logical: &[u8],
        trailer: [u8; TRAILER_LEN],
        value: &[u8],
    ) -> NodeRef<'l> {
        let key_len = logical.len() + TRAILER_LEN;
        assert!(
            key_len <= u32::MAX as usize && value.len() <= u32::MAX as usize,
            "memtable entry too large"
        );
        let height = w.random_height();
        let vp = w.values.alloc_bytes(value.len());
        // SAFETY: `vp` is valid for `value.len()` bytes (dangling only when that is 0)
        // and unseen by anyone until the node pointing at it is linked.
        unsafe { ptr::copy_nonoverlapping(value.as_ptr(), vp.as_ptr(), value.len()) };
        let raw = w
            .arena
            .alloc(HEADER + height * SLOT + key_len)
            .cast::<Node>();
        // SAFETY: the fresh block holds header, tower and key, aligned for Node;
        // nobody else can see it until it is linked.
        unsafe {
            init_node(raw, vp, key_len, value.len(), height);
            let kp = raw.as_ptr().cast::<u8>().add(HEADER + height * SLOT);
            ptr::copy_nonoverlapping(logical.as_ptr(), kp, logical.len());
            ptr::copy_nonoverlapping(trailer.as_ptr(), kp.add(logical.len()), TRAILER_LEN);
        }
        // SAFETY: initialized just above; the list (self) outlives the returned borrow.
        unsafe { NodeRef::from_raw(raw) }
    }

    /// Links an unpublished `node` after its predecessors `prev` (one per level, at
    /// least its height), pushes it on its hash chain if it is its key's first entry,
    /// and records it as the last insert.
    fn link<'l>(
        &'l self,
        w: &mut Writer,
        node: NodeRef<'l>,
        prev: &[NodeRef<'l>; MAX_HEIGHT],
        logical: &[u8],
    ) {
        let height = node.header().height as usize;
        let raw = node.ptr;
        if height > self.max_height.load(Ordering::Relaxed) {
            // Readers that see the new height before the links find null (or the
            // new node) at the new levels from the head, both of which are fine.
            self.max_height.store(height, Ordering::Relaxed);
        }
        for (i, p) in prev.iter().enumerate().take(height) {
            let succ = p.slot(i).load(Ordering::Relaxed);
            // The node is unpublished: a relaxed store is enough.
            node.slot(i).store(succ, Ordering::Relaxed);
            // Publish: pairs with readers' Acquire loads.
            p.slot(i).store(raw.as_ptr(), Ordering::Release);
        }
        for (i, s) in w.splice.iter_mut().enumerate() {
            *s = if i < height {
                raw.as_ptr()
            } else {
                prev[i].ptr.as_ptr()
            };
        }
        // The node is now its key's first entry unless its predecessor has the same key:
        // then push it on its hash chain (after linking, so a reader that finds it in the
        // chain can walk on from it through the list).
        let head = self.head();
        let first_of_key = prev[0] == head || logical_of(prev[0].key()) != logical;
        if first_of_key {
            let bucket = &self.buckets[self.bucket_of(logical)];
            node.header()
                .chain
                .store(bucket.load(Ordering::Relaxed), Ordering::Relaxed);
            bucket.store(raw.as_ptr(), Ordering::Release);
        }
        w.last = raw.as_ptr();
        self.len.fetch_add(1, Ordering::Relaxed);
        let index_bytes = self.buckets.len() * std::mem::size_of::<AtomicPtr<Node>>();
        self.bytes.store(
            w.arena.used() + w.values.used() + index_bytes,
            Ordering::Relaxed,
        );
    }

    /// [`SkipList::insert`] with the writer lock held.
    fn insert_locked(
        &self,
        w: &mut Writer,
        logical: &[u8],
        trailer: [u8; TRAILER_LEN],
        value: &[u8],
    ) {
        let target = Target {
            logical,
            trailer: u128::from_be_bytes(trailer),
        };
        let node = self.new_node(w, logical, trailer, value);

        let head = self.head();
        let list_height = self.max_height.load(Ordering::Relaxed);
        let mut prev = [head; MAX_HEIGHT];
        // Find where to start descending. If the new key sorts after the last
        // inserted one, the cached splice gives valid predecessors on every level
        // from the lowest level whose successor is >= the key (O(1) for appends).
        let (mut x, mut level) = match NonNull::new(w.last.cast_mut()) {
            // SAFETY: `last` is a published node of this list.
            Some(last) if unsafe { NodeRef::from_raw(last) }.cmp(&target).is_lt() => {
                // SAFETY: splice entries are published nodes of this list (or the head).
                let sp = |l: usize| unsafe {
                    NodeRef::from_raw(NonNull::new_unchecked(w.splice[l].cast_mut()))
                };
                let mut l = 0;
                while l + 1 < list_height {
                    match sp(l).next(l) {
                        Some(n) if n.cmp(&target).is_lt() => l += 1,
                        _ => break,
                    }
                }
                for (i, p) in prev.iter_mut().enumerate().skip(l + 1) {
                    *p = sp(i);
                }
                (sp(l), l)
            }
            _ => (head, list_height - 1),
        };
        let mut bigger: Option<NodeRef<'_>> = None;
        loop {
            loop {
                match x.next(level) {
                    Some(n) if Some(n) != bigger && n.cmp(&target).is_lt() => x = n,
                    n => {
                        bigger = n;
                        break;
                    }
                }
            }
            prev[level] = x;
            if level == 0 {
                break;
            }
            level -= 1;
        }
        self.link(w, node, &prev, logical);
    }

    /// Bucket of a logical key.
    #[inline]
    fn bucket_of(&self, logical: &[u8]) -> usize {
        (hash_key(logical) as usize) & (self.buckets.len() - 1)
    }

    /// The first entry (highest version, newest write) of `logical`, found through the
    /// hash index; None when the key has no entry.
    #[inline]
    pub(crate) fn find_first_of(&self, logical: &[u8]) -> Option<NodeRef<'_>> {
        let mut p = self.buckets[self.bucket_of(logical)].load(Ordering::Acquire);
        while let Some(nn) = NonNull::new(p) {
            // SAFETY: chains only hold published nodes of this list, pushed with a Release
            // store (bucket) or written before it (chain links) that the Acquire loads see.
            let n = unsafe { NodeRef::from_raw(nn) };
            if logical_of(n.key()) == logical {
                return Some(n);
            }
            p = n.header().chain.load(Ordering::Acquire);
        }
        None
    }

    /// First node with key >= `t`.
    #[inline]
    pub(crate) fn find_ge(&self, t: &Target<'_>) -> Option<NodeRef<'_>> {
        let mut x = self.head();
        let mut level = self.max_height.load(Ordering::Relaxed) - 1;
        let mut bigger: Option<NodeRef<'_>> = None;
        loop {
            let n = x.next(level);
            match n {
                Some(n) if Some(n) != bigger && n.cmp(t).is_lt() => x = n,
                _ => {
                    if level == 0 {
                        return n;
                    }
                    bigger = n;
                    level -= 1;
                }
            }
        }
    }

    /// Last node with key < `t` (`or_equal`: <= `t`); None if there is none.
    #[inline]
    pub(crate) fn find_before(&self, t: &Target<'_>, or_equal: bool) -> Option<NodeRef<'_>> {
        // Advance while `node.cmp(t) < limit`: Less only, or Less and Equal.
        let limit = if or_equal {
            CmpOrdering::Greater
        } else {
            CmpOrdering::Equal
        };
        let head = self.head();
        let mut x = head;
        let mut level = self.max_height.load(Ordering::Relaxed) - 1;
        loop {
            match x.next(level) {
                Some(n) if n.cmp(t) < limit => x = n,
                _ => {
                    if level == 0 {
                        return (x != head).then_some(x);
                    }
                    level -= 1;
                }
            }
        }
    }

    /// The last node, if any.
    #[inline]
    pub(crate) fn find_last(&self) -> Option<NodeRef<'_>> {
        let head = self.head();
        let mut x = head;
        let mut level = self.max_height.load(Ordering::Relaxed) - 1;
        loop {
            match x.next(level) {
                Some(n) => x = n,
                None => {
                    if level == 0 {
                        return (x != head).then_some(x);
                    }
                    level -= 1;
                }
            }
        }
    }
}

/// Writes a node header and a tower of null links.
///
/// # Safety
/// `p` must be valid for writes of `HEADER + height * SLOT` bytes, aligned for
/// `Node`, and not yet visible to any other thread.
unsafe fn init_node(
    p: NonNull<Node>,
    value: NonNull<u8>,
    key_len: usize,
    value_len: usize,
    height: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        p.as_ptr().write(Node {
            value: value.as_ptr(),
            key_len: key_len as u32,
            value_len: value_len as u32,
            height: height as u32,
            _pad: 0,
            chain: AtomicPtr::new(ptr::null_mut()),
            tower: [],
        });
        let tower = ptr::addr_of_mut!((*p.as_ptr()).tower).cast::<AtomicPtr<Node>>();
        for i in 0..height {
            tower.add(i).write(AtomicPtr::new(ptr::null_mut()));
        }
    }
}
