//! Cross-region atomic writes (`nokv_gateway::atomic`) on an in-memory store split into
//! three "regions" by hash slot: each region's part of a step is applied on its own, and
//! the driver can be stopped ("dies") after any number of parts.

use nokv_gateway::atomic::{self, Runner, LOCK_TTL_MS};
use nokv_gateway::exec::{self, ReadOp, WriteCommand, WriteOp};
use nokv_gateway::model::slot;
use nokv_gateway::store::MemView;
use nokv_gateway::Reply;
use std::cell::{Cell, RefCell};
use std::time::Duration;

const REGIONS: u64 = 3;

fn region_of(key: &[u8]) -> u64 {
    u64::from(slot(key)) % REGIONS
}

/// The store, its clock, and a budget of parts after which the runner stops applying.
struct Store {
    view: RefCell<MemView>,
    version: Cell<u64>,
    clock: Cell<u64>,
    budget: Cell<Option<usize>>,
    parts: Cell<usize>,
}

impl Store {
    fn new() -> Store {
        Store {
            view: RefCell::new(MemView::default()),
            version: Cell::new(0),
            clock: Cell::new(1_000_000),
            budget: Cell::new(None),
            parts: Cell::new(0),
        }
    }

    fn apply_part(&self, now_ms: u64, op: WriteOp) -> Reply {
        if let Some(b) = self.budget.get() {
            if b == 0 {
                return Reply::error("ERR the driver died");
            }
            self.budget.set(Some(b - 1));
        }
        self.parts.set(self.parts.get() + 1);
        self.version.set(self.version.get() + 1);
        let cmd = WriteCommand { now_ms, op };
        exec::apply(&cmd, &mut *self.view.borrow_mut(), self.version.get())
    }

    fn read(&self, op: ReadOp) -> Reply {
        exec::read(&op, &*self.view.borrow(), self.clock.get())
    }

    /// A read that resolves the locks it meets, as a store's or client's runner does.
    fn read_resolved(&self, op: ReadOp) -> Reply {
        atomic::block_on(atomic::resolving(&self, None, || async {
            self.read(op.clone())
        }))
    }

    fn run(&self, op: WriteOp) -> Reply {
        let cmd = WriteCommand {
            now_ms: self.clock.get(),
            op,
        };
        atomic::block_on(atomic::run(&self, cmd))
    }
}

impl Runner for &Store {
    async fn write(&self, cmd: WriteCommand) -> Reply {
        let keys = cmd.op.keys();
        let one = keys.iter().all(|k| region_of(k) == region_of(keys[0]));
        let n = keys.len();
        let concat = matches!(
            &cmd.op,
            WriteOp::Atomic(s) if matches!(s.action, exec::AtomicAction::LockExec { .. })
        );
        let parts = if one {
            vec![((0..n).collect(), cmd.op)]
        } else {
            cmd.op
                .split_by(region_of)
                .unwrap_or_else(|op| vec![((0..n).collect(), op)])
        };
        let mut replies = Vec::new();
        let mut positions = Vec::new();
        for (at, op) in parts {
            replies.push(self.apply_part(cmd.now_ms, op));
            positions.push(at);
        }
        if let Some(e) = replies.iter().find(|r| r.is_error()) {
            return e.clone();
        }
        // A block's parts answer [positions, replies]: concatenated, as the planners do.
        if concat {
            let mut out = Vec::new();
            for r in replies {
                if let Reply::Array(items) = r {
                    out.extend(items);
                }
            }
            return Reply::Array(out);
        }
        // Lock steps answer per key: put back in key order.
        if replies.iter().all(|r| matches!(r, Reply::Array(_))) {
            let mut out = vec![Reply::Null; n];
            for (at, r) in positions.iter().zip(replies) {
                if let Reply::Array(items) = r {
                    for (i, item) in at.iter().zip(items) {
                        out[*i] = item;
                    }
                }
            }
            return Reply::Array(out);
        }
        let ints: Vec<i64> = replies
            .iter()
            .filter_map(|r| match r {
                Reply::Int(n) => Some(*n),
                _ => None,
            })
            .collect();
        if ints.len() == replies.len() && !ints.is_empty() {
            Reply::Int(ints.iter().sum())
        } else {
            replies.into_iter().next().unwrap_or(Reply::Null)
        }
    }

    async fn sleep(&self, d: Duration) {
        self.clock
            .set(self.clock.get() + (d.as_millis() as u64).max(1));
    }

    fn now_ms(&self) -> u64 {
        self.clock.get()
    }
}

/// `n` keys, in regions 0, 1, 2, 0, 1, ...
fn keys(n: usize) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut candidates = (0..).map(|i| format!("key:{i}").into_bytes());
    while out.len() < n {
        let want = out.len() as u64 % REGIONS;
        if let Some(k) = candidates.find(|k| region_of(k) == want) {
            out.push(k);
        }
    }
    out
}

fn mset(keys: &[Vec<u8>], value: &str, nx: bool) -> WriteOp {
    WriteOp::MSet {
        pairs: keys
            .iter()
            .map(|k| (k.clone(), value.as_bytes().to_vec()))
            .collect(),
        if_none_exist: nx,
    }
}

fn values(store: &Store, keys: &[Vec<u8>]) -> Vec<Reply> {
    keys.iter()
        .map(|k| store.read_resolved(ReadOp::Get(k.clone())))
        .collect()
}

fn all_equal(values: &[Reply], to: &Reply) -> bool {
    values.iter().all(|v| v == to)
}

#[test]
fn mset_and_del_over_regions_apply_to_every_key() {
    let store = Store::new();
    let ks = keys(9);
    assert_eq!(store.run(mset(&ks, "v", false)), Reply::ok());
    assert!(all_equal(&values(&store, &ks), &Reply::Bulk(b"v".to_vec())));
    // No lock or status record is left behind.
    let left: Vec<_> = store
        .view
        .borrow()
        .map
        .keys()
        .filter(|k| k[1] != nokv_gateway::model::META_CF)
        .cloned()
        .collect();
    assert!(left.is_empty(), "records left: {left:?}");
    let mut del = ks[..5].to_vec();
    del.push(b"absent".to_vec());
    del.push(ks[0].clone());
    assert_eq!(store.run(WriteOp::Del { keys: del }), Reply::Int(5));
    let after = values(&store, &ks);
    assert!(all_equal(&after[..5], &Reply::Null));
    assert!(all_equal(&after[5..], &Reply::Bulk(b"v".to_vec())));
}

#[test]
fn msetnx_over_regions_sets_all_or_none() {
    let store = Store::new();
    let ks = keys(9);
    assert_eq!(store.run(mset(&ks[1..], "first", true)), Reply::Int(1));
    // One key exists: nothing is set, and the absent key stays absent.
    assert_eq!(store.run(mset(&ks, "second", true)), Reply::Int(0));
    assert_eq!(store.read(ReadOp::Get(ks[0].clone())), Reply::Null);
    assert!(all_equal(
        &values(&store, &ks[1..]),
        &Reply::Bulk(b"first".to_vec())
    ));
}

/// A driver that dies after any number of applied parts leaves every key at its old
/// value or every key at its new one, once readers resolve the locks, and the keys are
/// writable again.
#[test]
fn a_driver_dying_at_any_step_leaves_all_or_nothing() {
    let ks = keys(7);
    let full = {
        let store = Store::new();
        store.run(mset(&ks, "new", false));
        store.parts.get()
    };
    assert!(full >= 8, "lock, commit and forget parts: {full}");
    let mut outcomes = std::collections::BTreeSet::new();
    for budget in 0..=full {
        let store = Store::new();
        store.run(mset(&ks, "old", false));
        store.budget.set(Some(budget));
        store.run(mset(&ks, "new", false));
        store.budget.set(None);
        // Before the deadline a reader either rolls forward or waits it out.
        let seen = values(&store, &ks);
        let old = Reply::Bulk(b"old".to_vec());
        let new = Reply::Bulk(b"new".to_vec());
        assert!(
            all_equal(&seen, &old) || all_equal(&seen, &new),
            "dying after {budget} parts: {seen:?}"
        );
        outcomes.insert(seen[0] == new);
        // Every lock is resolvable: a plain write to each key goes through.
        for k in &ks {
            let set = WriteOp::Set {
                key: k.clone(),
                value: b"after".to_vec(),
                condition: exec::SetCondition::Always,
                expiry: exec::ExpiryUpdate::Clear,
                reply: exec::SetReply::Ok,
            };
            let reply = atomic::block_on(atomic::resolving(&&store, None, || async {
                store.apply_part(store.clock.get(), set.clone())
            }));
            assert_eq!(reply, Reply::ok(), "dying after {budget} parts");
        }
    }
    assert_eq!(outcomes.len(), 2, "both outcomes occur");
}

/// A second write meets the locks of a dead one: it waits out the deadline, rolls the dead
/// one back, and applies.
#[test]
fn a_write_meeting_a_dead_writers_locks_rolls_them_back_after_the_deadline() {
    let store = Store::new();
    let ks = keys(6);
    // Locks taken everywhere, then the driver dies before its commit (the dead driver's
    // retries advanced the test clock: it is set back to when the locks were taken).
    let start = store.clock.get();
    store.budget.set(Some(REGIONS as usize));
    store.run(mset(&ks, "dead", false));
    store.budget.set(None);
    store.clock.set(start);
    assert_eq!(store.run(mset(&ks[2..], "live", false)), Reply::ok());
    assert!(
        store.clock.get() >= start + LOCK_TTL_MS,
        "it waited for the deadline"
    );
    let seen = values(&store, &ks);
    assert!(all_equal(&seen[..2], &Reply::Null), "{seen:?}");
    assert!(all_equal(&seen[2..], &Reply::Bulk(b"live".to_vec())));
}

/// EXISTS over regions counts each named key (repeats too) as of one instant, resolving a
/// dead writer's locks, and leaves no lock or status behind.
#[test]
fn exists_over_regions_counts_every_named_key_once_resolved() {
    let store = Store::new();
    let ks = keys(6);
    store.run(mset(&ks[..3], "v", false));
    let mut named = ks.clone();
    named.push(ks[0].clone());
    named.push(b"absent".to_vec());
    let exists = |store: &Store| atomic::block_on(atomic::exists(&store, named.clone()));
    assert_eq!(exists(&store), Reply::Int(4));
    // A writer dies after locking everything: EXISTS waits out its deadline, then counts
    // the state without it.
    store.budget.set(Some(REGIONS as usize));
    let start = store.clock.get();
    store.run(mset(&ks, "w", false));
    store.budget.set(None);
    store.clock.set(start);
    assert_eq!(exists(&store), Reply::Int(4));
    // No lock is left (the dead writer's rolled-back status stays: nobody forgets it).
    let locks = store
        .view
        .borrow()
        .map
        .keys()
        .filter(|k| k[1] == nokv::CF_LOCK)
        .count();
    assert_eq!(locks, 0);
}

fn set(key: &[u8], value: &str) -> exec::ExecItem {
    exec::ExecItem::Write(WriteOp::Set {
        key: key.to_vec(),
        value: value.as_bytes().to_vec(),
        condition: exec::SetCondition::Always,
        expiry: exec::ExpiryUpdate::Clear,
        reply: exec::SetReply::Ok,
    })
}

/// A MULTI block over three regions: replies in block order, a hash created and read
/// inside it, nil when a watched key changed; a driver dying after any number of parts
/// leaves the whole block applied or none of it.
#[test]
fn exec_over_regions_is_whole_and_answers_in_order() {
    let ks = keys(6);
    let block = |watched: Vec<(Vec<u8>, u64)>| WriteOp::Exec {
        watched,
        items: vec![
            set(&ks[0], "new"),
            exec::ExecItem::Write(WriteOp::IncrBy {
                key: ks[1].clone(),
                delta: 5,
            }),
            exec::ExecItem::Read(ReadOp::Get(ks[2].clone())),
            exec::ExecItem::Write(WriteOp::HSet {
                key: ks[3].clone(),
                pairs: vec![(b"f".to_vec(), b"v".to_vec())],
                reply_ok: false,
            }),
            exec::ExecItem::Read(ReadOp::HGetAll(ks[3].clone())),
            exec::ExecItem::Reply(Reply::Simple("PONG".into())),
            set(&ks[4], "new"),
        ],
    };
    let store = Store::new();
    store.run(mset(&ks, "1", false));
    let reply = atomic::block_on(atomic::exec(
        &&store,
        WriteCommand {
            now_ms: store.clock.get(),
            op: block(Vec::new()),
        },
    ));
    assert_eq!(
        reply,
        Reply::Array(vec![
            Reply::ok(),
            Reply::Int(6),
            Reply::Bulk(b"1".to_vec()),
            Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value"),
            Reply::error("WRONGTYPE Operation against a key holding the wrong kind of value"),
            Reply::Simple("PONG".into()),
            Reply::ok(),
        ])
    );
    // A watched key that changed: nothing runs.
    let version = match store.read(ReadOp::Versions(vec![ks[5].clone()])) {
        Reply::Array(v) => match v[0] {
            Reply::Int(n) => n as u64,
            _ => panic!("version"),
        },
        other => panic!("{other:?}"),
    };
    store.run(mset(&ks[5..], "moved", false));
    let reply = atomic::block_on(atomic::exec(
        &&store,
        WriteCommand {
            now_ms: store.clock.get(),
            op: block(vec![(ks[5].clone(), version)]),
        },
    ));
    assert_eq!(reply, Reply::NullArray);
    assert_eq!(
        store.read(ReadOp::Get(ks[1].clone())),
        Reply::Bulk(b"6".to_vec())
    );
    // All or nothing, whatever step the driver dies after.
    let full = {
        let store = Store::new();
        store.run(mset(&ks, "1", false));
        let before = store.parts.get();
        atomic::block_on(atomic::exec(
            &&store,
            WriteCommand {
                now_ms: 0,
                op: block(Vec::new()),
            },
        ));
        store.parts.get() - before
    };
    for budget in 0..=full {
        let store = Store::new();
        store.run(mset(&ks, "1", false));
        store.budget.set(Some(budget));
        let now_ms = store.clock.get();
        atomic::block_on(atomic::exec(
            &&store,
            WriteCommand {
                now_ms,
                op: block(Vec::new()),
            },
        ));
        store.budget.set(None);
        let seen = values(&store, &[ks[0].clone(), ks[1].clone(), ks[4].clone()]);
        let old = vec![Reply::Bulk(b"1".to_vec()); 3];
        let new = vec![
            Reply::Bulk(b"new".to_vec()),
            Reply::Bulk(b"6".to_vec()),
            Reply::Bulk(b"new".to_vec()),
        ];
        assert!(
            seen == old || seen == new,
            "dying after {budget} parts: {seen:?}"
        );
    }
}
