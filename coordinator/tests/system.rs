//! The real `nokv-coordinator` binary on a loopback port: three stores register through
//! `CoordClient`, the cluster is bootstrapped, routes are looked up; the process is
//! SIGKILLed and restarted on the same workdir, and its TSO is above every timestamp handed
//! out before the kill, its ids new, its catalog intact. SIGTERM exits 0.

use nokv_coordinator::proto::StoreMeta;
use nokv_coordinator::{ClientOptions, CoordClient};
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nokv-coordinator");
const CLUSTER: u64 = 31;
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn spawn(workdir: &Path, addr: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(BIN)
        .args(["--addr", addr, "--cluster-id", &CLUSTER.to_string()])
        .arg("--workdir")
        .arg(workdir)
        .args(["--store-down-after", "30s"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nokv-coordinator")
}

/// Waits (bounded) for the process to exit.
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT.
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("nokv-coordinator did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child when the test panics.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_killed_coordinator_restarts_with_its_catalog_and_a_tso_above_every_timestamp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workdir = dir.path().join("coord");
    let log = dir.path().join("coord.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut guard = Guard(Some(spawn(&workdir, &addr, &log)));
    let client = CoordClient::new(
        vec![addr.clone()],
        CLUSTER,
        ClientOptions {
            call_timeout: WAIT,
            ..ClientOptions::default()
        },
    )
    .expect("client");

    let mut store_ids = Vec::new();
    for n in 0..3u16 {
        let id = client
            .register_store(StoreMeta {
                id: 0,
                rpc_addr: format!("127.0.0.1:{}", 40000 + n),
                redis_addr: format!("127.0.0.1:{}", 41000 + n),
                cores: 2,
                version: "system-test".into(),
                ..Default::default()
            })
            .expect("register store");
        store_ids.push(id);
    }
    let regions = client.bootstrap(vec![b"m".to_vec()], 3).expect("bootstrap");
    assert_eq!(regions.len(), 2);
    let mut routes = Vec::new();
    for key in [b"a".as_slice(), b"m", b"zz"] {
        let route = client.route_by_key(key).expect("route");
        assert_eq!(route.stores.len(), 3);
        let stores: HashSet<u64> = route.stores.iter().map(|s| s.id).collect();
        assert_eq!(stores, store_ids.iter().copied().collect());
        routes.push(route);
    }
    let mut max_ts = 0;
    for _ in 0..200 {
        let first = client.get_ts(10).expect("ts");
        assert!(first > max_ts);
        max_ts = first + 9;
    }
    let mut ids = HashSet::new();
    for _ in 0..20 {
        let first = client.alloc_ids(5).expect("ids");
        for id in first..first + 5 {
            assert!(ids.insert(id));
        }
    }

    // SIGKILL: no clean shutdown.
    let mut child = guard.0.take().expect("child");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    guard.0 = Some(spawn(&workdir, &addr, &log));
    // The same client reconnects on its own.
    let after = client.get_timestamp().expect("ts after restart");
    assert!(
        after > max_ts,
        "TSO went back across the restart: {after} <= {max_ts}"
    );
    let id = client.alloc_ids(1).expect("id after restart");
    assert!(
        !ids.contains(&id) && !store_ids.contains(&id),
        "id {id} repeated"
    );
    for (key, before) in [b"a".as_slice(), b"m", b"zz"].iter().zip(&routes) {
        assert_eq!(
            &client.route_by_key(key).expect("route after restart"),
            before
        );
    }
    assert_eq!(client.stores().expect("stores").len(), 3);

    // A second coordinator on the same workdir is refused with a clear message.
    let other = Command::new(BIN)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--cluster-id",
            &CLUSTER.to_string(),
        ])
        .arg("--workdir")
        .arg(&workdir)
        .output()
        .expect("run a second coordinator");
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("open coordinator state"), "stderr: {err}");

    // SIGTERM: a clean exit.
    let mut child = guard.0.take().expect("child");
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child process by pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut child);
    assert!(
        status.success(),
        "exit status {status:?}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn help_explains_the_flags() {
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--addr",
        "--workdir",
        "--cluster-id",
        "--store-down-after",
        "127.0.0.1:2390",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

fn spawn_replica(workdir: &Path, id: usize, peers: &[String], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(BIN)
        .args([
            "--addr",
            &peers[id - 1],
            "--cluster-id",
            &CLUSTER.to_string(),
        ])
        .arg("--workdir")
        .arg(workdir)
        .args(["--replica-id", &id.to_string(), "--peers", &peers.join(",")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn a nokv-coordinator replica")
}

/// Kills every child still running when the test ends.
struct Guards(Vec<Option<Child>>);

impl Drop for Guards {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn three_coordinator_processes_survive_a_sigkill_of_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let workdir = |i: usize| dir.path().join(format!("r{i}"));
    let log = dir.path().join("replicas.log");
    let mut procs = Guards(
        (1..=3)
            .map(|i| Some(spawn_replica(&workdir(i), i, &peers, &log)))
            .collect(),
    );
    let client = CoordClient::new(
        peers.clone(),
        CLUSTER,
        ClientOptions {
            call_timeout: WAIT,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    for n in 0..3u16 {
        client
            .register_store(StoreMeta {
                id: 0,
                rpc_addr: format!("127.0.0.1:{}", 42000 + n),
                redis_addr: format!("127.0.0.1:{}", 43000 + n),
                cores: 1,
                version: "system-test".into(),
                ..Default::default()
            })
            .expect("register store");
    }
    client.bootstrap(vec![], 3).expect("bootstrap");
    let route = client.route_by_key(b"k").expect("route");
    let mut max_ts = 0;
    let mut ids = HashSet::new();
    for _ in 0..20 {
        let t = client.get_ts(5).expect("ts");
        assert!(t > max_ts);
        max_ts = t + 4;
        assert!(ids.insert(client.alloc_ids(1).expect("id")));
    }
    let leader = client.current_endpoint();
    let li = peers
        .iter()
        .position(|p| *p == leader)
        .expect("leader is a peer");
    let mut child = procs.0[li].take().expect("leader process");
    child.kill().expect("SIGKILL the leader");
    child.wait().expect("reap");

    let t = client.get_timestamp().expect("ts from the new leader");
    assert!(
        t > max_ts,
        "TSO went back after the leader was killed: {t} <= {max_ts}"
    );
    assert_ne!(client.current_endpoint(), leader);
    let id = client.alloc_ids(1).expect("id from the new leader");
    assert!(ids.insert(id), "id {id} repeated");
    assert_eq!(client.route_by_key(b"k").expect("route"), route);

    // The killed replica restarts and the cluster keeps serving; SIGTERM stops all cleanly.
    procs.0[li] = Some(spawn_replica(&workdir(li + 1), li + 1, &peers, &log));
    assert!(client.get_timestamp().expect("ts") > t);
    // Wait (bounded) until the restarted replica listens: its signal handlers are in place.
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT.
    while std::net::TcpStream::connect(&peers[li]).is_err() {
        assert!(
            Instant::now() < deadline,
            "the restarted replica never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for slot in procs.0.iter_mut() {
        let mut child = slot.take().expect("replica");
        // SAFETY: signalling our own child process by pid.
        assert_eq!(
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let status = wait_exit(&mut child);
        assert!(
            status.success(),
            "exit status {status:?}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}
