//! Scenario: the power fails under a whole node. A 2-core node runs in this process with
//! every core's engine on one in-memory `FaultFs`; client connections over 127.0.0.1 issue
//! SET / INCR / HSET / DEL (and INCR of one counter they share) with `--durability sync`
//! and record every reply. While writes are in flight the power is cut: the test takes
//! `FaultFs::durable_image` (only what a completed fsync covered, a torn page half the
//! time), lets the dying node wind down on the original filesystem, which the image no
//! longer shares, and starts a new node on the image. Every acknowledged write must be
//! there (each client's own keys: exactly its acknowledged state, or that plus the one
//! command it had in flight; the shared counter at least the highest value any client was
//! told and at most the increments attempted), every region's raft term must not go back
//! (and must have moved past the previous start's term where a write was acknowledged),
//! with the vote still its own peer, and the restarted node must serve the next round's
//! writes. `NOKV_CRASH_ROUNDS` power cuts (default 3), each on the previous one's image.
//!
//! Negative controls: the same run with the engines' `unsafe_ack_before_sync` (sync
//! writes acknowledged without fdatasync) must be reported as losing acknowledged writes;
//! with that switch, memtables too large to flush (so no WAL rotation syncs anything) and
//! the write check off, the term check alone must report lost raft hard states.

mod support;

use nokv::fs::{FaultFs, FileSystem, PowerLoss};
use nokv_shard::config::REGIONS_PER_CORE;
use nokv_shard::layout::{bootstrap_regions, RouteTable};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::inproc::InProcNode;
use support::{Client, R};

const CORES: usize = 2;
const CLIENTS: usize = 4;
/// Keys of each kind (string, counter, hash) per client.
const KEYS: usize = 8;
/// The counter every client increments.
const SHARED: &str = "shared-counter";
/// Commands one client sends at most per round.
const MAX_OPS: usize = 3000;
/// Longest a round writes before the cut comes anyway.
const ROUND_TIME: Duration = Duration::from_secs(20);
/// What the checker's report starts with when acknowledged writes are missing.
const LOST: &str = "lost acknowledged writes";

/// Power cuts a run makes: `NOKV_CRASH_ROUNDS` when set, else `default`.
fn crash_rounds(default: u64) -> u64 {
    std::env::var("NOKV_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a small deterministic generator (seeded per round and client).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A key's value as the model holds it.
#[derive(Clone, PartialEq, Eq)]
enum Val {
    Str(Vec<u8>),
    Int(i64),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
}

/// A value in reports: its first bytes and its length.
fn show(v: &[u8]) -> String {
    let head = String::from_utf8_lossy(&v[..v.len().min(16)]).into_owned();
    format!("{head:?}..({} bytes)", v.len())
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Str(v) => write!(f, "{}", show(v)),
            Val::Int(n) => write!(f, "{n}"),
            Val::Hash(h) => f
                .debug_map()
                .entries(
                    h.iter()
                        .map(|(k, v)| (String::from_utf8_lossy(k), Val::Str(v.clone()))),
                )
                .finish(),
        }
    }
}

/// One client's keys and values.
type State = BTreeMap<String, Val>;

/// A command a client sends.
#[derive(Debug, Clone)]
enum Op {
    Set(String, Vec<u8>),
    Incr(String),
    HSet(String, Vec<(Vec<u8>, Vec<u8>)>),
    Del(Vec<String>),
    IncrShared,
}

impl Op {
    fn args(&self) -> Vec<Vec<u8>> {
        let b = |s: &str| s.as_bytes().to_vec();
        match self {
            Op::Set(k, v) => vec![b("SET"), b(k), v.clone()],
            Op::Incr(k) => vec![b("INCR"), b(k)],
            Op::HSet(k, fields) => {
                let mut a = vec![b("HSET"), b(k)];
                for (f, v) in fields {
                    a.push(f.clone());
                    a.push(v.clone());
                }
                a
            }
            Op::Del(keys) => std::iter::once(b("DEL"))
                .chain(keys.iter().map(|k| b(k)))
                .collect(),
            Op::IncrShared => vec![b("INCR"), b(SHARED)],
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Op::Set(k, _) | Op::Incr(k) | Op::HSet(k, _) => vec![k],
            Op::Del(keys) => keys.iter().map(String::as_str).collect(),
            Op::IncrShared => vec![SHARED],
        }
    }

    /// The reply it must get when `state` is the client's state before it.
    fn expected(&self, state: &State) -> Option<R> {
        Some(match self {
            Op::Set(..) => R::ok(),
            Op::Incr(k) => match state.get(k) {
                Some(Val::Int(n)) => R::Int(n + 1),
                _ => R::Int(1),
            },
            Op::HSet(k, fields) => {
                let old = match state.get(k) {
                    Some(Val::Hash(h)) => Some(h),
                    _ => None,
                };
                let added = fields
                    .iter()
                    .filter(|(f, _)| !old.is_some_and(|h| h.contains_key(f)))
                    .count();
                R::Int(added as i64)
            }
            Op::Del(keys) => R::Int(keys.iter().filter(|k| state.contains_key(*k)).count() as i64),
            Op::IncrShared => return None,
        })
    }
}

fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Set(k, v) => {
            state.insert(k.clone(), Val::Str(v.clone()));
        }
        Op::Incr(k) => {
            let n = match state.get(k) {
                Some(Val::Int(n)) => *n,
                _ => 0,
            };
            state.insert(k.clone(), Val::Int(n + 1));
        }
        Op::HSet(k, fields) => {
            let mut h = match state.remove(k) {
                Some(Val::Hash(h)) => h,
                _ => BTreeMap::new(),
            };
            for (f, v) in fields {
                h.insert(f.clone(), v.clone());
            }
            state.insert(k.clone(), Val::Hash(h));
        }
        Op::Del(keys) => {
            for k in keys {
                state.remove(k);
            }
        }
        Op::IncrShared => {}
    }
}

fn str_key(c: usize, i: u64) -> String {
    format!("c{c}:s:{i}")
}
fn num_key(c: usize, i: u64) -> String {
    format!("c{c}:n:{i}")
}
fn hash_key(c: usize, i: u64) -> String {
    format!("c{c}:h:{i}")
}

/// Every key client `c` ever writes.
fn keyspace(c: usize) -> Vec<String> {
    (0..KEYS as u64)
        .flat_map(|i| [str_key(c, i), num_key(c, i), hash_key(c, i)])
        .collect()
}

/// A value of a few bytes to a few KiB (large ones go to the value log on flush).
fn value(rng: &mut Rng, c: usize, seq: usize) -> Vec<u8> {
    let len = if rng.below(10) == 0 {
        1000 + rng.below(2500) as usize
    } else {
        1 + rng.below(200) as usize
    };
    let tag = format!("c{c}-{seq}-");
    tag.bytes().cycle().take(len.max(tag.len())).collect()
}

fn random_op(rng: &mut Rng, c: usize, seq: usize) -> Op {
    let i = rng.below(KEYS as u64);
    match rng.below(10) {
        0..=2 => Op::Set(str_key(c, i), value(rng, c, seq)),
        3..=4 => Op::Incr(num_key(c, i)),
        5..=6 => {
            let fields = (0..1 + rng.below(2))
                .map(|f| (format!("f{}", (i + f) % 4).into_bytes(), value(rng, c, seq)))
                .collect();
            Op::HSet(hash_key(c, i), fields)
        }
        7 => {
            let space = keyspace(c);
            let a = space[rng.below(space.len() as u64) as usize].clone();
            let b = space[rng.below(space.len() as u64) as usize].clone();
            Op::Del(if a == b { vec![a] } else { vec![a, b] })
        }
        _ => Op::IncrShared,
    }
}

/// What one client did in one round.
#[derive(Default)]
struct ClientLog {
    /// Its keys after every acknowledged command.
    state: State,
    /// The command sent but not acknowledged before the cut.
    in_flight: Option<Op>,
    acked: usize,
    /// Keys of acknowledged commands (their regions must have moved their raft term on).
    written: BTreeSet<String>,
    /// Highest shared-counter value it was told.
    shared_max: i64,
    /// Shared-counter increments it sent (acknowledged or not).
    shared_attempts: i64,
    /// A reply that contradicts the model before the cut.
    failure: Option<String>,
}

/// One client's round: commands until the cut, each reply checked against the model.
fn client_round(
    addr: String,
    c: usize,
    seed: u64,
    state: State,
    cut: Arc<AtomicBool>,
    acked_total: Arc<AtomicUsize>,
) -> ClientLog {
    let mut rng = Rng(seed);
    let mut log = ClientLog {
        state,
        ..ClientLog::default()
    };
    let mut client = Client::connect(&addr);
    let deadline = Instant::now() + ROUND_TIME + support::LIMIT;
    for seq in 0..MAX_OPS {
        if cut.load(Ordering::SeqCst) || Instant::now() > deadline {
            break;
        }
        let op = random_op(&mut rng, c, seq);
        let expected = op.expected(&log.state);
        if matches!(op, Op::IncrShared) {
            log.shared_attempts += 1;
        }
        log.in_flight = Some(op.clone());
        let args = op.args();
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        client.send(&refs);
        let reply = client.read();
        // A reply that arrives after the cut may or may not be in the image: the command
        // stays in flight.
        if cut.load(Ordering::SeqCst) {
            break;
        }
        match (&op, &expected, &reply) {
            (Op::IncrShared, _, R::Int(v)) if *v > 0 => log.shared_max = log.shared_max.max(*v),
            (_, Some(want), got) if got == want => {}
            _ => {
                log.failure = Some(format!(
                    "client {c}: {op:?} got {reply:?}, expected {expected:?}"
                ));
                break;
            }
        }
        apply(&mut log.state, &op);
        log.in_flight = None;
        log.acked += 1;
        log.written.extend(op.keys().into_iter().map(String::from));
        acked_total.fetch_add(1, Ordering::SeqCst);
    }
    log
}

/// Reads client `c`'s keys from the node.
fn read_state(client: &mut Client, c: usize) -> Result<State, String> {
    let mut state = State::new();
    for i in 0..KEYS as u64 {
        for k in [str_key(c, i), num_key(c, i)] {
            match client.cmd(&format!("GET {k}")) {
                R::Nil => {}
                R::Bulk(v) if k.contains(":n:") => {
                    let n = std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("{k}: counter holds {v:?}"))?;
                    state.insert(k, Val::Int(n));
                }
                R::Bulk(v) => {
                    state.insert(k, Val::Str(v));
                }
                other => return Err(format!("GET {k}: {other:?}")),
            }
        }
        let k = hash_key(c, i);
        match client.cmd(&format!("HGETALL {k}")) {
            R::Array(items) if items.is_empty() => {}
            R::Array(items) => {
                let mut h = BTreeMap::new();
                for pair in items.chunks(2) {
                    match pair {
                        [R::Bulk(f), R::Bulk(v)] => {
                            h.insert(f.clone(), v.clone());
                        }
                        other => return Err(format!("HGETALL {k}: {other:?}")),
                    }
                }
                state.insert(k, Val::Hash(h));
            }
            other => return Err(format!("HGETALL {k}: {other:?}")),
        }
    }
    Ok(state)
}

/// What the previous round left to check: per client its acknowledged state and the command
/// in flight; the shared counter's bounds.
struct Expect {
    clients: Vec<(State, Option<Op>)>,
    shared_min: i64,
    shared_max: i64,
}

/// The checker: `Err` names every acknowledged write the node lost. Returns what it read.
fn check_state(
    client: &mut Client,
    expect: &Expect,
    report_lost: bool,
) -> Result<(Vec<State>, i64), String> {
    let mut lost = Vec::new();
    let mut observed = Vec::new();
    for (c, (acked, in_flight)) in expect.clients.iter().enumerate() {
        let actual = read_state(client, c)?;
        let mut alt = acked.clone();
        if let Some(op) = in_flight {
            apply(&mut alt, op);
        }
        for k in keyspace(c) {
            let got = actual.get(&k);
            if got != acked.get(&k) && got != alt.get(&k) {
                lost.push(format!(
                    "{k}: acknowledged {:?}, found {got:?}",
                    acked.get(&k)
                ));
            }
        }
        observed.push(actual);
    }
    let shared = match client.cmd(&format!("GET {SHARED}")) {
        R::Nil => 0,
        R::Bulk(v) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{SHARED} holds {v:?}"))?,
        other => return Err(format!("GET {SHARED}: {other:?}")),
    };
    if shared < expect.shared_min {
        lost.push(format!(
            "{SHARED}: a client was told {}, found {shared}",
            expect.shared_min
        ));
    }
    if report_lost && shared > expect.shared_max {
        return Err(format!(
            "{SHARED} is {shared}, more than the {} increments ever sent",
            expect.shared_max
        ));
    }
    if report_lost && !lost.is_empty() {
        let n = lost.len();
        lost.truncate(5);
        return Err(format!("{LOST}: {n} keys, e.g. {}", lost.join("; ")));
    }
    Ok((observed, shared))
}

/// Region of every key, and each region's peer id (bootstrap layout of a `CORES` node).
struct Layout {
    routes: RouteTable,
    peer: BTreeMap<u64, u64>,
}

impl Layout {
    fn new() -> Layout {
        let per_core: Vec<_> = (0..CORES)
            .map(|c| bootstrap_regions(CORES, REGIONS_PER_CORE, c))
            .collect();
        let peer = per_core
            .iter()
            .flatten()
            .map(|d| (d.id, d.peers[0].peer_id))
            .collect();
        Layout {
            routes: RouteTable::build(&per_core).expect("bootstrap layout"),
            peer,
        }
    }
}

/// Raft hard states must survive: per region, the replayed term never goes back, moves past
/// the previous start's term where that life acknowledged a write, and the vote is the
/// region's own peer. Returns the replayed terms.
fn check_terms(
    node: &InProcNode,
    layout: &Layout,
    prev: &BTreeMap<u64, u64>,
    written: &BTreeSet<u64>,
) -> Result<BTreeMap<u64, u64>, String> {
    let mut terms = BTreeMap::new();
    for (&region, &peer) in &layout.peer {
        let hs = node
            .replayed
            .get(&region)
            .and_then(|r| r.hard_state.clone())
            .unwrap_or_default();
        let least = prev.get(&region).copied().unwrap_or(0) + u64::from(written.contains(&region));
        if hs.term < least {
            return Err(format!(
                "raft hard state lost: region {region} replayed term {} (at least {least} expected)",
                hs.term
            ));
        }
        if hs.term > 0 && hs.vote != peer {
            return Err(format!(
                "raft hard state: region {region} term {} votes for {}, not its peer {peer}",
                hs.term, hs.vote
            ));
        }
        terms.insert(region, hs.term);
    }
    Ok(terms)
}

/// How a run is set up.
#[derive(Clone, Copy)]
struct Mode {
    /// TEST ONLY switch of the engines: sync writes acknowledged before fdatasync.
    unsafe_ack_before_sync: bool,
    /// Memtables of 64 MiB: no flush, so no WAL rotation syncs anything within a round.
    large_memtables: bool,
    /// The write check reports lost writes (off: only the term check can fail a run).
    check_writes: bool,
}

/// The run every guarantee must hold in.
const SYNC: Mode = Mode {
    unsafe_ack_before_sync: false,
    large_memtables: false,
    check_writes: true,
};

/// Engine options of the test: small buffers so that flushes, WAL rotations and value-log
/// segments happen within a round.
fn tune(mode: Mode) -> impl Fn(&mut nokv::Options) + Send + Sync + 'static {
    move |o: &mut nokv::Options| {
        support::inproc::small_engine(o);
        if mode.large_memtables {
            o.write_buffer_bytes = 64 << 20;
        }
        o.unsafe_ack_before_sync = mode.unsafe_ack_before_sync;
    }
}

/// `rounds` power cuts on one workdir, each restart checked; `Err` is the checker's report.
fn run(rounds: u64, seed: u64, mode: Mode) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let workdir = dir.path().join("data");
    let layout = Layout::new();
    let args = ["--cores", "2", "--durability", "sync"];
    let mut fs = FaultFs::new();
    let mut expect = Expect {
        clients: vec![(State::new(), None); CLIENTS],
        shared_min: 0,
        shared_max: 0,
    };
    let mut terms = BTreeMap::new();
    let mut written_regions = BTreeSet::new();
    let mut rng = Rng(seed);
    for life in 0..=rounds {
        let dynfs: Arc<dyn FileSystem> = Arc::new(fs.clone());
        let node = InProcNode::start(&workdir, &args, dynfs, tune(mode))
            .map_err(|e| format!("life {life}: restart: {e}"))?;
        let mut checker = Client::connect(&node.addr);
        let (states, shared) = check_state(&mut checker, &expect, mode.check_writes)
            .map_err(|e| format!("life {life}: {e}"))?;
        terms = check_terms(&node, &layout, &terms, &written_regions)
            .map_err(|e| format!("life {life}: {e}"))?;
        drop(checker);
        if life == rounds {
            // The last restart serves writes on top of what survived.
            let mut c = Client::connect(&node.addr);
            let want = R::Int(shared + 1);
            let got = c.cmd(&format!("INCR {SHARED}"));
            if got != want {
                return Err(format!(
                    "after the last restart: INCR {got:?}, want {want:?}"
                ));
            }
            drop(c);
            return node.stop();
        }

        // Write until a random number of acknowledgements, then cut the power mid-flight.
        let target = 100 + rng.below(900) as usize;
        let cut = Arc::new(AtomicBool::new(false));
        let acked_total = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(c, state)| {
                let (addr, cut, acked) = (node.addr.clone(), cut.clone(), acked_total.clone());
                let seed = rng.next();
                std::thread::spawn(move || client_round(addr, c, seed, state, cut, acked))
            })
            .collect();
        let deadline = Instant::now() + ROUND_TIME;
        while acked_total.load(Ordering::SeqCst) < target
            && Instant::now() < deadline
            && !clients.iter().all(|t| t.is_finished())
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        cut.store(true, Ordering::SeqCst);
        let image = fs
            .durable_image(PowerLoss {
                tear_last_unsynced_page: rng.below(2) == 0,
                seed: rng.next(),
            })
            .ok_or("FaultFs::new is in memory")?;
        // The cut-off node keeps running on `fs` until stopped; nothing it does reaches `image`.
        let mut logs = Vec::with_capacity(CLIENTS);
        for t in clients {
            logs.push(
                t.join()
                    .map_err(|_| "a client thread panicked".to_string())?,
            );
        }
        node.stop()
            .map_err(|e| format!("life {life}: the node cut off from power: {e}"))?;
        fs = image;
        let tables: usize = (0..CORES)
            .map(|c| {
                fs.list_dir(&workdir.join(format!("core-{c}")))
                    .map(|names| names.iter().filter(|n| n.ends_with(".sst")).count())
                    .unwrap_or(0)
            })
            .sum();

        if let Some(f) = logs.iter().find_map(|l| l.failure.clone()) {
            return Err(format!("life {life}: before the cut: {f}"));
        }
        let acked: usize = logs.iter().map(|l| l.acked).sum();
        if acked == 0 {
            return Err(format!(
                "life {life}: no write was acknowledged before the cut"
            ));
        }
        eprintln!(
            "life {life}: {acked} writes acknowledged, {} in flight at the cut, {tables} tables survived; terms replayed at its start {terms:?}",
            logs.iter().filter(|l| l.in_flight.is_some()).count()
        );
        written_regions = logs
            .iter()
            .flat_map(|l| l.written.iter())
            .map(|k| layout.routes.for_key(k.as_bytes()).region)
            .collect();
        expect = Expect {
            shared_min: logs
                .iter()
                .map(|l| l.shared_max)
                .max()
                .unwrap_or(0)
                .max(shared),
            shared_max: shared + logs.iter().map(|l| l.shared_attempts).sum::<i64>(),
            clients: logs.into_iter().map(|l| (l.state, l.in_flight)).collect(),
        };
    }
    Ok(())
}

#[test]
fn acknowledged_sync_writes_survive_power_loss_of_the_node() {
    let rounds = crash_rounds(3);
    if let Err(e) = run(rounds, 1, SYNC) {
        panic!("{e}");
    }
}

#[test]
fn negative_control_acks_before_fdatasync_are_reported_lost() {
    // Every round is a chance to catch a lost tail; a WAL rotation just before the cut
    // could sync it by chance, so give it a few.
    let mode = Mode {
        unsafe_ack_before_sync: true,
        ..SYNC
    };
    match run(4, 2, mode) {
        Ok(()) => panic!("the checker saw no lost write although acks preceded fdatasync"),
        Err(e) => {
            eprintln!("the checker reported: {e}");
            assert!(e.contains(LOST), "reported, but not as lost writes: {e}");
        }
    }
}

#[test]
fn negative_control_lost_raft_hard_states_are_reported() {
    // Nothing is synced within a round, so the terms the regions campaigned for at the
    // start of a round (and wrote acknowledged entries in) are lost with it.
    let mode = Mode {
        unsafe_ack_before_sync: true,
        large_memtables: true,
        check_writes: false,
    };
    match run(2, 3, mode) {
        Ok(()) => panic!("the term check saw no lost raft hard state although nothing was synced"),
        Err(e) => {
            eprintln!("the term check reported: {e}");
            assert!(e.contains("raft hard state lost"), "{e}");
        }
    }
}

#[test]
fn the_test_workdir_holds_only_the_layout_files() {
    // The engines live in the FaultFs; the OS workdir keeps only LOCK and STORE.
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("data");
    let fs = FaultFs::new();
    let node = InProcNode::start(
        &workdir,
        &["--cores", "2"],
        Arc::new(fs.clone()),
        tune(SYNC),
    )
    .expect("start");
    let mut c = Client::connect(&node.addr);
    assert_eq!(c.cmd("SET k v"), R::ok());
    drop(c);
    node.stop().expect("stop");
    let mut names: Vec<String> = std::fs::read_dir(&workdir)
        .expect("workdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["LOCK", "STORE"]);
    assert!(fs.exists(&Path::new(&workdir).join("core-0").join("CURRENT")));
}
