//! System tests: executor threads never block on the engine (debug builds assert it, and
//! the assertion is shown to fire), and a core whose engine stops writes answers them
//! with -BUSY while reads and the other core go on; nothing accepted is lost.

mod support;

use std::time::{Duration, Instant};
use support::{Client, Server, LIMIT, R};

/// A hash tag whose keys live on `core` of a 2-core server (8 regions of 2048 slots,
/// region i on core i % 2).
fn tag_on_core(core: usize) -> String {
    (0..1000)
        .map(|i| format!("t{i}"))
        .find(|t| {
            let slot = nokv_gateway::model::slot(format!("{{{t}}}").as_bytes()) as usize;
            (slot / 2048) % 2 == core
        })
        .expect("some tag lands on each core")
}

#[cfg(debug_assertions)]
#[test]
fn negative_control_a_debug_server_aborts_when_an_executor_thread_does_engine_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The knob makes the raft driver write the WAL on the executor thread: the election
    // at start-up appends a hard state, which the blocking-IO assertion must catch.
    let out = support::run_env_to_exit(
        &dir.path().join("data"),
        &["--cores", "1", "--redis-addr", "127.0.0.1:0"],
        &[("NOKV_DEBUG_INLINE_ENGINE_IO", "wal")],
    );
    let (status, stderr) = out.expect("the server must not keep running");
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        stderr.contains("on a thread marked non-blocking"),
        "the assertion names the problem:\n{stderr}"
    );
}

/// Writes `n` keys of 1 KiB (kept in tables) and every tenth of 8 KiB (moved to the
/// value log when flushed), then stops the server gracefully (flushing everything).
fn fill_and_stop(data: &std::path::Path, n: usize) -> Vec<(String, String)> {
    let s = Server::start(data, &["--cores", "2"]);
    let mut c = s.client();
    let kv: Vec<(String, String)> = (0..n)
        .map(|i| {
            let len = if i % 10 == 0 { 8 << 10 } else { 1 << 10 };
            (format!("cold:{i}"), format!("{i}-{}", "x".repeat(len)))
        })
        .collect();
    for (k, v) in &kv {
        c.send(&[b"SET", k.as_bytes(), v.as_bytes()]);
    }
    for (k, _) in &kv {
        assert_eq!(c.read(), R::ok(), "SET {k}");
    }
    drop(c);
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    kv
}

#[test]
fn reads_that_need_disk_io_after_a_restart_are_served_off_the_executor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let kv = fill_and_stop(&data, 3000);
    // A cold block cache: most reads miss it (and some values are in the value log). In
    // debug builds an executor thread doing that IO would abort the server.
    let s = Server::start(&data, &["--cores", "2"]);
    let mut c = s.client();
    for (k, v) in &kv {
        c.send(&[b"GET", k.as_bytes()]);
        assert_eq!(c.read(), R::Bulk(v.clone().into_bytes()), "{k}");
    }
    assert_eq!(c.cmd("DBSIZE"), R::Int(kv.len() as i64));
}

#[cfg(debug_assertions)]
#[test]
fn negative_control_a_debug_server_aborts_when_an_executor_thread_reads_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let kv = fill_and_stop(&data, 3000);
    // The knob makes reads use every tier inline: the first block-cache miss must abort.
    let s = Server::start_env(
        &data,
        &["--cores", "2"],
        &[("NOKV_DEBUG_INLINE_ENGINE_IO", "reads")],
    );
    let mut c = s.client();
    let mut died = false;
    for (k, _) in kv.iter().step_by(7) {
        if c.try_cmd(&[b"GET", k.as_bytes()]).is_none() {
            died = true;
            break;
        }
    }
    assert!(
        died,
        "some read missed the block cache and the assertion stopped the server"
    );
    let stderr = std::fs::read_to_string(&s.stderr).unwrap_or_default();
    assert!(
        stderr.contains("on a thread marked non-blocking"),
        "the assertion names the problem:\n{stderr}"
    );
}

fn value(i: usize) -> String {
    format!("{i:05}-{}", "v".repeat(16 << 10))
}

#[cfg(debug_assertions)]
#[test]
fn writes_get_busy_while_the_engine_stops_them_and_nothing_accepted_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let hold = dir.path().join("hold-flush");
    std::fs::write(&hold, b"").expect("hold file");
    let hold_s = hold.to_string_lossy().into_owned();
    let env = [
        ("NOKV_DEBUG_WRITE_BUFFER_BYTES", "65536"),
        ("NOKV_DEBUG_MAX_IMMUTABLE_MEMTABLES", "1"),
        ("NOKV_DEBUG_HOLD_FLUSH_WHILE", hold_s.as_str()),
    ];
    let s = Server::start_env(&data, &["--cores", "2", "--durability", "sync"], &env);
    let (stalled, other) = (tag_on_core(0), tag_on_core(1));
    let mut c = s.client();

    // With flushes held, two 64 KiB memtables fill up: then core 0 refuses writes.
    let mut acked = Vec::new();
    let mut busy = None;
    for i in 0..64 {
        let k = format!("{{{stalled}}}k{i}");
        match c.cmd(&format!("SET {k} {}", value(i))) {
            R::Simple(ok) if ok == "OK" => acked.push((k, value(i))),
            R::Error(e) => {
                busy = Some(e);
                break;
            }
            other => panic!("SET {k}: {other:?}"),
        }
    }
    let busy = busy.expect("the engine stopped writes within 64 writes of 16 KiB");
    assert_eq!(
        busy,
        "BUSY write stall: the storage engine is catching up on flush and compaction, retry later"
    );
    assert!(acked.len() >= 4, "{} writes before the stop", acked.len());
    // Reads of the stopped core go on, and the other core takes writes.
    let (k0, v0) = &acked[0];
    assert_eq!(c.cmd(&format!("GET {k0}")), R::bulk(v0));
    let k1 = format!("{{{other}}}during");
    assert_eq!(c.cmd(&format!("SET {k1} yes")), R::ok());
    assert_eq!(c.cmd(&format!("GET {k1}")), R::bulk("yes"));
    // Still refused: nothing piles up behind the stall.
    let mut d = s.client();
    assert!(
        matches!(d.cmd(&format!("SET {{{stalled}}}again x")), R::Error(e) if e.starts_with("BUSY"))
    );

    // Flushes resume: writes are accepted again (bounded retries; not a timing check).
    std::fs::remove_file(&hold).expect("release the hold");
    let deadline = Instant::now() + LIMIT;
    let mut accepted = false;
    for _ in 0..3000 {
        match d.cmd(&format!("SET {{{stalled}}}after yes")) {
            R::Simple(ok) if ok == "OK" => {
                accepted = true;
                break;
            }
            R::Error(e) if e.starts_with("BUSY") => {}
            other => panic!("SET after the stall: {other:?}"),
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(accepted, "writes resume once flushes do");
    for (k, v) in &acked {
        assert_eq!(c.cmd(&format!("GET {k}")), R::bulk(v), "{k}");
    }

    // Every acknowledged write survives a SIGKILL.
    drop(c);
    drop(d);
    s.kill();
    let s = Server::start(&data, &["--cores", "2"]);
    let mut c: Client = s.client();
    for (k, v) in &acked {
        assert_eq!(c.cmd(&format!("GET {k}")), R::bulk(v), "{k} after restart");
    }
    assert_eq!(c.cmd(&format!("GET {k1}")), R::bulk("yes"));
    assert_eq!(c.cmd(&format!("GET {{{stalled}}}after")), R::bulk("yes"));
}
