//! Scenario: MSET, MSETNX and DEL whose keys live in several regions (and cores) of a
//! real `nokv-server` are atomic (`nokv_gateway::atomic`):
//! - readers that GET a group's keys one after another never see a group's keys from
//!   an older MSET after one from a newer (an MSET is seen whole or not at all).
//!   Negative control: with `NOKV_DEBUG_MULTIKEY_SPLIT=1` (per-region parts, the old
//!   behaviour) the same checker reports violations;
//! - EXISTS over a group that a writer sets and deletes whole counts 0 or all of it
//!   (negative control: the same knob gives partial counts);
//! - racing MSETNX over one fresh key set: exactly one wins, and every key holds its value;
//! - SIGKILL during multi-region MSETs and DELs: after restart every group's keys are
//!   whole (all from one MSET, or all deleted), at or after the last acknowledged one;
//! - MULTI / EXEC: counters incremented by racing clients with WATCH (optimistic,
//!   retried on a nil EXEC) and with plain blocks end exact; blocks over two regions
//!   move two counters together while a reader's blocks always see them equal
//!   (negative control: the same knob splits blocks per region, and torn reads show).
//!
//! Every loop is bounded in count and time.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{Client, Server, R};

/// Keys per group: spread by hash slot over the server's 8 regions (2 cores x 4).
const GROUP_KEYS: usize = 8;

fn group_keys(group: &str) -> Vec<String> {
    let keys: Vec<String> = (0..GROUP_KEYS).map(|i| format!("{group}:k{i}")).collect();
    let regions: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| nokv_gateway::model::slot(k.as_bytes()) / 2048)
        .collect();
    assert!(regions.len() >= 3, "group {group} spans {regions:?}");
    keys
}

fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    Server::start_env(dir, &["--cores", "2"], env)
}

fn mset(c: &mut Client, keys: &[String], value: &str) -> Option<R> {
    let mut args: Vec<&[u8]> = vec![b"MSET"];
    for k in keys {
        args.push(k.as_bytes());
        args.push(value.as_bytes());
    }
    c.try_cmd(&args)
}

fn seq_of(r: &R) -> Option<u64> {
    match r {
        R::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// Writers MSET their group to 1, 2, 3, ...; readers GET a group's keys one by one and
/// count passes where a key read later shows an older MSET than one read before it.
/// Stops at `bound` or (with `stop_at_first`) at the first violation. Returns
/// (violations, reader passes, MSETs acknowledged).
fn mset_readers(env: &[(&str, &str)], bound: Duration, stop_at_first: bool) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("s"), env);
    let groups: Vec<Vec<String>> = (0..2).map(|g| group_keys(&format!("g{g}"))).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicU64::new(0));
    let passes = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + bound;
    let mut threads = Vec::new();
    for keys in groups.clone() {
        let (addr, stop, acked) = (server.addr.clone(), stop.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&addr);
            // Bounded by the stop flag (the deadline) and a count.
            for seq in 1..=200_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let reply = mset(&mut c, &keys, &seq.to_string());
                assert_eq!(reply, Some(R::ok()), "MSET {seq}");
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for reader in 0..2usize {
        let (addr, stop) = (server.addr.clone(), stop.clone());
        let (violations, passes, groups) = (violations.clone(), passes.clone(), groups.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&addr);
            let mut turn = reader;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                turn += 1;
                let keys = &groups[turn % groups.len()];
                let mut last = 0u64;
                for i in 0..keys.len() {
                    // A different order each pass.
                    let k = &keys[(i * 3 + turn) % keys.len()];
                    let Some(reply) = c.try_cmd(&[b"GET", k.as_bytes()]) else {
                        return;
                    };
                    let seq = match reply {
                        R::Nil => 0,
                        r => seq_of(&r).unwrap_or_else(|| panic!("GET {k}: {r:?}")),
                    };
                    if seq < last {
                        violations.fetch_add(1, Ordering::Relaxed);
                        if stop_at_first {
                            stop.store(true, Ordering::Relaxed);
                        }
                        break;
                    }
                    last = seq;
                }
                passes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.join().expect("thread");
    }
    // At rest every group holds its last MSET whole.
    let mut c = Client::connect(&server.addr);
    for keys in &groups {
        let first = c.try_cmd(&[b"GET", keys[0].as_bytes()]);
        for k in keys {
            assert_eq!(c.try_cmd(&[b"GET", k.as_bytes()]), first, "{k} at rest");
        }
    }
    (
        violations.load(Ordering::Relaxed),
        passes.load(Ordering::Relaxed),
        acked.load(Ordering::Relaxed),
    )
}

#[test]
fn readers_never_see_part_of_a_multi_region_mset() {
    let (violations, passes, acked) = mset_readers(&[], Duration::from_secs(8), false);
    eprintln!("atomic: {acked} MSETs, {passes} reader passes, {violations} violations");
    assert!(
        acked > 20 && passes > 20,
        "too little ran: {acked} / {passes}"
    );
    assert_eq!(violations, 0);
}

/// The negative control: MSETs split into independent per-region writes are caught.
#[test]
fn split_msets_are_caught_by_the_reader_check() {
    let env = [("NOKV_DEBUG_MULTIKEY_SPLIT", "1")];
    let (violations, passes, acked) = mset_readers(&env, Duration::from_secs(30), true);
    eprintln!("split: {acked} MSETs, {passes} reader passes, {violations} violations");
    assert!(violations > 0, "the checker saw no partial MSET");
}

/// A writer sets a group (MSET) and deletes it (DEL), over and over; readers count it
/// with EXISTS: every count is 0 or the whole group. Returns (partial counts, reads, writes).
fn exists_readers(env: &[(&str, &str)], bound: Duration, stop_at_first: bool) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("s"), env);
    let keys = group_keys("e");
    let stop = Arc::new(AtomicBool::new(false));
    let (partial, reads, writes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let deadline = Instant::now() + bound;
    let mut threads = Vec::new();
    {
        let (addr, stop, writes, keys) = (
            server.addr.clone(),
            stop.clone(),
            writes.clone(),
            keys.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&addr);
            let mut del: Vec<&[u8]> = vec![b"DEL"];
            del.extend(keys.iter().map(|k| k.as_bytes()));
            for i in 0..100_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let reply = if i % 2 == 0 {
                    mset(&mut c, &keys, "x")
                } else {
                    c.try_cmd(&del)
                };
                assert!(
                    matches!(reply, Some(R::Simple(_)) | Some(R::Int(_))),
                    "{reply:?}"
                );
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..2 {
        let (addr, stop, partial, reads, keys) = (
            server.addr.clone(),
            stop.clone(),
            partial.clone(),
            reads.clone(),
            keys.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(&addr);
            let mut exists: Vec<&[u8]> = vec![b"EXISTS"];
            exists.extend(keys.iter().map(|k| k.as_bytes()));
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.try_cmd(&exists) {
                    Some(R::Int(n)) if n == 0 || n == keys.len() as i64 => {}
                    Some(R::Int(_)) => {
                        partial.fetch_add(1, Ordering::Relaxed);
                        if stop_at_first {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    other => panic!("EXISTS: {other:?}"),
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in threads {
        t.join().expect("thread");
    }
    (
        partial.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
    )
}

#[test]
fn exists_counts_a_multi_region_group_whole() {
    let (partial, reads, writes) = exists_readers(&[], Duration::from_secs(6), false);
    eprintln!("atomic: {writes} MSET/DEL, {reads} EXISTS, {partial} partial counts");
    assert!(
        writes > 10 && reads > 10,
        "too little ran: {writes} / {reads}"
    );
    assert_eq!(partial, 0);
}

/// The negative control: split EXISTS (and MSET / DEL) give partial counts.
#[test]
fn split_exists_is_caught_by_the_count_check() {
    let env = [("NOKV_DEBUG_MULTIKEY_SPLIT", "1")];
    let (partial, reads, writes) = exists_readers(&env, Duration::from_secs(30), true);
    eprintln!("split: {writes} MSET/DEL, {reads} EXISTS, {partial} partial counts");
    assert!(partial > 0, "the checker saw no partial count");
}

#[test]
fn racing_msetnx_across_regions_has_exactly_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("s"), &[]);
    for round in 0..20 {
        let keys = group_keys(&format!("nx{round}"));
        let threads: Vec<_> = (0..4)
            .map(|id| {
                let (addr, keys) = (server.addr.clone(), keys.clone());
                std::thread::spawn(move || {
                    let mut c = Client::connect(&addr);
                    let mut args: Vec<Vec<u8>> = vec![b"MSETNX".to_vec()];
                    for k in &keys {
                        args.push(k.clone().into_bytes());
                        args.push(format!("{id}").into_bytes());
                    }
                    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    (id, c.try_cmd(&args))
                })
            })
            .collect();
        let results: Vec<(usize, Option<R>)> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, r)| *r == Some(R::Int(1)))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let mut c = Client::connect(&server.addr);
        for k in &keys {
            assert_eq!(
                c.try_cmd(&[b"GET", k.as_bytes()]),
                Some(R::bulk(&winners[0].to_string())),
                "round {round}, {k}"
            );
        }
    }
}

/// SIGKILL while writers MSET and DEL multi-region groups: after the restart every group
/// is whole, and not older than its last acknowledged write.
#[test]
fn multi_region_writes_are_whole_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("s");
    let server = start(&workdir, &[]);
    let addr = server.addr.clone();
    let groups: Vec<Vec<String>> = (0..3).map(|g| group_keys(&format!("crash{g}"))).collect();
    // Per group: the last acknowledged write (0: a DEL).
    let acked: Vec<Arc<AtomicU64>> = groups.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let writers: Vec<_> = groups
        .iter()
        .zip(&acked)
        .map(|(keys, acked)| {
            let (addr, keys, acked) = (addr.clone(), keys.clone(), acked.clone());
            std::thread::spawn(move || {
                let Some(mut c) = Client::try_connect(&addr, support::LIMIT) else {
                    return;
                };
                // Bounded: ends when the server dies (or after the count).
                for seq in 1..=100_000u64 {
                    let reply = if seq % 5 == 0 {
                        let mut args: Vec<&[u8]> = vec![b"DEL"];
                        args.extend(keys.iter().map(|k| k.as_bytes()));
                        c.try_cmd(&args)
                    } else {
                        mset(&mut c, &keys, &seq.to_string())
                    };
                    match reply {
                        Some(R::Simple(_)) => acked.store(seq, Ordering::SeqCst),
                        Some(R::Int(_)) => acked.store(seq, Ordering::SeqCst),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    server.kill();
    for w in writers {
        w.join().expect("writer");
    }
    let server = Server::start_on(&workdir, &addr, &["--cores", "2"]);
    let mut c = Client::connect(&server.addr);
    for (keys, acked) in groups.iter().zip(&acked) {
        let acked = acked.load(Ordering::SeqCst);
        assert!(acked > 0, "no write of {keys:?} was acknowledged");
        let values: Vec<Option<R>> = keys
            .iter()
            .map(|k| c.try_cmd(&[b"GET", k.as_bytes()]))
            .collect();
        assert!(
            values.iter().all(|v| *v == values[0]),
            "{keys:?} not whole after the restart: {values:?} (last acknowledged {acked})"
        );
        // The group shows the acknowledged write or the one after it (in flight at the kill).
        let shown = match &values[0] {
            Some(R::Nil) => None,
            Some(r) => Some(seq_of(r).unwrap_or_else(|| panic!("{r:?}"))),
            None => panic!("no reply"),
        };
        let ok = match shown {
            Some(s) => s == acked || s == acked + 1,
            None => acked % 5 == 0 || (acked + 1) % 5 == 0,
        };
        assert!(ok, "{keys:?} shows {shown:?}, last acknowledged {acked}");
    }
}

/// Clients increment shared counters with WATCH / GET / MULTI / SET / EXEC, retrying when
/// EXEC answers nil, and with plain MULTI / INCRBY / EXEC: every total is exact.
#[test]
fn watch_and_exec_counters_are_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("s"), &[]);
    const CLIENTS: usize = 4;
    const ROUNDS: usize = 50;
    let retries = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, retries) = (server.addr.clone(), retries.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&addr);
                for _ in 0..ROUNDS {
                    // Optimistic: bounded by a retry count (each retry means another
                    // client's EXEC went through).
                    let mut done = false;
                    for _ in 0..10_000 {
                        assert_eq!(c.cmd("WATCH {c}opt"), R::ok());
                        let n = match c.cmd("GET {c}opt") {
                            R::Nil => 0,
                            r => seq_of(&r).unwrap_or_else(|| panic!("GET: {r:?}")),
                        };
                        assert_eq!(c.cmd("MULTI"), R::ok());
                        assert_eq!(
                            c.cmd(&format!("SET {{c}}opt {}", n + 1)),
                            R::Simple("QUEUED".into())
                        );
                        assert_eq!(c.cmd("INCR {c}execs"), R::Simple("QUEUED".into()));
                        match c.cmd("EXEC") {
                            R::Array(items) => {
                                assert_eq!(items[0], R::ok());
                                done = true;
                                break;
                            }
                            R::Nil => {
                                retries.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("EXEC: {other:?}"),
                        }
                    }
                    assert!(done, "an optimistic increment never went through");
                    assert_eq!(c.cmd("MULTI"), R::ok());
                    assert_eq!(c.cmd("INCRBY {c}plain 2"), R::Simple("QUEUED".into()));
                    assert_eq!(c.cmd("INCRBY {c}plain -1"), R::Simple("QUEUED".into()));
                    let R::Array(items) = c.cmd("EXEC") else {
                        panic!("EXEC of a plain block")
                    };
                    assert_eq!(items.len(), 2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let mut c = Client::connect(&server.addr);
    let total = (CLIENTS * ROUNDS).to_string();
    assert_eq!(c.cmd("GET {c}opt"), R::bulk(&total));
    assert_eq!(c.cmd("GET {c}execs"), R::bulk(&total));
    assert_eq!(c.cmd("GET {c}plain"), R::bulk(&total));
    eprintln!(
        "{total} optimistic increments, {} EXECs answered nil and retried",
        retries.load(Ordering::Relaxed)
    );
    // A block over several regions runs; a command of it whose own keys span regions
    // is refused.
    assert_eq!(c.cmd("MULTI"), R::ok());
    assert_eq!(c.cmd("SET a 1"), R::Simple("QUEUED".into()));
    assert_eq!(c.cmd("SET b 1"), R::Simple("QUEUED".into()));
    assert_eq!(c.cmd("EXEC"), R::Array(vec![R::ok(), R::ok()]));
    assert_eq!(c.cmd("MULTI"), R::ok());
    assert_eq!(c.cmd("MSET a 1 b 2"), R::Simple("QUEUED".into()));
    match c.cmd("EXEC") {
        R::Error(e) => assert!(e.starts_with("CROSSSLOT"), "{e}"),
        other => panic!("EXEC of a multi-region MSET inside a block: {other:?}"),
    }
}

/// Blocks over two regions: clients move two counters together with WATCH / MULTI /
/// EXEC (a hash too), while a reader's MULTI / GET / GET / EXEC blocks check they are
/// equal. Returns (torn reads, reads, blocks done, the server) once the writers end (or,
/// with `stop_at_first`, at the first torn read).
fn two_region_blocks(
    env: &[(&str, &str)],
    stop_at_first: bool,
) -> (u64, u64, u64, Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(&dir.path().join("s"), env);
    // Regions 7 and 2 of 8: on different cores (region i is on core i % 2).
    let (a, b) = ("xa", "x2");
    let region = |k: &str| nokv_gateway::model::slot(k.as_bytes()) / 2048;
    assert_eq!(
        (region(a) % 2, region(b) % 2),
        (1, 0),
        "the counters' cores"
    );
    let stop = Arc::new(AtomicBool::new(false));
    // The negative control runs until it sees a torn read (bounded by time).
    let (rounds, deadline) = if stop_at_first {
        (100_000, Instant::now() + Duration::from_secs(30))
    } else {
        (ROUNDS, Instant::now() + Duration::from_secs(600))
    };
    let (snapshots, torn, blocks) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let reader = {
        let (addr, stop, snapshots, torn) = (
            server.addr.clone(),
            stop.clone(),
            snapshots.clone(),
            torn.clone(),
        );
        std::thread::spawn(move || {
            let mut c = Client::connect(&addr);
            // Bounded by the writers' end (and a count).
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                assert_eq!(c.cmd("MULTI"), R::ok());
                c.cmd(&format!("GET {a}"));
                c.cmd(&format!("GET {b}"));
                match c.cmd("EXEC") {
                    R::Array(v) if v[0] == v[1] => {}
                    R::Array(_) => {
                        torn.fetch_add(1, Ordering::Relaxed);
                        if stop_at_first {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                    other => panic!("reader EXEC: {other:?}"),
                }
                snapshots.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let writers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (addr, stop, blocks) = (server.addr.clone(), stop.clone(), blocks.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&addr);
                for round in 0..rounds {
                    let mut done = false;
                    // Bounded: each retry means another client's block went through.
                    for _ in 0..10_000 {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            return;
                        }
                        assert_eq!(c.cmd(&format!("WATCH {a} {b}")), R::ok());
                        let n = match c.cmd(&format!("GET {a}")) {
                            R::Nil => 0,
                            r => seq_of(&r).unwrap_or_else(|| panic!("GET: {r:?}")),
                        };
                        assert_eq!(c.cmd("MULTI"), R::ok());
                        c.cmd(&format!("SET {a} {}", n + 1));
                        c.cmd(&format!("SET {b} {}", n + 1));
                        c.cmd(&format!("HSET xh{id} r{round} {}", n + 1));
                        match c.cmd("EXEC") {
                            R::Array(items) => {
                                // (Split blocks may apply halves: only whole ones answer so.)
                                if !stop_at_first {
                                    assert_eq!(items, vec![R::ok(), R::ok(), R::Int(1)]);
                                }
                                blocks.fetch_add(1, Ordering::Relaxed);
                                done = true;
                                break;
                            }
                            R::Nil => {}
                            other => panic!("EXEC: {other:?}"),
                        }
                    }
                    assert!(done, "a block never went through");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader");
    (
        torn.load(Ordering::Relaxed),
        snapshots.load(Ordering::Relaxed),
        blocks.load(Ordering::Relaxed),
        server,
        dir,
    )
}

/// Writers of [`two_region_blocks`] and the rounds each makes.
const CLIENTS: usize = 3;
const ROUNDS: usize = 30;

#[test]
fn multi_region_blocks_are_atomic_and_isolated() {
    let (torn, snapshots, blocks, server, _dir) = two_region_blocks(&[], false);
    eprintln!("atomic: {blocks} blocks, {snapshots} snapshot reads, {torn} torn");
    let mut c = Client::connect(&server.addr);
    let total = (CLIENTS * ROUNDS).to_string();
    assert_eq!(c.cmd("GET xa"), R::bulk(&total));
    assert_eq!(c.cmd("GET x2"), R::bulk(&total));
    for id in 0..CLIENTS {
        assert_eq!(c.cmd(&format!("HLEN xh{id}")), R::Int(ROUNDS as i64));
    }
    assert_eq!(torn, 0);
}

/// The negative control: blocks split into one independent block per region are caught
/// by the reader's check.
#[test]
fn split_multi_region_blocks_are_caught_by_the_snapshot_check() {
    let env = [("NOKV_DEBUG_MULTIKEY_SPLIT", "1")];
    let (torn, snapshots, blocks, _server, _dir) = two_region_blocks(&env, true);
    eprintln!("split: {blocks} blocks, {snapshots} snapshot reads, {torn} torn");
    assert!(torn > 0, "the checker saw no torn read");
}
