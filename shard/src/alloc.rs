//! The process allocator of `nokv-server`: mimalloc for ordinary allocations, the
//! system allocator for large page-aligned blocks (glommio's io_uring buffers).
//!
//! Why split: glommio allocates each ring's registered buffer with the global
//! allocator (page-aligned, `io_memory` bytes). Served from a mimalloc segment, the
//! kernel charged the pinned pages well beyond the buffer (6 MiB pinned for 768 KiB of
//! buffers on 2 cores), which breaks the 8 MiB RLIMIT_MEMLOCK budget. glibc serves such
//! blocks from their own mapping, so exactly the buffer is pinned.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large and page-aligned go to the system allocator.
pub const SYSTEM_MIN_BYTES: usize = 64 << 10;
/// Alignment from which a large block counts as a page buffer.
pub const SYSTEM_MIN_ALIGN: usize = 4096;

/// mimalloc, except large page-aligned blocks (see the module docs).
pub struct NodeAllocator;

/// True when `layout` is served by the system allocator.
#[inline]
fn to_system(layout: &Layout) -> bool {
    layout.align() >= SYSTEM_MIN_ALIGN && layout.size() >= SYSTEM_MIN_BYTES
}

// SAFETY: every block is freed (and reallocated) by the allocator that made it: the
// choice depends only on the layout, which callers pass back unchanged; `realloc`
// moves a block across allocators by allocate + copy + free when its new size changes
// the choice.
unsafe impl GlobalAlloc for NodeAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if to_system(&layout) {
                System.alloc(layout)
            } else {
                mimalloc::MiMalloc.alloc(layout)
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if to_system(&layout) {
                System.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout, hence from this allocator.
        unsafe {
            if to_system(&layout) {
                System.dealloc(ptr, layout)
            } else {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid block of `layout` and a valid new size for
        // its alignment; each branch keeps the block with the allocator that owns it.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            match (to_system(&layout), to_system(&new_layout)) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => mimalloc::MiMalloc.realloc(ptr, layout, new_size),
                _ => {
                    let new = self.alloc(new_layout);
                    if !new.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_both_allocators_and_across_them_on_realloc() {
        let a = NodeAllocator;
        for (size, align) in [(24, 8), (100_000, 8), (128 << 10, 4096), (4096, 4096)] {
            let l = Layout::from_size_align(size, align).expect("layout");
            // SAFETY: a non-zero-size layout; the block is written within bounds and freed
            // with the same layout.
            unsafe {
                let p = a.alloc_zeroed(l);
                assert!(!p.is_null());
                assert!((p as usize).is_multiple_of(align));
                assert_eq!(*p.add(size - 1), 0);
                *p = 7;
                // Grow across the threshold (or within it) and back: contents survive.
                let grown = a.realloc(p, l, size.max(SYSTEM_MIN_BYTES) * 2);
                assert!(!grown.is_null());
                assert_eq!(*grown, 7);
                let gl =
                    Layout::from_size_align(size.max(SYSTEM_MIN_BYTES) * 2, align).expect("layout");
                let shrunk = a.realloc(grown, gl, 16);
                assert!(!shrunk.is_null());
                assert_eq!(*shrunk, 7);
                a.dealloc(shrunk, Layout::from_size_align(16, align).expect("layout"));
            }
        }
    }
}
