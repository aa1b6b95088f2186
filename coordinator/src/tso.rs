//! The hybrid timestamp oracle: `physical_ms << 18 | logical`.
//!
//! Guarantees: every timestamp handed out is greater than every one before it, across clock
//! steps and restarts. A clock that steps back keeps the last physical time and advances
//! the logical part; a logical overflow moves to the next physical millisecond. Before a
//! timestamp with physical time above the persisted bound is handed out, a new bound
//! (`max(now, physical) + SAVE_WINDOW_MS`) is persisted; after a restart (or a leader
//! change) the oracle starts above the persisted bound.
//!
//! [`Tso`] is pure: [`Tso::plan`] says what to hand out and which bound must be persisted
//! first, [`Tso::commit`] records the handout, [`Tso::raise_bound`] applies a persisted bound.

use crate::error::{Error, Result};

/// Bits of the logical part.
pub const LOGICAL_BITS: u32 = 18;
/// Largest logical value.
pub const MAX_LOGICAL: u64 = (1 << LOGICAL_BITS) - 1;
/// Largest batch per call (a batch always fits in one physical millisecond).
pub const MAX_BATCH: u32 = 1 << 16;
/// How far ahead of the handed-out physical time the persisted bound is set.
pub const SAVE_WINDOW_MS: u64 = 3000;
/// The bound is raised once handouts come within this distance of it.
pub const SAVE_MARGIN_MS: u64 = 1000;
/// Physical times must stay below this (46 bits of milliseconds: year 4199).
pub const MAX_PHYSICAL_MS: u64 = 1 << (64 - LOGICAL_BITS);

/// A timestamp from its parts.
pub fn compose(physical_ms: u64, logical: u64) -> u64 {
    (physical_ms << LOGICAL_BITS) | (logical & MAX_LOGICAL)
}

/// The physical milliseconds of a timestamp.
pub fn physical(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// The logical part of a timestamp.
pub fn logical(ts: u64) -> u64 {
    ts & MAX_LOGICAL
}

/// A batch to hand out: `first..first + count`, after persisting `new_bound_ms` if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsPlan {
    /// The first timestamp.
    pub first: u64,
    /// How many.
    pub count: u32,
    /// A bound to persist (and apply) before handing the batch out.
    pub new_bound_ms: Option<u64>,
}

/// The oracle's state.
#[derive(Debug, Clone, Default)]
pub struct Tso {
    /// The last timestamp handed out (0: none yet).
    last: u64,
    /// Physical times up to this may have been handed out (persisted).
    bound_ms: u64,
}

impl Tso {
    /// The oracle after a restart or leader change: starts above the persisted bound.
    pub fn restored(bound_ms: u64) -> Tso {
        Tso {
            last: if bound_ms == 0 {
                0
            } else {
                compose(bound_ms, MAX_LOGICAL)
            },
            bound_ms,
        }
    }

    /// The persisted bound.
    pub fn bound_ms(&self) -> u64 {
        self.bound_ms
    }

    /// The last timestamp handed out (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// What to hand out for `count` timestamps at wall time `now_ms`.
    pub fn plan(&self, now_ms: u64, count: u32) -> Result<TsPlan> {
        if count == 0 || count > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "timestamp count {count} not in 1..={MAX_BATCH}"
            )));
        }
        let n = u64::from(count);
        let after_last = self.last.saturating_add(1);
        let mut first = if now_ms > physical(self.last) {
            compose(now_ms, 0)
        } else {
            // The clock stands still or went back: keep the last physical time.
            after_last
        };
        if logical(first) + n - 1 > MAX_LOGICAL {
            first = compose(physical(first) + 1, 0);
        }
        let end_phys = physical(first);
        if end_phys >= MAX_PHYSICAL_MS - SAVE_WINDOW_MS {
            return Err(Error::InvalidArgument(format!(
                "physical time {end_phys} ms is beyond the timestamp range"
            )));
        }
        let new_bound_ms = (end_phys + SAVE_MARGIN_MS > self.bound_ms).then(|| {
            end_phys.max(now_ms.min(MAX_PHYSICAL_MS - SAVE_WINDOW_MS - 1)) + SAVE_WINDOW_MS
        });
        Ok(TsPlan {
            first,
            count,
            new_bound_ms,
        })
    }

    /// Records that `plan` was handed out (its bound, if any, persisted and applied).
    pub fn commit(&mut self, plan: &TsPlan) {
        debug_assert!(plan.first > self.last);
        debug_assert!(physical(plan.first) <= self.bound_ms);
        self.last = plan.first + u64::from(plan.count) - 1;
    }

    /// Applies a persisted bound (never lowers it).
    pub fn raise_bound(&mut self, bound_ms: u64) {
        self.bound_ms = self.bound_ms.max(bound_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Plans, "persists" and commits one batch.
    fn take(t: &mut Tso, now: u64, count: u32) -> (u64, bool) {
        let p = t.plan(now, count).expect("plan");
        let saved = p.new_bound_ms.is_some();
        if let Some(b) = p.new_bound_ms {
            t.raise_bound(b);
        }
        t.commit(&p);
        (p.first, saved)
    }

    #[test]
    fn parts_compose_and_split() {
        let ts = compose(1_700_000_000_123, 77);
        assert_eq!(physical(ts), 1_700_000_000_123);
        assert_eq!(logical(ts), 77);
    }

    #[test]
    fn a_clock_that_steps_back_keeps_the_physical_time_and_advances_logical() {
        let mut t = Tso::default();
        let (a, _) = take(&mut t, 10_000, 1);
        let (b, _) = take(&mut t, 5_000, 1);
        let (c, _) = take(&mut t, 9_999, 4);
        assert!(a < b && b < c);
        assert_eq!(physical(b), 10_000);
        assert_eq!(logical(b), 1);
        assert_eq!(physical(c), 10_000);
        let (d, _) = take(&mut t, 10_001, 1);
        assert_eq!(d, compose(10_001, 0));
    }

    #[test]
    fn logical_overflow_moves_to_the_next_millisecond() {
        let mut t = Tso::default();
        let (a, _) = take(&mut t, 10_000, MAX_BATCH);
        let (b, _) = take(&mut t, 10_000, MAX_BATCH);
        let (c, _) = take(&mut t, 10_000, MAX_BATCH);
        let (d, _) = take(&mut t, 10_000, MAX_BATCH);
        // 4 x 65536 = 2^18: the fourth batch ends exactly at MAX_LOGICAL.
        assert_eq!(
            (a, b, c),
            (
                compose(10_000, 0),
                compose(10_000, 1 << 16),
                compose(10_000, 2 << 16)
            )
        );
        assert_eq!(d + u64::from(MAX_BATCH) - 1, compose(10_000, MAX_LOGICAL));
        let (e, _) = take(&mut t, 10_000, 2);
        assert_eq!(e, compose(10_001, 0));
        // A batch that would straddle two milliseconds starts at the next one.
        let (f, _) = take(&mut t, 10_001, MAX_BATCH);
        assert_eq!(f, compose(10_001, 2));
        let mut g = t.clone();
        let (h, _) = take(&mut g, 10_001, MAX_BATCH);
        let (i, _) = take(&mut g, 10_001, MAX_BATCH);
        let (j, _) = take(&mut g, 10_001, MAX_BATCH);
        assert!(h > f && i > h);
        assert_eq!(
            j,
            compose(10_002, 0),
            "the fourth batch does not fit in 10_001"
        );
    }

    #[test]
    fn the_bound_is_persisted_before_handing_out_beyond_it() {
        let mut t = Tso::default();
        let (_, saved) = take(&mut t, 10_000, 1);
        assert!(saved);
        assert_eq!(t.bound_ms(), 10_000 + SAVE_WINDOW_MS);
        let (_, saved) = take(&mut t, 10_500, 1);
        assert!(!saved, "inside the window: no save");
        let (_, saved) = take(&mut t, 12_500, 1);
        assert!(saved, "near the bound: raised");
        assert_eq!(t.bound_ms(), 12_500 + SAVE_WINDOW_MS);
        // A restart starts above the bound, even with the clock behind it.
        let before = t.last();
        let mut r = Tso::restored(t.bound_ms());
        let (x, _) = take(&mut r, 11_000, 1);
        assert!(x > before);
        assert_eq!(x, compose(12_500 + SAVE_WINDOW_MS + 1, 0));
    }

    #[test]
    fn bad_counts_are_refused() {
        let t = Tso::default();
        assert!(t.plan(1, 0).is_err());
        assert!(t.plan(1, MAX_BATCH + 1).is_err());
    }

    proptest! {
        #[test]
        fn timestamps_only_grow_under_any_clock_and_restarts(
            steps in proptest::collection::vec((0u64..20_000, 1u32..70_000, any::<bool>()), 1..200),
        ) {
            let mut t = Tso::default();
            let mut last = 0u64;
            for (now, count, restart) in steps {
                let count = count.min(MAX_BATCH);
                if restart {
                    t = Tso::restored(t.bound_ms());
                }
                let p = t.plan(1_000_000 + now, count).expect("plan");
                if let Some(b) = p.new_bound_ms {
                    t.raise_bound(b);
                }
                prop_assert!(p.first > last);
                let end = p.first + u64::from(count) - 1;
                prop_assert_eq!(physical(p.first), physical(end));
                prop_assert!(physical(end) <= t.bound_ms());
                t.commit(&p);
                last = end;
            }
        }
    }
}
