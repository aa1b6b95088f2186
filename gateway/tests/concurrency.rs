//! 50 client threads INCR one key through the test server: the final value is exact
//! (read-modify-write happens at apply time, one command at a time).

#[path = "support/server.rs"]
mod server;

use nokv_gateway::session::Config;
use nokv_gateway::store::DbStore;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

const CLIENTS: usize = 50;
const INCRS_PER_CLIENT: usize = 200;

fn read_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    // Bounded by the read timeout: each read either adds bytes or fails.
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..i + 2).collect();
            return String::from_utf8_lossy(&line[..i]).into_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn fifty_clients_incr_one_key_exactly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let clock: Arc<dyn nokv::clock::Clock> = Arc::new(nokv::clock::SystemClock);
    let opts = nokv::Options {
        clock: clock.clone(),
        durability: nokv::Durability::Relaxed,
        ..nokv::Options::default()
    };
    let db = nokv::Db::open(dir.path(), opts).unwrap_or_else(|e| panic!("{e}"));
    let store = Arc::new(DbStore::new(db, clock));
    let server = server::Server::start(store, Config::default(), 0, CLIENTS + 2)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = server.addr();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                let mut buf = Vec::new();
                let mut last = 0i64;
                for _ in 0..INCRS_PER_CLIENT {
                    s.write_all(b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n")
                        .unwrap_or_else(|e| panic!("{e}"));
                    let line = read_line(&mut s, &mut buf);
                    let v: i64 = line
                        .strip_prefix(':')
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("bad reply {line}"));
                    assert!(v > last, "INCR replies grow per client");
                    last = v;
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .unwrap_or_else(|_| panic!("client thread panicked"));
    }
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"*2\r\n$3\r\nGET\r\n$7\r\ncounter\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let header = read_line(&mut s, &mut buf);
    let value = read_line(&mut s, &mut buf);
    assert!(header.starts_with('$'), "{header}");
    assert_eq!(value, (CLIENTS * INCRS_PER_CLIENT).to_string());
}
