//! Cache-line-blocked bloom filter over logical keys.
//!
//! The filter is an array of 64-byte lines. A key's 64-bit hash picks one line
//! (from the high 32 bits) and sets `k` bits inside it by double hashing on the
//! low 32 bits, so a probe touches a single cache line.

/// Bits in one filter line.
const LINE_BITS: u32 = 512;
/// Bytes in one filter line.
const LINE_BYTES: usize = 64;
/// Bytes after the bit array: probe count (u8) and line count (u32 LE).
const FILTER_TAIL: usize = 5;

/// MurmurHash64A of `data` with a fixed seed: the hash the filter stores.
#[inline]
pub fn bloom_hash(data: &[u8]) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    const SEED: u64 = 0x4e6f_4b56_b100_f11e;
    let mut h = SEED ^ (data.len() as u64).wrapping_mul(M);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut k = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let rem = chunks.remainder();
    if !rem.is_empty() {
        let mut t = 0u64;
        for (i, b) in rem.iter().enumerate() {
            t |= (*b as u64) << (8 * i);
        }
        h ^= t;
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// Probe positions (bit index within a line) for `h`: `(a + i*b) mod 512`.
#[inline(always)]
fn probe_params(h: u64) -> (u32, u32) {
    let lo = h as u32;
    (lo, lo.rotate_right(16) | 1)
}

#[inline(always)]
fn line_of(h: u64, num_lines: u32) -> usize {
    (((h >> 32) * num_lines as u64) >> 32) as usize
}

/// Collects key hashes and builds the filter block contents.
#[derive(Debug)]
pub(crate) struct FilterBuilder {
    hashes: Vec<u64>,
    bits_per_key: usize,
}

impl FilterBuilder {
    /// A builder sizing the filter at `bits_per_key` bits per added key.
    pub(crate) fn new(bits_per_key: usize) -> FilterBuilder {
        FilterBuilder {
            hashes: Vec::new(),
            bits_per_key,
        }
    }

    /// Adds a key by its [`bloom_hash`].
    #[inline]
    pub(crate) fn add_hash(&mut self, h: u64) {
        self.hashes.push(h);
    }

    /// Approximate size of the finished filter in bytes.
    pub(crate) fn estimated_size(&self) -> usize {
        self.hashes.len() * self.bits_per_key / 8 + LINE_BYTES + FILTER_TAIL
    }

    /// Encodes the filter: `bits[num_lines * 64] | k u8 | num_lines u32 LE`.
    pub(crate) fn finish(&self) -> Vec<u8> {
        let total_bits = (self.hashes.len() as u64)
            .saturating_mul(self.bits_per_key as u64)
            .max(1);
        let num_lines = total_bits.div_ceil(LINE_BITS as u64).min(u32::MAX as u64) as u32;
        let k = ((self.bits_per_key as f64) * std::f64::consts::LN_2).round() as u32;
        let k = k.clamp(1, 30);
        let mut out = vec![0u8; num_lines as usize * LINE_BYTES + FILTER_TAIL];
        for &h in &self.hashes {
            let base = line_of(h, num_lines) * LINE_BYTES;
            let line = &mut out[base..base + LINE_BYTES];
            let (mut a, b) = probe_params(h);
            for _ in 0..k {
                let bit = (a % LINE_BITS) as usize;
                line[bit >> 3] |= 1 << (bit & 7);
                a = a.wrapping_add(b);
            }
        }
        let t = num_lines as usize * LINE_BYTES;
        out[t] = k as u8;
        out[t + 1..t + 5].copy_from_slice(&num_lines.to_le_bytes());
        out
    }
}

/// A decoded bloom filter, held in memory by an open table.
#[derive(Debug)]
pub(crate) struct BloomFilter {
    data: Vec<u8>,
    num_lines: u32,
    k: u32,
}

impl BloomFilter {
    /// Parses filter block contents; `None` when malformed.
    pub(crate) fn new(mut data: Vec<u8>) -> Option<BloomFilter> {
        if data.len() < FILTER_TAIL {
            return None;
        }
        let t = data.len() - FILTER_TAIL;
        let k = data[t] as u32;
        let num_lines = u32::from_le_bytes([data[t + 1], data[t + 2], data[t + 3], data[t + 4]]);
        if num_lines == 0 || k == 0 || k > 30 || (num_lines as usize).checked_mul(LINE_BYTES)? != t
        {
            return None;
        }
        data.truncate(t);
        Some(BloomFilter { data, num_lines, k })
    }

    /// False when the key with hash `h` is definitely absent.
    #[inline]
    pub(crate) fn may_contain_hash(&self, h: u64) -> bool {
        let base = line_of(h, self.num_lines) * LINE_BYTES;
        let line = &self.data[base..base + LINE_BYTES];
        let (mut a, b) = probe_params(h);
        for _ in 0..self.k {
            let bit = (a % LINE_BITS) as usize;
            if line[bit >> 3] & (1 << (bit & 7)) == 0 {
                return false;
            }
            a = a.wrapping_add(b);
        }
        true
    }

    /// Bytes held in memory.
    pub(crate) fn memory(&self) -> usize {
        self.data.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_low_fp_rate() {
        let n = 100_000u32;
        let mut fb = FilterBuilder::new(10);
        for i in 0..n {
            fb.add_hash(bloom_hash(format!("kuser{i}").as_bytes()));
        }
        let f = BloomFilter::new(fb.finish()).expect("valid filter");
        for i in 0..n {
            assert!(f.may_contain_hash(bloom_hash(format!("kuser{i}").as_bytes())));
        }
        let probes = 200_000u32;
        let fp = (0..probes)
            .filter(|i| f.may_contain_hash(bloom_hash(format!("kother{i}").as_bytes())))
            .count();
        let rate = fp as f64 / probes as f64;
        assert!(rate < 0.02, "false positive rate {rate}");
        assert!(rate > 0.002, "suspiciously low false positive rate {rate}");
    }

    #[test]
    fn small_and_empty_filters() {
        let fb = FilterBuilder::new(10);
        let f = BloomFilter::new(fb.finish()).expect("valid");
        assert!(!f.may_contain_hash(bloom_hash(b"kx")));
        let mut fb = FilterBuilder::new(10);
        fb.add_hash(bloom_hash(b"ka"));
        let f = BloomFilter::new(fb.finish()).expect("valid");
        assert!(f.may_contain_hash(bloom_hash(b"ka")));
        assert!(BloomFilter::new(vec![1, 2, 3]).is_none());
        assert!(BloomFilter::new(vec![0; 10]).is_none());
    }
}
