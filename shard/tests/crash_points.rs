//! The crash matrix (`--features failpoints`; docs/testing.md, "Failpoints"): the real
//! `nokv-server` aborts at one named crash point (`FAILPOINTS="<name>=N*off->return"`: the
//! N+1th time it gets there) while a client writes with `--durability sync`; restarted
//! without it, every acknowledged write reads back and the write in flight is all there
//! or absent. A point the workload never reaches fails its test, so none passes vacuously.
//!
//! Run: `cargo test -p nokv-shard --features failpoints --test crash_points`.
#![cfg(feature = "failpoints")]

mod support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use support::{Client, Server, LIMIT, R};

/// Most writes per scenario (the crash comes long before).
const MAX_WRITES: usize = 4000;
/// Value size: 64 KiB memtables fill (and flush) about every 60 writes.
const VALUE_BYTES: usize = 1024;

fn value(i: usize) -> String {
    format!("{i:08}-{}", "v".repeat(VALUE_BYTES))
}

/// Writes until the server dies at `point` (hit the `skip + 1`th time), restarts it and
/// checks every acknowledged write. With `move_after`, a region of core 0 is moved to core
/// 1 (a snapshot export and ingest) once that many writes were acknowledged.
fn crash_at(point: &str, skip: u32, move_after: Option<usize>) {
    let lost = crash_and_check(point, skip, move_after, false);
    assert!(lost.is_empty(), "{point}: {}", lost.join("\n"));
}

/// [`crash_at`]'s run; what the check found wrong. `sabotage` empties each core's active
/// WAL segment between the crash and the restart (the negative
/// control: what losing the unsynced log would leave).
fn crash_and_check(
    point: &str,
    skip: u32,
    move_after: Option<usize>,
    sabotage: bool,
) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let failpoints = format!("{point}={skip}*off->return");
    let flags = ["--cores", "2", "--durability", "sync"];
    let server = Server::start_env(
        &data,
        &flags,
        &[
            ("FAILPOINTS", failpoints.as_str()),
            ("NOKV_DEBUG_WRITE_BUFFER_BYTES", "65536"),
        ],
    );
    let mut c = server.client();
    let mut acked = 0usize;
    let mut in_flight = None;
    let deadline = Instant::now() + LIMIT;
    for i in 0..MAX_WRITES {
        if Instant::now() > deadline {
            break;
        }
        if move_after == Some(i) {
            let mut admin = server.client();
            let region = first_region_on_core0(&mut admin);
            admin.send(&[b"NOKV.REGION", b"MOVE", region.as_bytes(), b"1"]);
        }
        let (k, v) = (format!("key:{i:05}"), value(i));
        match c.try_cmd(&[b"SET", k.as_bytes(), v.as_bytes()]) {
            Some(R::Simple(s)) if s == "OK" => acked = i + 1,
            None => {
                in_flight = Some(i);
                break;
            }
            Some(other) => panic!("SET {k}: {other:?}"),
        }
    }
    let status = wait_exit(server, point);
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{point}: the server ended with {status:?} instead of aborting at the point"
    );
    let log = std::fs::read_to_string(data.with_extension("stderr.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("crash point {point} reached")),
        "{point}: not named in the log:\n{log}"
    );
    assert!(
        acked > 0,
        "{point}: the server died before any write was acknowledged"
    );
    if sabotage {
        support::empty_newest_wals(&data);
    }
    // Restarted without the failpoint: everything acknowledged is there.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nokv-server"));
    cmd.arg("--workdir")
        .arg(&data)
        .args(["--redis-addr", "127.0.0.1:0"])
        .args(flags);
    let server = match Server::try_launch(cmd, data.with_extension("restart.log")) {
        Ok(s) => s,
        Err(e) => return vec![format!("did not restart: {e}")],
    };
    let mut c = server.client();
    let mut wrong = Vec::new();
    for i in 0..acked {
        let k = format!("key:{i:05}");
        let got = c.cmd(&format!("GET {k}"));
        if got != R::bulk(&value(i)) {
            wrong.push(format!("acknowledged {k} lost: {got:?}"));
        }
    }
    if let Some(i) = in_flight {
        let got = c.cmd(&format!("GET key:{i:05}"));
        if got != R::Nil && got != R::bulk(&value(i)) {
            wrong.push(format!("the write in flight came back as {got:?}"));
        }
    }
    if wrong.is_empty() {
        assert_eq!(c.cmd("SET after crash"), R::ok());
    }
    println!(
        "{point}: aborted after {acked} acknowledged writes; {} wrong after the restart",
        wrong.len()
    );
    wrong
}

/// The id of a region on core 0 (`NOKV.REGION LIST`).
fn first_region_on_core0(c: &mut Client) -> String {
    let R::Array(lines) = c.cmd("NOKV.REGION LIST") else {
        panic!("NOKV.REGION LIST did not answer an array");
    };
    lines
        .iter()
        .find_map(|l| {
            let R::Bulk(b) = l else { return None };
            let line = String::from_utf8_lossy(b);
            let mut words = line.split_whitespace();
            let region = words.next()?.strip_prefix("region=")?.to_string();
            (words.next()? == "core=0").then_some(region)
        })
        .expect("a region on core 0")
}

/// Waits (bounded) for the server to exit on its own.
fn wait_exit(mut server: Server, point: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{point}: the server never reached the point (still running)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_crash_before_the_wal_sync_loses_no_acknowledged_write() {
    crash_at("wal::before_sync", 40, None);
}

#[test]
fn a_crash_after_the_wal_sync_before_the_reply_loses_no_acknowledged_write() {
    crash_at("wal::after_sync", 40, None);
}

#[test]
fn a_crash_between_writing_a_table_and_recording_it_loses_no_acknowledged_write() {
    // The first two edits create the two cores' regions at start.
    crash_at("manifest::before_edit", 4, None);
}

#[test]
fn a_crash_right_after_a_manifest_edit_loses_no_acknowledged_write() {
    crash_at("manifest::after_edit", 4, None);
}

#[test]
fn a_crash_after_apply_before_the_reply_loses_no_acknowledged_write() {
    crash_at("apply::before_reply", 40, None);
}

#[test]
fn a_crash_before_a_region_snapshot_ingest_loses_no_acknowledged_write() {
    crash_at("ingest::before", 0, Some(100));
}

#[test]
fn a_crash_after_a_region_snapshot_ingest_loses_no_acknowledged_write() {
    crash_at("ingest::after", 0, Some(100));
}

#[test]
fn a_crash_while_a_new_workdir_creates_its_regions_leaves_one_that_starts() {
    for skip in [0, 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("workdir");
        let failpoints = format!("manifest::before_edit={skip}*off->return");
        let (status, log) = support::run_env_to_exit(
            &data,
            &["--cores", "2", "--redis-addr", "127.0.0.1:0"],
            &[("FAILPOINTS", failpoints.as_str())],
        )
        .expect("the server aborts at start");
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{log}");
        let server = Server::start(&data, &["--cores", "2"]);
        let mut c = server.client();
        assert_eq!(c.cmd("SET k v"), R::ok());
        assert_eq!(c.cmd("GET k"), R::bulk("v"));
    }
}

#[test]
fn the_crash_check_reports_writes_lost_with_the_log() {
    // Negative control: the same run with every WAL segment emptied before the restart.
    let lost = crash_and_check("wal::after_sync", 150, None, true);
    assert!(
        !lost.is_empty(),
        "emptying the WAL lost nothing the check could see"
    );
    println!(
        "negative control: {} findings, first: {}",
        lost.len(),
        lost[0]
    );
}

#[test]
fn a_store_crashing_before_a_raft_send_loses_no_acknowledged_write() {
    use std::collections::BTreeMap;
    use support::cluster::{
        check_all, start_coordinator, start_store, start_store_env, store_specs, ClusterClient,
        OP_BOUND,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_coord, _coord_server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = store_specs(dir.path());
    // Store 0 aborts at its 400th raft message to another store (heartbeats count too).
    let handles: Vec<_> = specs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, spec)| {
            let coord_addr = coord_addr.clone();
            std::thread::spawn(move || {
                let env: &[(&str, &str)] = if i == 0 {
                    &[("FAILPOINTS", "transport::before_send=400*off->return")]
                } else {
                    &[]
                };
                start_store_env(&spec, &coord_addr, env)
            })
        })
        .collect();
    let mut servers: Vec<Option<Server>> = handles
        .into_iter()
        .map(|h| Some(h.join().expect("store started")))
        .collect();
    let mut client = ClusterClient::new(&specs);
    let mut acked = BTreeMap::new();
    let deadline = Instant::now() + LIMIT;
    let mut died = None;
    let mut after = 0;
    // Writes until store 0 died and 20 more went through the survivors.
    for i in 0..MAX_WRITES {
        if Instant::now() > deadline || after == 20 {
            break;
        }
        let (k, v) = (format!("key:{i:05}"), format!("v{i}"));
        if client.set(i % 3, &k, &v, OP_BOUND) {
            acked.insert(k, v);
        }
        if died.is_some() {
            after += 1;
        } else {
            died = servers[0]
                .as_mut()
                .and_then(|s| s.child.try_wait().expect("wait"));
        }
    }
    let status = died.expect("store 0 never reached transport::before_send");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    servers[0] = None;
    servers[0] = Some(start_store(&specs[0], &coord_addr));
    check_all(&mut client, &acked, &[0, 1, 2]);
    println!(
        "transport::before_send: store 0 aborted; {} acknowledged writes read back through every store",
        acked.len()
    );
}
