//! The id allocator: region, peer and store ids from one space, never 0, never repeated.
//!
//! Ids are handed out from a window below a persisted fence: before an id at or above the
//! fence is handed out, a new fence (`next + count + WINDOW`) is persisted. After a restart
//! (or a leader change) allocation continues at the fence, so ids handed out before are
//! never repeated; ids between the last handout and the fence are skipped.

use crate::error::{Error, Result};

/// Largest batch per call.
pub const MAX_BATCH: u32 = 10_000;
/// Ids reserved per persisted fence beyond the batch that needed it.
pub const WINDOW: u64 = 1000;

/// A batch to hand out: `first..first + count`, after persisting `new_fence` if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdPlan {
    /// The first id.
    pub first: u64,
    /// How many.
    pub count: u32,
    /// A fence to persist (and apply) before handing the batch out.
    pub new_fence: Option<u64>,
}

/// The allocator's state.
#[derive(Debug, Clone)]
pub struct IdAlloc {
    /// The next id to hand out.
    next: u64,
    /// Ids below this may have been handed out (persisted).
    fence: u64,
}

impl IdAlloc {
    /// The allocator after a restart or leader change: continues at the persisted fence.
    pub fn restored(fence: u64) -> IdAlloc {
        IdAlloc {
            next: fence.max(1),
            fence,
        }
    }

    /// The persisted fence.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// What to hand out for `count` ids.
    pub fn plan(&self, count: u32) -> Result<IdPlan> {
        if count == 0 || count > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "id count {count} not in 1..={MAX_BATCH}"
            )));
        }
        let end = self
            .next
            .checked_add(u64::from(count))
            .and_then(|e| e.checked_add(WINDOW))
            .ok_or_else(|| Error::InvalidArgument("id space exhausted".into()))?;
        let new_fence = (self.next + u64::from(count) > self.fence).then_some(end);
        Ok(IdPlan {
            first: self.next,
            count,
            new_fence,
        })
    }

    /// Records that `plan` was handed out (its fence, if any, persisted and applied).
    pub fn commit(&mut self, plan: &IdPlan) {
        debug_assert_eq!(plan.first, self.next);
        self.next = plan.first + u64::from(plan.count);
        debug_assert!(self.next <= self.fence);
    }

    /// Applies a persisted fence (never lowers it).
    pub fn raise_fence(&mut self, fence: u64) {
        self.fence = self.fence.max(fence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn take(a: &mut IdAlloc, n: u32) -> (u64, bool) {
        let p = a.plan(n).expect("plan");
        if let Some(f) = p.new_fence {
            a.raise_fence(f);
        }
        a.commit(&p);
        (p.first, p.new_fence.is_some())
    }

    #[test]
    fn ids_start_at_one_and_the_fence_is_saved_once_per_window() {
        let mut a = IdAlloc::restored(0);
        let (first, saved) = take(&mut a, 1);
        assert_eq!(first, 1);
        assert!(saved);
        let mut saves = 0;
        for _ in 0..1000 {
            saves += usize::from(take(&mut a, 1).1);
        }
        assert_eq!(
            saves, 0,
            "the window covers the batch and the next 1000 ids"
        );
        assert!(take(&mut a, 1).1);
    }

    #[test]
    fn ids_never_repeat_across_restarts() {
        let mut a = IdAlloc::restored(0);
        let mut seen = HashSet::new();
        for round in 0..50u32 {
            for _ in 0..(round % 7) {
                let (first, _) = take(&mut a, round % 5 + 1);
                for id in first..first + u64::from(round % 5 + 1) {
                    assert!(id > 0 && seen.insert(id), "id {id} repeated");
                }
            }
            a = IdAlloc::restored(a.fence());
        }
    }

    #[test]
    fn bad_counts_are_refused() {
        let a = IdAlloc::restored(0);
        assert!(a.plan(0).is_err());
        assert!(a.plan(MAX_BATCH + 1).is_err());
        assert!(IdAlloc::restored(u64::MAX - 10).plan(100).is_err());
    }
}
