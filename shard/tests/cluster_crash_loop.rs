//! Crash loops of a three-store cluster under load: three writers keep overwriting their
//! keys with increasing versions through every store (`--durability sync`, following
//! `-MOVED`) while, round after round, one store is SIGKILLed and restarted, or all three
//! are SIGKILLed at once and restarted together. At the end every key must read, through
//! every store, a version between its last acknowledged write and its last attempted one:
//! no acknowledged write lost, no older value back.
//!
//! `NOKV_CRASH_ROUNDS=N` sets the rounds (default 4: two single kills, two whole-cluster
//! kills).

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::cluster::*;
use support::R;

/// Keys per writer.
const KEYS: usize = 20;
/// Writers (threads), each with its own keys.
const WRITERS: usize = 3;
/// Most writes per writer (the rounds end them first).
const MAX_WRITES: usize = 100_000;

/// Per key: (last acknowledged version, last attempted version).
type Versions = BTreeMap<String, (u64, u64)>;

#[test]
fn a_cluster_killed_round_after_round_under_load_keeps_every_acknowledged_write() {
    let rounds: usize = std::env::var("NOKV_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let wrong = crash_loop(rounds, false);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_crash_loop_check_reports_writes_lost_with_the_logs() {
    // Negative control: at the whole-cluster kill, every store's active WAL segments are
    // emptied before the restart (what losing unsynced logs would leave).
    let wrong = crash_loop(2, true);
    assert!(
        !wrong.is_empty(),
        "emptying every store's WAL lost nothing the check saw"
    );
    println!(
        "negative control: {} findings, first: {}",
        wrong.len(),
        wrong[0]
    );
}

/// Runs the loop (`rounds` rounds; with `sabotage`, whole-cluster kills also empty every
/// store's active WAL segments); what the final check found wrong.
fn crash_loop(rounds: usize, sabotage: bool) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, _coord_server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = store_specs(dir.path());
    let mut servers = start_stores(&specs, &coord_addr);
    let versions = Arc::new(Mutex::new(Versions::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (specs, versions, stop) = (specs.clone(), versions.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut client = ClusterClient::new(&specs);
                let mut sent = 0usize;
                // Bounded by MAX_WRITES and the stop flag.
                for n in 0..MAX_WRITES {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    sent += 1;
                    let key = format!("loop:{w}:{}", n % KEYS);
                    let version = n as u64 + 1;
                    versions
                        .lock()
                        .expect("versions")
                        .entry(key.clone())
                        .or_insert((0, 0))
                        .1 = version;
                    if client.set(n % 3, &key, &version.to_string(), OP_BOUND) {
                        versions
                            .lock()
                            .expect("versions")
                            .get_mut(&key)
                            .expect("key")
                            .0 = version;
                    }
                }
                sent
            })
        })
        .collect();
    let mut writes = 0;
    let mut kills = Vec::new();
    for round in 0..rounds {
        std::thread::sleep(Duration::from_secs(2));
        if round % 2 == 0 {
            let victim = (round / 2) % 3;
            if let Some(s) = servers[victim].take() {
                s.kill();
            }
            std::thread::sleep(Duration::from_secs(1));
            servers[victim] = Some(start_store(&specs[victim], &coord_addr));
            kills.push(format!("store {victim}"));
        } else {
            // Every replica of every region at once: only what each store made durable
            // before its acknowledgement can come back.
            if sabotage {
                stop.store(true, Ordering::SeqCst);
                writes += writers
                    .drain(..)
                    .map(|w| w.join().expect("writer"))
                    .sum::<usize>();
            }
            for s in servers.iter_mut() {
                if let Some(s) = s.take() {
                    s.kill();
                }
            }
            std::thread::sleep(Duration::from_millis(500));
            if sabotage {
                // No later write may hide the loss: the writers stopped before the kill.
                for spec in &specs {
                    support::empty_newest_wals(&spec.workdir);
                }
            }
            servers = start_stores(&specs, &coord_addr);
            kills.push("all three stores".into());
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    writes += writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .sum::<usize>();
    let versions = std::mem::take(&mut *versions.lock().expect("versions"));
    let acked = versions.values().filter(|(a, _)| *a > 0).count();
    let mut client = ClusterClient::new(&specs);
    let mut wrong = Vec::new();
    for first in 0..3 {
        for (key, (acked, attempted)) in &versions {
            let got = match client.get(first, key, OP_BOUND) {
                R::Bulk(b) => String::from_utf8_lossy(&b).parse::<u64>().ok(),
                R::Nil => Some(0),
                _ => None,
            };
            if !got.is_some_and(|v| *acked <= v && v <= *attempted) {
                wrong.push(format!(
                    "{key} through store {first}: {got:?}, acknowledged {acked}, attempted {attempted}"
                ));
            }
        }
    }
    println!(
        "crash loop: {rounds} rounds ({}); {} keys, {acked} with an acknowledged write, {writes} writes sent; {} wrong",
        kills.join(", "),
        versions.len(),
        wrong.len()
    );
    assert!(
        acked >= WRITERS,
        "too few acknowledged writes to check anything"
    );
    if !wrong.is_empty() && !sabotage {
        eprintln!("{}", client.log_tails());
    }
    drop(servers);
    wrong
}
