//! Reconnect delays: exponential, capped, with jitter so that the cores of a store (and
//! the stores of a cluster) do not reconnect to a restarted store in lockstep.

use std::time::Duration;

/// Bounds of the reconnect delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The delay before the first retry (before jitter).
    pub initial: Duration,
    /// The largest delay, whatever the number of failures.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

/// Delays between attempts: after `n` failures in a row the delay is drawn from
/// `[d/2, d]` with `d = min(initial * 2^n, max)` ("equal jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// A backoff with no failures yet; `seed` varies the jitter (e.g. store and core ids).
    pub fn new(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff {
            config,
            failures: 0,
            // splitmix64 must not start at a fixed point of the generator's state.
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let max = self.config.max.max(Duration::from_millis(1));
        let base = self.config.initial.min(max);
        let ceiling = base
            .checked_mul(1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(max)
            .min(max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let span = (ceiling - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_random() % (span + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts again at the initial delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// splitmix64: good enough for jitter, no dependency.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delays_grow_then_stay_under_the_cap() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(1000),
        };
        let mut b = Backoff::new(cfg, 1);
        let delays: Vec<Duration> = (0..40).map(|_| b.next_delay()).collect();
        for (n, d) in delays.iter().enumerate() {
            let ceiling = (cfg.initial * 2u32.saturating_pow(n.min(20) as u32)).min(cfg.max);
            assert!(
                *d >= ceiling / 2 && *d <= ceiling,
                "attempt {n}: {d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        // Past the cap every delay is in [max/2, max].
        assert!(delays[10..].iter().all(|d| *d >= cfg.max / 2));
        assert_eq!(b.failures(), 40);
        b.reset();
        assert!(b.next_delay() <= cfg.initial);
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let cfg = BackoffConfig::default();
        let run = |seed| {
            let mut b = Backoff::new(cfg, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(run(1), run(2));
        assert_eq!(run(3), run(3));
    }

    proptest! {
        #[test]
        fn every_delay_is_bounded_whatever_the_config(
            initial_ms in 0u64..100_000, max_ms in 0u64..100_000, seed in any::<u64>(), n in 1usize..200,
        ) {
            let cfg = BackoffConfig {
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
            };
            let mut b = Backoff::new(cfg, seed);
            let cap = cfg.max.max(Duration::from_millis(1));
            for _ in 0..n {
                prop_assert!(b.next_delay() <= cap);
            }
        }
    }
}
