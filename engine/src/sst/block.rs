//! Blocks: prefix-compressed entries followed by a restart-point array.
//!
//! Entry: `varint shared | varint unshared | varint value_len | key[shared..] | value`.
//! Block tail: `u32 LE restart offsets ... | u32 LE restart count`.

use std::cmp::Ordering;

use crate::codec::{put_varint, Reader};
use crate::key::{compare_internal, TRAILER_LEN};

/// Restart points between two samples of a [`RestartSample`].
const SAMPLE_STRIDE: usize = 16;

/// A decoded (uncompressed) block: entries followed by the restart array.
pub struct Block {
    data: Vec<u8>,
    restarts_offset: usize,
    num_restarts: usize,
    /// Index blocks: every [`SAMPLE_STRIDE`]-th restart key, for seeks.
    sample: Option<RestartSample>,
}

/// Every [`SAMPLE_STRIDE`]-th restart key of a large block, copied side by side.
///
/// A seek in a table's index block (one restart per data block: ~16k for a 64 MiB
/// table) binary-searches these first, a few KiB that stay in the CPU cache across
/// seeks, and then only one stride of the block, instead of ~14 restart points spread
/// over the whole block (two cache misses each).
struct RestartSample {
    /// The sampled keys, concatenated.
    keys: Vec<u8>,
    /// End of each sampled key in `keys`.
    ends: Vec<u32>,
}

impl RestartSample {
    fn key(&self, j: usize) -> &[u8] {
        let start = if j == 0 { 0 } else { self.ends[j - 1] as usize };
        &self.keys[start..self.ends[j] as usize]
    }

    /// The restart points (inclusive) holding the last one whose key is below `target`:
    /// what a binary search over all of them would narrow down to.
    fn window(&self, target: &[u8], num_restarts: usize) -> (usize, usize) {
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if compare_internal(self.key(mid), target) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        // `lo` samples sort below the target: the answer lies from the last of them
        // up to just before the next sample.
        match lo {
            0 => (0, 0),
            j => (
                (j - 1) * SAMPLE_STRIDE,
                (j * SAMPLE_STRIDE - 1).min(num_restarts - 1),
            ),
        }
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("len", &self.data.len())
            .field("num_restarts", &self.num_restarts)
            .finish()
    }
}

impl Block {
    /// Validates the restart array of `data`; `None` when it is malformed.
    pub(crate) fn new(data: Vec<u8>) -> Option<Block> {
        let len = data.len();
        if len < 4 {
            return None;
        }
        let n = u32::from_le_bytes([data[len - 4], data[len - 3], data[len - 2], data[len - 1]])
            as usize;
        if n == 0 {
            return None;
        }
        let tail = n.checked_mul(4)?.checked_add(4)?;
        if tail > len {
            return None;
        }
        let restarts_offset = len - tail;
        let block = Block {
            data,
            restarts_offset,
            num_restarts: n,
            sample: None,
        };
        let mut prev = 0;
        for i in 0..n {
            let r = block.restart_point(i);
            if r > restarts_offset || r < prev {
                return None;
            }
            prev = r;
        }
        Some(block)
    }

    /// Samples the restart keys of a block with many restart points (an index block), so
    /// seeks touch less of it; a block with a malformed restart entry is left unsampled
    /// (its seeks find the corruption as before).
    pub(crate) fn with_restart_sample(mut self) -> Block {
        if self.num_restarts <= 2 * SAMPLE_STRIDE {
            return self;
        }
        let mut keys = Vec::new();
        let mut ends = Vec::with_capacity(self.num_restarts.div_ceil(SAMPLE_STRIDE));
        for i in (0..self.num_restarts).step_by(SAMPLE_STRIDE) {
            let Some(k) = self.restart_key(i) else {
                return self;
            };
            keys.extend_from_slice(k);
            let Ok(end) = u32::try_from(keys.len()) else {
                return self;
            };
            ends.push(end);
        }
        self.sample = Some(RestartSample { keys, ends });
        self
    }

    /// Bytes this block occupies in memory (what the block cache charges).
    pub fn charge(&self) -> usize {
        let sample = self
            .sample
            .as_ref()
            .map_or(0, |s| s.keys.capacity() + 4 * s.ends.capacity());
        self.data.capacity() + std::mem::size_of::<Block>() + sample
    }

    /// Length of the decoded block contents.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the block holds no bytes (never true for a validated block).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    #[inline]
    fn restart_point(&self, i: usize) -> usize {
        let p = self.restarts_offset + 4 * i;
        let b = &self.data[p..p + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    /// The full key stored at restart point `i` (restart entries share no prefix).
    #[inline]
    fn restart_key(&self, i: usize) -> Option<&[u8]> {
        let off = self.restart_point(i);
        let (shared, unshared, _vlen, p) = decode_entry(&self.data, off, self.restarts_offset)?;
        if shared != 0 || unshared < TRAILER_LEN {
            return None;
        }
        let end = p.checked_add(unshared)?;
        if end > self.restarts_offset {
            return None;
        }
        Some(&self.data[p..end])
    }
}

/// Decodes an entry header at `off`: (shared, unshared, value_len, header end).
#[inline(always)]
fn decode_entry(data: &[u8], off: usize, limit: usize) -> Option<(usize, usize, usize, usize)> {
    if off + 3 <= limit {
        let (a, b, c) = (data[off], data[off + 1], data[off + 2]);
        if (a | b | c) < 0x80 {
            return Some((a as usize, b as usize, c as usize, off + 3));
        }
    }
    let mut r = Reader::new(data.get(off..limit)?);
    let s = usize::try_from(r.varint()?).ok()?;
    let u = usize::try_from(r.varint()?).ok()?;
    let v = usize::try_from(r.varint()?).ok()?;
    Some((s, u, v, off + r.position()))
}

/// Position state of a cursor over one block; the block and key buffer are passed in.
///
/// Splitting the state from the block lets point lookups borrow a block and a
/// caller-owned key buffer without reference counting or extra allocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct BlockCursor {
    cur: usize,
    next: usize,
    restart_idx: usize,
    val_start: usize,
    val_len: usize,
    /// True when positioned at an entry.
    pub(crate) valid: bool,
    /// True when a malformed entry was met.
    pub(crate) corrupt: bool,
}

impl BlockCursor {
    #[inline]
    fn set_corrupt(&mut self) {
        self.valid = false;
        self.corrupt = true;
    }

    #[inline]
    fn seek_to_restart(&mut self, b: &Block, key: &mut Vec<u8>, i: usize) {
        key.clear();
        self.restart_idx = i;
        self.next = b.restart_point(i);
        self.valid = false;
    }

    /// Decodes the entry at `self.next`; false at the end of the block or on corruption.
    #[inline]
    fn parse_next(&mut self, b: &Block, key: &mut Vec<u8>) -> bool {
        let off = self.next;
        let limit = b.restarts_offset;
        if off >= limit {
            self.valid = false;
            self.cur = limit;
            return false;
        }
        let Some((shared, unshared, vlen, p)) = decode_entry(&b.data, off, limit) else {
            self.set_corrupt();
            return false;
        };
        let kend = p.wrapping_add(unshared);
        let vend = kend.wrapping_add(vlen);
        if shared > key.len()
            || kend < p
            || vend < kend
            || vend > limit
            || shared + unshared < TRAILER_LEN
        {
            self.set_corrupt();
            return false;
        }
        key.truncate(shared);
        key.extend_from_slice(&b.data[p..kend]);
        self.val_start = kend;
        self.val_len = vlen;
        self.cur = off;
        self.next = vend;
        while self.restart_idx + 1 < b.num_restarts && b.restart_point(self.restart_idx + 1) <= off
        {
            self.restart_idx += 1;
        }
        self.valid = true;
        true
    }

    /// The value of the current entry.
    #[inline]
    pub(crate) fn value<'a>(&self, b: &'a Block) -> &'a [u8] {
        &b.data[self.val_start..self.val_start + self.val_len]
    }

    /// Positions at the first entry.
    pub(crate) fn seek_to_first(&mut self, b: &Block, key: &mut Vec<u8>) {
        self.corrupt = false;
        self.seek_to_restart(b, key, 0);
        self.parse_next(b, key);
    }

    /// Positions at the last entry.
    pub(crate) fn seek_to_last(&mut self, b: &Block, key: &mut Vec<u8>) {
        self.corrupt = false;
        self.seek_to_restart(b, key, b.num_restarts - 1);
        while self.parse_next(b, key) && self.next < b.restarts_offset {}
    }

    /// Positions at the first entry with key >= `target`.
    pub(crate) fn seek(&mut self, b: &Block, key: &mut Vec<u8>, target: &[u8]) {
        self.corrupt = false;
        let (mut left, mut right) = match &b.sample {
            Some(s) => s.window(target, b.num_restarts),
            None => (0, b.num_restarts - 1),
        };
        while left < right {
            let mid = (left + right).div_ceil(2);
            match b.restart_key(mid) {
                Some(k) => {
                    if compare_internal(k, target) == Ordering::Less {
                        left = mid;
                    } else {
                        right = mid - 1;
                    }
                }
                None => {
                    self.set_corrupt();
                    return;
                }
            }
        }
        self.seek_to_restart(b, key, left);
        while self.parse_next(b, key) {
            if compare_internal(key, target) != Ordering::Less {
                return;
            }
        }
    }

    /// Moves to the next entry.
    #[inline]
    pub(crate) fn next(&mut self, b: &Block, key: &mut Vec<u8>) {
        self.parse_next(b, key);
    }

    /// Moves to the previous entry (invalid before the first).
    pub(crate) fn prev(&mut self, b: &Block, key: &mut Vec<u8>) {
        let original = self.cur;
        while b.restart_point(self.restart_idx) >= original {
            if self.restart_idx == 0 {
                self.valid = false;
                self.cur = b.restarts_offset;
                self.next = b.restarts_offset;
                return;
            }
            self.restart_idx -= 1;
        }
        self.seek_to_restart(b, key, self.restart_idx);
        while self.parse_next(b, key) && self.next < original {}
    }
}

/// Builds one block with prefix compression and restart points.
#[derive(Debug)]
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    counter: usize,
    interval: usize,
    last_key: Vec<u8>,
    entries: usize,
}

/// Length of the common prefix of `a` and `b`.
#[inline]
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_ne_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_ne_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

impl BlockBuilder {
    /// A builder placing a restart point every `interval` entries.
    pub(crate) fn new(interval: usize, capacity: usize) -> BlockBuilder {
        BlockBuilder {
            buf: Vec::with_capacity(capacity),
            restarts: vec![0],
            counter: 0,
            interval: interval.max(1),
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Appends an entry; keys must arrive in increasing order.
    #[inline]
    pub(crate) fn add(&mut self, key: &[u8], value: &[u8]) {
        let shared = if self.entries == 0 {
            0
        } else if self.counter < self.interval {
            common_prefix(&self.last_key, key)
        } else {
            self.restarts.push(self.buf.len() as u32);
            self.counter = 0;
            0
        };
        let unshared = key.len() - shared;
        if shared < 0x80 && unshared < 0x80 && value.len() < 0x80 {
            self.buf
                .extend_from_slice(&[shared as u8, unshared as u8, value.len() as u8]);
        } else {
            put_varint(&mut self.buf, shared as u64);
            put_varint(&mut self.buf, unshared as u64);
            put_varint(&mut self.buf, value.len() as u64);
        }
        self.buf.extend_from_slice(&key[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.truncate(shared);
        self.last_key.extend_from_slice(&key[shared..]);
        self.counter += 1;
        self.entries += 1;
    }

    /// The most recently added key (kept across [`BlockBuilder::reset`]).
    #[inline]
    pub(crate) fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// True when no entry was added since the last reset.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Encoded size of the block if it were finished now.
    #[inline]
    pub(crate) fn estimated_size(&self) -> usize {
        self.buf.len() + self.restarts.len() * 4 + 4
    }

    /// Appends the restart array and returns the finished block contents.
    pub(crate) fn finish(&mut self) -> &[u8] {
        for r in &self.restarts {
            self.buf.extend_from_slice(&r.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        &self.buf
    }

    /// Clears the block for reuse (the last key is kept).
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.restarts.clear();
        self.restarts.push(0);
        self.counter = 0;
        self.entries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::make_internal_key;

    fn ik(i: u32) -> Vec<u8> {
        make_internal_key(format!("kkey{i:06}").as_bytes(), 7, 7, 1)
    }

    fn build(n: u32, interval: usize) -> Block {
        let mut b = BlockBuilder::new(interval, 4096);
        for i in 0..n {
            b.add(&ik(i * 2), format!("v{i}").as_bytes());
        }
        Block::new(b.finish().to_vec()).expect("valid block")
    }

    #[test]
    fn block_seek_next_prev() {
        for interval in [1, 3, 16] {
            let b = build(100, interval);
            let mut key = Vec::new();
            let mut c = BlockCursor::default();
            c.seek_to_first(&b, &mut key);
            let mut n = 0;
            while c.valid {
                assert_eq!(key, ik(n * 2));
                n += 1;
                c.next(&b, &mut key);
            }
            assert_eq!(n, 100);
            c.seek_to_last(&b, &mut key);
            let mut n = 100;
            while c.valid {
                n -= 1;
                assert_eq!(key, ik(n * 2));
                assert_eq!(c.value(&b), format!("v{n}").as_bytes());
                c.prev(&b, &mut key);
            }
            assert_eq!(n, 0);
            for t in 0..201 {
                c.seek(&b, &mut key, &ik(t));
                if t >= 199 {
                    assert!(!c.valid);
                } else {
                    assert_eq!(key, ik(t.div_ceil(2) * 2));
                }
            }
            assert!(!c.corrupt);
        }
    }

    #[test]
    fn sampled_seeks_land_where_full_binary_search_does() {
        // Sizes around the stride (unsampled, exact multiples, a partial last stride),
        // restart intervals of index (1) and data (3) blocks.
        for (n, interval) in [(20, 1), (33, 1), (100, 1), (160, 1), (1000, 1), (1000, 3)] {
            let plain = build(n, interval);
            let sampled = build(n, interval).with_restart_sample();
            assert_eq!(
                sampled.sample.is_some(),
                plain.num_restarts > 2 * SAMPLE_STRIDE,
                "n={n}"
            );
            let (mut k1, mut k2) = (Vec::new(), Vec::new());
            let (mut c1, mut c2) = (BlockCursor::default(), BlockCursor::default());
            // Every key, every gap, before the first and past the last.
            for t in 0..2 * n + 2 {
                let target = ik(t);
                c1.seek(&plain, &mut k1, &target);
                c2.seek(&sampled, &mut k2, &target);
                assert_eq!(
                    (c1.valid, c1.corrupt),
                    (c2.valid, c2.corrupt),
                    "n={n} t={t}"
                );
                if c1.valid {
                    assert_eq!(k1, k2, "n={n} t={t}");
                    assert_eq!(c1.value(&plain), c2.value(&sampled));
                }
                // Stepping from there is unchanged in both directions.
                if c2.valid {
                    c2.prev(&sampled, &mut k2);
                    if c2.valid {
                        assert_eq!(k2, ik(t.div_ceil(2) * 2 - 2), "n={n} t={t}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_malformed_restart_entry_leaves_the_block_unsampled() {
        let b = build(100, 1);
        let mut data = b.data.clone();
        let r = b.restart_point(3 * SAMPLE_STRIDE);
        data[r] = 5; // shared != 0 at a restart point
        let bad = Block::new(data)
            .expect("restart array valid")
            .with_restart_sample();
        assert!(bad.sample.is_none());
        let (mut key, mut c) = (Vec::new(), BlockCursor::default());
        c.seek(&bad, &mut key, &ik(3 * SAMPLE_STRIDE as u32 * 2 + 1));
        assert!(c.corrupt, "the seek still meets the bad entry");
    }

    #[test]
    fn empty_block_and_garbage() {
        let mut bb = BlockBuilder::new(16, 16);
        let b = Block::new(bb.finish().to_vec()).expect("empty block valid");
        let mut key = Vec::new();
        let mut c = BlockCursor::default();
        c.seek_to_first(&b, &mut key);
        assert!(!c.valid);
        c.seek_to_last(&b, &mut key);
        assert!(!c.valid);
        c.seek(&b, &mut key, &ik(3));
        assert!(!c.valid);
        assert!(Block::new(vec![1, 2]).is_none());
        assert!(Block::new(vec![0, 0, 0, 0]).is_none());
        assert!(Block::new(vec![9, 0, 0, 0, 1, 0, 0, 0]).is_none());
        // garbage entries never panic
        let mut data = vec![0xffu8; 40];
        data.extend_from_slice(&0u32.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        let b = Block::new(data).expect("restart array valid");
        c.seek_to_first(&b, &mut key);
        assert!(!c.valid && c.corrupt);
        c.seek(&b, &mut key, &ik(1));
        assert!(!c.valid && c.corrupt);
    }
}
