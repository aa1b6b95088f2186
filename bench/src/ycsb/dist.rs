//! YCSB's key choosers: FNV key hashing, the zipfian generator of Gray et al. ("Quickly
//! generating billion-record synthetic databases", SIGMOD 1994) as YCSB implements it,
//! its scrambled variant, the "latest" distribution, and the acknowledged insert counter.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::gen::Mt19937_64;

/// YCSB's default zipfian constant.
pub const DEFAULT_THETA: f64 = 0.99;

/// Items of the zipfian generator behind YCSB's `ScrambledZipfianGenerator`.
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000;

/// YCSB's precomputed zeta(10^10, 0.99) (`ScrambledZipfianGenerator.ZETAN`).
pub const YCSB_ZETAN_099: f64 = 26.46902820178302;

const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
const FNV_PRIME_64: u64 = 1_099_511_628_211;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-end-first bytes, then Java's
/// `Math.abs` (which leaves `Long.MIN_VALUE` as it is; its bits are returned here).
pub fn fnvhash64(mut val: u64) -> u64 {
    let mut h = FNV_OFFSET_BASIS_64;
    for _ in 0..8 {
        h ^= val & 0xff;
        val >>= 8;
        h = h.wrapping_mul(FNV_PRIME_64);
    }
    (h as i64).wrapping_abs() as u64
}

/// Digits of the zero-padded key number (the longest `i64` in decimal).
pub const KEY_DIGITS: usize = 19;

/// Key of record `keynum`: `user` + the FNV-hashed number, zero-padded to 19 digits
/// (YCSB's `buildKeyName` with `insertorder=hashed` and `zeropadding=19`).
pub fn key_name(keynum: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    out.extend_from_slice(b"user");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:0width$}", fnvhash64(keynum), width = KEY_DIGITS);
}

/// Uniform double in [0, 1) from the top 53 bits of the generator.
pub fn next_f64(rng: &mut Mt19937_64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform integer in `[0, n)` (`n` > 0), by rejection so that it is unbiased.
pub fn uniform_below(rng: &mut Mt19937_64, n: u64) -> u64 {
    let n = n.max(1);
    let zone = u64::MAX - (u64::MAX % n);
    // Accepts with probability > 1/2 per draw; the bound only guards a broken generator.
    for _ in 0..64 {
        let v = rng.next_u64();
        if v < zone {
            return v % n;
        }
    }
    rng.next_u64() % n
}

/// Terms summed exactly before the Euler–Maclaurin tail takes over in [`zeta`].
const ZETA_EXACT_TERMS: u64 = 100_000;

/// `sum_{i=from+1}^{to} i^-theta`, summed term by term.
fn zeta_range(from: u64, to: u64, theta: f64) -> f64 {
    (from + 1..=to).map(|i| (i as f64).powf(-theta)).sum()
}

/// zeta(n, theta) = `sum_{i=1}^{n} i^-theta`: exact up to 100000 terms, beyond that the
/// rest by Euler–Maclaurin (integral + end corrections), accurate to ~1e-12 relative.
pub fn zeta(n: u64, theta: f64) -> f64 {
    if n <= ZETA_EXACT_TERMS {
        return zeta_range(0, n, theta);
    }
    let m = ZETA_EXACT_TERMS as f64;
    let nf = n as f64;
    let f = |x: f64| x.powf(-theta);
    let df = |x: f64| -theta * x.powf(-theta - 1.0);
    let d3f = |x: f64| -theta * (theta + 1.0) * (theta + 2.0) * x.powf(-theta - 3.0);
    let integral = if (theta - 1.0).abs() < 1e-12 {
        (nf / m).ln()
    } else {
        (nf.powf(1.0 - theta) - m.powf(1.0 - theta)) / (1.0 - theta)
    };
    // sum_{i=M}^{n} f(i) ~ integral + (f(M) + f(n))/2 + (f'(n) - f'(M))/12 - (f'''(n) - f'''(M))/720
    let tail =
        integral + (f(m) + f(nf)) / 2.0 + (df(nf) - df(m)) / 12.0 - (d3f(nf) - d3f(m)) / 720.0;
    zeta_range(0, ZETA_EXACT_TERMS - 1, theta) + tail
}

/// Checks a zipfian constant: positive, finite, and not 1 (where Gray's formula divides by
/// zero).
pub fn check_theta(theta: f64) -> Result<(), String> {
    if !(theta.is_finite() && theta > 0.0) {
        return Err(format!("zipfian constant must be positive, got {theta}"));
    }
    if (theta - 1.0).abs() < 1e-9 {
        return Err("zipfian constant must not be 1 (use e.g. 0.99 or 1.01)".into());
    }
    Ok(())
}

/// YCSB's `ZipfianGenerator` over `[0, items)`: item 0 is the most popular, item i has
/// weight `(i+1)^-theta`. Sampling is O(1) (Gray et al.'s inversion); growing `items`
/// extends zeta incrementally, as YCSB does.
#[derive(Debug, Clone)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    zeta2: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `[0, items)` (`items` >= 1) with constant `theta` (see
    /// [`check_theta`]); zeta(items) is computed here.
    pub fn new(items: u64, theta: f64) -> Self {
        let items = items.max(1);
        Self::with_zetan(items, theta, zeta(items, theta))
    }

    /// Like [`Zipfian::new`] with a known zeta(items, theta).
    pub fn with_zetan(items: u64, theta: f64, zetan: f64) -> Self {
        let items = items.max(1);
        let zeta2 = zeta(2, theta);
        let mut z = Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            zeta2,
            eta: 0.0,
        };
        z.eta = z.compute_eta();
        z
    }

    fn compute_eta(&self) -> f64 {
        (1.0 - (2.0 / self.items as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan)
    }

    /// Changes the item count, updating zeta by the added terms (or recomputing it when
    /// the count shrinks).
    pub fn set_items(&mut self, items: u64) {
        let items = items.max(1);
        if items == self.items {
            return;
        }
        if items > self.items && items - self.items <= ZETA_EXACT_TERMS {
            self.zetan += zeta_range(self.items, items, self.theta);
        } else {
            self.zetan = zeta(items, self.theta);
        }
        self.items = items;
        self.eta = self.compute_eta();
    }

    /// Next item in `[0, items)`.
    pub fn next(&self, rng: &mut Mt19937_64) -> u64 {
        let u = next_f64(rng);
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.items - 1);
        }
        let v = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.items - 1)
    }
}

/// YCSB's `ScrambledZipfianGenerator`: zipfian ranks over 10^10 items, hashed with FNV and
/// folded into `[0, count)`, so that popular keys are spread over the key space.
#[derive(Debug, Clone)]
pub struct ScrambledZipfian {
    zipf: Zipfian,
    count: u64,
}

impl ScrambledZipfian {
    /// Zeta over [`SCRAMBLED_ITEM_COUNT`] items for `theta` (YCSB's constant for 0.99).
    pub fn zetan(theta: f64) -> f64 {
        if theta == DEFAULT_THETA {
            YCSB_ZETAN_099
        } else {
            zeta(SCRAMBLED_ITEM_COUNT, theta)
        }
    }

    /// A generator over `[0, count)`; `zetan` comes from [`ScrambledZipfian::zetan`].
    pub fn new(count: u64, theta: f64, zetan: f64) -> Self {
        ScrambledZipfian {
            zipf: Zipfian::with_zetan(SCRAMBLED_ITEM_COUNT, theta, zetan),
            count: count.max(1),
        }
    }

    /// Next value in `[0, count)`.
    pub fn next(&self, rng: &mut Mt19937_64) -> u64 {
        fnvhash64(self.zipf.next(rng)) % self.count
    }
}

/// YCSB's `SkewedLatestGenerator`: the most recently inserted keys are the most popular
/// (the newest has zipfian rank 0).
#[derive(Debug, Clone)]
pub struct Latest {
    zipf: Zipfian,
}

impl Latest {
    /// A generator for a key space that currently holds `count` keys.
    pub fn new(count: u64, theta: f64) -> Self {
        Latest {
            zipf: Zipfian::new(count, theta),
        }
    }

    /// Next key number in `[0, count)`, where `count` is the current number of acknowledged
    /// keys (the zipfian is resized to it first).
    pub fn next(&mut self, rng: &mut Mt19937_64, count: u64) -> u64 {
        let count = count.max(1);
        self.zipf.set_items(count);
        count - 1 - self.zipf.next(rng)
    }
}

/// YCSB's `AcknowledgedCounterGenerator`: hands out insert key numbers, and tracks the
/// prefix of them whose inserts have completed, so that readers never pick a key still
/// being written.
#[derive(Debug)]
pub struct InsertCounter {
    next: AtomicU64,
    acked: AtomicU64,
    pending: Mutex<BTreeSet<u64>>,
}

impl InsertCounter {
    /// A counter whose keys `[0, start)` already exist.
    pub fn new(start: u64) -> Self {
        InsertCounter {
            next: AtomicU64::new(start),
            acked: AtomicU64::new(start),
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    /// Claims the next key number to insert.
    pub fn claim(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks `keynum`'s insert as complete.
    pub fn acknowledge(&self, keynum: u64) {
        let mut pending = match self.pending.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut limit = self.acked.load(Ordering::Acquire);
        if keynum != limit {
            pending.insert(keynum);
            return;
        }
        limit += 1;
        // Every pending entry is removed at most once, so this ends.
        while pending.remove(&limit) {
            limit += 1;
        }
        self.acked.store(limit, Ordering::Release);
    }

    /// Number of keys `[0, n)` that all exist.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(n: usize, draws: usize, mut f: impl FnMut() -> u64) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for _ in 0..draws {
            let v = f() as usize;
            assert!(v < n, "{v} out of range {n}");
            c[v] += 1;
        }
        c
    }

    #[test]
    fn fnv_matches_ycsb() {
        // FNV-1a of eight zero bytes, then Math.abs.
        let mut h = FNV_OFFSET_BASIS_64;
        for _ in 0..8 {
            h = h.wrapping_mul(FNV_PRIME_64);
        }
        assert_eq!(fnvhash64(0), (h as i64).wrapping_abs() as u64);
        assert!(fnvhash64(1) <= i64::MAX as u64);
        assert_ne!(fnvhash64(1), fnvhash64(2));
    }

    #[test]
    fn keys_have_fixed_width() {
        let mut k = Vec::new();
        key_name(0, &mut k);
        assert_eq!(k.len(), 4 + KEY_DIGITS);
        assert!(k.starts_with(b"user"));
        assert!(k[4..].iter().all(u8::is_ascii_digit));
        let s = String::from_utf8_lossy(&k[4..]).parse::<u64>().ok();
        assert_eq!(s, Some(fnvhash64(0)));
        let mut k2 = Vec::new();
        key_name(1, &mut k2);
        assert_eq!(k2.len(), k.len());
        assert_ne!(k, k2);
    }

    #[test]
    fn zeta_approximation() {
        // Against exact sums past the switch-over point.
        for theta in [0.5, 0.99, 1.01, 1.2] {
            let n = 3 * ZETA_EXACT_TERMS + 17;
            let exact = zeta_range(0, n, theta);
            let approx = zeta(n, theta);
            assert!(
                ((exact - approx) / exact).abs() < 1e-11,
                "{theta}: {exact} vs {approx}"
            );
        }
        // YCSB's hard-coded constant for 10^10 items.
        let z = zeta(SCRAMBLED_ITEM_COUNT, 0.99);
        assert!((z - YCSB_ZETAN_099).abs() < 1e-3, "{z}");
        assert_eq!(zeta(1, 0.99), 1.0);
    }

    #[test]
    fn zipfian_skew_matches_theory() {
        let n = 1000u64;
        let z = Zipfian::new(n, 0.99);
        let mut rng = Mt19937_64::new(1);
        let draws = 200_000;
        let c = counts(n as usize, draws, || z.next(&mut rng));
        let zn = zeta(n, 0.99);
        // P(0) = 1/zeta(n) ~ 13.4%, P(1) = 2^-0.99 / zeta(n).
        let p0 = c[0] as f64 / draws as f64;
        let p1 = c[1] as f64 / draws as f64;
        assert!((p0 - 1.0 / zn).abs() < 0.01, "p0 {p0}");
        assert!((p1 - 0.5f64.powf(0.99) / zn).abs() < 0.01, "p1 {p1}");
        // Rank order holds roughly, and the top 10% draw most of the requests.
        assert!(c[0] > c[1] && c[1] > c[10] && c[10] > c[500]);
        let top: u64 = c[..100].iter().sum();
        assert!(top as f64 / draws as f64 > 0.6, "top 10% {top}");
        // The tail is still reached.
        assert!(c[n as usize / 2..].iter().sum::<u64>() > 0);
    }

    #[test]
    fn higher_theta_is_more_skewed() {
        let n = 10_000u64;
        let mut rng = Mt19937_64::new(2);
        let share = |theta: f64, rng: &mut Mt19937_64| {
            let z = Zipfian::new(n, theta);
            (0..50_000).filter(|_| z.next(rng) < 10).count()
        };
        let a = share(0.5, &mut rng);
        let b = share(0.99, &mut rng);
        let c = share(1.01, &mut rng);
        let d = share(1.5, &mut rng);
        assert!(a < b && b <= c + 1500 && c < d, "{a} {b} {c} {d}");
    }

    #[test]
    fn scrambled_zipfian_spreads_hot_keys() {
        let n = 10_000u64;
        let g = ScrambledZipfian::new(n, 0.99, ScrambledZipfian::zetan(0.99));
        let mut rng = Mt19937_64::new(3);
        let draws = 200_000;
        let mut c = counts(n as usize, draws, || g.next(&mut rng));
        // The hottest key is rank 0: 1/26.47 = 3.8% of requests (plus collisions).
        let hottest = c.iter().position(|&x| x == *c.iter().max().unwrap_or(&0));
        let pmax = c.iter().max().copied().unwrap_or(0) as f64 / draws as f64;
        assert!((0.03..0.06).contains(&pmax), "pmax {pmax}");
        // It is rank 0 hashed, not key 0.
        assert_eq!(hottest, Some((fnvhash64(0) % n) as usize));
        c.sort_unstable_by(|a, b| b.cmp(a));
        let top1: u64 = c[..100].iter().sum();
        // The 100 hottest keys hold ranks 0..100 of 10^10: zeta(100)/zeta(10^10) = 19.6%,
        // a little more with collisions (YCSB's scrambled zipfian is flatter than a plain
        // zipfian over 10^4 keys, where they would hold 54%).
        let share = top1 as f64 / draws as f64;
        let theory = zeta(100, 0.99) / YCSB_ZETAN_099;
        assert!(
            share > theory - 0.01 && share < theory + 0.06,
            "top 1% {share}"
        );
        // Far from uniform, but most keys are touched.
        assert!(c.iter().filter(|&&x| x > 0).count() > (n as usize) / 2);
    }

    #[test]
    fn uniform_is_flat() {
        let mut rng = Mt19937_64::new(4);
        let draws = 200_000;
        let c = counts(1000, draws, || uniform_below(&mut rng, 1000));
        let max = c.iter().max().copied().unwrap_or(0);
        let min = c.iter().min().copied().unwrap_or(0);
        assert!(max < 300 && min > 100, "{min}..{max}");
    }

    #[test]
    fn latest_prefers_newest_and_follows_growth() {
        let mut rng = Mt19937_64::new(5);
        let mut g = Latest::new(1000, 0.99);
        let draws = 100_000;
        let c = counts(1000, draws, || g.next(&mut rng, 1000));
        assert_eq!(
            c.iter().position(|&x| x == *c.iter().max().unwrap_or(&0)),
            Some(999)
        );
        let recent: u64 = c[900..].iter().sum();
        assert!(recent as f64 / draws as f64 > 0.6, "recent {recent}");
        // After 1000 more inserts the hot spot moves to the new end of the key space.
        let c = counts(2000, draws, || g.next(&mut rng, 2000));
        assert_eq!(
            c.iter().position(|&x| x == *c.iter().max().unwrap_or(&0)),
            Some(1999)
        );
        assert!(c[..1000].iter().sum::<u64>() < c[1000..].iter().sum::<u64>() / 4);
        // Growing incrementally gives the same zeta as computing it afresh.
        let mut z = Zipfian::new(1000, 0.99);
        z.set_items(2000);
        assert!((z.zetan - zeta(2000, 0.99)).abs() < 1e-9);
        // A single key is always key 0.
        assert_eq!(g.next(&mut rng, 1), 0);
    }

    #[test]
    fn insert_counter_acks_contiguous_prefix() {
        let c = InsertCounter::new(10);
        let (a, b, d) = (c.claim(), c.claim(), c.claim());
        assert_eq!((a, b, d), (10, 11, 12));
        c.acknowledge(11);
        assert_eq!(c.acked(), 10);
        c.acknowledge(12);
        assert_eq!(c.acked(), 10);
        c.acknowledge(10);
        assert_eq!(c.acked(), 13);
        assert_eq!(c.claim(), 13);
    }

    #[test]
    fn theta_checks() {
        assert!(check_theta(0.99).is_ok());
        assert!(check_theta(1.01).is_ok());
        assert!(check_theta(1.0).is_err());
        assert!(check_theta(0.0).is_err());
        assert!(check_theta(f64::NAN).is_err());
    }
}
