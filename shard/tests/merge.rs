//! Scenarios: adjacent regions of one core of a real `nokv-server` merge on request
//! (`NOKV.REGION MERGE`) while clients write, and survive SIGKILL in the middle of merges:
//! the regions always tile the hash-slot space exactly once and every acknowledged write
//! reads back. Bad requests (not adjacent, on two cores, the same region) are refused.

mod support;

use std::time::Duration;
use support::regions::*;
use support::{Server, R};

/// One core, no splits by size or load, a split check (and merges) every 300 ms.
const ONE_CORE_MERGING: [&str; 8] = [
    "--cores",
    "1",
    "--region-max-bytes",
    "0",
    "--split-load-qps",
    "0",
    "--split-check-ms",
    "300",
];

/// Pairs of adjacent regions on one core: (left, right), each region in one pair at most.
fn mergeable_pairs(regions: &[Region]) -> Vec<(Region, Region)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < regions.len() {
        let (a, b) = (regions[i], regions[i + 1]);
        if a.3 == b.3 && a.2 == b.1 {
            out.push((a, b));
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn split_regions_merge_back_under_concurrent_writes_and_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("store");
    let flags = [
        "--cores",
        "2",
        "--region-max-bytes",
        "0",
        "--merge-max-bytes",
        "0",
    ];
    let server = Server::start(&workdir, &flags);
    let mut c = server.client();
    let before = regions(&mut c);
    // Round-robin placement: no two neighbours share a core yet.
    assert!(mergeable_pairs(&before).is_empty(), "{before:?}");
    let (a, b) = (before[0], before[1]);
    let across = c.cmd(&format!("NOKV.REGION MERGE {} {}", a.0, b.0));
    assert!(
        matches!(&across, R::Error(e) if e.contains("move one first")),
        "{across:?}"
    );
    let itself = c.cmd(&format!("NOKV.REGION MERGE {} {}", a.0, a.0));
    assert!(matches!(&itself, R::Error(_)), "{itself:?}");
    let writers = Writers::start(&server.addr, 4, 0);
    std::thread::sleep(Duration::from_millis(200));
    for r in &before {
        assert!(
            matches!(c.cmd(&format!("NOKV.REGION SPLIT {}", r.0)), R::Array(_)),
            "split {r:?}"
        );
    }
    let split = regions(&mut c);
    assert_tiles(&split);
    assert_eq!(split.len(), 2 * before.len());
    let far = (split[0], split[4]);
    assert_eq!(far.0 .3, far.1 .3, "same core, not adjacent: {split:?}");
    let gap = c.cmd(&format!("NOKV.REGION MERGE {} {}", far.0 .0, far.1 .0));
    assert!(
        matches!(&gap, R::Error(e) if e.contains("not adjacent")),
        "{gap:?}"
    );
    let pairs = mergeable_pairs(&split);
    assert_eq!(pairs.len(), before.len(), "{split:?}");
    for (l, r) in &pairs {
        match c.cmd(&format!("NOKV.REGION MERGE {} {}", l.0, r.0)) {
            R::Int(survivor) => assert!(survivor as u64 == l.0 || survivor as u64 == r.0),
            other => panic!("MERGE {l:?} {r:?}: {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let (acked, tryagain) = writers.finish();
    eprintln!(
        "{} writes acknowledged across {} splits and {} merges, {tryagain} TRYAGAIN retried",
        acked.len(),
        before.len(),
        pairs.len()
    );
    assert!(acked.len() > 100, "writers made progress: {}", acked.len());
    let now = regions(&mut c);
    assert_tiles(&now);
    let ranges = |rs: &[Region]| rs.iter().map(|r| (r.1, r.2, r.3)).collect::<Vec<_>>();
    assert_eq!(
        ranges(&now),
        ranges(&before),
        "merged back to the first ranges"
    );
    assert_values(&mut c, &acked);
    server.kill();
    let server = Server::start(&workdir, &flags);
    let mut c = server.client();
    // Merges whose descriptors were not flushed yet are applied again from the logs
    // during the first rounds after the start.
    wait_for(
        "the merges re-applied after a SIGKILL",
        Duration::from_secs(30),
        || regions(&mut c) == now,
    );
    assert_values(&mut c, &acked);
    server.terminate();
}

#[test]
fn sigkill_in_the_middle_of_merges_leaves_every_slot_owned_once_and_every_write() {
    // A round merges the neighbours that share a core; when there are none (the first
    // start's round-robin placement, or every merge of the last round applied) it splits
    // every region instead, so that the next round has neighbours to merge.
    sigkill_rounds(6, (5, 10), false, |regions| {
        let pairs = mergeable_pairs(regions);
        eprintln!("{} regions, {} to merge", regions.len(), pairs.len());
        if pairs.is_empty() {
            return regions
                .iter()
                .filter(|r| r.2 - r.1 >= 2)
                .map(|r| vec!["NOKV.REGION".into(), "SPLIT".into(), r.0.to_string()])
                .collect();
        }
        pairs
            .into_iter()
            .map(|(l, r)| {
                vec![
                    "NOKV.REGION".into(),
                    "MERGE".into(),
                    l.0.to_string(),
                    r.0.to_string(),
                ]
            })
            .collect()
    });
}

/// Negative control of the checks above: a store that deletes a merged-away region's
/// descriptor apart from the batch that widens its target (debug knob
/// `NOKV_DEBUG_MERGE_DELETE_SOURCE_EARLY`) leaves slots to no region after a SIGKILL: the
/// restarted store finds the gap and refuses to start (the merge tests would fail there).
#[test]
fn a_merge_persisted_in_two_steps_leaves_a_gap_that_the_check_finds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("store");
    let flags = [
        "--cores",
        "1",
        "--region-max-bytes",
        "0",
        "--merge-max-bytes",
        "0",
    ];
    let knob = [("NOKV_DEBUG_MERGE_DELETE_SOURCE_EARLY", "1")];
    let server = Server::start_env(&workdir, &flags, &knob);
    let mut c = server.client();
    let before = regions(&mut c);
    let pairs = mergeable_pairs(&before);
    assert!(!pairs.is_empty(), "{before:?}");
    for (l, r) in &pairs {
        let reply = c.cmd(&format!("NOKV.REGION MERGE {} {}", l.0, r.0));
        assert!(matches!(reply, R::Int(_)), "MERGE {l:?} {r:?}: {reply:?}");
    }
    assert_tiles(&regions(&mut c));
    // The early deletions are synced writes of their own: give them a moment.
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    // The store finds the gap itself and refuses to start: the region list is never
    // served; the same check as the tests' (`tiles`) names the uncovered slots.
    let (status, stderr) = support::run_env_to_exit(&workdir, &flags, &[]).expect("exits");
    assert!(!status.success());
    assert!(stderr.contains("do not tile"), "{stderr}");
}

#[test]
fn small_cold_regions_merge_by_themselves_down_to_the_first_four_of_a_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("store");
    let flags = ONE_CORE_MERGING;
    let server = Server::start(&workdir, &flags);
    let mut c = server.client();
    let before = regions(&mut c);
    assert_eq!(before.len(), 4, "{before:?}");
    let pairs: Vec<(String, String)> = (0..2000)
        .map(|i| (format!("cold:{i}"), format!("v{i}")))
        .collect();
    load(&mut c, &pairs);
    // Split every region (merges of one per check interval may already start).
    let mut splits = 0;
    for r in &before {
        if let R::Array(_) = c.cmd(&format!("NOKV.REGION SPLIT {}", r.0)) {
            splits += 1;
        }
    }
    assert_eq!(splits, 4);
    wait_for(
        "cold regions merged down to four",
        Duration::from_secs(60),
        || regions(&mut c).len() == 4,
    );
    let now = regions(&mut c);
    assert_tiles(&now);
    let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
    assert!(
        log.contains("merged two small, cold regions"),
        "the log says so"
    );
    assert_values(&mut c, &pairs.into_iter().collect());
    // Never below the first four: nothing merges further.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(regions(&mut c).len(), 4);
    server.terminate();
}

/// A merge that stopped after its prepare (`NOKV_DEBUG_MERGE_STOP_AFTER_PREPARE`, standing
/// in for a commit not applied in time) leaves its source taking no writes; the next
/// split check finishes it by itself, and every key reads back.
#[test]
fn a_merge_stopped_after_its_prepare_is_finished_by_the_next_split_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("store");
    let flags = ONE_CORE_MERGING;
    let server = Server::start_env(
        &workdir,
        &flags,
        &[("NOKV_DEBUG_MERGE_STOP_AFTER_PREPARE", "1")],
    );
    let mut c = server.client();
    let pairs: Vec<(String, String)> = (0..400)
        .map(|i| (format!("k:{i}"), format!("v{i}")))
        .collect();
    load(&mut c, &pairs);
    let before = regions(&mut c);
    let (a, b) = (before[0], before[1]);
    let stopped = c.cmd(&format!("NOKV.REGION MERGE {} {}", a.0, b.0));
    assert!(
        matches!(&stopped, R::Error(e) if e.contains("stopped after its prepare")),
        "{stopped:?}"
    );
    wait_for(
        "the prepared merge finished by a split check",
        Duration::from_secs(30),
        || regions(&mut c).len() == before.len() - 1,
    );
    let now = regions(&mut c);
    assert_tiles(&now);
    assert!(
        now.iter().any(|r| r.1 == a.1 && r.2 == b.2),
        "one region holds both ranges: {now:?}"
    );
    let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
    assert!(
        log.contains("finishing a prepared merge"),
        "the log says so"
    );
    assert_values(&mut c, &pairs.iter().cloned().collect());
    // The merged range takes writes again.
    let more: Vec<(String, String)> = (0..100)
        .map(|i| (format!("after:{i}"), format!("w{i}")))
        .collect();
    load(&mut c, &more);
    assert_values(&mut c, &more.into_iter().collect());
    server.terminate();
}

/// Found by `bench/anchors/spread.sh`: a core whose regions all moved to another core and
/// merged there came back at the next start with the bootstrap layout, over slots the
/// other core held (the store refused to start: regions did not tile).
#[test]
fn a_store_reduced_to_one_region_on_one_core_restarts_as_it_was() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("store");
    let flags = [
        "--cores",
        "2",
        "--region-max-bytes",
        "0",
        "--merge-max-bytes",
        "0",
    ];
    let server = Server::start(&workdir, &flags);
    let mut c = server.client();
    for r in regions(&mut c) {
        if r.3 != 0 {
            assert_eq!(c.cmd(&format!("NOKV.REGION MOVE {} 0", r.0)), R::ok());
        }
    }
    // Bounded: each merge removes a region.
    for _ in 0..16 {
        let now = regions(&mut c);
        if now.len() == 1 {
            break;
        }
        let reply = c.cmd(&format!("NOKV.REGION MERGE {} {}", now[0].0, now[1].0));
        assert!(matches!(reply, R::Int(_)), "{reply:?}");
    }
    let one = regions(&mut c);
    assert_eq!(one.len(), 1, "{one:?}");
    let pairs: Vec<(String, String)> = (0..500)
        .map(|i| (format!("one:{i}"), format!("v{i}")))
        .collect();
    load(&mut c, &pairs);
    server.terminate();
    let server = Server::start(&workdir, &flags);
    let mut c = server.client();
    assert_eq!(regions(&mut c), one);
    assert_values(&mut c, &pairs.into_iter().collect());
    server.terminate();
}
