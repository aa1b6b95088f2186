//! Key and value generation, bit-compatible with RocksDB's db_bench.

/// `std::mt19937_64`, the generator behind db_bench's `Random64` (used for key choice).
#[derive(Clone)]
pub struct Mt19937_64 {
    mt: Box<[u64; Self::NN]>,
    idx: usize,
}

impl Mt19937_64 {
    const NN: usize = 312;
    const MM: usize = 156;
    const MATRIX_A: u64 = 0xB502_6F5A_A966_19E9;
    const UPPER: u64 = 0xFFFF_FFFF_8000_0000;
    const LOWER: u64 = 0x7FFF_FFFF;

    /// Seeds the generator exactly like `std::mt19937_64(seed)`.
    pub fn new(seed: u64) -> Self {
        let mut mt = Box::new([0u64; Self::NN]);
        mt[0] = seed;
        for i in 1..Self::NN {
            let prev = mt[i - 1];
            mt[i] = 6364136223846793005u64
                .wrapping_mul(prev ^ (prev >> 62))
                .wrapping_add(i as u64);
        }
        Mt19937_64 { mt, idx: Self::NN }
    }

    fn twist(&mut self) {
        for i in 0..Self::NN {
            let x = (self.mt[i] & Self::UPPER) | (self.mt[(i + 1) % Self::NN] & Self::LOWER);
            let mut xa = x >> 1;
            if x & 1 != 0 {
                xa ^= Self::MATRIX_A;
            }
            self.mt[i] = self.mt[(i + Self::MM) % Self::NN] ^ xa;
        }
        self.idx = 0;
    }

    /// Next 64-bit output (db_bench's `Random64::Next()`).
    pub fn next_u64(&mut self) -> u64 {
        if self.idx >= Self::NN {
            self.twist();
        }
        let mut x = self.mt[self.idx];
        self.idx += 1;
        x ^= (x >> 29) & 0x5555_5555_5555_5555;
        x ^= (x << 17) & 0x71D6_7FFF_EDA6_0000;
        x ^= (x << 37) & 0xFFF7_EEE0_0000_0000;
        x ^= x >> 43;
        x
    }
}

/// RocksDB's `Random` (Park-Miller "minimal standard" generator), used to build values.
pub struct LehmerRandom {
    seed: u32,
}

impl LehmerRandom {
    const M: u32 = 2147483647;
    const A: u64 = 16807;

    /// Seeds like `rocksdb::Random(s)`.
    pub fn new(s: u32) -> Self {
        let mut seed = s & 0x7fff_ffff;
        if seed == 0 || seed == Self::M {
            seed = 1;
        }
        LehmerRandom { seed }
    }

    /// Next value in `[1, 2^31-2]`.
    pub fn next_u32(&mut self) -> u32 {
        let product = u64::from(self.seed) * Self::A;
        let mut seed = ((product >> 31) + (product & u64::from(Self::M))) as u32;
        if seed > Self::M {
            seed -= Self::M;
        }
        self.seed = seed;
        seed
    }

    /// Uniform value in `[0, n)`.
    pub fn uniform(&mut self, n: u32) -> u32 {
        self.next_u32() % n
    }
}

/// `test::CompressibleString`: `len` bytes that compress to about `ratio` of their size.
fn compressible_string(rnd: &mut LehmerRandom, ratio: f64, len: usize, dst: &mut Vec<u8>) {
    let raw = ((len as f64 * ratio) as usize).max(1);
    let raw_data: Vec<u8> = (0..raw).map(|_| b' ' + rnd.uniform(95) as u8).collect();
    dst.clear();
    while dst.len() < len {
        dst.extend_from_slice(&raw_data);
    }
    dst.truncate(len);
}

/// db_bench's `RandomGenerator`: a ring of at least 1 MiB of value bytes handed out in slices.
pub struct ValueGenerator {
    data: Vec<u8>,
    pos: usize,
}

impl ValueGenerator {
    /// Builds the same buffer as db_bench for `--value_size` and `--compression_ratio`.
    pub fn new(value_size: usize, compression_ratio: f64) -> Self {
        let mut rnd = LehmerRandom::new(301);
        let target = value_size.max(1 << 20);
        let mut data = Vec::with_capacity(target + 100);
        let mut piece = Vec::with_capacity(100);
        while data.len() < target {
            compressible_string(&mut rnd, compression_ratio, 100, &mut piece);
            data.extend_from_slice(&piece);
        }
        ValueGenerator { data, pos: 0 }
    }

    /// The next `len` bytes of the ring (`len` must not exceed the ring size).
    pub fn generate(&mut self, len: usize) -> &[u8] {
        if self.pos + len > self.data.len() {
            self.pos = 0;
        }
        self.pos += len;
        &self.data[self.pos - len..self.pos]
    }
}

/// db_bench's `GenerateKeyFromInt` without prefixes: the low `min(key_size, 8)` bytes of
/// `v` big-endian, then ASCII `'0'` padding up to `key_size`.
pub fn key_from_int(v: u64, key_size: usize, key: &mut Vec<u8>) {
    key.clear();
    let fill = key_size.min(8);
    for i in 0..fill {
        key.push((v >> ((fill - i - 1) * 8)) as u8);
    }
    key.resize(key_size, b'0');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_64_matches_the_standard() {
        // C++11 [rand.predef]: the 10000th output of a default-constructed mt19937_64.
        let mut g = Mt19937_64::new(5489);
        let mut last = 0;
        for _ in 0..10000 {
            last = g.next_u64();
        }
        assert_eq!(last, 9981545732273789042);
    }

    #[test]
    fn lehmer_matches_park_miller() {
        // Park & Miller: seed 1, the 10000th value is 1043618065.
        let mut r = LehmerRandom::new(1);
        let mut last = 0;
        for _ in 0..10000 {
            last = r.next_u32();
        }
        assert_eq!(last, 1043618065);
    }

    #[test]
    fn keys_match_db_bench_layout() {
        let mut k = Vec::new();
        key_from_int(0, 16, &mut k);
        assert_eq!(k, b"\0\0\0\0\0\0\0\x0000000000");
        key_from_int(0x0102_0304_0506_0708, 16, &mut k);
        assert_eq!(k, b"\x01\x02\x03\x04\x05\x06\x07\x0800000000");
        key_from_int(258, 10, &mut k);
        assert_eq!(k, b"\0\0\0\0\0\0\x01\x0200");
        // Shorter than 8 bytes: the low bytes, big-endian.
        key_from_int(0x0102_0304, 4, &mut k);
        assert_eq!(k, b"\x01\x02\x03\x04");
        key_from_int(7, 8, &mut k);
        assert_eq!(k, b"\0\0\0\0\0\0\0\x07");
    }

    #[test]
    fn keys_sort_like_integers() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for v in [0u64, 1, 255, 256, 65535, 1 << 40] {
            key_from_int(v, 16, &mut a);
            key_from_int(v + 1, 16, &mut b);
            assert!(a < b);
        }
    }

    #[test]
    fn values_are_printable_and_sized() {
        let mut g = ValueGenerator::new(1000, 1.0);
        assert!(g.data.len() >= 1 << 20);
        let v = g.generate(1000).to_vec();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|b| (b' '..=b'~').contains(b)));
        assert_ne!(v, g.generate(1000));
        // Compression ratio 0.5 repeats each 50-byte run twice per 100-byte piece.
        let mut h = ValueGenerator::new(100, 0.5);
        let p = h.generate(100);
        assert_eq!(p[..50], p[50..]);
    }

    #[test]
    fn values_match_real_db_bench() {
        // Values stored by db_bench 7.8.3 (--value_size=100, default --compression_ratio=0.5),
        // read back with `ldb scan`.
        let g = ValueGenerator::new(100, 0.5);
        for half in [
            &b"yI@-1uT^;@*Ss^&<Y(|B0iL*Gg?,mOUw(0_Z5I?E+e}&EW?+A6"[..],
            &b"YSWKIN!'yglu^oPPp-=EvM$:+a8j6,aadA4~[R::}8:&!o4]}R"[..],
        ] {
            let value = [half, half].concat();
            assert!(
                g.data.chunks(100).any(|c| c == value.as_slice()),
                "{}",
                String::from_utf8_lossy(half)
            );
        }
    }

    #[test]
    fn value_ring_wraps() {
        let mut g = ValueGenerator::new(100, 1.0);
        let n = g.data.len();
        for _ in 0..(n / 100) + 5 {
            assert_eq!(g.generate(100).len(), 100);
        }
        assert!(g.pos <= n);
    }
}
