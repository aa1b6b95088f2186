//! A byte-rate limit shared by the threads that send region snapshots, so that a store's
//! snapshot traffic (disk reads and network) stays under one configured rate
//! (`--snapshot-max-bytes-per-sec`).
//!
//! A token bucket that refills at the rate and holds at most one second of it: a sender
//! takes its chunk's bytes and sleeps for the debt when the bucket runs dry, so a burst of
//! up to one second passes at once and the long-run rate never exceeds the limit, however
//! many senders share it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A shared byte-rate limit (see the module docs).
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    bucket: Mutex<Bucket>,
}

/// The bucket's state: the bytes that may pass now (negative: debt) as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `bytes` at `now` for a limit of `rate` bytes per second: how long the taker
    /// must wait before it sends them.
    fn take(&mut self, now: Instant, bytes: u64, rate: u64) -> Duration {
        let rate = rate as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        // At most one second of the rate is saved up.
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = self.at.max(now);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

impl RateLimiter {
    /// A limit of `bytes_per_sec` (at least 1), with a full bucket.
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        let bytes_per_sec = bytes_per_sec.max(1);
        RateLimiter {
            bytes_per_sec,
            bucket: Mutex::new(Bucket {
                tokens: bytes_per_sec as f64,
                at: Instant::now(),
            }),
        }
    }

    /// The limit in bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Takes `bytes` now: how long the caller must wait before sending them.
    pub fn reserve(&self, bytes: u64) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.take(Instant::now(), bytes, self.bytes_per_sec)
    }

    /// Takes `bytes`, sleeping the thread as long as the limit asks; returns the time slept.
    pub fn throttle(&self, bytes: u64) -> Duration {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(tokens: f64, at: Instant) -> Bucket {
        Bucket { tokens, at }
    }

    #[test]
    fn a_full_bucket_lets_one_second_pass_then_charges_the_debt() {
        let t0 = Instant::now();
        let mut b = bucket(1000.0, t0);
        assert_eq!(b.take(t0, 600, 1000), Duration::ZERO);
        assert_eq!(b.take(t0, 400, 1000), Duration::ZERO);
        // Dry: 500 bytes more wait half a second.
        assert_eq!(b.take(t0, 500, 1000), Duration::from_millis(500));
        // After that half second the debt is paid; the next 100 wait 0.1 s.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.take(t1, 100, 1000), Duration::from_millis(100));
    }

    #[test]
    fn an_idle_bucket_saves_up_at_most_one_second() {
        let t0 = Instant::now();
        let mut b = bucket(0.0, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(later, 1000, 1000), Duration::ZERO);
        assert_eq!(b.take(later, 1000, 1000), Duration::from_secs(1));
    }

    #[test]
    fn the_long_run_rate_is_the_limit_whatever_the_chunk_sizes() {
        // Senders that each sleep what they are told: the total time for N bytes past the
        // first second is N / rate.
        let t0 = Instant::now();
        let mut b = bucket(0.0, t0);
        let mut now = t0;
        let mut sent = 0u64;
        for (i, chunk) in [1u64, 4096, 65536, 7, 1 << 20, 300]
            .iter()
            .cycle()
            .take(600)
            .enumerate()
        {
            // Two senders interleave: one sleeps, the other takes at the same instant.
            let wait = b.take(now, *chunk, 1 << 20);
            if i % 2 == 0 {
                now += wait;
            }
            sent += chunk;
        }
        let slept = now.duration_since(t0).as_secs_f64();
        let ideal = sent as f64 / f64::from(1u32 << 20);
        assert!(
            slept <= ideal + 1e-6,
            "slept {slept} s for {sent} bytes at 1 MiB/s ({ideal} s)"
        );
        // The one sender that did not sleep owes the rest: the debt left covers it.
        let owed = b.take(now, 0, 1 << 20).as_secs_f64();
        assert!(
            (slept + owed - ideal).abs() < 1e-6,
            "slept {slept} + owed {owed} != {ideal}"
        );
    }

    #[test]
    fn a_shared_limiter_reserves_for_each_caller() {
        let l = RateLimiter::new(1000);
        assert_eq!(l.bytes_per_sec(), 1000);
        assert_eq!(l.reserve(1000), Duration::ZERO);
        // Dry now: the next caller owes up to a second (less what refilled since).
        let w = l.reserve(1000);
        assert!(w <= Duration::from_secs(1), "{w:?}");
        assert_eq!(RateLimiter::new(0).bytes_per_sec(), 1);
    }
}
