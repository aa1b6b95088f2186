//! Scenario: an owner on a thread that must not block (an async executor) reads through
//! the cache-only tier — a read that would need disk IO says so and does none, and is
//! served from memory once a normal read has filled the cache — and refuses writes while
//! `write_stall()` says the engine stopped them; a held-back apply completes, none is lost.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use nokv::fs::forbid_blocking_io;
use nokv::{Db, Durability, Error, KeySpace, Options, ReadOptions, ReadTier, WriteBatch};

const LIMIT: Duration = Duration::from_secs(30);

fn cache_only() -> ReadOptions {
    ReadOptions {
        tier: ReadTier::CacheOnly,
        ..ReadOptions::default()
    }
}

/// Runs `f` on a fresh thread marked non-blocking: in debug builds any file operation
/// there panics, which `join` reports as an error.
fn on_marked_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::spawn(move || {
        forbid_blocking_io();
        f()
    })
    .join()
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn scan(db: &Db, ro: ReadOptions) -> Result<Pairs, Error> {
    let mut it = db.iter(ro)?;
    it.seek_to_first();
    let mut out = Vec::new();
    // Bounded by the keys written.
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// A database whose 2000 keys (values of `value_len` bytes) sit in tables only, with a
/// cold block cache.
fn cold_db(dir: &std::path::Path, value_len: usize, opts: Options) -> Db {
    let db = Db::open(dir, opts.clone()).expect("open");
    for i in 0..2000u64 {
        db.put(&key(i), &value_for(i, 1, value_len)).expect("put");
    }
    db.compact_all().expect("compact");
    db.close().expect("close");
    Db::open(dir, opts).expect("reopen")
}

#[test]
fn a_cache_only_read_that_misses_says_would_block_without_io_then_hits_after_a_normal_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = cold_db(dir.path(), 100, small_options());
    let k = key(1234);
    let want = value_for(1234, 1, 100);

    // The block is not cached: the marked thread gets WouldBlock and does no file IO
    // (in debug builds any would panic the thread).
    let d = db.clone();
    let kk = k.clone();
    let miss = on_marked_thread(move || d.get_in(KeySpace::KV, &kk, &cache_only()))
        .expect("a cache-only read does no IO");
    assert!(
        matches!(&miss, Err(e) if e.is_would_block()),
        "cold cache-only read: {miss:?}"
    );

    // A normal read (on a thread that may block) fills the cache...
    assert_eq!(db.get(&k).expect("get"), Some(want.clone()));
    // ...and the cache-only read now hits, again without IO.
    let d = db.clone();
    let kk = k.clone();
    let hit = on_marked_thread(move || d.get_in(KeySpace::KV, &kk, &cache_only()))
        .expect("a cache-only read does no IO");
    assert_eq!(hit.expect("cached read"), Some(want));

    // Absent keys answered by memory (bloom filters) never need IO.
    let d = db.clone();
    let absent = on_marked_thread(move || d.get_in(KeySpace::KV, b"no-such-key", &cache_only()))
        .expect("no IO");
    assert_eq!(absent.expect("bloom says absent"), None);
}

#[test]
fn a_cache_only_scan_reports_would_block_until_a_normal_scan_filled_the_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = cold_db(dir.path(), 100, small_options());

    let d = db.clone();
    let cold = on_marked_thread(move || scan(&d, cache_only())).expect("no IO");
    assert!(
        matches!(&cold, Err(e) if e.is_would_block()),
        "cold cache-only scan: {:?}",
        cold.as_ref().map(Vec::len)
    );
    let all = scan(&db, ReadOptions::default()).expect("scan");
    assert_eq!(all.len(), 2000);
    let d = db.clone();
    let warm = on_marked_thread(move || scan(&d, cache_only()))
        .expect("no IO")
        .expect("every block is cached now");
    assert_eq!(warm, all);
}

#[test]
fn values_in_the_value_log_always_need_io() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        value_threshold_bytes: 256,
        ..small_options()
    };
    let db = cold_db(dir.path(), 1000, opts);
    let k = key(7);
    // Warm the table blocks; the value itself is read from the value log every time.
    assert_eq!(db.get(&k).expect("get"), Some(value_for(7, 1, 1000)));
    let d = db.clone();
    let r = on_marked_thread(move || d.get_in(KeySpace::KV, &k, &cache_only())).expect("no IO");
    assert!(matches!(&r, Err(e) if e.is_would_block()), "{r:?}");
}

#[cfg(debug_assertions)]
#[test]
fn negative_control_a_normal_read_on_a_marked_thread_panics_in_debug_builds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = cold_db(dir.path(), 100, small_options());
    let d = db.clone();
    let r = on_marked_thread(move || d.get(&key(1234)).map(|v| v.is_some()));
    assert!(
        r.is_err(),
        "the guard must catch a block read on a marked thread"
    );
    // Writes are refused there too (they can wait on fdatasync or a stall).
    let d = db.clone();
    let w = on_marked_thread(move || d.put(b"k", b"v"));
    assert!(
        w.is_err(),
        "the guard must catch a write on a marked thread"
    );
}

/// Polls `cond` (bounded in count and time) until it holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    for _ in 0..30_000 {
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("gave up waiting for {what}");
}

#[test]
fn write_stall_reports_stop_while_flush_is_held_and_a_waiting_apply_completes_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hold = Arc::new(AtomicBool::new(true));
    let h = hold.clone();
    let opts = Options {
        max_immutable_memtables: 1,
        durability: Durability::Relaxed,
        test_hold_flush: Some(Arc::new(move || h.load(Ordering::SeqCst))),
        ..small_options()
    };
    let db = Db::open(dir.path(), opts).expect("open");
    assert_eq!(db.write_stall(), nokv::WriteStall::None);

    // Fill one memtable (frozen, its flush held), then the next: the engine stops.
    let mut written = 0u64;
    for i in 0..1000u64 {
        if db.write_stall() == nokv::WriteStall::Stop {
            break;
        }
        db.put(&key(i), &value_for(i, 1, 1000)).expect("put");
        written = i + 1;
    }
    assert_eq!(
        db.write_stall(),
        nokv::WriteStall::Stop,
        "after {written} writes"
    );
    assert!(written > 64, "two 64 KiB memtables hold more than 64 KiB");
    // Reads go on.
    assert_eq!(db.get(&key(0)).expect("get"), Some(value_for(0, 1, 1000)));
    // Recording an applied index adds nothing to the memtable: it never waits.
    let (tx, rx) = mpsc::channel();
    let d = db.clone();
    std::thread::spawn(move || {
        let _ = tx.send(d.apply_unlogged(&WriteBatch::new(), Some((1, 0))));
    });
    rx.recv_timeout(LIMIT)
        .expect("an empty unlogged batch does not wait out the stall")
        .expect("recorded");

    // An apply of committed data must wait, never fail: it completes once flush resumes.
    let (tx, rx) = mpsc::channel();
    let d = db.clone();
    let applier = std::thread::spawn(move || {
        let mut b = WriteBatch::new();
        b.put(b"applied", b"yes");
        let r = d.apply_unlogged(&b, Some((1, 1)));
        let _ = tx.send(());
        r
    });
    hold.store(false, Ordering::SeqCst);
    rx.recv_timeout(LIMIT)
        .expect("the apply finished after the hold");
    applier.join().expect("join").expect("apply never fails");
    wait_until("the stall to clear", || {
        db.write_stall() != nokv::WriteStall::Stop
    });
    db.put(b"after", b"stall").expect("write after the stall");
    assert_eq!(db.get(b"applied").expect("get"), Some(b"yes".to_vec()));
    for i in 0..written {
        assert_eq!(
            db.get(&key(i)).expect("get"),
            Some(value_for(i, 1, 1000)),
            "key {i}"
        );
    }
}
