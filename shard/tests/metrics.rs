//! The Prometheus endpoint of the real `nokv-server`: command counters rise,
//! every metric docs/metrics.md names is exported, and bad HTTP does not hurt
//! the server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{run_to_exit, sample, Server, LIMIT, R};

fn start(dir: &std::path::Path) -> Server {
    Server::start(
        &dir.join("data"),
        &["--cores", "2", "--metrics-addr", "127.0.0.1:0"],
    )
}

/// Metric names in the first column of docs/metrics.md's tables.
fn documented_metrics() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path).expect("read docs/metrics.md");
    text.lines()
        .filter_map(|l| l.strip_prefix("| `nokv_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("nokv_{name}"))
        .collect()
}

#[test]
fn command_counters_rise_with_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path());
    assert!(s.metrics.is_some(), "no `metrics on` line");
    let mut c = s.client();
    for i in 0..20 {
        assert_eq!(c.cmd(&format!("SET k{i} v{i}")), R::ok());
        assert_eq!(c.cmd(&format!("GET k{i}")), R::bulk(&format!("v{i}")));
    }
    assert!(matches!(c.cmd("NOSUCHCOMMAND"), R::Error(_)));
    let first = s.scrape();
    for family in [
        "# TYPE nokv_commands_total counter",
        "# TYPE nokv_command_duration_seconds histogram",
        "# TYPE nokv_core_connections gauge",
        "# TYPE nokv_raft_poll_rounds_total counter",
        "# TYPE nokv_engine_memtable_bytes gauge",
        "# TYPE nokv_memory_budget_bytes gauge",
    ] {
        assert!(first.contains(family), "{family} missing:\n{first}");
    }
    let gets = |text: &str| sample(text, "nokv_commands_total", "command=\"get\"").unwrap_or(0.0);
    assert!(gets(&first) >= 20.0, "{first}");
    assert!(
        sample(&first, "nokv_commands_total", "command=\"set\"").unwrap_or(0.0) >= 20.0,
        "{first}"
    );
    assert_eq!(
        sample(&first, "nokv_command_errors_total", "command=\"unknown\""),
        Some(1.0)
    );
    // Histogram buckets are cumulative; the +Inf bucket counts every GET.
    assert!(
        sample(
            &first,
            "nokv_command_duration_seconds_bucket",
            "command=\"get\",le=\"+Inf\""
        )
        .unwrap_or(0.0)
            >= 20.0,
        "{first}"
    );
    for core in ["0", "1"] {
        let label = format!("core=\"{core}\"");
        assert!(
            sample(&first, "nokv_engine_memtable_bytes", &label).is_some(),
            "engine figures of core {core}:\n{first}"
        );
        assert!(sample(&first, "nokv_raft_regions", &label).is_some());
    }
    // Every write was proposed and applied on some core.
    let sum = |text: &str, name: &str| -> f64 {
        ["0", "1"]
            .iter()
            .filter_map(|c| sample(text, name, &format!("core=\"{c}\"")))
            .sum()
    };
    assert!(sum(&first, "nokv_raft_proposals_total") >= 20.0);
    assert!(sum(&first, "nokv_raft_applied_entries_total") >= 20.0);
    assert_eq!(
        sample(&first, "nokv_memory_limit_bytes", ""),
        Some((1u64 << 30) as f64)
    );
    for _ in 0..5 {
        assert_eq!(c.cmd("GET k1"), R::bulk("v1"));
    }
    let second = s.scrape();
    assert!(gets(&second) >= gets(&first) + 5.0);
}

#[test]
fn every_documented_metric_is_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path());
    let mut c = s.client();
    for i in 0..50 {
        assert_eq!(c.cmd(&format!("SET key:{i} value")), R::ok());
        assert_eq!(c.cmd(&format!("GET key:{i}")), R::bulk("value"));
    }
    let names = documented_metrics();
    assert!(names.len() > 50, "docs table parse found only {names:?}");
    let scrape = s.scrape();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !scrape.contains(&format!("# TYPE {n} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not exported: {missing:?}\n{scrape}"
    );
}

#[test]
fn bad_http_requests_do_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = start(dir.path());
    let addr = s.metrics.clone().expect("metrics address");
    assert_eq!(s.http(b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(s.http(b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(s.http(b"\x00\x01\x02 garbage\r\n\r\n").0, 400);
    assert_eq!(s.http(b"GET /metrics\r\n\r\n").0, 400);
    // HEAD: headers only.
    let (status, body) = s.http(b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    // A huge request head (1 MiB, no end): refused after 8 KiB, the rest ignored.
    {
        let mut h = TcpStream::connect(&addr).expect("connect");
        h.set_read_timeout(Some(LIMIT)).expect("timeout");
        h.set_write_timeout(Some(LIMIT)).expect("timeout");
        let junk = vec![b'A'; 1 << 20];
        // The server stops reading early, so this write may fail: that is fine.
        let _ = h.write_all(&junk);
        let mut out = Vec::new();
        let _ = h.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{text}"
        );
    }
    // A client that connects and leaves, and one that sends half a request and stalls.
    drop(TcpStream::connect(&addr).expect("connect"));
    let mut stalled = TcpStream::connect(&addr).expect("connect");
    stalled.write_all(b"GET /metr").expect("half a request");
    // The stalled one times out on the server's side; the next scrape waits at most that.
    let body = s.scrape();
    assert!(body.contains("# TYPE nokv_commands_total") || body.contains("nokv_"));
    drop(stalled);
    // The server still serves Redis and metrics.
    let mut c = s.client();
    assert_eq!(c.cmd("PING"), R::Simple("PONG".into()));
    assert!(s.scrape().contains("nokv_commands_total{command=\"ping\"}"));
    // Bounded: at most 20 quick reconnects, each answered.
    for _ in 0..20 {
        let mut t = TcpStream::connect(&addr).expect("connect");
        t.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        t.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("send");
        let mut out = String::new();
        t.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
}

#[test]
fn a_taken_metrics_address_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (status, stderr) = run_to_exit(
        &dir.path().join("data"),
        &[
            "--cores",
            "1",
            "--redis-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            &addr,
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("address {addr} is already in use")),
        "{stderr}"
    );
}
