//! Leveled compaction: choosing work ([`pick`]) and doing it in resumable steps ([`MergeJob`]).
//!
//! Level targets are dynamic: the last level's size sets the targets of the
//! levels above it (each `level_multiplier` times smaller), and L0 flushes
//! into the highest level whose target is still above `level_base_bytes /
//! level_multiplier` (the base level). A flush is a [`MergeJob`] too, with a
//! memtable as its only input and L0 as its output.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::cache::BlockCache;
use crate::clock::Clock;
use crate::error::{IoContext, Result};
use crate::filename;
use crate::fs::{new_queue, FileSystem, OpenMode, QueueKind};
use crate::iter::InternalIterator;
use crate::key::{
    encode_trailer, has_expiry, is_pointer_kind, logical_key, parse_trailer, parse_version,
    pointer_bytes, resolve, Kind, Resolved, CF_DEFAULT, CF_WRITE, PREFIX_LEN, TRAILER_LEN,
};
use crate::options::{IoBackend, Options};
use crate::range_del::{self, Fragment, FragmentedTombstones, GcPolicy, RangeDelCursor};
use crate::sst::{Table, TableBuilder, TableBuilderOptions};
use crate::version::{FileDesc, FileMeta, Version};
use crate::vlog::write_path::pointer_entry;
use crate::vlog::{
    MemtableValues, SegmentMeta, SegmentWriterOptions, SeparatorSettings, Thresholds, ValuePointer,
    ValueSeparator,
};

/// Size targets per level and the level L0 compacts into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LevelTargets {
    /// The level L0 flushes into.
    pub base_level: usize,
    /// Target bytes per level (index 0 unused; 0 for levels above the base).
    pub targets: Vec<u64>,
}

/// Computes dynamic level targets from the current shape of the tree.
///
/// The largest level sets the size of the last level. The base level is the
/// highest level needed so that, going up from the last level, sizes shrink
/// to `level_base_bytes` with a ratio of at most `level_multiplier`; the ratio
/// actually used is the same between every pair of levels (which minimizes
/// the write amplification for that number of levels).
pub fn level_targets(v: &Version, opts: &Options) -> LevelTargets {
    let sizes: Vec<u64> = (0..v.levels.len()).map(|l| v.level_bytes(l)).collect();
    targets_for_sizes(&sizes, opts)
}

/// [`level_targets`] for given per-level byte counts.
pub fn targets_for_sizes(sizes: &[u64], opts: &Options) -> LevelTargets {
    let n = opts.num_levels;
    let last = n - 1;
    let mult = opts.level_multiplier.max(2) as f64;
    let base = opts.level_base_bytes.max(1) as f64;
    let largest = sizes.iter().skip(1).copied().max().unwrap_or(0) as f64;
    let size = largest.max(base);
    let mut levels_below_base = 0usize;
    let mut cap = base;
    while cap < size && levels_below_base < last - 1 {
        cap *= mult;
        levels_below_base += 1;
    }
    let mut targets = vec![0u64; n];
    let base_level = last - levels_below_base;
    let ratio = if levels_below_base == 0 {
        1.0
    } else {
        (size / base).powf(1.0 / levels_below_base as f64).max(1.0)
    };
    let mut t = size;
    for level in (base_level..=last).rev() {
        targets[level] = t as u64;
        t /= ratio;
    }
    LevelTargets {
        base_level,
        targets,
    }
}

/// One unit of compaction work.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The level the inputs come from.
    pub level: usize,
    /// The level the outputs go to.
    pub output_level: usize,
    /// Input files from `level`.
    pub inputs: Vec<Arc<FileMeta>>,
    /// Overlapping input files from `output_level`.
    pub next_inputs: Vec<Arc<FileMeta>>,
    /// Move the single input file down without rewriting it.
    pub trivial_move: bool,
    /// No level below the output holds keys in range: tombstones may be dropped.
    pub bottommost: bool,
    /// How far over its target the input level was.
    pub score: f64,
}

impl Plan {
    /// Every input file.
    pub fn all_inputs(&self) -> impl Iterator<Item = &Arc<FileMeta>> {
        self.inputs.iter().chain(self.next_inputs.iter())
    }

    /// Marks or unmarks every input as being compacted.
    pub fn set_being_compacted(&self, on: bool) {
        for f in self.all_inputs() {
            f.being_compacted.store(on, Ordering::Release);
        }
    }
}

fn busy(files: &[Arc<FileMeta>]) -> bool {
    files
        .iter()
        .any(|f| f.being_compacted.load(Ordering::Acquire))
}

/// Largest logical keys of the files below `plan`'s output level that overlap its inputs,
/// ascending: where [`MergeJob`] prefers to cut its outputs.
pub fn next_level_boundaries(v: &Version, plan: &Plan) -> Vec<Vec<u8>> {
    let Some(below) = v.levels.get(plan.output_level + 1) else {
        return Vec::new();
    };
    let inputs: Vec<Arc<FileMeta>> = plan.all_inputs().cloned().collect();
    let (lo, hi) = key_range(&inputs);
    below
        .iter()
        .filter(|f| f.desc.overlaps(Some(&lo), Some(&hi)))
        .map(|f| f.desc.largest_logical().to_vec())
        .collect()
}

fn key_range(files: &[Arc<FileMeta>]) -> (Vec<u8>, Vec<u8>) {
    let lo = files
        .iter()
        .map(|f| f.desc.smallest_logical())
        .min()
        .unwrap_or_default()
        .to_vec();
    let hi = files
        .iter()
        .map(|f| f.desc.largest_logical())
        .max()
        .unwrap_or_default()
        .to_vec();
    (lo, hi)
}

/// Iterators opened since the last flush that make the read view count as scanned: from
/// then on L0 compacts at the plain trigger (see [`l0_trigger`]).
pub const SCAN_PRESSURE_ITERATORS: u64 = 1024;

/// L0 files that make an L0 compaction due.
///
/// The configured trigger, stretched up to twice as many files while the base level
/// holds more than half as many bytes as L0: merging L0 rewrites the overlapping base
/// files, so a larger batch costs less per byte moved. Never at or past the slowdown
/// trigger. (Measured on 1M x 1 KB fillrandom: write amplification 2.70 -> 1.92.)
///
/// Not while iterators scan the data (`scanned`: [`SCAN_PRESSURE_ITERATORS`] opened since
/// the last flush): every iterator seeks each L0 file, a data block read apiece, so the
/// extra files cost scans more than the batch saves (YCSB E, 1M records: 4 L0 files
/// left by the stretched trigger took ~30% more CPU per scan than none).
pub fn l0_trigger(v: &Version, opts: &Options, base_level: usize, scanned: bool) -> f64 {
    if scanned {
        return opts.l0_compaction_trigger.max(1) as f64;
    }
    l0_trigger_for(v.level_bytes(0), v.level_bytes(base_level), opts)
}

/// [`l0_trigger`] for given L0 and base-level byte counts.
pub fn l0_trigger_for(l0_bytes: u64, base_bytes: u64, opts: &Options) -> f64 {
    let trigger = opts.l0_compaction_trigger.max(1) as f64;
    let (l0, base) = (l0_bytes as f64, base_bytes as f64);
    if l0 == 0.0 || base * 2.0 <= l0 {
        return trigger;
    }
    let cap = (opts.l0_slowdown_trigger.saturating_sub(2) as f64).max(trigger);
    (trigger * (2.0 * base / l0).min(2.0)).clamp(trigger, cap)
}

/// Chooses the most urgent compaction, or `None` when every level is within its target;
/// `scanned` says iterators read the current file set (see [`l0_trigger`]).
pub fn pick(v: &Version, opts: &Options, scanned: bool) -> Option<Plan> {
    let t = level_targets(v, opts);
    let last = opts.num_levels - 1;
    let mut best: Option<(f64, usize)> = None;
    let l0_idle = v.levels[0]
        .iter()
        .filter(|f| !f.being_compacted.load(Ordering::Acquire))
        .count();
    if !busy(&v.levels[0]) && l0_idle > 0 {
        let s = l0_idle as f64 / l0_trigger(v, opts, t.base_level, scanned);
        best = Some((s, 0));
    }
    for level in 1..last {
        let bytes = v.level_bytes(level);
        if bytes == 0 {
            continue;
        }
        let s = if t.targets[level] == 0 {
            // A level above the base level that still holds data drains downwards.
            f64::MAX / 2.0
        } else {
            bytes as f64 / t.targets[level] as f64
        };
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, level));
        }
    }
    let (score, level) = best.filter(|(s, _)| *s >= 1.0)?;
    if level == 0 {
        let inputs = v.levels[0].clone();
        let out = t.base_level;
        let (lo, hi) = key_range(&inputs);
        let next_inputs = v.overlapping(out, Some(&lo), Some(&hi));
        if busy(&next_inputs) {
            return None;
        }
        return Some(finish_plan(v, 0, out, inputs, next_inputs, score));
    }
    let out = (level + 1).max(t.base_level).min(last);
    // Pick the file whose rewrite costs the least per byte moved down.
    let mut chosen: Option<(f64, Arc<FileMeta>, Vec<Arc<FileMeta>>)> = None;
    for f in &v.levels[level] {
        if f.being_compacted.load(Ordering::Acquire) {
            continue;
        }
        let next = v.overlapping(
            out,
            Some(f.desc.smallest_logical()),
            Some(f.desc.largest_logical()),
        );
        if busy(&next) {
            continue;
        }
        let overlap: u64 = next.iter().map(|n| n.desc.size).sum();
        let ratio = overlap as f64 / f.desc.size.max(1) as f64;
        if chosen.as_ref().is_none_or(|(r, _, _)| ratio < *r) {
            chosen = Some((ratio, f.clone(), next));
        }
    }
    let (_, f, next) = chosen?;
    Some(finish_plan(v, level, out, vec![f], next, score))
}

/// What a full compaction ([`pick_full`]) does next.
#[derive(Debug)]
pub enum FullStep {
    /// Run this plan.
    Plan(Plan),
    /// Files it needs are being compacted: wait.
    Busy,
    /// Every level above the last is empty and the last was rewritten.
    Done,
}

/// The next step of a full compaction: the highest level above the last that holds
/// files, whole, into the next level below that holds files (the last if none); once only
/// the last level holds files, the last level rewritten into itself (unless `bottom_done`),
/// so that every entry passes through a bottommost merge. Never a trivial move.
pub fn pick_full(v: &Version, bottom_done: bool) -> FullStep {
    let last = v.levels.len() - 1;
    let plan = |level: usize, out: usize, inputs: Vec<Arc<FileMeta>>, next: Vec<Arc<FileMeta>>| {
        if busy(&inputs) || busy(&next) {
            return FullStep::Busy;
        }
        let mut p = finish_plan(v, level, out, inputs, next, 1.0);
        p.trivial_move = false;
        FullStep::Plan(p)
    };
    if let Some(level) = (0..last).find(|&l| !v.levels[l].is_empty()) {
        let inputs = v.levels[level].clone();
        let out = ((level + 1)..last)
            .find(|&l| !v.levels[l].is_empty())
            .unwrap_or(last);
        let (lo, hi) = key_range(&inputs);
        let next = v.overlapping(out, Some(&lo), Some(&hi));
        return plan(level, out, inputs, next);
    }
    if bottom_done || v.levels[last].is_empty() {
        return FullStep::Done;
    }
    plan(last, last, v.levels[last].clone(), Vec::new())
}

/// True when `f` lies entirely inside range tombstones of `index` that every reader under
/// `policy` sees and that are newer than everything in `f`: compaction may delete the file
/// without reading it (a tombstone newer than all of it hides every entry and every
/// tombstone it holds, from every reader).
///
/// The file's logical range `[smallest, largest]` must be covered without a gap, each
/// fragment by such a stamp.
pub fn deleted_whole(f: &FileMeta, index: &FragmentedTombstones, policy: &GcPolicy) -> bool {
    let (lo, hi) = (f.desc.smallest_logical(), f.desc.largest_logical());
    let max_seq = f.table.properties().max_seq;
    let mut i = index.seek(lo);
    let mut from = lo;
    while let Some(frag) = index.get(i) {
        let strong = frag
            .stamps()
            .iter()
            .any(|&t| t.1 > max_seq && policy.seen_by_every_reader(t));
        if frag.start() > from || !strong {
            return false;
        }
        if hi < frag.end() {
            return true;
        }
        from = frag.end();
        i += 1;
    }
    false
}

/// A compaction that carries range tombstones down toward files they delete whole
/// ([`deleted_whole`]), for when [`pick`] finds nothing to do.
///
/// Picks the first file (L0 first) whose tombstones delete a whole file of a deeper
/// level, and compacts it one step down like [`pick`] would (all of L0 into the base
/// level; a deeper file into the next level). Each such compaction moves the tombstones
/// a level down, dropping the covered files of the output level unread, until no covered
/// file is left below them; so a deleted region is reclaimed level by level without
/// being rewritten.
pub fn pick_range_del(v: &Version, opts: &Options, policy: &GcPolicy) -> Option<Plan> {
    let t = level_targets(v, opts);
    let last = opts.num_levels - 1;
    for level in 0..last {
        for f in &v.levels[level] {
            if f.being_compacted.load(Ordering::Acquire) {
                continue;
            }
            let Some(index) = f.table.range_tombstones() else {
                continue;
            };
            let (lo, hi) = (f.desc.smallest_logical(), f.desc.largest_logical());
            let below = ((level + 1)..=last).any(|l| {
                v.overlapping(l, Some(lo), Some(hi))
                    .iter()
                    .any(|g| deleted_whole(g, index, policy))
            });
            if !below {
                continue;
            }
            if level == 0 {
                let inputs = v.levels[0].clone();
                let (lo, hi) = key_range(&inputs);
                let next_inputs = v.overlapping(t.base_level, Some(&lo), Some(&hi));
                if busy(&inputs) || busy(&next_inputs) {
                    return None;
                }
                return Some(finish_plan(v, 0, t.base_level, inputs, next_inputs, 1.0));
            }
            let out = (level + 1).max(t.base_level).min(last);
            let next = v.overlapping(out, Some(lo), Some(hi));
            if busy(&next) {
                continue;
            }
            return Some(finish_plan(v, level, out, vec![f.clone()], next, 1.0));
        }
    }
    None
}

fn finish_plan(
    v: &Version,
    level: usize,
    output_level: usize,
    inputs: Vec<Arc<FileMeta>>,
    next_inputs: Vec<Arc<FileMeta>>,
    score: f64,
) -> Plan {
    let mut all = inputs.clone();
    all.extend(next_inputs.iter().cloned());
    let (lo, hi) = key_range(&all);
    let bottommost = ((output_level + 1)..v.levels.len())
        .all(|l| v.overlapping(l, Some(&lo), Some(&hi)).is_empty());
    let trivial_move = level > 0 && inputs.len() == 1 && next_inputs.is_empty();
    Plan {
        level,
        output_level,
        inputs,
        next_inputs,
        trivial_move,
        bottommost,
        score,
    }
}

/// Settings a [`MergeJob`] needs, taken from the options once.
#[derive(Clone)]
pub struct JobSettings {
    /// Where outputs are written.
    pub dir: PathBuf,
    /// The filesystem.
    pub fs: Arc<dyn FileSystem>,
    /// Allocator of file numbers.
    pub next_file_number: Arc<AtomicU64>,
    /// Table format settings.
    pub table: TableBuilderOptions,
    /// Cut outputs at this size (at a key boundary).
    pub target_file_bytes: u64,
    /// Block cache handed to opened outputs.
    pub cache: Option<Arc<BlockCache>>,
    /// How output tables submit their writes and syncs.
    pub io_queue: QueueKind,
    /// Wall clock deciding which values have expired.
    pub clock: Arc<dyn Clock>,
    /// Where large values go (`None`: every value stays in the tables).
    pub vlog: Option<SeparatorSettings>,
    /// `Options::unsafe_txn_gc_any_record_shadows`.
    pub unsafe_txn_gc_any_record_shadows: bool,
}

impl JobSettings {
    /// Settings for outputs at `level`.
    pub fn new(
        opts: &Options,
        level: usize,
        dir: PathBuf,
        fs: Arc<dyn FileSystem>,
        next_file_number: Arc<AtomicU64>,
        cache: Option<Arc<BlockCache>>,
    ) -> Self {
        let vlog = Thresholds::from_options(opts).map(|thresholds| SeparatorSettings {
            dir: dir.clone(),
            fs: fs.clone(),
            next_file_number: next_file_number.clone(),
            thresholds,
            writer: SegmentWriterOptions {
                target_segment_bytes: opts.vlog_segment_bytes,
                unsafe_skip_sync: opts.unsafe_vlog_skip_segment_sync,
                ..Default::default()
            },
        });
        JobSettings {
            vlog,
            unsafe_txn_gc_any_record_shadows: opts.unsafe_txn_gc_any_record_shadows,
            dir,
            fs,
            next_file_number,
            table: TableBuilderOptions::from_options(opts, level),
            target_file_bytes: if level == 0 {
                u64::MAX
            } else {
                opts.target_file_bytes
            },
            cache,
            // An overridden filesystem (in-memory, fault injection) gets synchronous IO, so
            // its fault and power-loss semantics stay exact and deterministic.
            clock: opts.clock.clone(),
            io_queue: match (&opts.fs, opts.io_backend) {
                (Some(_), _) => QueueKind::Inline,
                (None, IoBackend::Std) => QueueKind::Thread,
                (None, IoBackend::Uring) => QueueKind::Uring,
            },
        }
    }
}

/// A finished output table.
pub struct Output {
    /// What goes into the manifest.
    pub desc: FileDesc,
    /// The table, opened for reads.
    pub table: Arc<Table>,
    /// Its path.
    pub path: PathBuf,
}

/// Everything a finished [`MergeJob`] produced.
pub struct JobOutput {
    /// The output tables.
    pub tables: Vec<Output>,
    /// Value-log segments the tables point into (finished and fdatasynced).
    pub segments: Vec<SegmentMeta>,
    /// Record bytes of value-log values the job dropped, per segment.
    pub discards: BTreeMap<u64, u64>,
    /// Values moved to the value log, and their bytes.
    pub separated: (u64, u64),
}

/// Merges sorted input into new tables, dropping what no reader can see, one step at a time.
pub struct MergeJob {
    input: Box<dyn InternalIterator>,
    settings: JobSettings,
    smallest_snapshot: u64,
    safe_point: u64,
    bottommost: bool,
    started: bool,
    current_key: Vec<u8>,
    has_current_key: bool,
    /// An earlier entry of the current key is seen by every possible reader, so nothing
    /// after it can be.
    shadowed: bool,
    builder: Option<(u64, PathBuf, TableBuilder)>,
    outputs: Vec<Output>,
    /// Entries read from the input.
    pub entries_read: u64,
    /// Entries dropped as invisible.
    pub entries_dropped: u64,
    /// Expired values rewritten as tombstones (above the bottom level).
    pub expired_to_tombstones: u64,
    /// Wall-clock time the job judges expiry at.
    now_ms: u64,
    tombstone: Vec<u8>,
    /// Largest logical keys of the files one level below the output, ascending.
    boundaries: Vec<Vec<u8>>,
    /// Index of the first boundary not yet passed by the keys written.
    next_boundary: usize,
    /// True once the current output has passed a boundary (cutting there is preferred).
    crossed_boundary: bool,
    /// With `shadowed`: only entries of the current key below this sequence number are
    /// shadowed (readers that skip the shadowing entry because a range tombstone hides it
    /// go on to later entries; those at or above the limit stay).
    shadow_limit: u64,
    /// Range tombstones of the inputs, when there are any.
    range_dels: Option<RangeDels>,
    /// Entries dropped because a range tombstone hides them from every reader.
    pub entries_range_deleted: u64,
    /// Moves large values to the value log.
    separator: Option<ValueSeparator>,
    /// For a flush: the memtable entries whose values the write path already put in the
    /// value log (written as pointer entries; nothing is copied).
    presplit: Option<Arc<MemtableValues>>,
    /// Scratch for a pointer entry built from `presplit`: key and stored value.
    presplit_key: Vec<u8>,
    presplit_value: Vec<u8>,
    /// Record bytes of dropped value-log values, per segment.
    discards: BTreeMap<u64, u64>,
    /// Trailer of the previous entry (a copy of the same internal key is a duplicate).
    last_trailer: [u8; TRAILER_LEN],
    /// The transaction GC of `NS_KV`'s write records (see [`MergeJob::with_txn_gc`]).
    txn: TxnGc,
    /// Write records of `NS_KV` dropped by the transaction GC.
    pub entries_txn_collected: u64,
    /// Long values (and their tombstones) of `NS_KV` dropped by the transaction GC.
    pub values_txn_collected: u64,
}

/// The transaction GC's state: its safe point and what it met of the current key.
#[derive(Debug, Default)]
struct TxnGc {
    /// 0: off.
    safe_point: u64,
    /// A put or delete record at or below the safe point, seen by every reader, was met:
    /// the key's older records are hidden from every transactional read.
    shadowed: bool,
    /// An entry of the key seen by every reader was kept: the key's newest entry (what a
    /// latest read, such as a consistency check, sees) is not the one at hand.
    kept_visible: bool,
    /// `Options::unsafe_txn_gc_any_record_shadows`.
    any_record_shadows: bool,
    /// The version of a `CF_DEFAULT` tombstone of the key (a rollback's) at or below the
    /// safe point, seen by every reader: the value it deletes goes.
    value_tombstone: Option<u64>,
}

impl TxnGc {
    /// Whether to drop an entry of the current key that nothing else drops: `write_tag`
    /// is the first byte of the value of a plain put in `NS_KV`'s `CF_WRITE` (the
    /// Percolator record's kind), None for any other entry.
    ///
    /// Transactions read at or above the safe point, so below it only the newest put or
    /// delete record matters: it hides every older record of the key (dropped), and a
    /// delete record hides nothing more once nothing older lies below (`bottommost`).
    /// Lock-only and rollback records below the safe point are dropped unless they are the
    /// key's newest entry (a latest read must see the same on every replica, whenever it
    /// compacted; a delete record dropped in that place reads like no record, which the
    /// consistency check skips). Records at or above the safe point, or newer than a
    /// snapshot (`by_all` false), are kept. Unknown kinds are kept.
    fn drops(
        &mut self,
        write_tag: Option<u8>,
        version: u64,
        by_all: bool,
        bottommost: bool,
    ) -> bool {
        if self.safe_point == 0 {
            return false;
        }
        let keep = |gc: &mut TxnGc| {
            gc.kept_visible |= by_all;
            false
        };
        let Some(tag) = write_tag else {
            return keep(self);
        };
        if self.shadowed {
            return true;
        }
        if version > self.safe_point || !by_all {
            return keep(self);
        }
        match tag {
            b'P' => {
                self.shadowed = true;
                keep(self)
            }
            _ if self.any_record_shadows => {
                self.shadowed = true;
                keep(self)
            }
            b'D' => {
                self.shadowed = true;
                bottommost || keep(self)
            }
            b'L' | b'R' if self.kept_visible => true,
            _ => keep(self),
        }
    }

    /// Whether to drop an entry (raw `kind`) of the current key of `NS_KV`'s
    /// `CF_DEFAULT` (long values, at their transaction's start_ts) that nothing else drops.
    /// At or below the safe point and seen by every reader: a tombstone (a rollback's)
    /// deletes the value of its version, and goes itself at the bottom; a value goes when
    /// `referenced` says that neither its transaction's lock nor its put record refers to
    /// it any more (the record was collected, or it is a rollback record).
    fn drops_value(
        &mut self,
        kind: u8,
        version: u64,
        by_all: bool,
        bottommost: bool,
        referenced: impl FnOnce() -> bool,
    ) -> bool {
        if version > self.safe_point || !by_all {
            return false;
        }
        if kind == Kind::Delete as u8 {
            self.value_tombstone = Some(version);
            return bottommost;
        }
        self.value_tombstone == Some(version) || !referenced()
    }
}

/// A job's range tombstones: what hides entries, and what is written to the outputs.
struct RangeDels {
    /// Walks the inputs' tombstones (before garbage collection) in key order.
    cursor: RangeDelCursor,
    /// The readers compaction must preserve.
    policy: GcPolicy,
    /// The tombstones the outputs get, after garbage collection.
    kept: FragmentedTombstones,
    /// Where the current output's tombstones start (`None`: from the beginning).
    lower: Option<Vec<u8>>,
}

/// How the tombstones of `f` affect an entry of sequence `seq`: whether they hide it from
/// every reader that sees it, and the sequence number below which entries after it are
/// shadowed by it (the smallest tombstone sequence above `seq`; `u64::MAX` if none).
fn coverage(f: Fragment<'_>, seq: u64, policy: &GcPolicy) -> (bool, u64) {
    let e = range_del::entry_stamp(seq);
    let hidden = f.hides_for_every_reader(e.0, e.1, policy);
    let limit = f
        .stamps()
        .iter()
        .filter(|&&t| t > e)
        .map(|t| t.1)
        .min()
        .unwrap_or(u64::MAX);
    (hidden, limit)
}

/// Whether `logical` is a key of `NS_KV`'s column family `cf` (the Percolator layout).
fn is_txn_space(logical: &[u8], cf: u8) -> bool {
    logical.len() >= PREFIX_LEN && logical[0] == crate::key::NS_KV && logical[1] == cf
}

/// What a step left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Call `step` again.
    More,
    /// All input consumed; call `finish`.
    Done,
}

impl MergeJob {
    /// A job over `input` that drops what no reader can see.
    ///
    /// Readers read at a version >= `safe_point` and a sequence >= `smallest_snapshot`:
    /// an entry at (version <= `safe_point`, seq <= `smallest_snapshot`) is seen by all of
    /// them, so the entries of its key that sort after it are dropped; such an entry that
    /// reads as absent is dropped too when `bottommost` (nothing older lies below).
    pub fn new(
        input: Box<dyn InternalIterator>,
        settings: JobSettings,
        smallest_snapshot: u64,
        safe_point: u64,
        bottommost: bool,
    ) -> Self {
        let now_ms = settings.clock.now_ms();
        MergeJob {
            now_ms,
            input,
            smallest_snapshot,
            safe_point,
            bottommost,
            started: false,
            current_key: Vec::new(),
            has_current_key: false,
            shadowed: false,
            builder: None,
            outputs: Vec::new(),
            entries_read: 0,
            entries_dropped: 0,
            expired_to_tombstones: 0,
            tombstone: Vec::new(),
            boundaries: Vec::new(),
            next_boundary: 0,
            crossed_boundary: false,
            shadow_limit: u64::MAX,
            range_dels: None,
            entries_range_deleted: 0,
            separator: settings_vlog(&settings),
            presplit: None,
            presplit_key: Vec::new(),
            presplit_value: Vec::new(),
            discards: BTreeMap::new(),
            last_trailer: [0; TRAILER_LEN],
            txn: TxnGc::default(),
            entries_txn_collected: 0,
            values_txn_collected: 0,
            settings,
        }
    }

    /// Collects `NS_KV`'s transactional write records under the transaction safe point
    /// `safe_point` (0: off): below it only the newest put or delete record of a key is
    /// kept (see `TxnGc::drops` and docs/transactions.md, "Garbage collection").
    pub fn with_txn_gc(mut self, safe_point: u64) -> Self {
        self.txn.safe_point = safe_point;
        self.txn.any_record_shadows = self.settings.unsafe_txn_gc_any_record_shadows;
        self
    }

    /// Gives the job the inputs' range tombstones and the live snapshot sequence numbers.
    ///
    /// Entries a tombstone hides from every reader (the snapshots, and anyone
    /// reading at or after the safe point) are dropped; the tombstones
    /// themselves are garbage collected ([`FragmentedTombstones::collect_garbage`],
    /// dropping those every reader sees when the job is bottommost) and written
    /// to the outputs, clipped to each output's key range.
    pub fn with_range_tombstones(
        mut self,
        tombstones: Option<Arc<FragmentedTombstones>>,
        snapshots: Vec<u64>,
    ) -> Self {
        self.range_dels = tombstones.filter(|t| !t.is_empty()).map(|t| {
            let policy = GcPolicy::new(snapshots, self.safe_point);
            let kept = t.collect_garbage(&policy, self.bottommost);
            RangeDels {
                cursor: RangeDelCursor::new(t, u64::MAX, u64::MAX),
                policy,
                kept,
                lower: None,
            }
        });
        self
    }

    /// Gives a flush the pointers of the memtable entries whose values are already in the
    /// value log (see [`crate::vlog::write_path`]): they are written as pointer entries.
    pub fn with_memtable_values(mut self, values: Arc<MemtableValues>) -> Self {
        self.presplit = values.has_pointers().then_some(values);
        self
    }

    /// Sets the largest logical keys of the files below the output level, ascending;
    /// outputs are preferably cut where those files end.
    pub fn with_boundaries(mut self, boundaries: Vec<Vec<u8>>) -> Self {
        self.boundaries = boundaries;
        self
    }

    /// Processes up to `max_entries` input entries.
    pub fn step(&mut self, max_entries: usize) -> Result<Step> {
        self.step_with(max_entries, &|_, _| true)
    }

    /// [`MergeJob::step`], asking `value_referenced(user key, start_ts)` whether a long
    /// value of `NS_KV` below the transaction safe point is still referred to (by its
    /// transaction's lock or put record); the transaction GC drops it when not (see
    /// `txn::gc::value_referenced`).
    pub fn step_with(
        &mut self,
        max_entries: usize,
        value_referenced: &dyn Fn(&[u8], u64) -> bool,
    ) -> Result<Step> {
        if !self.started {
            self.input.seek_to_first();
            self.started = true;
        }
        for _ in 0..max_entries {
            if !self.input.valid() {
                self.input.status()?;
                return Ok(Step::Done);
            }
            let ikey = self.input.key();
            let logical = logical_key(ikey);
            let (seq, kind) = parse_trailer(ikey);
            self.entries_read += 1;
            let new_key = !self.has_current_key || logical != &self.current_key[..];
            if new_key {
                self.current_key.clear();
                self.current_key.extend_from_slice(logical);
                self.has_current_key = true;
                self.shadowed = false;
                self.txn.shadowed = false;
                self.txn.kept_visible = false;
                self.txn.value_tombstone = None;
            }
            let version = parse_version(ikey);
            let txn_write = kind == Kind::Put as u8 && is_txn_space(logical, CF_WRITE);
            let txn_value = is_txn_space(logical, CF_DEFAULT);
            // An expired value reads as absent, exactly like a tombstone; it must not be
            // dropped above the bottom, or it would let an older version show through.
            let expired = has_expiry(kind)
                && resolve(kind, self.input.value(), self.now_ms) == Resolved::Gone;
            let absent = kind == Kind::Delete as u8 || expired;
            let seen_by_all = version <= self.safe_point && seq <= self.smallest_snapshot;
            let (range_deleted, limit) = match self.range_dels.as_mut() {
                Some(rd) => match rd.cursor.fragment(logical) {
                    Some(f) => coverage(f, seq, &rd.policy),
                    None => (false, u64::MAX),
                },
                None => (false, u64::MAX),
            };
            let shadowed = self.shadowed && seq < self.shadow_limit;
            // A second copy of one internal key (left behind by value-log GC, which re-points
            // a value with a newer copy in L0) loses to the first, which merging yields first.
            let duplicate = self.is_duplicate(new_key);
            let mut drop = range_deleted
                || shadowed
                || duplicate
                || (absent && seen_by_all && self.bottommost);
            if !drop && self.txn.safe_point > 0 {
                let write_tag = txn_write
                    .then(|| self.input.value().first().copied())
                    .flatten();
                let by_all = seq <= self.smallest_snapshot;
                if self.txn.drops(write_tag, version, by_all, self.bottommost) {
                    drop = true;
                    self.entries_txn_collected += 1;
                }
            }
            if !drop && txn_value && self.txn.safe_point > 0 {
                let by_all = seq <= self.smallest_snapshot;
                let user_key = &logical_key(self.input.key())[PREFIX_LEN..];
                if self
                    .txn
                    .drops_value(kind, version, by_all, self.bottommost, || {
                        value_referenced(user_key, version)
                    })
                {
                    drop = true;
                    self.values_txn_collected += 1;
                }
            }
            if drop || expired {
                self.note_discard(kind);
            }
            // An entry every reader meets shadows the rest of its key, except for readers
            // that skip it because a range tombstone hides it (they see a tombstone of
            // sequence `limit` or newer, which hides whatever it shadows below `limit`).
            if seen_by_all && !range_deleted && !shadowed && !duplicate {
                self.shadow_limit = if self.shadowed {
                    self.shadow_limit.max(limit)
                } else {
                    limit
                };
                self.shadowed = true;
            }
            if drop {
                self.entries_dropped += 1;
                self.entries_range_deleted += range_deleted as u64;
            } else {
                if new_key {
                    while self
                        .boundaries
                        .get(self.next_boundary)
                        .is_some_and(|b| b.as_slice() < logical_key(self.input.key()))
                    {
                        self.next_boundary += 1;
                        self.crossed_boundary = true;
                    }
                }
                let size = self
                    .builder
                    .as_ref()
                    .map_or(0, |(_, _, b)| b.estimated_size());
                // Cut at the target size, or earlier (past a quarter of it) where the next
                // level's files end, so that a later compaction of this output overlaps
                // as few of them as possible.
                let cut = new_key
                    && self.builder.is_some()
                    && (size >= self.settings.target_file_bytes
                        || (self.crossed_boundary && size >= self.settings.target_file_bytes / 4));
                if cut {
                    self.add_output_tombstones(false)?;
                    self.finish_output()?;
                }
                if self.builder.is_none() {
                    self.start_output()?;
                    self.crossed_boundary = false;
                }
                let (_, _, b) = self.builder.as_mut().expect("builder was just started");
                if expired {
                    self.tombstone.clear();
                    self.tombstone
                        .extend_from_slice(logical_key(self.input.key()));
                    self.tombstone.extend_from_slice(&encode_trailer(
                        version,
                        seq,
                        Kind::Delete as u8,
                    ));
                    b.add(&self.tombstone, &[])?;
                    self.expired_to_tombstones += 1;
                } else if let Some(new_kind) = self
                    .presplit
                    .as_ref()
                    .and_then(|p| p.pointer(seq))
                    .and_then(|ptr| {
                        pointer_entry(kind, self.input.value(), ptr, &mut self.presplit_value)
                    })
                {
                    self.presplit_key.clear();
                    self.presplit_key
                        .extend_from_slice(logical_key(self.input.key()));
                    self.presplit_key.extend_from_slice(&encode_trailer(
                        version,
                        seq,
                        new_kind as u8,
                    ));
                    b.add(&self.presplit_key, &self.presplit_value)?;
                } else if let Some((k, v)) = match self.separator.as_mut() {
                    Some(sep) => sep.separate(self.input.key(), self.input.value())?,
                    None => None,
                } {
                    b.add(k, v)?;
                } else {
                    b.add(self.input.key(), self.input.value())?;
                }
            }
            self.input.next();
        }
        Ok(Step::More)
    }

    /// Hands the current output its share of the range tombstones before it is finished.
    ///
    /// An output that is followed by another gets the tombstones up to just after its
    /// last key (`last || 0x00`), so that its largest key stays below the next output's
    /// smallest; the last output gets the rest. With `last` and no output open, an
    /// output is started for tombstones that remain.
    fn add_output_tombstones(&mut self, last: bool) -> Result<()> {
        let upper = match (&self.builder, last) {
            (Some((_, _, b)), false) if b.num_entries() > 0 => {
                Some(range_del::successor(logical_key(b.last_key())))
            }
            _ => None,
        };
        let Some(rd) = self.range_dels.as_mut() else {
            return Ok(());
        };
        let ts = rd.kept.clip(rd.lower.as_deref(), upper.as_deref());
        rd.lower = upper;
        if ts.is_empty() {
            return Ok(());
        }
        if self.builder.is_none() {
            self.start_output()?;
        }
        if let Some((_, _, b)) = self.builder.as_mut() {
            b.add_range_tombstones(ts);
        }
        Ok(())
    }

    /// True when the current entry repeats the previous entry's internal key.
    fn is_duplicate(&mut self, new_key: bool) -> bool {
        let ikey = self.input.key();
        let trailer = &ikey[ikey.len() - TRAILER_LEN..];
        let dup = !new_key && trailer == self.last_trailer;
        self.last_trailer.copy_from_slice(trailer);
        dup
    }

    /// Counts the current entry's value-log record as garbage if it has one.
    fn note_discard(&mut self, kind: u8) {
        if !is_pointer_kind(kind) {
            return;
        }
        let ptr =
            pointer_bytes(kind, self.input.value()).and_then(|p| ValuePointer::decode(p).ok());
        if let Some(p) = ptr {
            *self.discards.entry(p.segment).or_insert(0) += p.len as u64;
        }
    }

    fn start_output(&mut self) -> Result<()> {
        let number = self
            .settings
            .next_file_number
            .fetch_add(1, Ordering::SeqCst);
        let path = filename::table(&self.settings.dir, number);
        let file = self
            .settings
            .fs
            .open(&path, OpenMode::CreateNew)
            .ctx("create", &path)?;
        let queue = new_queue(self.settings.io_queue);
        let b = TableBuilder::with_queue(file, path.clone(), self.settings.table, queue);
        self.builder = Some((number, path, b));
        Ok(())
    }

    fn finish_output(&mut self) -> Result<()> {
        let Some((number, path, b)) = self.builder.take() else {
            return Ok(());
        };
        match self.open_output(number, &path, b) {
            Ok(o) => {
                self.outputs.push(o);
                Ok(())
            }
            Err(e) => {
                self.remove_quietly(&path);
                Err(e)
            }
        }
    }

    fn open_output(&self, number: u64, path: &std::path::Path, b: TableBuilder) -> Result<Output> {
        let props = b.finish()?;
        let file = self
            .settings
            .fs
            .open(path, OpenMode::Read)
            .ctx("open", path)?;
        let table = Table::open(
            file,
            path.to_path_buf(),
            number,
            props.file_size,
            self.settings.cache.clone(),
        )?;
        Ok(Output {
            desc: FileDesc {
                number,
                size: props.file_size,
                entries: props.num_entries,
                smallest: props.smallest,
                largest: props.largest,
                global_seq: None,
            },
            table,
            path: path.to_path_buf(),
        })
    }

    fn remove_quietly(&self, p: &std::path::Path) {
        if self.settings.fs.exists(p) {
            if let Err(e) = self.settings.fs.remove_file(p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove abandoned table");
            }
        }
    }

    /// Completes the last output and returns every output table.
    ///
    /// Only for jobs without a value log (the segments would be lost): see [`MergeJob::finish_all`].
    pub fn finish(self) -> Result<Vec<Output>> {
        debug_assert!(
            self.separator.is_none(),
            "finish() drops value-log segments"
        );
        Ok(self.finish_all()?.tables)
    }

    /// Completes the last output and segment and returns everything the job produced.
    pub fn finish_all(mut self) -> Result<JobOutput> {
        let res = self
            .add_output_tombstones(true)
            .and_then(|()| self.finish_output())
            .and_then(|()| self.separator.as_mut().map_or(Ok(()), |s| s.finish()))
            .and_then(|()| {
                // The new files' directory entries must be durable before an edit names them.
                let dir = &self.settings.dir;
                self.settings.fs.sync_dir(dir).ctx("fsync dir", dir)
            });
        match res {
            Ok(()) => Ok(JobOutput {
                tables: std::mem::take(&mut self.outputs),
                segments: self
                    .separator
                    .as_ref()
                    .map_or_else(Vec::new, |s| s.segments().to_vec()),
                separated: self.separator.as_ref().map_or((0, 0), |s| s.separated),
                discards: std::mem::take(&mut self.discards),
            }),
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Deletes every file this job wrote (after a failure or cancellation).
    pub fn abandon(&mut self) {
        let mut paths: Vec<PathBuf> = self.outputs.drain(..).map(|o| o.path).collect();
        if let Some((_, p, _)) = self.builder.take() {
            paths.push(p);
        }
        for p in paths {
            self.remove_quietly(&p);
        }
        if let Some(s) = self.separator.as_mut() {
            s.abandon();
        }
    }
}

fn settings_vlog(settings: &JobSettings) -> Option<ValueSeparator> {
    settings.vlog.clone().map(ValueSeparator::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the transaction GC drops of one key's entries (newest first): (kind tag,
    /// version, seen by every reader).
    fn txn_drops(entries: &[(u8, u64, bool)], bottommost: bool) -> Vec<bool> {
        let mut gc = TxnGc {
            safe_point: 100,
            ..TxnGc::default()
        };
        entries
            .iter()
            .map(|&(tag, version, by_all)| gc.drops(Some(tag), version, by_all, bottommost))
            .collect()
    }

    #[test]
    fn the_txn_gc_keeps_the_newest_put_or_delete_below_its_safe_point() {
        // Above the safe point everything stays; below it the newest put hides the rest.
        let e = [
            (b'P', 150, true),
            (b'R', 90, true),
            (b'P', 80, true),
            (b'P', 70, true),
            (b'L', 60, true),
        ];
        assert_eq!(txn_drops(&e, false), [false, true, false, true, true]);
        // A rollback that is the key's newest entry stays (a latest read sees it).
        let e = [(b'R', 90, true), (b'P', 80, true), (b'D', 70, true)];
        assert_eq!(txn_drops(&e, false), [false, false, true]);
        // A delete hides the rest, and goes itself at the bottom.
        let e = [(b'D', 90, true), (b'P', 80, true)];
        assert_eq!(txn_drops(&e, false), [false, true]);
        assert_eq!(txn_drops(&e, true), [true, true]);
        // An entry a snapshot does not see hides nothing.
        let e = [(b'P', 90, false), (b'P', 80, true), (b'P', 70, true)];
        assert_eq!(txn_drops(&e, false), [false, false, true]);
        // Off: nothing.
        let mut off = TxnGc::default();
        assert!(!off.drops(Some(b'P'), 1, true, true));
    }
    fn opts() -> Options {
        Options {
            level_base_bytes: 256,
            level_multiplier: 10,
            num_levels: 7,
            ..Options::default()
        }
    }

    #[test]
    fn small_trees_compact_l0_into_the_last_level() {
        let t = level_targets(&Version::new(7), &opts());
        assert_eq!(t.base_level, 6);
        assert_eq!(t.targets[6], 256);
        let t = targets_for_sizes(&[0, 0, 0, 0, 0, 0, 200], &opts());
        assert_eq!((t.base_level, t.targets[6]), (6, 256));
    }

    #[test]
    fn l0_waits_for_a_bigger_batch_only_when_the_base_level_is_large() {
        let o = Options::default(); // trigger 4, slowdown 20
        assert_eq!(l0_trigger_for(0, 0, &o), 4.0);
        assert_eq!(l0_trigger_for(240, 0, &o), 4.0, "empty base: plain trigger");
        assert_eq!(l0_trigger_for(240, 100, &o), 4.0, "base at most half of L0");
        assert_eq!(l0_trigger_for(240, 180, &o), 6.0);
        assert_eq!(
            l0_trigger_for(240, 1000, &o),
            8.0,
            "at most twice the trigger"
        );
        let tight = Options {
            l0_compaction_trigger: 2,
            l0_slowdown_trigger: 3,
            ..Options::default()
        };
        assert_eq!(
            l0_trigger_for(100, 1000, &tight),
            2.0,
            "never below the trigger"
        );
        let capped = Options {
            l0_slowdown_trigger: 7,
            ..Options::default()
        };
        assert_eq!(
            l0_trigger_for(100, 1000, &capped),
            5.0,
            "stays below the slowdown trigger"
        );
    }

    #[test]
    fn ratios_are_balanced_and_never_above_the_multiplier() {
        // 1000x the base needs three levels below the base: ratio 10.
        let t = targets_for_sizes(&[0, 0, 0, 0, 0, 0, 256_000], &opts());
        assert_eq!(t.base_level, 3);
        assert_eq!(t.targets[3], 256);
        // 4x the base needs one level below the base: ratio 4, not 10.
        let t = targets_for_sizes(&[0, 0, 0, 0, 0, 0, 1024], &opts());
        assert_eq!(t.base_level, 5);
        assert_eq!((t.targets[5], t.targets[6]), (256, 1024));
        assert_eq!(t.targets[4], 0);
        // 40x: two levels, ratio sqrt(40) ~ 6.3.
        let t = targets_for_sizes(&[0, 0, 0, 0, 0, 0, 10_240], &opts());
        assert_eq!(t.base_level, 4);
        assert!(
            t.targets[5] > 1600 && t.targets[5] < 1630,
            "{:?}",
            t.targets
        );
    }

    // ---- range tombstones ----------------------------------------------------------------

    use crate::fs::StdFs;
    use crate::key::{logical_key as lk_of, MAX_VERSION};
    use crate::memtable::Memtable;
    use crate::range_del::RangeTombstone;

    fn key(i: u32) -> Vec<u8> {
        format!("kk{i:05}").into_bytes()
    }

    /// Runs a job over `n` puts (key i*2 at seq i+1) and `tombstones` into a new directory,
    /// returning the directory, the outputs and the entries range tombstones deleted.
    fn run_job(
        n: u32,
        tombstones: &[RangeTombstone],
        snapshots: Vec<u64>,
        bottommost: bool,
    ) -> (tempfile::TempDir, Vec<Output>, u64) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let o = Options {
            target_file_bytes: 4096,
            ..Options::default()
        };
        let settings = JobSettings::new(
            &o,
            1,
            dir.to_path_buf(),
            Arc::new(StdFs::new()),
            Arc::new(AtomicU64::new(1)),
            None,
        );
        let mem = Arc::new(Memtable::new(1 << 20));
        for i in 0..n {
            mem.add(i as u64 + 1, i as u64 + 1, Kind::Put, &key(i * 2), &[7; 60]);
        }
        let smallest = snapshots.iter().copied().min().unwrap_or(u64::MAX >> 8);
        let index = Arc::new(FragmentedTombstones::new(tombstones).unwrap());
        let mut job = MergeJob::new(
            Box::new(mem.iter()),
            settings,
            smallest,
            MAX_VERSION,
            bottommost,
        )
        .with_range_tombstones(Some(index), snapshots);
        while job.step(100).unwrap() == Step::More {}
        let deleted = job.entries_range_deleted;
        (tmp, job.finish_all().unwrap().tables, deleted)
    }

    fn t(s: &[u8], e: &[u8], seq: u64) -> RangeTombstone {
        RangeTombstone::new(s.to_vec(), e.to_vec(), 0, seq).unwrap()
    }

    #[test]
    fn outputs_share_the_tombstones_without_sharing_a_key() {
        let ts = vec![
            t(b"kk", &key(10), 900),       // before the first key
            t(&key(100), &key(500), 1000), // across several outputs
            t(&key(301), &key(302), 400),  // nested, older than the snapshot, over no key
            t(&key(790), b"kl", 1000),     // past the last key
        ];
        // A snapshot at 500 keeps every entry: readers at it see no tombstone that covers one.
        let (_dir, outputs, deleted) = run_job(400, &ts, vec![500], false);
        assert_eq!(deleted, 0);
        assert!(outputs.len() >= 3, "{} outputs", outputs.len());
        for w in outputs.windows(2) {
            assert!(
                w[0].desc.largest_logical() < w[1].desc.smallest_logical(),
                "outputs {} and {} share a logical key",
                w[0].desc.number,
                w[1].desc.number
            );
        }
        assert_eq!(outputs[0].desc.smallest_logical(), b"kk");
        assert_eq!(outputs.last().unwrap().desc.largest_logical(), b"kl");
        let parts: Vec<Arc<FragmentedTombstones>> = outputs
            .iter()
            .filter_map(|o| o.table.range_tombstones().cloned())
            .collect();
        assert!(
            parts.len() >= 3,
            "the middle tombstone is split between outputs"
        );
        let union = FragmentedTombstones::union_clipped(parts.iter().map(|p| &**p), None, None);
        assert_eq!(
            union,
            FragmentedTombstones::new(&ts).unwrap(),
            "nothing lost or added"
        );
        // Each output's tombstones stay inside its key range (the reader checks this too).
        for o in &outputs {
            if let Some(r) = o.table.range_tombstones() {
                for f in r.iter() {
                    assert!(f.start() >= o.desc.smallest_logical());
                    assert!(
                        lk_of(&crate::range_del::largest_bound(f.end()))
                            <= o.desc.largest_logical()
                    );
                }
            }
        }
    }

    #[test]
    fn covered_entries_go_and_bottom_tombstones_with_them() {
        let ts = vec![t(b"kk", b"kl", 1000)];
        // No reader predates the tombstone: every entry is hidden from everybody.
        let (_dir, outputs, deleted) = run_job(300, &ts, vec![], false);
        assert_eq!(deleted, 300);
        assert_eq!(outputs.len(), 1, "a tombstone-only table");
        assert_eq!(outputs[0].desc.entries, 0);
        assert_eq!(outputs[0].table.properties().num_range_deletions, 1);
        // At the bottom the tombstone has nothing left to hide.
        let (_dir, outputs, deleted) = run_job(300, &ts, vec![], true);
        assert_eq!((outputs.len(), deleted), (0, 300));
        // A snapshot between the entries: the older half goes, the newer half stays.
        let ts = vec![t(b"kk", b"kl", 150)];
        let (_dir, outputs, deleted) = run_job(300, &ts, vec![200], true);
        assert_eq!(deleted, 149, "seqs 1..=149 are below the tombstone");
        let kept: u64 = outputs.iter().map(|o| o.desc.entries).sum();
        assert_eq!(kept, 151);
        assert!(
            outputs.iter().all(|o| o.table.range_tombstones().is_none()),
            "every reader sees the tombstone: gone at the bottom"
        );
    }

    #[test]
    fn files_deleted_whole_need_full_newer_coverage_every_reader_sees() {
        // One output holding keys 0..40 (seqs 1..=40), no tombstones of its own.
        let (_dir, outputs, _) = run_job(40, &[], vec![], false);
        assert_eq!(outputs.len(), 1);
        let o = &outputs[0];
        let f = FileMeta::new(
            o.desc.clone(),
            o.table.clone(),
            Arc::new(StdFs::new()),
            o.path.clone(),
        );
        let idx = |ts: &[RangeTombstone]| FragmentedTombstones::new(ts).unwrap();
        let all = GcPolicy::new([], MAX_VERSION);
        let whole = [t(b"kk", b"kl", 500)];
        assert!(deleted_whole(&f, &idx(&whole), &all));
        // Two touching tombstones cover it too.
        let split = [t(b"kk", &key(20), 500), t(&key(20), b"kl", 600)];
        assert!(deleted_whole(&f, &idx(&split), &all));
        // A gap, a tombstone older than the file's newest entry, a snapshot before it.
        let gap = [t(b"kk", &key(20), 500), t(&key(21), b"kl", 600)];
        assert!(!deleted_whole(&f, &idx(&gap), &all));
        assert!(!deleted_whole(&f, &idx(&[t(b"kk", b"kl", 40)]), &all));
        assert!(deleted_whole(&f, &idx(&[t(b"kk", b"kl", 41)]), &all));
        assert!(!deleted_whole(
            &f,
            &idx(&whole),
            &GcPolicy::new([300], MAX_VERSION)
        ));
        // Must reach past the largest key (inclusive) and start at or before the smallest.
        let largest = o.desc.largest_logical().to_vec();
        assert!(!deleted_whole(&f, &idx(&[t(b"kk", &largest, 500)]), &all));
        assert!(deleted_whole(
            &f,
            &idx(&[t(b"kk", &crate::range_del::successor(&largest), 500)]),
            &all
        ));
        assert!(!deleted_whole(&f, &idx(&[t(&key(1), b"kl", 500)]), &all));
        assert!(!deleted_whole(&f, &idx(&[]), &all));
    }
}
