//! Per-region load on a core (docs/regions.md, "Split by load"): requests and written
//! bytes of the regions it leads since the last check, with a bounded random sample of
//! their keys. The split check turns it into rates, splits a region past
//! `--split-load-qps` or `--split-load-bytes` at the median sampled slot, and keeps the
//! figures for `NOKV.REGION HOT` (`nokv-tool hot`).
//!
//! A child module of `node` (it works on the core's private state).

use super::*;

/// Keys sampled per region and window.
const SAMPLES: usize = 64;
/// Bytes of a sampled key kept (for the report).
const KEY_BYTES: usize = 64;

/// One region's load in the current window.
#[derive(Debug, Default)]
pub(super) struct RegionLoad {
    ops: u64,
    bytes: u64,
    /// Reservoir sample of the requests' (slot, key).
    samples: Vec<(u16, Vec<u8>)>,
}

/// A region's load over the last window, as rates.
#[derive(Debug, Clone)]
pub(super) struct LoadFigures {
    /// Requests per second.
    pub(super) ops_per_sec: f64,
    /// Written bytes per second.
    pub(super) bytes_per_sec: f64,
    /// The most sampled key and its share of the samples.
    pub(super) top_key: Vec<u8>,
    pub(super) top_share: f64,
    /// Sampled slots, sorted.
    pub(super) slots: Vec<u16>,
}

/// The load of a core's regions.
#[derive(Default)]
pub(super) struct Loads {
    current: RefCell<HashMap<u64, RegionLoad>>,
    last: RefCell<HashMap<u64, LoadFigures>>,
    window_start: Cell<Option<Instant>>,
    rng: Cell<u64>,
}

impl Loads {
    /// Counts one request of `region` on `keys` that wrote `bytes`.
    pub(super) fn record(&self, region: u64, keys: &[&[u8]], bytes: usize) {
        if self.window_start.get().is_none() {
            self.window_start.set(Some(Instant::now()));
        }
        let mut map = self.current.borrow_mut();
        let load = map.entry(region).or_default();
        load.ops += 1;
        load.bytes += bytes as u64;
        let Some(key) = keys.first() else {
            return;
        };
        let slot = nokv_gateway::model::slot(key);
        let sample = || (slot, key[..key.len().min(KEY_BYTES)].to_vec());
        if load.samples.len() < SAMPLES {
            load.samples.push(sample());
            return;
        }
        // Reservoir sampling: each request is kept with probability SAMPLES / ops.
        let mut x = self.rng.get() ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let j = (x % load.ops) as usize;
        if j < SAMPLES {
            load.samples[j] = sample();
        }
    }

    /// Ends the window: the rates of every region it saw (also kept for the report).
    pub(super) fn roll(&self) -> HashMap<u64, LoadFigures> {
        let secs = self
            .window_start
            .replace(Some(Instant::now()))
            .map_or(0.0, |t| t.elapsed().as_secs_f64())
            .max(0.001);
        let current = std::mem::take(&mut *self.current.borrow_mut());
        let figures: HashMap<u64, LoadFigures> = current
            .into_iter()
            .map(|(region, l)| {
                let mut counts: HashMap<&[u8], usize> = HashMap::new();
                for (_, k) in &l.samples {
                    *counts.entry(k.as_slice()).or_default() += 1;
                }
                let (top_key, top) = counts
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                    .map_or((Vec::new(), 0), |(k, n)| (k.to_vec(), n));
                let mut slots: Vec<u16> = l.samples.iter().map(|(s, _)| *s).collect();
                slots.sort_unstable();
                let figures = LoadFigures {
                    ops_per_sec: l.ops as f64 / secs,
                    bytes_per_sec: l.bytes as f64 / secs,
                    top_share: if l.samples.is_empty() {
                        0.0
                    } else {
                        top as f64 / l.samples.len() as f64
                    },
                    top_key,
                    slots,
                };
                (region, figures)
            })
            .collect();
        *self.last.borrow_mut() = figures.clone();
        figures
    }

    /// Requests per second `region` served over the last window (None: none counted).
    pub(super) fn ops_per_sec(&self, region: u64) -> Option<f64> {
        self.last.borrow().get(&region).map(|f| f.ops_per_sec)
    }

    /// The figures of the last window, by region.
    pub(super) fn last(&self) -> HashMap<u64, LoadFigures> {
        self.last.borrow().clone()
    }
}

/// The slot to split `[start, end)` at for this load: the median sampled slot, or the
/// first sampled slot above `start` when the median is `start`; None when every sample
/// is in one slot (a hot key range no split can spread: splitting at it would only move
/// it into a region of its own, as hot as before).
pub(super) fn split_slot(figures: &LoadFigures, start: u32, end: u32) -> Option<u16> {
    let inside: Vec<u16> = figures
        .slots
        .iter()
        .copied()
        .filter(|s| (start..end).contains(&u32::from(*s)))
        .collect();
    if inside.first() == inside.last() {
        // One slot (or nothing): a split would only move the hot slot to a new region.
        return None;
    }
    let median = *inside.get(inside.len() / 2)?;
    if u32::from(median) > start {
        return Some(median);
    }
    inside.into_iter().find(|s| u32::from(*s) > start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_slot_is_the_median_sample_and_one_hot_slot_cannot_split() {
        let f = |slots: Vec<u16>| LoadFigures {
            ops_per_sec: 1.0,
            bytes_per_sec: 0.0,
            top_key: Vec::new(),
            top_share: 0.0,
            slots,
        };
        assert_eq!(split_slot(&f(vec![10, 11, 20, 30, 40]), 10, 100), Some(20));
        assert_eq!(split_slot(&f(vec![10, 10, 10, 12]), 10, 100), Some(12));
        assert_eq!(split_slot(&f(vec![10, 10, 10]), 10, 100), None, "one slot");
        assert_eq!(
            split_slot(&f(vec![50, 50, 50]), 10, 100),
            None,
            "one slot inside"
        );
        assert_eq!(split_slot(&f(vec![]), 10, 100), None);
        assert_eq!(split_slot(&f(vec![5, 150, 50, 60]), 10, 100), Some(60));
    }

    #[test]
    fn a_window_reports_rates_and_the_hottest_key() {
        let loads = Loads::default();
        for i in 0..1000u32 {
            let k = if i % 4 == 0 {
                format!("k{i}")
            } else {
                "hot".to_string()
            };
            loads.record(7, &[k.as_bytes()], 10);
        }
        loads.record(8, &[], 0);
        let f = loads.roll();
        let r = &f[&7];
        assert!(r.ops_per_sec > 0.0 && r.bytes_per_sec > 0.0);
        assert_eq!(r.top_key, b"hot".to_vec());
        assert!(r.top_share > 0.5, "{}", r.top_share);
        assert_eq!(r.slots.len(), SAMPLES);
        assert!(f[&8].slots.is_empty());
        assert_eq!(loads.last().len(), 2);
        assert!(loads.roll().is_empty(), "a new window starts empty");
    }
}
