//! System tests: the real `nokv-server` binary on a loopback port, driven with raw RESP2.

mod support;

use support::{run_to_exit, Client, Server, R};

#[test]
fn commands_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(&dir.path().join("data"), &["--cores", "2"]);
    let mut c = s.client();
    assert_eq!(c.cmd("PING"), R::Simple("PONG".into()));
    assert_eq!(c.cmd("SET hello world"), R::ok());
    assert_eq!(c.cmd("GET hello"), R::bulk("world"));
    assert_eq!(c.cmd("GET missing"), R::Nil);
    assert_eq!(c.cmd("INCR n"), R::Int(1));
    assert_eq!(c.cmd("INCRBY n 41"), R::Int(42));
    assert_eq!(c.cmd("EXPIRE hello 100"), R::Int(1));
    match c.cmd("TTL hello") {
        R::Int(t) => assert!((99..=100).contains(&t), "ttl {t}"),
        other => panic!("TTL: {other:?}"),
    }
    assert_eq!(c.cmd("TTL n"), R::Int(-1));
    assert_eq!(c.cmd("HSET h f1 v1 f2 v2"), R::Int(2));
    assert_eq!(c.cmd("HGET h f2"), R::bulk("v2"));
    assert_eq!(c.cmd("HGET h nope"), R::Nil);
    assert_eq!(c.cmd("DEL hello n h nothere"), R::Int(3));
    assert_eq!(c.cmd("GET hello"), R::Nil);
    assert_eq!(c.cmd("EXISTS hello n h"), R::Int(0));
    assert_eq!(
        c.cmd("GET"),
        R::Error("ERR wrong number of arguments for 'get' command".into())
    );
    // A large value travels as one raft entry and comes back whole.
    let big: Vec<u8> = (0..(2 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    c.send(&[b"SET", b"big", &big]);
    assert_eq!(c.read(), R::ok());
    c.send(&[b"GET", b"big"]);
    assert_eq!(c.read(), R::Bulk(big));
    // Pipelined: a read after a write on the same connection sees it.
    c.send(&[b"SET", b"p", b"1"]);
    c.send(&[b"INCR", b"p"]);
    c.send(&[b"GET", b"p"]);
    assert_eq!(c.read(), R::ok());
    assert_eq!(c.read(), R::Int(2));
    assert_eq!(c.read(), R::bulk("2"));
}

#[test]
fn keys_on_every_core_are_reachable_from_any_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(&dir.path().join("data"), &["--cores", "2"]);
    // 200 keys cover all 8 regions (4 per core); 16 connections land on both cores
    // (SO_REUSEPORT spreads them) but every one must see every key.
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    let mut w = s.client();
    for k in &keys {
        assert_eq!(w.cmd(&format!("SET {k} v-{k}")), R::ok());
    }
    for _ in 0..16 {
        let mut c = s.client();
        for k in keys.iter().step_by(7) {
            assert_eq!(c.cmd(&format!("GET {k}")), R::bulk(&format!("v-{k}")));
        }
        let args: Vec<&[u8]> = std::iter::once(&b"MGET"[..])
            .chain(keys.iter().map(|k| k.as_bytes()))
            .collect();
        c.send(&args);
        let R::Array(items) = c.read() else {
            panic!("MGET array")
        };
        assert_eq!(items.len(), keys.len());
        for (k, v) in keys.iter().zip(items) {
            assert_eq!(v, R::bulk(&format!("v-{k}")));
        }
    }
    assert_eq!(w.cmd("DBSIZE"), R::Int(200));
    // SCAN walks every region of both cores exactly once.
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let R::Array(parts) = w.cmd(&format!("SCAN {cursor} COUNT 50")) else {
            panic!("scan")
        };
        let R::Bulk(c) = &parts[0] else {
            panic!("cursor")
        };
        cursor = String::from_utf8_lossy(c).into_owned();
        if let R::Array(items) = &parts[1] {
            for i in items {
                if let R::Bulk(k) = i {
                    seen.push(String::from_utf8_lossy(k).into_owned());
                }
            }
        }
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(seen, want);
}

#[test]
fn fifty_clients_incrementing_one_key_count_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(&dir.path().join("data"), &["--cores", "2"]);
    const CLIENTS: usize = 50;
    const EACH: i64 = 40;
    let addr = s.addr.clone();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&addr);
                for _ in 0..EACH {
                    match c.cmd("INCR counter") {
                        R::Int(_) => {}
                        other => panic!("INCR: {other:?}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut c = s.client();
    assert_eq!(
        c.cmd("GET counter"),
        R::bulk(&(CLIENTS as i64 * EACH).to_string())
    );
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--cores", "2", "--durability", "sync"]);
    let mut c = s.client();
    for i in 0..300 {
        assert_eq!(c.cmd(&format!("SET k{i} v{i}")), R::ok());
    }
    for _ in 0..25 {
        assert!(matches!(c.cmd("INCR hits"), R::Int(_)));
    }
    assert_eq!(c.cmd("HSET user name ada"), R::Int(1));
    s.kill();

    let s = Server::start(&data, &["--cores", "2"]);
    let mut c = s.client();
    for i in 0..300 {
        assert_eq!(
            c.cmd(&format!("GET k{i}")),
            R::bulk(&format!("v{i}")),
            "k{i}"
        );
    }
    assert_eq!(c.cmd("GET hits"), R::bulk("25"));
    assert_eq!(c.cmd("HGET user name"), R::bulk("ada"));
    // The log continues: writes after the restart apply on top.
    assert_eq!(c.cmd("INCR hits"), R::Int(26));
}

#[test]
fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--cores", "2"]);
    let mut c = s.client();
    for i in 0..50 {
        assert_eq!(c.cmd(&format!("SET g{i} {i}")), R::ok());
    }
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    let s = Server::start(&data, &[]);
    let mut c = s.client();
    assert_eq!(c.cmd("GET g49"), R::bulk("49"));
    assert_eq!(c.cmd("DBSIZE"), R::Int(50));
    // A workdir made for 2 cores refuses another count, with the fix in the message.
    drop(c);
    let status = s.terminate();
    assert!(status.success());
    let (status, err) = run_to_exit(&data, &["--cores", "1", "--redis-addr", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(err.contains("start with --cores 2"), "{err}");
}

#[test]
fn a_second_server_on_the_same_workdir_or_port_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--cores", "1"]);
    let (status, err) = run_to_exit(&data, &["--redis-addr", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(err.contains("is in use by another nokv-server"), "{err}");
    let other = dir.path().join("other");
    let (status, err) = run_to_exit(&other, &["--redis-addr", &s.addr, "--cores", "1"]);
    assert!(!status.success());
    assert!(err.contains("already in use"), "{err}");
    assert!(
        !other.join("STORE").exists(),
        "nothing is bootstrapped when the port is taken"
    );
    // The first server is unaffected.
    let mut c = s.client();
    assert_eq!(c.cmd("PING"), R::Simple("PONG".into()));
}

/// Thread name -> nice values of process `pid`'s threads (`/proc/<pid>/task/*/stat`).
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After "(comm)": field 3 (state) onwards; nice is field 19.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if let Some(nice) = fields.get(16).and_then(|n| n.parse().ok()) {
            out.push((stat[open + 1..close].to_string(), nice));
        }
    }
    out
}

#[test]
fn a_toml_config_file_sets_the_server_up_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let conf = dir.path().join("nokv-server.toml");
    std::fs::write(
        &conf,
        "cores = 2\ndurability = \"relaxed\"\nmemory_limit = \"512MiB\"\nbackground_nice = 7\n",
    )
    .expect("write config");
    let s = Server::start(&data, &["--config", conf.to_str().expect("utf8")]);
    let mut c = s.client();
    assert_eq!(c.cmd("SET k v"), R::ok());
    // The engines' flush and compaction threads run at the configured nice value, the
    // executors and their blocking pools as the process was started (this test's value).
    let mine = thread_nices(std::process::id())
        .first()
        .map(|t| t.1)
        .expect("own nice value");
    let deadline = std::time::Instant::now() + support::LIMIT;
    let threads = loop {
        let threads = thread_nices(s.child.id());
        let background: Vec<_> = threads
            .iter()
            .filter(|(n, _)| n == "nokv-flush" || n.starts_with("nokv-compact"))
            .collect();
        if background.len() == 4 && background.iter().all(|t| t.1 == 7.max(mine)) {
            break threads;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "background threads not at nice 7: {threads:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let executors: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("core-"))
        .collect();
    // Each core's executor and its blocking pool ("core-<n>-<id>").
    assert!(executors.len() >= 2, "{threads:?}");
    assert!(executors.iter().all(|t| t.1 == mine), "{threads:?}");
    drop(c);
    assert!(s.terminate().success());

    // A wrong type and an unknown key: the error names the file, the line and the key.
    std::fs::write(&conf, "cores = 2\nmemory_limit = true\n").expect("write config");
    let (status, err) = run_to_exit(&data, &["--config", conf.to_str().expect("utf8")]);
    assert!(!status.success());
    assert!(
        err.contains("nokv-server.toml, line 2") && err.contains("memory_limit"),
        "{err}"
    );
    std::fs::write(&conf, "cores = 2\n\nmax-clients = 5\n").expect("write config");
    let (status, err) = run_to_exit(&data, &["--config", conf.to_str().expect("utf8")]);
    assert!(!status.success());
    assert!(
        err.contains("line 3") && err.contains("max-clients") && err.contains("max_clients"),
        "{err}"
    );
}
