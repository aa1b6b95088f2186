//! The cursor interface shared by memtables, tables and merged views.

use crate::error::Result;

/// A bidirectional cursor over internal keys in [`crate::key::compare_internal`] order.
///
/// A cursor that hits an IO or corruption error becomes invalid and reports
/// the error from [`InternalIterator::status`].
pub trait InternalIterator: Send {
    /// True when the cursor points at an entry.
    fn valid(&self) -> bool;
    /// Positions at the first entry.
    fn seek_to_first(&mut self);
    /// Positions at the last entry.
    fn seek_to_last(&mut self);
    /// Positions at the first entry whose key is >= `target`.
    fn seek(&mut self, target: &[u8]);
    /// Positions at the last entry whose key is <= `target`.
    fn seek_for_prev(&mut self, target: &[u8]);
    /// Moves to the next entry; requires `valid()`.
    fn next(&mut self);
    /// Moves to the previous entry; requires `valid()`.
    fn prev(&mut self);
    /// The current internal key; requires `valid()`.
    fn key(&self) -> &[u8];
    /// The current value; requires `valid()`.
    fn value(&self) -> &[u8];
    /// The first error the cursor met, if any.
    fn status(&self) -> Result<()>;
}
