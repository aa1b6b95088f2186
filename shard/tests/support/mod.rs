//! Starting the real `nokv-server` binary (or, in `inproc`, a node in this process) and
//! talking raw RESP2 to it.
#![allow(dead_code)]

pub mod cluster;
pub mod inproc;
pub mod netns;
pub mod regions;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for single replies and waits (a failure bound, not a timing assumption).
pub const LIMIT: Duration = Duration::from_secs(30);

/// Upper bound for a server's start-up: recovery syncs files, which a machine busy with
/// other IO can slow far beyond a reply (one start took 35 s during a parallel build).
pub const START_LIMIT: Duration = Duration::from_secs(90);

/// A free loopback port for a server a test starts (and may restart on the same port):
/// below the kernel's ephemeral range, so that no outgoing connection (the stores'
/// transport, clients) can take it between this check and the bind, or while the server
/// is down between a kill and its restart; never handed out twice in one process.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > 12_000)
        .unwrap_or(32_768);
    // Spread over the range from a per-process start, so that test binaries run one after
    // another do not walk the same ports.
    let span = low - 10_000;
    let mut candidate = (std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()))
        % span;
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..span {
        candidate = (candidate + 1) % span;
        let port = (10_000 + candidate) as u16;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    panic!("no free loopback port below {low}");
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stderr: PathBuf,
    /// The metrics endpoint, when started with `--metrics-addr`.
    pub metrics: Option<String>,
    /// The store-to-store RPC address, when started with `--rpc-addr`.
    pub rpc: Option<String>,
}

/// The server's result when it refuses to start: (exit status, stderr).
pub fn run_to_exit(workdir: &Path, extra: &[&str]) -> (ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nokv-server"))
        .arg("--workdir")
        .arg(workdir)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run nokv-server");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the server with extra environment variables until it exits on its own (at most
/// `LIMIT`; then it is killed and None returned): (exit status, stderr).
pub fn run_env_to_exit(
    workdir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Option<(ExitStatus, String)> {
    std::fs::create_dir_all(workdir).expect("workdir");
    let stderr = workdir.with_extension("stderr.log");
    let log = std::fs::File::create(&stderr).expect("stderr log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nokv-server"))
        .arg("--workdir")
        .arg(workdir)
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn nokv-server");
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    status.map(|s| (s, std::fs::read_to_string(&stderr).unwrap_or_default()))
}

impl Server {
    /// Starts a server on a free loopback port and waits for its "listening on" line.
    pub fn start(workdir: &Path, extra: &[&str]) -> Server {
        Server::start_on(workdir, "127.0.0.1:0", extra)
    }

    /// Starts a server on a free loopback port with extra environment variables.
    pub fn start_env(workdir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with(workdir, "127.0.0.1:0", extra, env)
    }

    /// Starts a server on `addr`.
    pub fn start_on(workdir: &Path, addr: &str, extra: &[&str]) -> Server {
        Server::start_with(workdir, addr, extra, &[])
    }

    fn start_with(workdir: &Path, addr: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(workdir).expect("workdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nokv-server"));
        cmd.arg("--workdir")
            .arg(workdir)
            .args(["--redis-addr", addr])
            .args(extra)
            .envs(env.iter().copied());
        Server::launch(cmd, workdir.with_extension("stderr.log"))
    }

    /// Runs `cmd` (a `nokv-server` command line, possibly behind wrappers that exec it),
    /// stderr to the file `stderr`, and waits for its "listening on" line.
    pub fn launch(cmd: Command, stderr: PathBuf) -> Server {
        Server::try_launch(cmd, stderr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::launch`], but a server that exits or does not listen within `START_LIMIT` is
    /// an `Err` carrying its stderr and, if it hung, its threads' stacks (gdb).
    pub fn try_launch(mut cmd: Command, stderr: PathBuf) -> Result<Server, String> {
        let log = std::fs::File::create(&stderr).expect("stderr log");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nokv-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // The metrics and rpc lines (if any) come before the listening line.
            let mut metrics = None;
            let mut rpc = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let word = |rest: &str| rest.split_whitespace().next().unwrap_or("").to_string();
                if let Some(rest) = line.split("metrics on ").nth(1) {
                    metrics = Some(word(rest));
                }
                if let Some(rest) = line.split("rpc on ").nth(1) {
                    rpc = Some(word(rest));
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send((word(rest), metrics.take(), rpc.take()));
                }
            }
        });
        let (addr, metrics, rpc) = match rx.recv_timeout(START_LIMIT) {
            Ok(a) => a,
            Err(e) => {
                let stacks = match (e, child.try_wait()) {
                    (mpsc::RecvTimeoutError::Timeout, Ok(None)) => thread_stacks(child.id()),
                    _ => String::new(),
                };
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr).unwrap_or_default();
                return Err(format!("nokv-server did not start:\n{log}{stacks}"));
            }
        };
        Ok(Server {
            child,
            addr,
            stderr,
            metrics,
            rpc,
        })
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.addr)
    }

    /// One line of `/proc/<pid>/status` (e.g. `VmHWM`), in bytes.
    pub fn proc_status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        kib * 1024
    }

    /// Sends one raw HTTP request to the metrics endpoint; returns (status code, body).
    pub fn http(&self, request: &[u8]) -> (u16, String) {
        let addr = self
            .metrics
            .as_deref()
            .expect("started with --metrics-addr");
        http(addr, request)
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn scrape(&self) -> String {
        let (status, body) = self.http(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The kernel may release a dead process's listeners a moment after it exits (an
        // io_uring ring is torn down asynchronously): wait (bounded) until nothing accepts
        // on its addresses, so that a restart on them does not find them taken.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        for addr in std::iter::once(&self.addr).chain(self.rpc.as_ref()) {
            let Ok(sock) = addr.parse::<std::net::SocketAddr>() else {
                continue;
            };
            while std::time::Instant::now() < end
                && TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGTERM and wait for the exit status (bounded).
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("nokv-server did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one raw HTTP request to `addr`; returns (status code, body).
pub fn http(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    s.write_all(request).expect("send request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` (labels exactly as rendered, or "" for none).
pub fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    scrape.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == key).then(|| v.parse().ok())?
    })
}

/// The value of INFO field `field` (e.g. `evicted_clients`), read through `c`.
pub fn info_field(c: &mut Client, section: &str, field: &str) -> Option<String> {
    let R::Bulk(text) = c.cmd(&format!("INFO {section}")) else {
        panic!("INFO {section}: not a bulk reply")
    };
    String::from_utf8_lossy(&text).lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// INFO `field` as a number (0 when missing).
pub fn info_u64(c: &mut Client, section: &str, field: &str) -> u64 {
    info_field(c, section, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Polls INFO `field` through `c` until `done(value)` (bounded by LIMIT); the last value.
pub fn wait_info(c: &mut Client, section: &str, field: &str, done: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + LIMIT;
    let mut v = info_u64(c, section, field);
    for _ in 0..3000 {
        if done(v) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        v = info_u64(c, section, field);
    }
    v
}

/// Reads until the server closes the connection and returns what it sent; None if it
/// stays open (read timeout) or sends more than `max` bytes.
pub fn read_until_closed(s: &mut TcpStream, max: usize) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    // Each round reads at least one byte or ends: bounded by `max`.
    while out.len() <= max {
        match s.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(out),
            Err(_) => return None,
        }
    }
    None
}

/// Empties the newest WAL segment of every core of the store at `workdir` (negative
/// controls: what losing the unsynced log would leave).
pub fn empty_newest_wals(workdir: &std::path::Path) {
    let Ok(cores) = std::fs::read_dir(workdir) else {
        return;
    };
    for core in cores
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("core-"))
    {
        let newest = std::fs::read_dir(core.path())
            .expect("core dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("wal-"))
            })
            .max();
        if let Some(wal) = newest {
            std::fs::write(wal, b"").expect("empty a WAL segment");
        }
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum R {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<R>),
}

impl R {
    pub fn bulk(s: &str) -> R {
        R::Bulk(s.as_bytes().to_vec())
    }
    pub fn ok() -> R {
        R::Simple("OK".into())
    }
}

/// A blocking RESP2 client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

impl Client {
    /// Connects with bounded connect and read times; None when the server is not there.
    pub fn try_connect(addr: &str, timeout: Duration) -> Option<Client> {
        let sock: std::net::SocketAddr = addr.parse().ok()?;
        let s = TcpStream::connect_timeout(&sock, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Client {
            reader: BufReader::new(s.try_clone().ok()?),
            writer: s,
        })
    }

    pub fn connect(addr: &str) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(LIMIT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Client {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Sends one command (space-separated words) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> R {
        let words: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.send(&words);
        self.read()
    }

    /// Sends one command and reads its reply; None when the connection fails (closed by
    /// a dying server) instead of panicking.
    pub fn try_cmd(&mut self, args: &[&[u8]]) -> Option<R> {
        self.writer.write_all(&encode(args)).ok()?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        Some(match kind {
            "$" => {
                let n: i64 = rest.parse().ok()?;
                if n < 0 {
                    return Some(R::Nil);
                }
                let mut b = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut b).ok()?;
                b.truncate(n as usize);
                R::Bulk(b)
            }
            "-" => R::Error(rest.to_string()),
            "+" => R::Simple(rest.to_string()),
            ":" => R::Int(rest.parse().ok()?),
            "*" => match rest.parse::<i64>().ok()? {
                n if n < 0 => R::Nil,
                n => R::Array((0..n).map(|_| self.read()).collect()),
            },
            other => panic!("unexpected reply type {other:?} in {line:?}"),
        })
    }

    pub fn send(&mut self, args: &[&[u8]]) {
        self.writer.write_all(&encode(args)).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// A second handle on the connection's socket, for a thread that writes while this
    /// client reads the replies.
    pub fn writer(&self) -> TcpStream {
        self.writer.try_clone().expect("clone")
    }

    pub fn read(&mut self) -> R {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read reply");
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => R::Simple(rest.to_string()),
            "-" => R::Error(rest.to_string()),
            ":" => R::Int(rest.parse().expect("int")),
            "$" => {
                let n: i64 = rest.parse().expect("len");
                if n < 0 {
                    return R::Nil;
                }
                let mut b = vec![0u8; n as usize + 2];
                self.reader.read_exact(&mut b).expect("bulk");
                b.truncate(n as usize);
                R::Bulk(b)
            }
            "*" => {
                let n: i64 = rest.parse().expect("len");
                if n < 0 {
                    return R::Nil;
                }
                R::Array((0..n).map(|_| self.read()).collect())
            }
            other => panic!("unexpected reply type {other:?} in {line:?}"),
        }
    }
}

/// Every thread's stack of the hung process `pid` (gdb, if installed), for a failure message.
pub fn thread_stacks(pid: u32) -> String {
    match Command::new("gdb")
        .args(["-batch", "-ex", "thread apply all bt 20", "-p"])
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => format!(
            "\n--- threads of the hung server (gdb) ---\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(e) => format!("\n(no thread stacks: gdb: {e})"),
    }
}
