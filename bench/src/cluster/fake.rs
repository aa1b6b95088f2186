//! Fake servers on 127.0.0.1 and the tests that drive them with both drivers: a two-store
//! RESP "cluster" (one key answered -MOVED once, one -TRYAGAIN once) and etcd JSON-gateway
//! members (answers alternately framed by Content-Length and chunked). Every run is bounded
//! in time.

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

/// Runs `f` on a thread; panics if it has not finished within `secs`.
fn bounded<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .expect("test run did not finish in time")
}

/// Accepts connections forever, one handler thread each (the listener thread is leaked).
fn serve(l: TcpListener, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let addr = l.local_addr().unwrap().to_string();
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let handle = handle.clone();
            std::thread::spawn(move || handle(s));
        }
    });
    addr
}

fn args(driver: Driver, clients: usize, ops: u64, keys: u64) -> ClusterArgs {
    ClusterArgs {
        nokv: Vec::new(),
        etcd: Vec::new(),
        clients: vec![clients],
        driver,
        driver_threads: 3,
        ops,
        duration: 30.0,
        warmup: 0.0,
        keys,
        value_size: 16,
        json: None,
        nokv_pids: Vec::new(),
        etcd_pids: Vec::new(),
    }
}

/// Sets SO_RCVBUF of a listener (inherited by the connections it accepts).
fn set_rcvbuf(l: &TcpListener, size: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_RCVBUF");
}

/// A fake two-store NoKV cluster sharing one key space.
struct FakeNokv {
    store: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// Store A answers its first command on this key with -MOVED to store B.
    moved_key: Vec<u8>,
    b_addr: Mutex<String>,
    moved_sent: AtomicBool,
    /// The first command on this key (at either store) is answered -TRYAGAIN.
    tryagain_key: Vec<u8>,
    tryagain_sent: AtomicBool,
    tryagain_key_cmds: AtomicU64,
    /// Commands served by store A, B.
    cmds: [AtomicU64; 2],
}

impl FakeNokv {
    /// Starts stores A and B with keys `0..keys` loaded; returns the cluster and A's address.
    /// `rcvbuf` shrinks the stores' receive buffers (SO_RCVBUF) so that large requests
    /// cannot be written at once.
    fn start(keys: u64, value: &[u8], rcvbuf: Option<i32>) -> (Arc<FakeNokv>, String) {
        let f = Arc::new(FakeNokv {
            store: Mutex::new((0..keys).map(|i| (key_of(i), value.to_vec())).collect()),
            moved_key: key_of(3),
            b_addr: Mutex::new(String::new()),
            moved_sent: AtomicBool::new(false),
            tryagain_key: key_of(5),
            tryagain_sent: AtomicBool::new(false),
            tryagain_key_cmds: AtomicU64::new(0),
            cmds: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let mut addrs = Vec::new();
        for store in 0..2 {
            let f = f.clone();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            if let Some(size) = rcvbuf {
                set_rcvbuf(&l, size);
            }
            addrs.push(serve(l, move |s| f.session(store, s)));
        }
        *f.b_addr.lock().unwrap() = addrs[1].clone();
        (f, addrs.swap_remove(0))
    }

    fn session(&self, store: usize, s: TcpStream) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        // Commands are RESP arrays of bulk strings: the reply parser reads them too.
        while let Ok(Reply::Array(Some(items))) = wire::read_reply(&mut r) {
            let args: Vec<Vec<u8>> = items
                .into_iter()
                .filter_map(|a| match a {
                    Reply::Bulk(Some(b)) => Some(b),
                    _ => None,
                })
                .collect();
            self.cmds[store].fetch_add(1, Ordering::Relaxed);
            let key = args.get(1).cloned().unwrap_or_default();
            if key == self.tryagain_key {
                self.tryagain_key_cmds.fetch_add(1, Ordering::Relaxed);
            }
            let reply = if store == 0
                && key == self.moved_key
                && !self.moved_sent.swap(true, Ordering::Relaxed)
            {
                let to = self.b_addr.lock().unwrap().clone();
                format!("-MOVED {} {to}\r\n", wire::slot(&key)).into_bytes()
            } else if key == self.tryagain_key && !self.tryagain_sent.swap(true, Ordering::Relaxed)
            {
                b"-TRYAGAIN region 1 has no known leader yet\r\n".to_vec()
            } else if args[0] == b"SET" && args.len() == 3 {
                self.store.lock().unwrap().insert(key, args[2].clone());
                b"+OK\r\n".to_vec()
            } else if args[0] == b"GET" {
                match self.store.lock().unwrap().get(&key) {
                    Some(v) => {
                        let mut o = format!("${}\r\n", v.len()).into_bytes();
                        o.extend_from_slice(v);
                        o.extend_from_slice(b"\r\n");
                        o
                    }
                    None => b"$-1\r\n".to_vec(),
                }
            } else {
                b"-ERR unknown command\r\n".to_vec()
            };
            if w.write_all(&reply).is_err() {
                return;
            }
        }
    }

    fn total_cmds(&self) -> u64 {
        self.cmds.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The counts a run must reproduce under either driver: ops, errors, misses, redirects
/// (asserting that there were no errors).
fn counts(r: &PhaseResult) -> (u64, u64, u64, u64) {
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    (r.ops, r.errors, r.misses, r.redirects)
}

#[test]
fn nokv_drivers_follow_moved_retry_tryagain_and_agree() {
    let mut seen = Vec::new();
    for driver in [Driver::Events, Driver::Threads] {
        let value = vec![b'v'; 16];
        let (fake, a_addr) = FakeNokv::start(8, &value, None);
        let slots = Arc::new(SlotMap::new());
        let map = slots.clone();
        let (put, get) = bounded(60, move || {
            let target = Target {
                system: System::Nokv,
                endpoints: vec![a_addr],
                slots: map,
            };
            let a = args(driver, 7, 400, 8);
            let put = run_phase(&target, Op::Put, 7, &a, &value).unwrap();
            let get = run_phase(&target, Op::Get, 7, &a, &value).unwrap();
            (put, get)
        });
        assert_eq!(put.ops, 400, "{driver:?}");
        assert_eq!(get.ops, 400, "{driver:?}");
        assert_eq!(put.redirects, 1, "{driver:?}: -MOVED followed once");
        assert_eq!(get.redirects, 0, "{driver:?}: the slot map was learnt");
        assert_eq!(get.misses, 0);
        assert!(fake.moved_sent.load(Ordering::Relaxed));
        assert!(fake.tryagain_sent.load(Ordering::Relaxed));
        assert!(
            fake.tryagain_key_cmds.load(Ordering::Relaxed) >= 2,
            "{driver:?}: -TRYAGAIN retried"
        );
        assert!(
            fake.cmds[1].load(Ordering::Relaxed) > 0,
            "{driver:?}: store B served the moved slot"
        );
        let b = slots.addrs.read().unwrap().clone();
        assert_eq!(
            Router::new(String::new(), slots.clone()).addr_for(wire::slot(&key_of(3))),
            b[0]
        );
        // Exactly one command per operation, plus the -MOVED and the -TRYAGAIN attempts.
        let total = fake.total_cmds();
        assert_eq!(total, 802, "{driver:?}");
        seen.push((counts(&put), counts(&get), total));
    }
    assert_eq!(seen[0], seen[1], "events vs threads");
}

/// Values larger than a socket buffer: requests are written in parts (EAGAIN, EPOLLOUT)
/// and replies arrive in many reads.
#[test]
fn nokv_events_driver_large_values() {
    let value = vec![b'x'; 8 << 20];
    let (fake, a_addr) = FakeNokv::start(0, &value, Some(16 * 1024));
    let (put, get) = bounded(120, move || {
        let target = Target {
            system: System::Nokv,
            endpoints: vec![a_addr],
            slots: Arc::new(SlotMap::new()),
        };
        let mut a = args(Driver::Events, 4, 12, 2);
        a.driver_threads = 1;
        let put = run_phase(&target, Op::Put, 4, &a, &value).unwrap();
        let get = run_phase(&target, Op::Get, 4, &a, &value).unwrap();
        (put, get)
    });
    assert_eq!(counts(&put).0, 12);
    assert_eq!(counts(&get).0, 12);
    assert_eq!(get.misses, 0);
    let store = fake.store.lock().unwrap();
    assert!(store.values().all(|v| v.len() == 8 << 20 && v[0] == b'x'));
}

/// A store that refuses connections: every operation fails, none hangs, same counts.
#[test]
fn drivers_count_connect_errors_alike() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut seen = Vec::new();
    for driver in [Driver::Events, Driver::Threads] {
        let addr = addr.clone();
        let r = bounded(60, move || {
            let target = Target {
                system: System::Nokv,
                endpoints: vec![addr],
                slots: Arc::new(SlotMap::new()),
            };
            run_phase(&target, Op::Put, 3, &args(driver, 3, 30, 4), b"v").unwrap()
        });
        assert!(
            r.first_error
                .as_deref()
                .is_some_and(|e| e.contains("connect")),
            "{driver:?}: {:?}",
            r.first_error
        );
        seen.push((r.ops, r.errors));
    }
    assert_eq!(seen, [(0, 30), (0, 30)]);
}

/// A fake etcd member: the JSON gateway's put and range, replies alternately framed by
/// Content-Length and chunked.
struct FakeEtcd {
    /// base64 key -> base64 value, shared by the members.
    store: Mutex<HashMap<String, String>>,
    requests: AtomicU64,
}

/// The string value of `"name":"..."` in a flat JSON object.
fn json_field(body: &str, name: &str) -> Option<String> {
    let at = body.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = body[at..].find('"')?;
    Some(body[at..at + len].to_string())
}

impl FakeEtcd {
    fn start(members: usize, keys: u64, value: &[u8]) -> (Arc<FakeEtcd>, Vec<String>) {
        let b64 = |d: &[u8]| {
            let mut o = Vec::new();
            wire::b64_encode(d, &mut o);
            String::from_utf8(o).unwrap()
        };
        let f = Arc::new(FakeEtcd {
            store: Mutex::new((0..keys).map(|i| (b64(&key_of(i)), b64(value))).collect()),
            requests: AtomicU64::new(0),
        });
        let addrs = (0..members)
            .map(|_| {
                let f = f.clone();
                serve(TcpListener::bind("127.0.0.1:0").unwrap(), move |s| {
                    f.session(s)
                })
            })
            .collect();
        (f, addrs)
    }

    fn session(&self, s: TcpStream) {
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        for n in 0.. {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0;
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                return;
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let body = String::from_utf8(body).unwrap();
            let key = json_field(&body, "key").unwrap_or_default();
            let header =
                r#"{"header":{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"}"#;
            let answer = match path.as_str() {
                "/v3/kv/put" => {
                    let v = json_field(&body, "value").unwrap_or_default();
                    self.store.lock().unwrap().insert(key, v);
                    format!("{header}}}")
                }
                "/v3/kv/range" => match self.store.lock().unwrap().get(&key) {
                    Some(v) => format!(
                        r#"{header},"kvs":[{{"key":"{key}","create_revision":"5","mod_revision":"5","version":"1","value":"{v}"}}],"count":"1"}}"#
                    ),
                    None => format!("{header}}}"),
                },
                _ => String::from(r#"{"error":"Not Found","code":5}"#),
            };
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
            let out = if n % 2 == 0 {
                format!("{head}Content-Length: {}\r\n\r\n{answer}", answer.len())
            } else {
                let (a, b) = answer.split_at(answer.len() / 2);
                format!(
                    "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
            };
            if w.write_all(out.as_bytes()).is_err() {
                return;
            }
        }
    }
}

#[test]
fn etcd_drivers_agree() {
    let mut seen = Vec::new();
    for driver in [Driver::Events, Driver::Threads] {
        let value = vec![b'v'; 16];
        let (fake, endpoints) = FakeEtcd::start(2, 8, &value);
        let (put, get) = bounded(60, move || {
            let target = Target {
                system: System::Etcd,
                endpoints,
                slots: Arc::new(SlotMap::new()),
            };
            let a = args(driver, 5, 300, 8);
            let put = run_phase(&target, Op::Put, 5, &a, &value).unwrap();
            let get = run_phase(&target, Op::Get, 5, &a, &value).unwrap();
            (put, get)
        });
        assert_eq!((put.ops, get.ops), (300, 300), "{driver:?}");
        assert_eq!(get.misses, 0, "{driver:?}");
        let requests = fake.requests.load(Ordering::Relaxed);
        assert_eq!(requests, 600, "{driver:?}: one request per operation");
        seen.push((counts(&put), counts(&get), requests));
    }
    assert_eq!(seen[0], seen[1], "events vs threads");
}
