//! The memory quota of the real `nokv-server`: a client that does not read its
//! replies, and clients whose buffers pass the store's client share, are
//! disconnected while everyone else keeps being served, and the process stays
//! within a bound derived from `--memory-limit`.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::{encode, info_field, read_until_closed, sample, wait_info, Client, Server, LIMIT, R};

const MIB: u64 = 1 << 20;

#[test]
fn a_client_that_never_reads_is_disconnected_and_others_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 256 * MIB;
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--cores",
            "2",
            "--memory-limit",
            "256MiB",
            "--client-output-buffer-limit",
            "4MiB",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let mut a = s.client();
    let big: Vec<u8> = (0..MIB as usize).map(|i| b'a' + (i % 26) as u8).collect();
    a.send(&[b"SET", b"big", &big]);
    assert_eq!(a.read(), R::ok());
    assert_eq!(
        info_field(&mut a, "memory", "maxmemory"),
        Some(limit.to_string())
    );

    // 2000 pipelined GETs of a 1 MiB value (2 GiB of replies), never read.
    let mut flood = TcpStream::connect(&s.addr).expect("connect");
    let requests: Vec<u8> = (0..2000).flat_map(|_| encode(&[b"GET", b"big"])).collect();
    flood.set_write_timeout(Some(LIMIT)).expect("timeout");
    // The server may close before it has read everything: a failed write is fine.
    let _ = flood.write_all(&requests);

    let evicted = wait_info(
        &mut a,
        "stats",
        "client_output_buffer_limit_disconnections",
        |v| v >= 1,
    );
    assert_eq!(evicted, 1, "the flooding client was not disconnected");
    assert!(
        read_until_closed(&mut flood, 64 << 20).is_some(),
        "the flooding connection stayed open"
    );
    // Everyone else is served, large replies included.
    assert_eq!(a.cmd("PING"), R::Simple("PONG".into()));
    assert_eq!(a.cmd("SET small 1"), R::ok());
    a.send(&[b"GET", b"big"]);
    assert_eq!(a.read(), R::Bulk(big));
    let mut b = s.client();
    assert_eq!(b.cmd("GET small"), R::bulk("1"));

    let scrape = s.scrape();
    assert_eq!(
        sample(
            &scrape,
            "nokv_clients_evicted_total",
            "reason=\"output_buffer\""
        ),
        Some(1.0),
        "{scrape}"
    );
    // The peak resident size stays within the quota plus the process's fixed cost
    // (code, executors, io_uring rings); 2 GiB of replies would be far above it.
    let peak = s.proc_status_bytes("VmHWM");
    let bound = limit + 256 * MIB;
    assert!(
        peak < bound,
        "peak RSS {} MiB is over {} MiB",
        peak / MIB,
        bound / MIB
    );
}

#[test]
fn clients_over_the_memory_share_are_evicted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 64 MiB over 2 cores: clients share 16 MiB; no per-client limit.
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--cores",
            "2",
            "--memory-limit",
            "64MiB",
            "--client-output-buffer-limit",
            "0",
        ],
    );
    let mut watch = s.client();
    assert_eq!(
        info_field(&mut watch, "memory", "nokv_clients_budget"),
        Some((16 * MIB).to_string())
    );
    let used = |c: &mut Client| -> u64 {
        info_field(c, "memory", "nokv_client_buffers_used")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    let evictions = |c: &mut Client| -> u64 {
        info_field(c, "stats", "evicted_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    // Clients each start a 3 MiB SET and send 2 MiB of it, one after the other,
    // until the server evicts one (at most 12 clients: 24 MiB > the share).
    let value_len = 3 * MIB as usize;
    let part = vec![b'x'; 2 * MIB as usize];
    let mut clients: Vec<TcpStream> = Vec::new();
    let mut evicted = 0;
    for i in 0..12 {
        let before = used(&mut watch);
        let mut c = TcpStream::connect(&s.addr).expect("connect");
        c.set_write_timeout(Some(LIMIT)).expect("timeout");
        let head = format!("*3\r\n$3\r\nSET\r\n$4\r\nkey{i}\r\n${value_len}\r\n");
        // A write to a connection the server closed may fail: that is the point.
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(&part);
        clients.push(c);
        // Until the server buffers this client's 2 MiB or evicts someone (bounded).
        let deadline = Instant::now() + LIMIT;
        loop {
            evicted = evictions(&mut watch);
            if evicted > 0 || used(&mut watch) >= before + 2 * MIB || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if evicted > 0 {
            break;
        }
    }
    assert!(evicted >= 1, "no client was evicted");
    assert!(used(&mut watch) <= 16 * MIB);
    // The connection within its share kept being served all along (`watch`), and
    // once the partial requests go away their memory comes back for new clients.
    drop(clients);
    let deadline = Instant::now() + LIMIT;
    while used(&mut watch) > 2 * MIB && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = s.client();
    let value = vec![b'v'; value_len];
    c.send(&[b"SET", b"whole", &value]);
    assert_eq!(c.read(), R::ok());
    assert_eq!(c.cmd("STRLEN whole"), R::Int(value_len as i64));
    assert_eq!(watch.cmd("PING"), R::Simple("PONG".into()));
}
