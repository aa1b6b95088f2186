//! A bump allocator whose chunks are allocated once and never move or shrink.
//!
//! Memory handed out stays valid (at the same address) until the arena drops,
//! so skiplist nodes can point at each other with raw pointers and readers
//! can hold slices into keys and values while the writer keeps allocating.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every allocation (enough for `u32` and pointer-sized atomics).
pub(crate) const ALIGN: usize = 8;

/// Smallest chunk size the arena uses.
const MIN_CHUNK: usize = 64 << 10;
/// Largest chunk size the arena uses.
const MAX_CHUNK: usize = 4 << 20;

/// A bump allocator over fixed-size, never-reallocated chunks.
///
/// Not thread-safe by itself: the memtable only touches it under its writer
/// mutex. Readers never look at the arena, only at memory it handed out.
pub(crate) struct Arena {
    /// Size of a regular chunk.
    chunk_size: usize,
    /// Next free byte in the current chunk (null before the first chunk).
    cur: *mut u8,
    /// Free bytes left after `cur` in the current chunk.
    remaining: usize,
    /// Every block allocated so far, freed on drop.
    blocks: Vec<(NonNull<u8>, Layout)>,
    /// Bytes handed out (including alignment padding), the memtable's size.
    used: usize,
    /// Bytes obtained from the system allocator.
    reserved: usize,
}

impl Arena {
    /// Creates an arena sized for about `capacity_hint` bytes (chunks of capacity/16, clamped).
    pub(crate) fn new(capacity_hint: usize) -> Arena {
        let chunk_size = (capacity_hint / 16).clamp(MIN_CHUNK, MAX_CHUNK);
        Arena {
            chunk_size: round_up(chunk_size),
            cur: std::ptr::null_mut(),
            remaining: 0,
            blocks: Vec::new(),
            used: 0,
            reserved: 0,
        }
    }

    /// Bytes handed out so far (including alignment padding).
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Bytes obtained from the system allocator so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn reserved(&self) -> usize {
        self.reserved
    }

    /// Returns `size` bytes (uninitialized, aligned to [`ALIGN`]) that live until the arena drops.
    #[inline]
    pub(crate) fn alloc(&mut self, size: usize) -> NonNull<u8> {
        self.bump(round_up(size.max(1)))
    }

    /// Returns `size` bytes with no alignment guarantee (for value bytes); `size` may be 0.
    ///
    /// Do not mix with [`Arena::alloc`] on one arena: it leaves the bump pointer unaligned.
    #[inline]
    pub(crate) fn alloc_bytes(&mut self, size: usize) -> NonNull<u8> {
        if size == 0 {
            return NonNull::dangling();
        }
        self.bump(size)
    }

    /// Hands out the next `size` bytes of the current chunk, or starts a new one.
    #[inline]
    fn bump(&mut self, size: usize) -> NonNull<u8> {
        self.used += size;
        if size <= self.remaining {
            let p = self.cur;
            // SAFETY: `cur..cur + remaining` lies inside the current chunk, and
            // `size <= remaining`, so the result stays in (or one past) that block.
            self.cur = unsafe { p.add(size) };
            self.remaining -= size;
            // SAFETY: `remaining > 0` implies a chunk exists, so `p` is non-null.
            return unsafe { NonNull::new_unchecked(p) };
        }
        self.alloc_slow(size)
    }

    /// Allocates a new chunk (or a dedicated block for a large request).
    #[cold]
    fn alloc_slow(&mut self, size: usize) -> NonNull<u8> {
        if size > self.chunk_size / 4 {
            // Large entries get their own block so the current chunk's tail is not wasted.
            return self.new_block(size);
        }
        let chunk = self.new_block(self.chunk_size);
        // SAFETY: the chunk is `chunk_size` bytes and `size <= chunk_size / 4`.
        self.cur = unsafe { chunk.as_ptr().add(size) };
        self.remaining = self.chunk_size - size;
        chunk
    }

    /// Allocates one block of `size` bytes from the system and records it for freeing.
    fn new_block(&mut self, size: usize) -> NonNull<u8> {
        let layout = match Layout::from_size_align(size, ALIGN) {
            Ok(l) => l,
            Err(_) => panic!("memtable arena block of {size} bytes is not a valid layout"),
        };
        // SAFETY: `layout` has non-zero size (every caller passes `size > 0`).
        let p = unsafe { alloc::alloc(layout) };
        let Some(p) = NonNull::new(p) else {
            alloc::handle_alloc_error(layout)
        };
        self.blocks.push((p, layout));
        self.reserved += size;
        p
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        for &(p, layout) in &self.blocks {
            // SAFETY: each block came from `alloc::alloc` with exactly this layout
            // and is freed once, here; nothing can reference it after the arena drops
            // (the memtable owning the arena is gone).
            unsafe { alloc::dealloc(p.as_ptr(), layout) };
        }
    }
}

/// Rounds `n` up to a multiple of [`ALIGN`].
#[inline]
pub(crate) const fn round_up(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_and_distinct() {
        let mut a = Arena::new(0);
        let mut ptrs = Vec::new();
        for i in 0..10_000usize {
            let size = 1 + (i * 37) % 300;
            let p = a.alloc(size);
            assert_eq!(p.as_ptr() as usize % ALIGN, 0);
            // SAFETY: the block is `size` bytes long and exclusively ours.
            unsafe { std::ptr::write_bytes(p.as_ptr(), (i % 251) as u8, size) };
            ptrs.push((p, size, (i % 251) as u8));
        }
        for (p, size, b) in ptrs {
            // SAFETY: the block was fully initialized above and is still live.
            let s = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
            assert!(s.iter().all(|&x| x == b));
        }
        assert!(a.used() <= a.reserved());
        let mut b = Arena::new(0);
        assert_eq!(b.alloc_bytes(0), NonNull::dangling());
        let p1 = b.alloc_bytes(3).as_ptr() as usize;
        let p2 = b.alloc_bytes(5).as_ptr() as usize;
        assert_eq!(p2, p1 + 3);
        assert_eq!(b.used(), 8);
        // A large block does not disturb the current chunk.
        let before = a.remaining;
        let big = a.alloc(1 << 20);
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.remaining, before);
    }
}
