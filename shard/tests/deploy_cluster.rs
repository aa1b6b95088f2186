//! Scenario: `deploy/cluster.sh` brings a local cluster up from a JSON topology and takes
//! it down again. The script starts the coordinator and three stores (the binaries of
//! this build, `--bin-dir`), waits until every store knows a leader for every probed
//! region, prints the redis-cli line; a client that follows `-MOVED` writes through one
//! store and reads back through every store; SIGTERM to the script stops every process it
//! started (their logs say they stopped cleanly). A topology with two stores is refused.
//!
//! Every wait is bounded; nothing asserts a time.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Client, R};

fn free_addr() -> String {
    format!("127.0.0.1:{}", support::free_port())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The directory holding this build's `nokv-server` and `nokv-coordinator` (the latter is
/// another package's binary: built here when `cargo test -p nokv-shard` did not).
fn bin_dir() -> PathBuf {
    let server = PathBuf::from(env!("CARGO_BIN_EXE_nokv-server"));
    let dir = server.parent().expect("bin dir").to_path_buf();
    if !dir.join("nokv-coordinator").exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "nokv-coordinator",
                "--bin",
                "nokv-coordinator",
            ])
            .current_dir(repo())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building nokv-coordinator failed");
    }
    assert!(
        dir.join("nokv-coordinator").exists(),
        "no nokv-coordinator beside {}",
        server.display()
    );
    dir
}

fn topology(dir: &Path, stores: usize) -> (PathBuf, Vec<String>) {
    let redis: Vec<String> = (0..stores).map(|_| free_addr()).collect();
    let store_lines: Vec<String> = redis
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                r#"{{"id": {}, "redis_addr": "{r}", "rpc_addr": "{}", "workdir": "store-{}", "cores": 1}}"#,
                i + 1,
                free_addr(),
                i + 1
            )
        })
        .collect();
    let json = format!(
        r#"{{"cluster_id": 5, "coordinators": [{{"addr": "{}", "workdir": "coord"}}], "stores": [{}]}}"#,
        free_addr(),
        store_lines.join(", ")
    );
    let path = dir.join("topology.json");
    std::fs::write(&path, json).expect("write topology");
    (path, redis)
}

fn start_script(topology: &Path, workdir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new("bash")
        .arg(repo().join("deploy/cluster.sh"))
        .arg("--config")
        .arg(topology)
        .arg("--workdir")
        .arg(workdir)
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--timeout")
        .arg("90")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start deploy/cluster.sh");
    let (tx, rx) = mpsc::channel();
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    (child, rx)
}

/// The last lines of every log under `work` (the processes the script started).
fn log_tails(work: &Path) -> String {
    let mut out = String::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(work)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- {} (last 40 lines)\n", log.display()));
        out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
    }
    out
}

/// Lines until one contains `want` (bounded); panics with what was printed (and the
/// processes' logs under `work`) otherwise.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    want: &str,
    limit: Duration,
    seen: &mut Vec<String>,
    work: &Path,
) {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(want);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!(
        "no line with {want:?}; the script printed:\n{}\n{}",
        seen.join("\n"),
        log_tails(work)
    );
}

/// Runs one command, following `-MOVED` to the leader's store (bounded).
fn cmd_following(addr: &str, args: &[&[u8]]) -> R {
    let mut at = addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = Client::connect(&at);
        let reply = c.try_cmd(args).expect("reply");
        match &reply {
            R::Error(e) if e.starts_with("MOVED") => {
                at = e.split(' ').nth(2).expect("MOVED address").to_string();
            }
            R::Error(e) if e.starts_with("TRYAGAIN") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => return reply,
        }
        assert!(Instant::now() < deadline, "{args:?}: no answer in 30 s");
    }
}

#[test]
fn the_script_brings_a_cluster_up_from_a_topology_and_stops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topo, redis) = topology(dir.path(), 3);
    let work = dir.path().join("data");
    let (mut child, rx) = start_script(&topo, &work);
    let mut seen = Vec::new();
    wait_for(&rx, "is up", Duration::from_secs(180), &mut seen, &work);
    wait_for(
        &rx,
        "redis-cli -c",
        Duration::from_secs(5),
        &mut seen,
        &work,
    );

    for i in 0..30 {
        let k = format!("deploy-{i}");
        let v = format!("v{i}");
        let r = cmd_following(&redis[i % 3], &[b"SET", k.as_bytes(), v.as_bytes()]);
        assert_eq!(r, R::ok(), "SET {k}");
    }
    for addr in &redis {
        for i in 0..30 {
            let k = format!("deploy-{i}");
            let r = cmd_following(addr, &[b"GET", k.as_bytes()]);
            assert_eq!(r, R::bulk(&format!("v{i}")), "GET {k} through {addr}");
        }
    }

    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on the script's pid, a child of this process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the script did not stop in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push(line);
    }
    assert!(
        seen.iter().any(|l| l.contains("== stopped")),
        "the script stopped its processes: {seen:?} ({status:?})"
    );
    for i in 1..=3 {
        let log = std::fs::read_to_string(work.join(format!("store-{i}.log"))).expect("log");
        assert!(
            log.contains("stopped cleanly"),
            "store {i} stopped cleanly:\n{log}"
        );
    }
    for addr in &redis {
        assert!(
            Client::try_connect(addr, Duration::from_millis(300)).is_none(),
            "{addr} still serves after the script stopped"
        );
    }
}

#[test]
fn a_topology_with_two_stores_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (topo, _) = topology(dir.path(), 2);
    let out = Command::new("bash")
        .arg(repo().join("deploy/cluster.sh"))
        .arg("--config")
        .arg(&topo)
        .arg("--workdir")
        .arg(dir.path().join("data"))
        .arg("--bin-dir")
        .arg("/nonexistent")
        .output()
        .expect("run the script");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least three stores"), "{err}");
}
