//! `Options::background_nice`: the flush, compaction and value-log GC threads run at the
//! configured nice value (read back from `/proc/self/task/<tid>/stat`, as `top` would),
//! the log-sync thread at the opener's. Negative control: without the option the same
//! check sees the opener's nice value on those threads.
//!
//! One test in this file: the threads are found by name in this process.

use nokv::priority::{current_tid, thread_io_priority, thread_nice};
use nokv::{Db, Options};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Thread name (`comm`) -> nice value, from `/proc/self/task/*/stat` (field 19).
fn threads() -> BTreeMap<String, (i32, i32)> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // "tid (comm) state ppid ...": comm may hold spaces; fields after ')' from 3 on.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // fields[0] is field 3 (state); nice is field 19.
        if let Some(nice) = fields.get(16).and_then(|n| n.parse().ok()) {
            out.insert(comm, (tid, nice));
        }
    }
    out
}

const BACKGROUND: [&str; 3] = ["nokv-flush", "nokv-compact-0", "nokv-vlog-gc"];
const LOG_SYNC: &str = "nokv-log-sync";

/// Waits (at most `limit`) until every background thread runs at `want` (and the lowest
/// best-effort IO priority) and the log-sync
/// thread is visible; returns what it saw. A new thread names itself after it starts, so
/// a thread can briefly show its creator's name.
fn wait_for(want: i32, limit: Duration) -> Result<(), BTreeMap<String, (i32, i32)>> {
    let deadline = Instant::now() + limit;
    loop {
        let seen = threads();
        // A lowered thread sets its nice value, then its IO priority: wait for both
        // (where the kernel reports IO priorities).
        let lowered = |&(tid, nice): &(i32, i32)| {
            nice == want && thread_io_priority(tid).map_or(true, |p| p == (2, 7))
        };
        if seen.contains_key(LOG_SYNC)
            && BACKGROUND.iter().all(|n| seen.get(*n).is_some_and(lowered))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(seen);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn background_threads_run_at_the_configured_nice_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = thread_nice(current_tid()).expect("own nice value");
    let want = (mine + 5).min(19);
    assert_ne!(want, mine, "the test thread already runs at nice 19");

    let db = Db::open(
        dir.path(),
        Options {
            background_nice: Some(want),
            ..Options::default()
        },
    )
    .expect("open");
    if let Err(seen) = wait_for(want, Duration::from_secs(10)) {
        panic!("background threads not at nice {want}: {seen:?}");
    }
    let seen = threads();
    assert_eq!(
        seen.get(LOG_SYNC).map(|t| t.1),
        Some(mine),
        "the log-sync thread keeps the opener's priority: {seen:?}"
    );
    for name in BACKGROUND {
        let tid = seen[name].0;
        // Not every kernel or sandbox supports ioprio_get; where it does, the class is set.
        if let Ok(p) = thread_io_priority(tid) {
            assert_eq!(p, (2, 7), "{name}: IO priority (class, level)");
        }
    }
    db.put(b"k", b"v").expect("put");
    db.flush().expect("flush works on a lowered thread");
    db.close().expect("close");

    // Negative control: without the option the checker must see the opener's value.
    let db = Db::open(dir.path(), Options::default()).expect("reopen");
    match wait_for(want, Duration::from_secs(1)) {
        Ok(()) => panic!("the check saw nice {want} on threads that were never lowered"),
        Err(seen) => {
            for name in BACKGROUND {
                assert_eq!(seen.get(name).map(|t| t.1), Some(mine), "{name}: {seen:?}");
            }
        }
    }
    assert_eq!(db.get(b"k").expect("get"), Some(b"v".to_vec()));
    db.close().expect("close");
}
