//! Scenario: a plain Redis client (one that never follows `-MOVED`) uses a three-store
//! cluster through any store. Each store forwards commands for regions another store leads
//! to that leader over the RPC port (`--redirect forward`, the default), so every store
//! answers every command: single-key writes and reads, counters (each INCR applied once),
//! and commands whose keys span regions led by different stores (MGET, DEL, DBSIZE, KEYS).
//!
//! A second scenario takes the quorum away: with two of three stores killed, a command on
//! the last one gets `-TRYAGAIN` or `-CLUSTERDOWN` once `--request-timeout-ms` passed,
//! never a hang. (Checked to fail with `--request-timeout-ms 600000`: the client's read
//! timeout reports the hang.)
//!
//! Every wait is bounded; nothing asserts a time.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::cluster::*;
use support::{Client, R};

/// Keys written (they fall into every region: 16 regions of 1024 slots).
const KEYS: usize = 90;

/// Sends `args` to store `addr` only (no redirection), repeating while the cluster elects
/// its first leaders (`-TRYAGAIN`/`-CLUSTERDOWN`), at most `bound`.
fn call(conn: &mut Client, args: &[&[u8]], bound: Duration) -> R {
    let deadline = Instant::now() + bound;
    loop {
        conn.send(args);
        let reply = conn.read();
        match &reply {
            R::Error(e)
                if (e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN"))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => return reply,
        }
    }
}

fn specs_forwarding(dir: &std::path::Path) -> Vec<StoreSpec> {
    let mut specs = store_specs(dir);
    for s in &mut specs {
        s.redirect = "forward";
    }
    specs
}

#[test]
fn a_plain_client_uses_every_store_for_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, _server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = specs_forwarding(dir.path());
    let stores = start_stores(&specs, &coord_addr);
    let mut conns: Vec<Client> = specs.iter().map(|s| Client::connect(&s.redis)).collect();

    let mut acked = BTreeMap::new();
    for i in 0..KEYS {
        let (k, v) = (format!("key:{i}"), format!("value-{i}"));
        let reply = call(
            &mut conns[i % 3],
            &[b"SET", k.as_bytes(), v.as_bytes()],
            OP_BOUND,
        );
        assert_eq!(reply, R::ok(), "SET {k} through store {}", i % 3);
        acked.insert(k, v);
    }
    // Every key through every store: two of three stores do not lead a given region.
    for (s, conn) in conns.iter_mut().enumerate() {
        for (k, v) in &acked {
            assert_eq!(
                call(conn, &[b"GET", k.as_bytes()], OP_BOUND),
                R::bulk(v),
                "GET {k} through store {s}"
            );
        }
    }
    // Each INCR is applied once, wherever it enters.
    for i in 0..30 {
        let reply = call(&mut conns[i % 3], &[b"INCR", b"counter"], OP_BOUND);
        assert_eq!(
            reply,
            R::Int(i as i64 + 1),
            "INCR #{i} through store {}",
            i % 3
        );
    }
    // Commands over many regions, led by different stores.
    let keys: Vec<&[u8]> = acked.keys().map(|k| k.as_bytes()).collect();
    for (s, conn) in conns.iter_mut().enumerate() {
        let mut mget: Vec<&[u8]> = vec![b"MGET"];
        mget.extend(&keys);
        let want: Vec<R> = acked.values().map(|v| R::bulk(v)).collect();
        assert_eq!(call(conn, &mget, OP_BOUND), R::Array(want), "MGET via {s}");
        assert_eq!(
            call(conn, &[b"DBSIZE"], OP_BOUND),
            R::Int(KEYS as i64 + 1),
            "DBSIZE via {s}"
        );
        match call(conn, &[b"KEYS", b"key:*"], OP_BOUND) {
            R::Array(found) => assert_eq!(found.len(), KEYS, "KEYS via {s}"),
            other => panic!("KEYS via {s}: {other:?}"),
        }
    }
    let mut del: Vec<&[u8]> = vec![b"DEL"];
    del.extend(&keys[..30]);
    assert_eq!(call(&mut conns[1], &del, OP_BOUND), R::Int(30), "DEL");
    for (s, conn) in conns.iter_mut().enumerate() {
        assert_eq!(
            call(conn, &[b"GET", keys[0]], OP_BOUND),
            R::Nil,
            "deleted via {s}"
        );
    }
    // Forwarding happened (no -MOVED was ever answered: every reply above was final).
    let forwarded: f64 = stores
        .iter()
        .flatten()
        .map(|s| {
            let text = s.scrape();
            text.lines()
                .filter(|l| l.starts_with("nokv_forwarded_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .sum();
    assert!(forwarded > 0.0, "commands were forwarded between stores");
}

#[test]
fn without_a_quorum_commands_fail_with_a_clear_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, _server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = specs_forwarding(dir.path());
    let mut stores = start_stores_args(&specs, &coord_addr, &["--request-timeout-ms", "1500"]);
    let mut conn = Client::try_connect(&specs[0].redis, IO_TIMEOUT).expect("connect");
    for i in 0..20 {
        let k = format!("key:{i}");
        assert_eq!(
            call(&mut conn, &[b"SET", k.as_bytes(), b"v"], OP_BOUND),
            R::ok(),
            "SET {k}"
        );
    }
    for s in stores.iter_mut().skip(1) {
        if let Some(s) = s.take() {
            s.kill();
        }
    }
    // The client's read timeout (IO_TIMEOUT, 5 s) is above the request deadline (1.5 s)
    // plus a retry pause: a hang shows as a dead connection.
    let mut tryagain = 0;
    for i in 0..5 {
        let k = format!("key:{i}");
        for args in [
            vec![b"SET".as_slice(), k.as_bytes(), b"w"],
            vec![b"GET".as_slice(), k.as_bytes()],
        ] {
            let reply = conn
                .try_cmd(&args)
                .unwrap_or_else(|| panic!("{k}: no answer without a quorum (a hang)"));
            match reply {
                R::Error(e) if e.starts_with("TRYAGAIN") || e.starts_with("CLUSTERDOWN") => {
                    tryagain += 1
                }
                // A lease read may still be served before the lease ran out.
                R::Bulk(_) if args[0] == b"GET" => {}
                other => panic!("{k}: {other:?}, expected -TRYAGAIN or -CLUSTERDOWN"),
            }
        }
    }
    assert!(
        tryagain >= 5,
        "every write failed clearly ({tryagain} errors)"
    );
}
