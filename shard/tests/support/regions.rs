//! Region scenarios on a standalone `nokv-server`: the region list, checks that the
//! regions tile the hash-slot space, writers that record what was acknowledged, and rounds
//! of SIGKILL in the middle of operator commands.

use super::{Client, Server, R};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One region as `NOKV.REGION LIST` shows it: (id, first slot, end slot, core).
pub type Region = (u64, u32, u32, u32);

pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// The store's regions, sorted by first slot.
pub fn regions(c: &mut Client) -> Vec<Region> {
    let R::Array(lines) = c.cmd("NOKV.REGION LIST") else {
        panic!("NOKV.REGION LIST did not answer an array");
    };
    let mut out: Vec<Region> = lines
        .iter()
        .map(|l| {
            let R::Bulk(b) = l else { panic!("{l:?}") };
            let line = String::from_utf8_lossy(b).into_owned();
            let (s, e) = field(&line, "slots").split_once("..").expect("slots a..b");
            (
                field(&line, "region").parse().expect("id"),
                s.parse().expect("start"),
                e.parse().expect("end"),
                field(&line, "core").parse().expect("core"),
            )
        })
        .collect();
    out.sort_by_key(|r| r.1);
    out
}

/// Fails unless the regions cover slots 0..16384 exactly once, with distinct ids.
pub fn assert_tiles(regions: &[Region]) {
    let mut next = 0;
    for r in regions {
        assert_eq!(
            r.1, next,
            "gap or overlap before region {r:?} in {regions:?}"
        );
        assert!(r.2 > r.1, "empty region {r:?}");
        next = r.2;
    }
    assert_eq!(next, 16384, "slots {next}.. have no region: {regions:?}");
    let mut ids: Vec<u64> = regions.iter().map(|r| r.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), regions.len(), "a region id twice: {regions:?}");
}

/// Writes `pairs` pipelined (batches of 200); every reply must be OK, or `-TRYAGAIN`
/// (a write in flight while its region split: nothing written), which is sent again.
pub fn load(c: &mut Client, pairs: &[(String, String)]) -> usize {
    let mut retried = 0;
    for chunk in pairs.chunks(200) {
        for (k, v) in chunk {
            c.send(&[b"SET", k.as_bytes(), v.as_bytes()]);
        }
        let mut again = Vec::new();
        for (k, v) in chunk {
            match c.read() {
                R::Simple(s) if s == "OK" => {}
                R::Error(e) if e.starts_with("TRYAGAIN") => again.push((k, v)),
                other => panic!("SET {k}: {other:?}"),
            }
        }
        for (k, v) in again {
            retried += 1;
            loop {
                match c.cmd(&format!("SET {k} {v}")) {
                    R::Simple(s) if s == "OK" => break,
                    R::Error(e) if e.starts_with("TRYAGAIN") => continue,
                    other => panic!("SET {k}: {other:?}"),
                }
            }
        }
    }
    retried
}

/// Fails unless every key reads back with its value (pipelined GETs).
pub fn assert_values(c: &mut Client, expect: &BTreeMap<String, String>) {
    let items: Vec<_> = expect.iter().collect();
    for chunk in items.chunks(200) {
        for (k, _) in chunk {
            c.send(&[b"GET", k.as_bytes()]);
        }
        for (k, v) in chunk {
            assert_eq!(c.read(), R::bulk(v), "GET {k}");
        }
    }
}

/// Waits (bounded) until `f` holds, polling every 100 ms.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writers that SET their own keys until told to stop (bounded by count), retrying
/// `-TRYAGAIN` (nothing written); every acknowledged value is recorded.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    threads: Vec<std::thread::JoinHandle<usize>>,
}

impl Writers {
    pub fn start(addr: &str, n: usize, round: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let threads = (0..n)
            .map(|t| {
                let (stop, acked, addr) = (stop.clone(), acked.clone(), addr.to_string());
                std::thread::spawn(move || {
                    let Some(mut c) = Client::try_connect(&addr, Duration::from_secs(10)) else {
                        return 0;
                    };
                    let mut tryagain = 0;
                    for i in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let (k, v) = (format!("w{round}:{t}:{i}"), format!("v{i}"));
                        loop {
                            match c.try_cmd(&[b"SET", k.as_bytes(), v.as_bytes()]) {
                                Some(R::Simple(s)) if s == "OK" => {
                                    acked.lock().expect("acked").insert(k.clone(), v.clone());
                                    break;
                                }
                                Some(R::Error(e)) if e.starts_with("TRYAGAIN") => tryagain += 1,
                                // The server was killed: unacknowledged, not checked.
                                None => return tryagain,
                                Some(other) => panic!("SET {k}: {other:?}"),
                            }
                        }
                    }
                    tryagain
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    /// Stops the writers; returns what they acknowledged and how many TRYAGAINs they got.
    pub fn finish(self) -> (BTreeMap<String, String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let tryagain = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("writer"))
            .sum();
        let acked = std::mem::take(&mut *self.acked.lock().expect("acked"));
        (acked, tryagain)
    }
}

/// Rounds of SIGKILL in the middle of operator commands: a fresh start, writers, the
/// `commands` for the regions sent without waiting, a SIGKILL `first + step x round` ms
/// later; the restart must tile the slots once (with as many regions as before when
/// `same_count`) and read back every acknowledged write.
pub fn sigkill_rounds(
    rounds: usize,
    (first, step): (u64, u64),
    same_count: bool,
    commands: impl Fn(&[Region]) -> Vec<Vec<String>>,
) {
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
    let mut all = BTreeMap::new();
    for round in 0..rounds {
        let server = Server::start(&workdir, &flags);
        let mut c = server.client();
        let before = regions(&mut c);
        assert_tiles(&before);
        let writers = Writers::start(&server.addr, 3, round);
        std::thread::sleep(Duration::from_millis(100));
        for cmd in commands(&before) {
            let words: Vec<&[u8]> = cmd.iter().map(|w| w.as_bytes()).collect();
            c.send(&words);
        }
        std::thread::sleep(Duration::from_millis(first + step * round as u64));
        server.kill();
        let (acked, _) = writers.finish();
        all.extend(acked);
        let server = Server::start(&workdir, &flags);
        let mut c = server.client();
        let after = regions(&mut c);
        assert_tiles(&after);
        if same_count {
            assert_eq!(after.len(), before.len(), "{after:?}");
        }
        assert_values(&mut c, &all);
        server.terminate();
    }
    assert!(all.len() > 50, "writes acknowledged: {}", all.len());
}

/// The core region `id` is on, as `NOKV.REGION LIST` says.
pub fn core_of(c: &mut Client, id: u64) -> Option<u32> {
    regions(c).into_iter().find(|r| r.0 == id).map(|r| r.3)
}
