//! A snapshot-isolation checker for histories of transactions whose timestamps are known
//! (the TSO's `start_ts` and `commit_ts`): every read must return the value of the newest
//! committed write of its key below the reader's `start_ts` (a snapshot read), and no two
//! committed transactions that wrote one key may overlap (first committer wins: no lost
//! update). A transaction whose commit outcome is unknown may have committed at any time
//! after its start: a read may return its value, and then it counts as committed.

use std::collections::{BTreeMap, HashMap};

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed at this timestamp.
    Committed(u64),
    /// Not committed (refused, rolled back, or never sent).
    Aborted,
    /// The client does not know.
    Unknown,
}

/// One transaction of a history.
#[derive(Debug, Clone)]
pub struct Txn {
    /// Its snapshot.
    pub start_ts: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What it read, before writing anything (key, value; None: absent).
    pub reads: Vec<(String, Option<String>)>,
    /// What it wrote (values unique in the history).
    pub writes: Vec<(String, String)>,
}

/// The violations found (empty: snapshot isolated).
pub fn check(history: &[Txn]) -> Vec<String> {
    let mut out = Vec::new();
    // Every written value, to its writer.
    let mut writer_of: HashMap<(&str, &str), &Txn> = HashMap::new();
    // Committed writes per key, by commit_ts.
    let mut committed: HashMap<&str, BTreeMap<u64, (&str, &Txn)>> = HashMap::new();
    for t in history {
        for (k, v) in &t.writes {
            if writer_of.insert((k, v), t).is_some() {
                out.push(format!(
                    "value {v} of {k} written twice: the history is not usable"
                ));
            }
            if let Outcome::Committed(c) = t.outcome {
                if c <= t.start_ts {
                    out.push(format!(
                        "txn {} committed at {c}, not after its start",
                        t.start_ts
                    ));
                }
                committed.entry(k).or_default().insert(c, (v, t));
            }
        }
    }
    // Snapshot reads.
    for t in history {
        for (k, v) in &t.reads {
            let newest = committed
                .get(k.as_str())
                .and_then(|m| m.range(..t.start_ts).next_back());
            let expected = newest.map(|(_, (v, _))| *v);
            if v.as_deref() == expected {
                continue;
            }
            let Some(v) = v else {
                out.push(format!(
                    "txn {} read {k} absent, but {:?} committed it at {} before its start",
                    t.start_ts,
                    expected,
                    newest.map_or(0, |(c, _)| *c)
                ));
                continue;
            };
            match writer_of.get(&(k.as_str(), v.as_str())).map(|w| (w.outcome, w.start_ts)) {
                // Committed at an unknown time after its start: possible when it started
                // before the reader's snapshot (it may then be the newest commit below it).
                Some((Outcome::Unknown, ws)) if ws < t.start_ts => {}
                Some((Outcome::Committed(c), _)) if c >= t.start_ts => out.push(format!(
                    "txn {} read {k}={v} committed at {c}, after its start (a read from the future)",
                    t.start_ts
                )),
                Some((Outcome::Committed(c), _)) => out.push(format!(
                    "txn {} read {k}={v} (committed at {c}) but {:?} committed at {} is newer (a stale read)",
                    t.start_ts,
                    expected,
                    newest.map_or(0, |(c, _)| *c)
                )),
                Some((Outcome::Aborted, ws)) => out.push(format!(
                    "txn {} read {k}={v} of txn {ws}, which did not commit (a dirty read)",
                    t.start_ts
                )),
                Some((Outcome::Unknown, ws)) => out.push(format!(
                    "txn {} read {k}={v} of txn {ws}, which started after it",
                    t.start_ts
                )),
                None => out.push(format!("txn {} read {k}={v}, which nobody wrote", t.start_ts)),
            }
        }
    }
    // First committer wins: consecutive committed writers of a key do not overlap.
    for (k, writes) in &committed {
        let mut prev: Option<(u64, &Txn)> = None;
        for (&c, (_, t)) in writes {
            if let Some((pc, p)) = prev {
                if t.start_ts < pc {
                    out.push(format!(
                        "lost update of {k}: txn {} (committed at {pc}) and txn {} (started at {}, committed at {c}) both wrote it",
                        p.start_ts, t.start_ts, t.start_ts
                    ));
                }
            }
            prev = Some((c, t));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(
        start: u64,
        outcome: Outcome,
        reads: &[(&str, Option<&str>)],
        writes: &[(&str, &str)],
    ) -> Txn {
        Txn {
            start_ts: start,
            outcome,
            reads: reads
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
            writes: writes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn snapshot_reads_and_serial_writers_pass() {
        let h = [
            txn(1, Outcome::Committed(2), &[("x", None)], &[("x", "a")]),
            txn(3, Outcome::Committed(5), &[("x", Some("a"))], &[("x", "b")]),
            // Started before b committed: reads a.
            txn(4, Outcome::Aborted, &[("x", Some("a"))], &[]),
            txn(6, Outcome::Unknown, &[("x", Some("b"))], &[("x", "c")]),
            // c's commit is unknown: either is fine.
            txn(9, Outcome::Committed(10), &[("x", Some("c"))], &[]),
            txn(11, Outcome::Committed(12), &[("x", Some("b"))], &[]),
        ];
        assert_eq!(check(&h), Vec::<String>::new());
    }

    #[test]
    fn each_anomaly_is_reported() {
        let base = txn(1, Outcome::Committed(2), &[], &[("x", "a")]);
        let cases = [
            (txn(3, Outcome::Committed(4), &[("x", None)], &[]), "absent"),
            (
                txn(1, Outcome::Committed(9), &[], &[("x", "late")]),
                "lost update",
            ),
            (
                txn(5, Outcome::Aborted, &[("x", Some("d"))], &[]),
                "dirty read",
            ),
            (
                txn(5, Outcome::Aborted, &[("x", Some("zz"))], &[]),
                "nobody wrote",
            ),
        ];
        for (t, want) in cases {
            let mut h = vec![base.clone(), t];
            h.push(txn(0, Outcome::Aborted, &[], &[("x", "d")]));
            let v = check(&h);
            assert!(v.iter().any(|m| m.contains(want)), "{want}: {v:?}");
        }
        // A read from the future and a stale read.
        let h = [
            base.clone(),
            txn(3, Outcome::Committed(6), &[], &[("x", "b")]),
            txn(4, Outcome::Aborted, &[("x", Some("b"))], &[]),
            txn(7, Outcome::Aborted, &[("x", Some("a"))], &[]),
        ];
        let v = check(&h);
        assert!(v.iter().any(|m| m.contains("future")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("stale")), "{v:?}");
    }
}
