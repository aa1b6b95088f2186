//! The gateway's storage boundary on a core's engine, clipped to one region:
//! reads see only the region's keys; applies write unlogged at the entry's index.

use nokv::{Db, KeySpace, WriteBatch};
use nokv_gateway::store::{ReadView, StateView};
use nokv_raft::RegionDescriptor;

/// One region's slice of a core's engine.
pub struct RegionView<'a> {
    db: &'a Db,
    start: &'a [u8],
    end: &'a [u8],
    /// (region, index) recorded with every applied batch; None for reads.
    applied: Option<(u64, u64)>,
}

impl<'a> RegionView<'a> {
    /// A read-only view of `region`.
    pub fn read(db: &'a Db, region: &'a RegionDescriptor) -> RegionView<'a> {
        RegionView {
            db,
            start: &region.start_key,
            end: &region.end_key,
            applied: None,
        }
    }

    /// A view that applies raft entry `index` of `region`.
    pub fn apply(db: &'a Db, region: &'a RegionDescriptor, index: u64) -> RegionView<'a> {
        RegionView {
            db,
            start: &region.start_key,
            end: &region.end_key,
            applied: Some((region.id, index)),
        }
    }
}

impl ReadView for RegionView<'_> {
    fn get(&self, space: KeySpace, key: &[u8]) -> nokv_gateway::Result<Option<Vec<u8>>> {
        ReadView::get(self.db, space, key)
    }

    fn scan(
        &self,
        space: KeySpace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> nokv_gateway::Result<()> {
        let lo = start.max(self.start);
        let hi = match (end, self.end.is_empty()) {
            (None, true) => None,
            (None, false) => Some(self.end),
            (Some(e), true) => Some(e),
            (Some(e), false) => Some(e.min(self.end)),
        };
        if hi.is_some_and(|h| h <= lo) {
            return Ok(());
        }
        ReadView::scan(self.db, space, lo, hi, visit)
    }
}

impl StateView for RegionView<'_> {
    fn commit(&mut self, batch: WriteBatch) -> nokv_gateway::Result<()> {
        // The raft entry in the WAL is this data's log record: do not log it again.
        Ok(self.db.apply_unlogged(&batch, self.applied)?)
    }
}
