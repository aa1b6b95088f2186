//! Cursors that combine other cursors: a k-way merge, and a walk over one sorted level.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::error::Result;
use crate::iter::InternalIterator;
use crate::key::{compare_internal, logical_key};
use crate::options::BlockRead;
use crate::sst::TableIterator;
use crate::version::FileMeta;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Reverse,
}

/// Merges children into one cursor in internal-key order.
///
/// Children are kept few (memtables, L0 files, one cursor per deeper level), so
/// the current child is found by a linear scan, which serves both directions.
pub struct MergingIterator {
    children: Vec<Box<dyn InternalIterator>>,
    current: Option<usize>,
    direction: Direction,
}

impl MergingIterator {
    /// Merges `children`; earlier children win ties (none occur: sequences are unique).
    pub fn new(children: Vec<Box<dyn InternalIterator>>) -> Self {
        MergingIterator {
            children,
            current: None,
            direction: Direction::Forward,
        }
    }

    fn find_smallest(&mut self) {
        let mut best: Option<usize> = None;
        for (i, c) in self.children.iter().enumerate() {
            if c.valid() {
                best = match best {
                    Some(b)
                        if compare_internal(c.key(), self.children[b].key()) != Ordering::Less =>
                    {
                        Some(b)
                    }
                    _ => Some(i),
                };
            }
        }
        self.current = best;
    }

    fn find_largest(&mut self) {
        let mut best: Option<usize> = None;
        for (i, c) in self.children.iter().enumerate().rev() {
            if c.valid() {
                best = match best {
                    Some(b)
                        if compare_internal(c.key(), self.children[b].key())
                            != Ordering::Greater =>
                    {
                        Some(b)
                    }
                    _ => Some(i),
                };
            }
        }
        self.current = best;
    }
}

impl InternalIterator for MergingIterator {
    fn valid(&self) -> bool {
        self.current.is_some()
    }

    fn seek_to_first(&mut self) {
        for c in &mut self.children {
            c.seek_to_first();
        }
        self.direction = Direction::Forward;
        self.find_smallest();
    }

    fn seek_to_last(&mut self) {
        for c in &mut self.children {
            c.seek_to_last();
        }
        self.direction = Direction::Reverse;
        self.find_largest();
    }

    fn seek(&mut self, target: &[u8]) {
        for c in &mut self.children {
            c.seek(target);
        }
        self.direction = Direction::Forward;
        self.find_smallest();
    }

    fn seek_for_prev(&mut self, target: &[u8]) {
        for c in &mut self.children {
            c.seek_for_prev(target);
        }
        self.direction = Direction::Reverse;
        self.find_largest();
    }

    fn next(&mut self) {
        let Some(cur) = self.current else { return };
        if self.direction != Direction::Forward {
            // Move every other child to the first entry after the current key.
            let key = self.children[cur].key().to_vec();
            for (i, c) in self.children.iter_mut().enumerate() {
                if i != cur {
                    c.seek(&key);
                    if c.valid() && compare_internal(c.key(), &key) == Ordering::Equal {
                        c.next();
                    }
                }
            }
            self.direction = Direction::Forward;
        }
        self.children[cur].next();
        self.find_smallest();
    }

    fn prev(&mut self) {
        let Some(cur) = self.current else { return };
        if self.direction != Direction::Reverse {
            // Move every other child to the last entry before the current key.
            let key = self.children[cur].key().to_vec();
            for (i, c) in self.children.iter_mut().enumerate() {
                if i != cur {
                    c.seek_for_prev(&key);
                    if c.valid() && compare_internal(c.key(), &key) == Ordering::Equal {
                        c.prev();
                    }
                }
            }
            self.direction = Direction::Reverse;
        }
        self.children[cur].prev();
        self.find_largest();
    }

    fn key(&self) -> &[u8] {
        let cur = self.current.expect("key() on an invalid MergingIterator");
        self.children[cur].key()
    }

    fn value(&self) -> &[u8] {
        let cur = self.current.expect("value() on an invalid MergingIterator");
        self.children[cur].value()
    }

    fn status(&self) -> Result<()> {
        for c in &self.children {
            c.status()?;
        }
        Ok(())
    }
}

/// Walks the files of one sorted level (>= 1) as a single cursor, opening tables lazily.
pub struct LevelIterator {
    files: Vec<Arc<FileMeta>>,
    index: usize,
    current: Option<TableIterator>,
    mode: BlockRead,
}

impl LevelIterator {
    /// A cursor over `files`, which must be sorted and non-overlapping.
    pub fn new(files: Vec<Arc<FileMeta>>, mode: BlockRead) -> Self {
        LevelIterator {
            index: files.len(),
            files,
            current: None,
            mode,
        }
    }

    fn open(&mut self, index: usize) {
        self.index = index;
        self.current = self.files.get(index).map(|f| f.table.iter(self.mode));
    }

    fn skip_forward(&mut self) {
        while self
            .current
            .as_ref()
            .is_some_and(|c| !c.valid() && c.status().is_ok())
        {
            if self.index + 1 >= self.files.len() {
                self.current = None;
                return;
            }
            self.open(self.index + 1);
            if let Some(c) = self.current.as_mut() {
                c.seek_to_first();
            }
        }
    }

    fn skip_backward(&mut self) {
        while self
            .current
            .as_ref()
            .is_some_and(|c| !c.valid() && c.status().is_ok())
        {
            if self.index == 0 {
                self.current = None;
                return;
            }
            self.open(self.index - 1);
            if let Some(c) = self.current.as_mut() {
                c.seek_to_last();
            }
        }
    }
}

impl InternalIterator for LevelIterator {
    fn valid(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.valid())
    }

    fn seek_to_first(&mut self) {
        self.open(0);
        if let Some(c) = self.current.as_mut() {
            c.seek_to_first();
        }
        self.skip_forward();
    }

    fn seek_to_last(&mut self) {
        if self.files.is_empty() {
            self.current = None;
            return;
        }
        self.open(self.files.len() - 1);
        if let Some(c) = self.current.as_mut() {
            c.seek_to_last();
        }
        self.skip_backward();
    }

    fn seek(&mut self, target: &[u8]) {
        let i = self
            .files
            .partition_point(|f| compare_internal(&f.desc.largest, target) == Ordering::Less);
        self.open(i);
        if let Some(c) = self.current.as_mut() {
            c.seek(target);
        }
        self.skip_forward();
    }

    fn seek_for_prev(&mut self, target: &[u8]) {
        let i = self
            .files
            .partition_point(|f| compare_internal(&f.desc.smallest, target) != Ordering::Greater);
        if i == 0 {
            self.current = None;
            return;
        }
        self.open(i - 1);
        if let Some(c) = self.current.as_mut() {
            c.seek_for_prev(target);
        }
        self.skip_backward();
    }

    fn next(&mut self) {
        if let Some(c) = self.current.as_mut() {
            c.next();
        }
        self.skip_forward();
    }

    fn prev(&mut self) {
        if let Some(c) = self.current.as_mut() {
            c.prev();
        }
        self.skip_backward();
    }

    fn key(&self) -> &[u8] {
        self.current
            .as_ref()
            .expect("key() on an invalid LevelIterator")
            .key()
    }

    fn value(&self) -> &[u8] {
        self.current
            .as_ref()
            .expect("value() on an invalid LevelIterator")
            .value()
    }

    fn status(&self) -> Result<()> {
        self.current.as_ref().map_or(Ok(()), |c| c.status())
    }
}

/// True when the level's key range can intersect the logical range `[lo, hi)`.
pub fn level_may_overlap(files: &[Arc<FileMeta>], lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
    match (files.first(), files.last()) {
        (Some(first), Some(last)) => {
            !(lo.is_some_and(|lo| logical_key(&last.desc.largest) < lo)
                || hi.is_some_and(|hi| logical_key(&first.desc.smallest) >= hi))
        }
        _ => false,
    }
}
