//! A linearizability checker for histories of integer registers (GET, SET, SET NX, DEL,
//! INCR), after
//! Wing & Gong's search with Lowe's memoization of (linearized set, state), one key at a
//! time (P-compositionality: a history is linearizable iff each key's is), as Porcupine
//! does. Operations whose outcome is unknown (no answer, or an error after the request
//! was sent) may take effect at any time after their call, or never.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What a client asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// GET.
    Get,
    /// SET to this value.
    Set(i64),
    /// INCR.
    Incr,
    /// SET NX to this value: only when the key is absent (a conditional write).
    SetNx(i64),
    /// DEL.
    Del,
}

/// What it was answered (`None` in [`Op::output`]: unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// GET's value (`None`: nil).
    Value(Option<i64>),
    /// SET's OK.
    Ok,
    /// INCR's new value.
    Incremented(i64),
    /// SET NX's nil: the key was there, nothing written.
    NotSet,
    /// DEL's count (1: the key was there).
    Deleted(i64),
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Op {
    /// The client (for messages).
    pub client: usize,
    /// The key.
    pub key: String,
    /// Nanoseconds from the start when it was sent.
    pub call: u64,
    /// Nanoseconds when it was answered (`u64::MAX`: unknown outcome).
    pub ret: u64,
    /// What was asked.
    pub input: Input,
    /// The answer (`None`: unknown outcome).
    pub output: Option<Output>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = if self.ret == u64::MAX {
            "?".to_string()
        } else {
            format!("{:.3}", self.ret as f64 / 1e9)
        };
        write!(
            f,
            "client {} {:?} {} [{:.3}s..{ret}s] -> {:?}",
            self.client,
            self.input,
            self.key,
            self.call as f64 / 1e9,
            self.output
        )
    }
}

/// The register's state after `op`, or `None` when `op`'s answer is impossible in
/// `state`.
fn step(state: Option<i64>, op: &Op) -> Option<Option<i64>> {
    match (op.input, op.output) {
        (Input::Get, Some(Output::Value(v))) => (v == state).then_some(state),
        (Input::Get, None) => Some(state),
        (Input::Set(v), Some(Output::Ok) | None) => Some(Some(v)),
        (Input::SetNx(v), None) => Some(state.or(Some(v))),
        (Input::SetNx(v), Some(Output::Ok)) => state.is_none().then_some(Some(v)),
        (Input::SetNx(_), Some(Output::NotSet)) => state.is_some().then_some(state),
        (Input::Del, None) => Some(None),
        (Input::Del, Some(Output::Deleted(n))) => (n == i64::from(state.is_some())).then_some(None),
        (Input::Incr, out) => {
            let next = state.unwrap_or(0).checked_add(1)?;
            match out {
                None => Some(Some(next)),
                Some(Output::Incremented(n)) if n == next => Some(Some(next)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A key whose history has no linearization.
#[derive(Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// Operations of its history.
    pub ops: usize,
    /// The most operations any partial linearization took.
    pub linearized: usize,
    /// The operations none of the longest partial linearizations could take next, with
    /// the register's value there.
    pub stuck: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: not linearizable ({} ops; at most {} linearized); none of these could come next:",
            self.key, self.ops, self.linearized
        )?;
        for s in &self.stuck {
            writeln!(f, "  {s}")?;
        }
        Ok(())
    }
}

/// Checks every key's history; the violations found (empty: linearizable).
pub fn check(history: &[Op]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
        .into_iter()
        .filter_map(|(key, ops)| check_key(key, &ops).err())
        .collect()
}

/// One entry of the search's list: an operation's call or return.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
    prev: usize,
    next: usize,
}

/// Wing & Gong's search over one key's operations.
fn check_key(key: &str, ops: &[&Op]) -> Result<(), Violation> {
    // Events in time order, calls before returns at equal times (the more permissive
    // reading: such operations overlap). Entry 0 is the list's head.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        events.push((op.call, true, i));
        events.push((op.ret, false, i));
    }
    events.sort_by_key(|&(t, call, op)| (t, !call, op));
    let n = events.len();
    let mut list: Vec<Entry> = Vec::with_capacity(n + 1);
    list.push(Entry {
        op: usize::MAX,
        call: false,
        prev: usize::MAX,
        next: 1,
    });
    let mut ret_of = vec![0usize; ops.len()];
    for (i, &(_, call, op)) in events.iter().enumerate() {
        list.push(Entry {
            op,
            call,
            prev: i,
            next: if i + 1 < n { i + 2 } else { usize::MAX },
        });
        if !call {
            ret_of[op] = i + 1;
        }
    }
    if n == 0 {
        return Ok(());
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<i64> = None;
    let mut seen: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    // (call entry, state before it)
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut best = (0usize, Vec::<String>::new());
    let mut entry = list[0].next;

    // Unlinks an operation's call and return entries.
    fn lift(list: &mut [Entry], call: usize, ret: usize) {
        for e in [call, ret] {
            let (p, x) = (list[e].prev, list[e].next);
            list[p].next = x;
            if x != usize::MAX {
                list[x].prev = p;
            }
        }
    }
    // Puts them back (in the reverse order of `lift`).
    fn unlift(list: &mut [Entry], call: usize, ret: usize) {
        for e in [ret, call] {
            let (p, x) = (list[e].prev, list[e].next);
            list[p].next = e;
            if x != usize::MAX {
                list[x].prev = e;
            }
        }
    }

    while list[0].next != usize::MAX {
        if entry != usize::MAX && list[entry].call {
            let op = list[entry].op;
            if let Some(next) = step(state, ops[op]) {
                let mut with = linearized.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), next)) {
                    stack.push((entry, state));
                    state = next;
                    linearized = with;
                    lift(&mut list, entry, ret_of[op]);
                    entry = list[0].next;
                    continue;
                }
            }
            entry = list[entry].next;
        } else {
            // A return (or the end): the operations before it cannot all be placed here.
            if stack.len() >= best.0 {
                let mut stuck = Vec::new();
                let mut e = list[0].next;
                while e != usize::MAX && stuck.len() < 12 {
                    if list[e].call {
                        stuck.push(format!("{} (value then {:?})", ops[list[e].op], state));
                    } else {
                        break;
                    }
                    e = list[e].next;
                }
                best = (stack.len(), stuck);
            }
            let Some((call, before)) = stack.pop() else {
                return Err(Violation {
                    key: key.to_string(),
                    ops: ops.len(),
                    linearized: best.0,
                    stuck: best.1,
                });
            };
            let op = list[call].op;
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut list, call, ret_of[op]);
            entry = list[call].next;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, call: u64, ret: u64, input: Input, output: Option<Output>) -> Op {
        Op {
            client,
            key: "k".into(),
            call,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn sequential_and_overlapping_histories_are_linearizable() {
        let h = vec![
            op(0, 0, 10, Input::Set(1), Some(Output::Ok)),
            op(1, 20, 30, Input::Get, Some(Output::Value(Some(1)))),
            op(0, 40, 60, Input::Incr, Some(Output::Incremented(2))),
            // Overlaps the INCR: may see either value.
            op(1, 45, 50, Input::Get, Some(Output::Value(Some(1)))),
            op(2, 46, 55, Input::Get, Some(Output::Value(Some(2)))),
        ];
        assert!(check(&h).is_empty());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_reported() {
        let h = vec![
            op(0, 0, 10, Input::Set(1), Some(Output::Ok)),
            op(0, 20, 30, Input::Set(2), Some(Output::Ok)),
            op(1, 40, 50, Input::Get, Some(Output::Value(Some(1)))),
        ];
        let v = check(&h);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].to_string().contains("Get"), "{}", v[0]);
    }

    #[test]
    fn reads_must_agree_on_one_order_of_concurrent_writes() {
        // Two writes overlap; two later reads see them in opposite orders.
        let h = vec![
            op(0, 0, 100, Input::Set(1), Some(Output::Ok)),
            op(1, 0, 100, Input::Set(2), Some(Output::Ok)),
            op(2, 10, 20, Input::Get, Some(Output::Value(Some(1)))),
            op(2, 30, 40, Input::Get, Some(Output::Value(Some(2)))),
            op(3, 50, 60, Input::Get, Some(Output::Value(Some(1)))),
        ];
        assert_eq!(check(&h).len(), 1);
        // Without the last read it is fine (1 then 2).
        assert!(check(&h[..4]).is_empty());
    }

    #[test]
    fn unknown_outcomes_may_apply_late_or_never() {
        let h = vec![
            op(0, 0, u64::MAX, Input::Set(5), None),
            op(1, 10, 20, Input::Get, Some(Output::Value(None))),
            op(1, 30, 40, Input::Get, Some(Output::Value(Some(5)))),
            op(2, 50, u64::MAX, Input::Incr, None),
            op(1, 60, 70, Input::Get, Some(Output::Value(Some(6)))),
        ];
        assert!(check(&h).is_empty());
        // An unknown SET never seen is fine too; but a value nobody wrote is not.
        let h = vec![
            op(0, 0, u64::MAX, Input::Set(5), None),
            op(1, 10, 20, Input::Get, Some(Output::Value(Some(7)))),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn conditional_writes_and_deletes_follow_the_register() {
        let h = vec![
            op(0, 0, 10, Input::SetNx(1), Some(Output::Ok)),
            op(1, 20, 30, Input::SetNx(2), Some(Output::NotSet)),
            op(0, 40, 50, Input::Del, Some(Output::Deleted(1))),
            op(1, 60, 70, Input::Del, Some(Output::Deleted(0))),
            op(2, 80, 90, Input::SetNx(3), Some(Output::Ok)),
            op(2, 100, 110, Input::Get, Some(Output::Value(Some(3)))),
        ];
        assert!(check(&h).is_empty());
        // Two SET NX that both won on an absent key: one must have seen the other.
        let h = vec![
            op(0, 0, 10, Input::SetNx(1), Some(Output::Ok)),
            op(1, 20, 30, Input::SetNx(2), Some(Output::Ok)),
        ];
        assert_eq!(check(&h).len(), 1);
        // A DEL that found nothing after a completed SET.
        let h = vec![
            op(0, 0, 10, Input::Set(1), Some(Output::Ok)),
            op(1, 20, 30, Input::Del, Some(Output::Deleted(0))),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn a_lost_increment_is_reported() {
        let h = vec![
            op(0, 0, 10, Input::Incr, Some(Output::Incremented(1))),
            op(1, 5, 15, Input::Incr, Some(Output::Incremented(1))),
        ];
        assert_eq!(check(&h).len(), 1);
    }

    #[test]
    fn keys_are_checked_apart() {
        let mut h = vec![
            op(0, 0, 10, Input::Set(1), Some(Output::Ok)),
            op(1, 20, 30, Input::Get, Some(Output::Value(Some(1)))),
        ];
        let mut other = op(2, 20, 30, Input::Get, Some(Output::Value(Some(1))));
        other.key = "j".into();
        h.push(other);
        let v = check(&h);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "j");
    }

    #[test]
    fn many_concurrent_clients_check_quickly() {
        // 8 clients x 150 rounds of overlapping INCRs and GETs on one key: a valid
        // history (each round's INCRs return consecutive values in some order).
        let mut h = Vec::new();
        let mut value = 0i64;
        for round in 0..150u64 {
            let t = round * 100;
            for c in 0..8usize {
                if c % 2 == 0 {
                    value += 1;
                    h.push(op(
                        c,
                        t,
                        t + 50,
                        Input::Incr,
                        Some(Output::Incremented(value)),
                    ));
                }
            }
            for c in 0..8usize {
                if c % 2 == 1 {
                    h.push(op(
                        c,
                        t + 60,
                        t + 90,
                        Input::Get,
                        Some(Output::Value(Some(value))),
                    ));
                }
            }
        }
        assert!(check(&h).is_empty());
    }
}
