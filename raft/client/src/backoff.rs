//! Exponential backoff with jitter, bounded by a deadline.

use std::time::{Duration, Instant};

/// The least time an attempt after a delay is given before the deadline: a retry with less
/// would only time out, and hide the error the caller last saw behind a timeout.
pub const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// Delays between retries: each is drawn in `[d/2, d]` ("equal jitter") where `d` starts at
/// `initial` and doubles up to `max`; no delay leaves less than [`MIN_ATTEMPT`] before the
/// deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    rng: u64,
}

/// Spreads a seed's bits (splitmix64), so nearby seeds give unrelated sequences.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Backoff::with_seed(initial, max, seed)
    }

    /// [`Backoff::new`] with a fixed jitter seed (tests).
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            next: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
            rng: splitmix(seed) | 1,
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: plenty for jitter, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next delay (never closer than [`MIN_ATTEMPT`] to `deadline`; zero once that is
    /// passed).
    pub fn next_delay(&mut self, deadline: Instant) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let span = (d - half).as_micros().max(1) as u64;
        let pick = half + Duration::from_micros(self.random() % (span + 1));
        pick.min(room(deadline))
    }

    /// Sleeps the next delay; false, without sleeping, when the deadline leaves no room
    /// for another attempt (less than [`MIN_ATTEMPT`]): the caller returns its last error.
    pub fn sleep(&mut self, deadline: Instant) -> bool {
        if room(deadline).is_zero() {
            return false;
        }
        let d = self.next_delay(deadline);
        std::thread::sleep(d);
        true
    }
}

/// How long one may wait before `deadline` and still leave [`MIN_ATTEMPT`] for an attempt.
fn room(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(MIN_ATTEMPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_are_capped() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut b = Backoff::with_seed(Duration::from_millis(10), Duration::from_millis(100), 42);
        let mut nominal = Duration::from_millis(10);
        for _ in 0..20 {
            let d = b.next_delay(far);
            assert!(
                d >= nominal / 2 && d <= nominal,
                "{d:?} outside [{:?}, {nominal:?}]",
                nominal / 2
            );
            nominal = (nominal * 2).min(Duration::from_millis(100));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(1), seed);
            seen.insert(b.next_delay(far));
        }
        assert!(
            seen.len() > 10,
            "jitter gave {} distinct delays",
            seen.len()
        );
    }

    #[test]
    fn no_delay_leaves_less_than_an_attempt_before_the_deadline() {
        let mut b = Backoff::with_seed(Duration::from_secs(10), Duration::from_secs(10), 7);
        let deadline = Instant::now() + Duration::from_millis(200);
        assert!(b.next_delay(deadline) <= Duration::from_millis(200) - MIN_ATTEMPT);
        // Too close to the deadline for another attempt: no sleep, no retry.
        let near = Instant::now() + MIN_ATTEMPT / 2;
        assert_eq!(b.next_delay(near), Duration::ZERO);
        assert!(!b.sleep(near));
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap_or_else(Instant::now);
        assert_eq!(b.next_delay(past), Duration::ZERO);
        assert!(!b.sleep(past));
    }
}
