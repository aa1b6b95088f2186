//! Test-only network faults on the store-to-store transport (`NOKV_DEBUG_NET_FAULTS=path`,
//! debug builds): system tests partition stores and drop, duplicate, delay and reorder
//! raft messages by writing rules to a file that every store of the cluster watches.
//!
//! The file holds one rule per line (`#` starts a comment; a missing or empty file means
//! no faults; a line that does not parse is logged and the whole file ignored):
//!
//! | rule | effect |
//! |---|---|
//! | `isolate S` | nothing passes between store `S` and any other store |
//! | `cut A B` | nothing passes between stores `A` and `B` |
//! | `drop P` | P% of the raft messages sent are dropped |
//! | `dup P` | P% of the raft messages sent are sent twice |
//! | `delay MIN MAX` | each raft message is held MIN..=MAX ms before it is queued (later messages overtake earlier ones) |
//!
//! Cuts apply to raft messages and to key-value requests forwarded between stores (a
//! request across a cut gets no answer until its timeout). Every store checks on its
//! sending side, so a cut is two-way when both stores read the file. Snapshot transfers
//! and coordinator traffic are not affected.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How often the watcher thread reads the file.
const POLL: Duration = Duration::from_millis(50);

/// The rules in effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Stores cut from every other store.
    isolated: Vec<u64>,
    /// Pairs of stores cut from each other.
    cuts: Vec<(u64, u64)>,
    /// Percent of raft messages dropped.
    drop_pct: u32,
    /// Percent of raft messages sent twice.
    dup_pct: u32,
    /// Delay range of raft messages (ms).
    delay_ms: Option<(u64, u64)>,
}

/// What to do with one raft message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it now.
    Send,
    /// Drop it.
    Drop,
    /// Send it twice.
    Duplicate,
    /// Send it after this long.
    Delay(Duration),
}

impl Rules {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let mut rules = Rules::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let num = |i: usize| -> Result<u64, String> {
                words
                    .get(i)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| format!("line {}: `{line}`: expected a number", n + 1))
            };
            let pct = |i: usize| -> Result<u32, String> {
                let p = num(i)?;
                u32::try_from(p)
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("line {}: `{line}`: a percent is 0..=100", n + 1))
            };
            let arity = match words[0] {
                "isolate" => {
                    rules.isolated.push(num(1)?);
                    2
                }
                "cut" => {
                    rules.cuts.push((num(1)?, num(2)?));
                    3
                }
                "drop" => {
                    rules.drop_pct = pct(1)?;
                    2
                }
                "dup" => {
                    rules.dup_pct = pct(1)?;
                    2
                }
                "delay" => {
                    let (lo, hi) = (num(1)?, num(2)?);
                    if lo > hi {
                        return Err(format!("line {}: `{line}`: MIN above MAX", n + 1));
                    }
                    rules.delay_ms = Some((lo, hi));
                    3
                }
                other => return Err(format!("line {}: unknown rule `{other}`", n + 1)),
            };
            if words.len() != arity {
                return Err(format!(
                    "line {}: `{line}`: {} words expected",
                    n + 1,
                    arity
                ));
            }
        }
        Ok(rules)
    }

    /// Whether nothing may pass between stores `a` and `b`.
    pub fn cut(&self, a: u64, b: u64) -> bool {
        a != b
            && (self.isolated.contains(&a)
                || self.isolated.contains(&b)
                || self.cuts.contains(&(a, b))
                || self.cuts.contains(&(b, a)))
    }

    /// The fate of one raft message from store `from` to store `to`; `roll` draws a
    /// uniform number below its argument.
    pub fn verdict(&self, from: u64, to: u64, mut roll: impl FnMut(u64) -> u64) -> Verdict {
        if self.cut(from, to) || (self.drop_pct > 0 && roll(100) < u64::from(self.drop_pct)) {
            return Verdict::Drop;
        }
        if self.dup_pct > 0 && roll(100) < u64::from(self.dup_pct) {
            return Verdict::Duplicate;
        }
        match self.delay_ms {
            Some((lo, hi)) if hi > 0 => {
                Verdict::Delay(Duration::from_millis(lo + roll(hi - lo + 1)))
            }
            _ => Verdict::Send,
        }
    }
}

/// The rules of a watched file, re-read every [`POLL`] by one thread per process.
#[derive(Clone)]
pub struct NetFaults {
    rules: Arc<Mutex<Arc<Rules>>>,
}

impl std::fmt::Debug for NetFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NetFaults").field(&self.rules()).finish()
    }
}

impl NetFaults {
    /// Starts watching `path` (one watcher per process and path).
    pub fn watch(path: PathBuf) -> NetFaults {
        static WATCHED: OnceLock<Mutex<Vec<(PathBuf, NetFaults)>>> = OnceLock::new();
        let watched = WATCHED.get_or_init(|| Mutex::new(Vec::new()));
        let mut watched = watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, faults)) = watched.iter().find(|(p, _)| *p == path) {
            return faults.clone();
        }
        let faults = NetFaults {
            rules: Arc::new(Mutex::new(Arc::new(Rules::default()))),
        };
        let shared = faults.rules.clone();
        let file = path.clone();
        let spawned = std::thread::Builder::new()
            .name("nokv-net-faults".into())
            .spawn(move || {
                let mut last = String::new();
                loop {
                    let text = std::fs::read_to_string(&file).unwrap_or_default();
                    if text != last {
                        let rules = Rules::parse(&text).unwrap_or_else(|e| {
                            tracing::warn!(file = %file.display(), error = %e, "net faults ignored");
                            Rules::default()
                        });
                        tracing::info!(?rules, "net faults");
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
                        last = text;
                    }
                    std::thread::sleep(POLL);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "net faults: no watcher thread");
        }
        watched.push((path, faults.clone()));
        faults
    }

    /// The rules in effect now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A small xorshift generator for fault rolls (no quality needed, no dependency).
pub struct Roll(u64);

impl Roll {
    /// Seeded from the clock and `salt`.
    pub fn new(salt: u64) -> Roll {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Roll((nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_decide() {
        let r = Rules::parse("# partition\nisolate 3\ncut 1 2 # pair\n\ndrop 0\n").unwrap();
        assert!(r.cut(3, 1) && r.cut(2, 3) && r.cut(1, 2) && r.cut(2, 1));
        assert!(!r.cut(1, 4) && !r.cut(3, 3));
        assert_eq!(r.verdict(1, 2, |_| 0), Verdict::Drop);
        assert_eq!(r.verdict(1, 4, |_| 0), Verdict::Send);
        let r = Rules::parse("dup 50\ndelay 10 20").unwrap();
        assert_eq!(r.verdict(1, 2, |_| 10), Verdict::Duplicate);
        assert_eq!(
            r.verdict(1, 2, |n| if n == 100 { 60 } else { 5 }),
            Verdict::Delay(Duration::from_millis(15))
        );
        assert_eq!(Rules::parse("").unwrap(), Rules::default());
        for bad in [
            "isolate",
            "cut 1",
            "drop 101",
            "delay 5 1",
            "flap 1",
            "isolate x",
            "dup 5 5",
        ] {
            assert!(Rules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rolls_stay_below_their_bound() {
        let mut r = Roll::new(7);
        assert!((0..1000).all(|_| r.below(10) < 10));
        assert_eq!(r.below(0), 0);
    }
}
