//! Scenario: moving a replica between stores, and consistency checks.
//!
//! Three `nokv-server` processes and a coordinator (in this process) make a replicated
//! database; a client writes N keys. A fourth store starts; an operator moves the replica
//! of one region from a follower store X to store 4 with the `NOKV.REGION` commands
//! (ADDLEARNER, PROMOTE once caught up, REMOVEPEER X). Then every key reads back through
//! every store, store X no longer lists the region, and `NOKV.REGION CHECK` finds the
//! replicas' hashes equal. Negative control: while a file exists, store 4 (debug knob
//! `NOKV_DEBUG_CORRUPT_CHECK_HASH_WHILE`) reports a wrong hash, and the check must report
//! the mismatch (reply and `nokv_consistency_mismatch_total`). Then store 4 takes the
//! leadership, serves writes and reads, runs periodic checks that match, and store X
//! restarts without the region.
//!
//! The data is small, so the leader's raft log still covers it and the new replica
//! catches up from the log (shipping snapshots between stores is separate work).
//! Every wait is bounded; nothing asserts a time.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::{Client, Server, R};

/// Keys written.
const KEYS: usize = 120;

/// Starts a store with `env`; consistency checks run only when asked for (deterministic
/// verdicts) unless `env` sets their period.
fn start_store(spec: &StoreSpec, coordinator: &str, env: &[(&str, String)]) -> Server {
    let mut all: Vec<(&str, &str)> = vec![("NOKV_CONSISTENCY_CHECK_SECS", "0")];
    all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
    start_store_env(spec, coordinator, &all)
}

/// Sends `args` to `first`, following `-MOVED`; retries `-TRYAGAIN` and refused
/// connections until `bound` passes (None: no final reply in time).
fn call(stores: &[String], first: &str, args: &[&[u8]], bound: Duration) -> Option<R> {
    let deadline = Instant::now() + bound;
    let mut target = first.to_string();
    let mut next = 0;
    // Bounded by the deadline.
    while Instant::now() < deadline {
        let Some(mut c) = Client::try_connect(&target, IO_TIMEOUT) else {
            next += 1;
            target = stores[next % stores.len()].clone();
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match c.try_cmd(args) {
            Some(R::Error(e)) if e.starts_with("MOVED ") => {
                target = e.split(' ').nth(2).unwrap_or_default().to_string();
            }
            Some(R::Error(e)) if e.starts_with("TRYAGAIN") || e.starts_with("BUSY") => {
                std::thread::sleep(Duration::from_millis(100));
            }
            None => std::thread::sleep(Duration::from_millis(100)),
            Some(r) => return Some(r),
        }
    }
    None
}

/// The lines of `NOKV.REGION LIST` on `addr`.
fn list(addr: &str) -> Vec<String> {
    let mut c = Client::connect(addr);
    match c.cmd("NOKV.REGION LIST") {
        R::Array(items) => items
            .into_iter()
            .map(|r| match r {
                R::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                other => panic!("LIST item {other:?}"),
            })
            .collect(),
        other => panic!("NOKV.REGION LIST on {addr}: {other:?}"),
    }
}

/// A field (`name=value`) of a LIST line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|f| f.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// The LIST line of `region` on `addr`, if it holds it.
fn region_line(addr: &str, region: u64) -> Option<String> {
    list(addr)
        .into_iter()
        .find(|l| field(l, "region") == region.to_string())
}

#[test]
fn a_replica_moves_to_a_new_store_and_the_replicas_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (coord, _server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs: Vec<StoreSpec> = (1..=4)
        .map(|i| StoreSpec {
            workdir: dir.path().join(format!("store-{i}")),
            redis: free_addr(),
            rpc: free_addr(),
            redirect: "moved",
        })
        .collect();
    let corrupt = dir.path().join("corrupt-store-4");
    // The first three start together (the cluster bootstraps once they registered).
    let handles: Vec<_> = specs[..3]
        .iter()
        .cloned()
        .map(|spec| {
            let coord_addr = coord_addr.clone();
            std::thread::spawn(move || start_store(&spec, &coord_addr, &[]))
        })
        .collect();
    let mut servers: Vec<Server> = handles
        .into_iter()
        .map(|h| h.join().expect("store started"))
        .collect();
    let addrs: Vec<String> = specs.iter().map(|s| s.redis.clone()).collect();

    let mut acked = BTreeMap::new();
    for i in 0..KEYS {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        let r = call(
            &addrs[..3],
            &addrs[i % 3],
            &[b"SET", k.as_bytes(), v.as_bytes()],
            OP_BOUND,
        );
        assert_eq!(r, Some(R::ok()), "SET {k}");
        acked.insert(k, v);
    }

    // The fourth store joins; it holds no replica yet.
    servers.push(start_store(
        &specs[3],
        &coord_addr,
        &[
            (
                "NOKV_DEBUG_CORRUPT_CHECK_HASH_WHILE",
                corrupt.display().to_string(),
            ),
            // Store 4 checks the regions it leads every second (it leads one at the end).
            ("NOKV_CONSISTENCY_CHECK_SECS", "1".to_string()),
        ],
    ));
    assert!(list(&addrs[3]).is_empty(), "store 4 holds nothing yet");
    let store_of = |redis: &str| -> u64 {
        coord
            .stores()
            .iter()
            .filter_map(|s| s.meta.as_ref())
            .find(|m| m.redis_addr == redis)
            .map(|m| m.id)
            .unwrap_or_else(|| panic!("store at {redis} registered"))
    };
    let ids: Vec<u64> = addrs.iter().map(|a| store_of(a)).collect();

    // A region and its leader, as store 1 sees it (bounded: a leader is elected).
    let deadline = Instant::now() + OP_BOUND;
    let (region, leader) = loop {
        let found = list(&addrs[0]).into_iter().find_map(|l| {
            let leader: u64 = field(&l, "leader_store").parse().ok()?;
            (leader != 0).then(|| (field(&l, "region").parse::<u64>().ok(), leader))
        });
        if let Some((Some(r), l)) = found {
            break (r, l);
        }
        assert!(Instant::now() < deadline, "no region with a leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    let leader_idx = ids.iter().position(|i| *i == leader).expect("leader store");
    let x = (0..3).find(|i| *i != leader_idx).expect("a follower");
    let (rs, s4, sx) = (region.to_string(), ids[3].to_string(), ids[x].to_string());
    let admin = |args: &[&str]| -> R {
        let raw: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        call(&addrs, &addrs[leader_idx], &raw, OP_BOUND)
            .unwrap_or_else(|| panic!("{args:?}: no reply in time"))
    };

    // Non-leaders redirect, like data commands.
    let mut follower = Client::connect(&addrs[x]);
    match follower.try_cmd(&[b"NOKV.REGION", b"CHECK", rs.as_bytes()]) {
        Some(R::Error(e)) => assert!(e.starts_with("MOVED"), "{e}"),
        other => panic!("CHECK on a follower: {other:?}"),
    }

    // Move the replica of store X to store 4.
    let learner = admin(&["NOKV.REGION", "ADDLEARNER", &rs, &s4]);
    assert!(matches!(learner, R::Int(p) if p > 0), "{learner:?}");
    let deadline = Instant::now() + OP_BOUND;
    loop {
        match admin(&["NOKV.REGION", "PROMOTE", &rs, &s4]) {
            R::Simple(s) if s == "OK" => break,
            // The learner has not caught up yet.
            R::Error(e) if e.contains("lags") || e.contains("no progress") => {}
            other => panic!("PROMOTE: {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the learner never caught up\n{}",
            log_tails(&specs)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // At once after the promotion: the leader waits until that change is applied (raft
    // would drop a change proposed before).
    assert_eq!(
        admin(&["NOKV.REGION", "REMOVEPEER", &rs, &sx]),
        R::ok(),
        "REMOVEPEER right after PROMOTE"
    );

    // Every replica holds the region's keys (some of the N keys are in it).
    let count = |addr: &str| -> i64 {
        match Client::connect(addr).try_cmd(&[b"NOKV.REGION", b"LOCALCOUNT", rs.as_bytes()]) {
            Some(R::Int(n)) => n,
            other => panic!("LOCALCOUNT on {addr}: {other:?}"),
        }
    };
    let held = count(&addrs[x]);
    assert!(held > 0, "store X holds no key of region {region}");

    // Store X forgets the region; store 4 holds it as a voter.
    let deadline = Instant::now() + OP_BOUND;
    while region_line(&addrs[x], region).is_some() {
        assert!(
            Instant::now() < deadline,
            "store X still holds the region\n{}",
            log_tails(&specs)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its data is deleted (bounded: the delete runs after the removal).
    let deadline = Instant::now() + OP_BOUND;
    while count(&addrs[x]) != 0 {
        assert!(
            Instant::now() < deadline,
            "store X kept the region's keys\n{}",
            log_tails(&specs)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&addrs[3]), held, "store 4 holds the same keys");
    let line = region_line(&addrs[3], region).expect("store 4 holds the region");
    assert!(
        field(&line, "peers").contains(&format!("@{}:voter", ids[3])),
        "{line}"
    );
    assert!(
        !field(&line, "peers").contains(&format!("@{}:", ids[x])),
        "{line}"
    );
    // The new replica reached the leader's membership version by re-applying the log.
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let ours = region_line(&addrs[3], region).expect("store 4 holds the region");
        let leaders = region_line(&addrs[leader_idx], region).expect("the leader holds it");
        if field(&ours, "conf_version") == field(&leaders, "conf_version") {
            break;
        }
        assert!(Instant::now() < deadline, "{ours}\n{leaders}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every key reads back through every store.
    for a in &addrs {
        for (k, v) in &acked {
            let r = call(&addrs, a, &[b"GET", k.as_bytes()], OP_BOUND);
            assert_eq!(r, Some(R::bulk(v)), "GET {k} through {a}");
        }
    }

    // The replicas agree (the check waits for every replica's hash).
    let verdict = admin(&["NOKV.REGION", "CHECK", &rs]);
    match &verdict {
        R::Simple(s) => {
            assert!(s.starts_with("MATCH"), "{s}");
            assert!(s.contains(&ids[3].to_string()), "{s}");
        }
        other => panic!("CHECK: {other:?}"),
    }

    // Negative control: store 4 reports a wrong hash while the file exists.
    std::fs::write(&corrupt, b"1").expect("knob file");
    let verdict = admin(&["NOKV.REGION", "CHECK", &rs]);
    match &verdict {
        R::Simple(s) => assert!(
            s.starts_with("MISMATCH") && s.contains(&format!("store {}", ids[3])),
            "{s}"
        ),
        other => panic!("CHECK: {other:?}"),
    }
    let leader_now = {
        let l = region_line(&addrs[3], region).expect("store 4 holds the region");
        field(&l, "leader_store").parse::<u64>().expect("leader")
    };
    let li = ids.iter().position(|i| *i == leader_now).expect("leader");
    let scrape = servers[li].scrape();
    let mismatches = support::sample(&scrape, "nokv_consistency_mismatch_total", "");
    assert_eq!(mismatches, Some(1.0), "{scrape}");
    std::fs::remove_file(&corrupt).expect("knob file");
    let verdict = admin(&["NOKV.REGION", "CHECK", &rs]);
    assert!(
        matches!(&verdict, R::Simple(s) if s.starts_with("MATCH")),
        "{verdict:?}"
    );

    // The new replica leads: requests through any store (both cores of store 4) reach it.
    assert_eq!(admin(&["NOKV.REGION", "TRANSFERLEADER", &rs, &s4]), R::ok());
    let line = region_line(&addrs[3], region).expect("store 4 holds the region");
    assert_eq!(field(&line, "leader_store"), s4, "{line}");
    for i in KEYS..KEYS + 40 {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        let r = call(
            &addrs,
            &addrs[3],
            &[b"SET", k.as_bytes(), v.as_bytes()],
            OP_BOUND,
        );
        assert_eq!(r, Some(R::ok()), "SET {k}");
        acked.insert(k, v);
    }
    for a in &addrs {
        for (k, v) in &acked {
            let r = call(&addrs, a, &[b"GET", k.as_bytes()], OP_BOUND);
            assert_eq!(r, Some(R::bulk(v)), "GET {k} through {a}");
        }
    }
    let verdict = call(
        &addrs,
        &addrs[3],
        &[b"NOKV.REGION", b"CHECK", rs.as_bytes()],
        OP_BOUND,
    );
    assert!(
        matches!(&verdict, Some(R::Simple(s)) if s.starts_with("MATCH")),
        "{verdict:?}"
    );

    // Store 4 also checks the region it leads on its own (the periodic knob).
    let checks = |s: &Server| {
        support::sample(&s.scrape(), "nokv_consistency_checks_total", "").unwrap_or(0.0)
    };
    let before = checks(&servers[3]);
    let deadline = Instant::now() + OP_BOUND;
    while checks(&servers[3]) <= before {
        assert!(Instant::now() < deadline, "no periodic check on store 4");
        std::thread::sleep(Duration::from_millis(200));
    }
    let scrape = servers[3].scrape();
    assert_eq!(
        support::sample(&scrape, "nokv_consistency_last_ok", ""),
        Some(1.0),
        "{scrape}"
    );

    // Store X restarts without the region (its descriptor was deleted).
    let old = servers.remove(x);
    assert!(old.terminate().success(), "SIGTERM exits 0");
    servers.insert(x, start_store(&specs[x], &coord_addr, &[]));
    assert!(
        region_line(&addrs[x], region).is_none(),
        "store X holds the region again after a restart"
    );

    // The coordinator records the core of the replica created on store 4, so a restart
    // of store 4 places it there: it holds the region again and the replicas agree.
    let deadline = Instant::now() + OP_BOUND;
    loop {
        let route = coord.route_by_id(region).expect("route");
        let peer = route
            .region
            .as_ref()
            .and_then(|r| r.peers.iter().find(|p| p.store_id == ids[3]).cloned())
            .expect("store 4 is a peer");
        let peers = &route.region.as_ref().expect("region").peers;
        assert!(
            peers.iter().all(|p| p.store_id != ids[x]),
            "the coordinator still routes to store X: {peers:?}"
        );
        if peer.core.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no core recorded for store 4's replica"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let old = servers.remove(3);
    assert!(old.terminate().success(), "SIGTERM exits 0");
    servers.push(start_store(&specs[3], &coord_addr, &[]));
    assert!(
        region_line(&addrs[3], region).is_some(),
        "store 4 lost the region"
    );
    for (k, v) in &acked {
        let r = call(&addrs, &addrs[3], &[b"GET", k.as_bytes()], OP_BOUND);
        assert_eq!(r, Some(R::bulk(v)), "GET {k} after store 4 restarted");
    }
    let verdict = call(
        &addrs,
        &addrs[0],
        &[b"NOKV.REGION", b"CHECK", rs.as_bytes()],
        OP_BOUND,
    );
    assert!(
        matches!(&verdict, Some(R::Simple(s)) if s.starts_with("MATCH")),
        "{verdict:?}"
    );

    for s in servers {
        assert!(s.terminate().success(), "SIGTERM exits 0");
    }
}
