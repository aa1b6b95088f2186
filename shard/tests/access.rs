//! Access control of the real `nokv-server`. Protected mode, bound to every interface: without a password,
//! a client from a non-loopback address gets `-DENIED` and is disconnected (counted in
//! INFO's `rejected_connections`) while loopback clients are served; with `--requirepass`
//! or `--protected-mode no` the same client is served (after AUTH with a password).
//! `nokv-redis` does the same. Skips with a notice when the machine has no non-loopback
//! IPv4 address. Named users (`--user NAME:PASSWORD[:readonly]`): AUTH with the name,
//! the default user off, a read-only user refused writes and `NOKV.*` with `-NOPERM`.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::time::Duration;
use support::{encode, info_field, Client, Server, R};

/// This machine's address toward other hosts (no packet is sent), if it has one.
fn outward_ip() -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("203.0.113.1:9").ok()?;
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// Starts a server on 0.0.0.0 with `extra` flags: (server, its port).
fn start_everywhere(dir: &std::path::Path, extra: &[&str]) -> (Server, u16) {
    let port = support::free_port();
    let addr = format!("0.0.0.0:{port}");
    let mut args = vec!["--cores", "1"];
    args.extend_from_slice(extra);
    (Server::start_on(dir, &addr, &args), port)
}

/// Sends PING from a connection to `ip:port`; everything the server sent until it closed
/// the connection or a second passed.
fn ping_from(ip: Ipv4Addr, port: u16) -> String {
    let mut s = TcpStream::connect((ip, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let _ = s.write_all(&encode(&[b"PING"]));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: at most 64 reads of a second each.
    for _ in 0..64 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn protected_mode_denies_other_hosts_without_a_password() {
    let Some(ip) = outward_ip() else {
        println!("skipped: no non-loopback IPv4 address on this machine");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, port) = start_everywhere(&dir.path().join("data"), &[]);
    let denied = ping_from(ip, port);
    assert!(
        denied.starts_with("-DENIED ")
            && denied.contains("--requirepass")
            && denied.ends_with("\r\n"),
        "a client from {ip}: {denied:?}"
    );
    // Loopback clients are served, and see the refusal counted.
    let mut local = Client::connect(&format!("127.0.0.1:{port}"));
    assert_eq!(local.cmd("PING"), R::Simple("PONG".into()));
    let rejected: u64 = info_field(&mut local, "stats", "rejected_connections")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(rejected >= 1, "rejected_connections = {rejected}");
    drop(server);
}

#[test]
fn a_password_or_protected_mode_off_lets_other_hosts_in() {
    let Some(ip) = outward_ip() else {
        println!("skipped: no non-loopback IPv4 address on this machine");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, port) = start_everywhere(&dir.path().join("pass"), &["--requirepass", "s3cret"]);
    let got = ping_from(ip, port);
    assert!(
        got.starts_with("-NOAUTH"),
        "with a password, before AUTH: {got:?}"
    );
    let mut c =
        Client::try_connect(&format!("{ip}:{port}"), Duration::from_secs(5)).expect("connect");
    assert_eq!(c.cmd("AUTH s3cret"), R::ok());
    assert_eq!(c.cmd("PING"), R::Simple("PONG".into()));
    drop((c, server));

    let (server, port) = start_everywhere(&dir.path().join("open"), &["--protected-mode", "no"]);
    assert_eq!(ping_from(ip, port), "+PONG\r\n");
    drop(server);
}

#[test]
fn a_bad_protected_mode_value_is_refused_with_the_choices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, stderr) =
        support::run_to_exit(&dir.path().join("data"), &["--protected-mode", "maybe"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--protected-mode") && stderr.contains("yes or no"),
        "{stderr}"
    );
}

#[test]
fn nokv_redis_protects_itself_the_same_way() {
    let Some(ip) = outward_ip() else {
        println!("skipped: no non-loopback IPv4 address on this machine");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (mode, served) in [("yes", false), ("no", true)] {
        let port = support::free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nokv-redis"));
        cmd.args([
            "--coordinator",
            &format!("127.0.0.1:{}", support::free_port()),
        ])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--protected-mode", mode]);
        let gw = Server::launch(cmd, dir.path().join(format!("nokv-redis-{mode}.log")));
        let got = ping_from(ip, port);
        if served {
            assert_eq!(got, "+PONG\r\n", "--protected-mode no");
        } else {
            assert!(got.starts_with("-DENIED "), "--protected-mode yes: {got:?}");
        }
        let mut local = Client::connect(&format!("127.0.0.1:{port}"));
        assert_eq!(local.cmd("PING"), R::Simple("PONG".into()));
        drop((local, gw));
    }
}

#[test]
fn named_users_log_in_and_a_read_only_one_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, port) = start_everywhere(
        &dir.path().join("data"),
        &["--user", "app:app-pw", "--user", "dash:dash-pw:readonly"],
    );
    let addr = format!("127.0.0.1:{port}");
    let mut anon = Client::connect(&addr);
    assert!(matches!(anon.cmd("GET k"), R::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(anon.cmd("AUTH app wrong"), R::Error(e) if e.starts_with("WRONGPASS")));
    let mut app = Client::connect(&addr);
    assert_eq!(app.cmd("AUTH app app-pw"), R::ok());
    assert_eq!(app.cmd("SET k v"), R::ok());
    assert!(matches!(app.cmd("NOKV.REGION LIST"), R::Array(_)));
    let mut dash = Client::connect(&addr);
    assert_eq!(dash.cmd("AUTH dash dash-pw"), R::ok());
    assert_eq!(dash.cmd("GET k"), R::bulk("v"));
    assert_eq!(
        dash.cmd("SET k w"),
        R::Error("NOPERM User dash has no permissions to run the 'set' command".into())
    );
    assert!(matches!(dash.cmd("NOKV.REGION LIST"), R::Error(e) if e.starts_with("NOPERM")));
    assert_eq!(app.cmd("GET k"), R::bulk("v"));
    // Users are a password: protected mode lets other hosts in (to log in).
    if let Some(ip) = outward_ip() {
        let got = ping_from(ip, port);
        assert!(got.starts_with("-NOAUTH"), "from {ip}: {got:?}");
    }
    drop(server);
}

#[test]
fn a_cluster_whose_only_passwords_are_users_still_checks_its_replicas() {
    use support::cluster::{id_at, start_coordinator, start_stores_args, store_specs, OP_BOUND};
    let dir = tempfile::tempdir().expect("tempdir");
    let (coord, _coord_server, coord_addr) = start_coordinator(&dir.path().join("coord"));
    let specs = store_specs(dir.path());
    let users = ["--user", "ops:ops-pw", "--user", "ro:ro-pw:readonly"];
    let _servers = start_stores_args(&specs, &coord_addr, &users);
    let ids: Vec<u64> = specs.iter().map(|s| id_at(&coord, &s.redis)).collect();
    let login = |addr: &str| {
        let mut c = Client::connect(addr);
        assert_eq!(c.cmd("AUTH ops ops-pw"), R::ok());
        c
    };
    // The consistency check asks the other stores' Redis ports for their hashes: it must
    // log in as the first user allowed to (there is no requirepass).
    let deadline = std::time::Instant::now() + OP_BOUND;
    let mut last = R::Nil;
    while std::time::Instant::now() < deadline {
        let R::Array(lines) = login(&specs[0].redis).cmd("NOKV.REGION LIST") else {
            panic!("NOKV.REGION LIST");
        };
        let led = lines.iter().find_map(|l| {
            let R::Bulk(b) = l else { return None };
            let line = String::from_utf8_lossy(b).into_owned();
            let value = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k)?.strip_prefix('=').map(str::to_string))
            };
            let leader: u64 = value("leader_store")?.parse().ok()?;
            let at = ids.iter().position(|&i| i == leader)?;
            Some((value("region")?, at))
        });
        if let Some((region, at)) = led {
            last = login(&specs[at].redis).cmd(&format!("NOKV.REGION CHECK {region}"));
            if matches!(&last, R::Simple(s) if s.starts_with("MATCH")) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no consistency check matched in time; last answer: {last:?}");
}
