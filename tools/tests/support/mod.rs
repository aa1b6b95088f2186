//! Shared by the tool's scenarios: an in-process coordinator on 127.0.0.1, the built
//! `nokv-tool` run with a bounded wait, a fake store Redis port speaking RESP2, and ports
//! with nothing listening.

#![allow(dead_code)]

use nokv_coordinator::{Config, Coordinator, ManualClock, Server, ServerOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The cluster id of the test coordinators.
pub const CLUSTER: u64 = 7;
/// Longest a tool run or a fake server may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A coordinator served on 127.0.0.1 with a clock the test steps.
pub struct TestCoordinator {
    /// The server (stops when dropped).
    pub server: Server,
    /// The service behind it.
    pub coord: Arc<Coordinator>,
    /// Its clock.
    pub clock: Arc<ManualClock>,
    /// Its workdir.
    pub dir: tempfile::TempDir,
}

impl TestCoordinator {
    /// A fresh coordinator of cluster [`CLUSTER`] (stores go down after 30 s of its clock).
    pub fn start() -> TestCoordinator {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let mut config = Config::new(dir.path(), CLUSTER);
        config.clock = clock.clone();
        config.store_down_after = Duration::from_secs(30);
        let coord = Arc::new(Coordinator::open(config).expect("open coordinator"));
        // The listener is bound (port 0) and kept by the server: no other socket can take it.
        let server = Server::start(coord.clone(), "127.0.0.1:0", ServerOptions::default())
            .expect("start coordinator server");
        TestCoordinator {
            server,
            coord,
            clock,
            dir,
        }
    }

    /// Its address, for --coordinator.
    pub fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }

    /// A client of it.
    pub fn client(&self) -> nokv_coordinator::CoordClient {
        nokv_coordinator::CoordClient::new(
            vec![self.addr()],
            CLUSTER,
            nokv_coordinator::ClientOptions::default(),
        )
        .expect("client")
    }
}

/// What a run of the tool printed and how it ended.
#[derive(Debug)]
pub struct Out {
    /// Exit status (None: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// Asserts a failure reported as exactly one line on stderr, no panic, nothing on
    /// stdout; returns the line.
    pub fn one_line_failure(&self) -> &str {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure: {self:?}"
        );
        assert!(
            !self.stderr.contains("panicked"),
            "the tool panicked: {self:?}"
        );
        assert_eq!(self.stderr.lines().count(), 1, "not one line: {self:?}");
        assert!(
            self.stderr.starts_with("nokv-tool: error: ") && self.stderr.contains("; fix: "),
            "not an error line with a fix: {self:?}"
        );
        assert_eq!(self.stdout, "", "a failure printed output: {self:?}");
        self.stderr.trim_end()
    }
}

/// Runs the built `nokv-tool` with `args`; fails the test if it runs longer than [`WAIT`].
pub fn tool(args: &[&str]) -> Out {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nokv-tool"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nokv-tool");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + WAIT;
    // Bounded by WAIT: the child is killed past it.
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nokv-tool {args:?} still running after {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A loopback port with nothing listening on it, below the kernel's ephemeral range (so
/// that no outgoing connection takes it meanwhile).
pub fn dead_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > 12_000)
        .unwrap_or(32_768);
    let span = low - 10_000;
    let mut candidate = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        candidate = (candidate + 1) % span;
        let port = (10_000 + candidate) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {low}");
}

/// A reply of the fake store: bytes to write, or silence (the connection is held open).
#[derive(Debug, Clone)]
pub enum Answer {
    /// Write these bytes.
    Reply(&'static [u8]),
    /// Write these bytes (built at run time, e.g. with another fake's address).
    Owned(Vec<u8>),
    /// Write nothing; keep the connection until the client leaves.
    Silence,
}

/// A fake store Redis port: accepts one connection and answers its commands in order with
/// `answers`; the join handle gives back the commands it received.
pub struct FakeStore {
    /// Its address.
    pub addr: String,
    /// Set: stop waiting for a connection (one already queued is still served).
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Vec<String>>>,
}

impl FakeStore {
    /// Listens on 127.0.0.1 (a port the listener keeps) and serves one connection.
    pub fn start(answers: Vec<Answer>) -> FakeStore {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake store");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            // Bounded by WAIT and by `stop`.
            let stream = loop {
                let last_look = stopped.load(Ordering::SeqCst);
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if !last_look && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return Vec::new(),
                }
            };
            serve(stream, answers, deadline)
        });
        FakeStore { addr, stop, handle }
    }

    /// The commands it received (waits for its connection to end, at most [`WAIT`]).
    pub fn commands(self) -> Vec<Vec<String>> {
        self.handle.join().expect("fake store thread")
    }

    /// The commands it received, for a store the tool may not have connected to: call once
    /// the tool has exited (a connection it made is queued by then).
    pub fn commands_if_any(self) -> Vec<Vec<String>> {
        self.stop.store(true, Ordering::SeqCst);
        self.commands()
    }
}

fn serve(stream: TcpStream, answers: Vec<Answer>, deadline: Instant) -> Vec<Vec<String>> {
    stream.set_nonblocking(false).expect("blocking");
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .expect("read timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    let mut got = Vec::new();
    let mut answers = answers.into_iter();
    // Bounded: by the read timeout, and each turn reads one command.
    while let Some(cmd) = read_command(&mut reader) {
        got.push(cmd);
        match answers.next() {
            Some(Answer::Reply(bytes)) => writer.write_all(bytes).expect("reply"),
            Some(Answer::Owned(bytes)) => writer.write_all(&bytes).expect("reply"),
            Some(Answer::Silence) | None => {}
        }
    }
    got
}

/// One RESP array of bulk strings (None at the end of the stream or on junk).
fn read_command(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let n: usize = line.trim_end().strip_prefix('*')?.parse().ok()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut data = vec![0u8; len + 2];
        r.read_exact(&mut data).ok()?;
        data.truncate(len);
        out.push(String::from_utf8_lossy(&data).into_owned());
    }
    Some(out)
}

/// The 2-byte big-endian bound of hash slot `s`.
pub fn slot_key(s: u16) -> Vec<u8> {
    s.to_be_bytes().to_vec()
}
