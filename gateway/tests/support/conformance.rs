//! The conformance driver shared by `gateway/tests/conformance.rs` (the gateway's
//! test server) and `shard/tests/conformance.rs` (the real `nokv-server`): the
//! case-file parser, the RESP2/RESP3 reply reader, the normalisers and a
//! redis-server launcher. See `gateway/tests/conformance.rs` for the case syntax.
#![allow(dead_code)]

use nokv_gateway::resp::split_args;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "secret";
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    Exact,
    Sort,
    Info,
    Clients,
    Id,
    /// Integer replies computed from the wall clock (TTL of an absolute
    /// expiry): equal within 1, since the two servers read their clocks at
    /// slightly different instants.
    Clock,
}

#[derive(Debug)]
pub enum Step {
    Send {
        line: String,
        payload: Vec<u8>,
        replies: usize,
        norm: Norm,
    },
    Closed,
    Sleep(u64),
}

#[derive(Debug)]
pub struct Case {
    pub file: String,
    pub name: String,
    pub auth: bool,
    pub steps: Vec<Step>,
}

pub fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    nokv_gateway::resp::encode_request(args)
}

pub fn parse_cases(dir: &Path) -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{file}:{}", n + 1);
            if let Some(rest) = line.strip_prefix("===") {
                let rest = rest.trim();
                let (name, auth) = match rest.strip_suffix("[auth]") {
                    Some(n) => (n.trim().to_string(), true),
                    None => (rest.to_string(), false),
                };
                cases.push(Case {
                    file: file.clone(),
                    name,
                    auth,
                    steps: Vec::new(),
                });
                continue;
            }
            let case = cases
                .last_mut()
                .unwrap_or_else(|| panic!("{at}: directive before the first ==="));
            if line == "closed" {
                case.steps.push(Step::Closed);
            } else if let Some(ms) = line.strip_prefix("sleep ") {
                case.steps.push(Step::Sleep(
                    ms.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{at}: bad sleep")),
                ));
            } else if let Some(rest) = line.strip_prefix("raw ") {
                let args =
                    split_args(rest.as_bytes()).unwrap_or_else(|| panic!("{at}: bad raw line"));
                assert_eq!(args.len(), 2, "{at}: raw N \"bytes\"");
                let replies = String::from_utf8_lossy(&args[0])
                    .parse()
                    .unwrap_or_else(|_| panic!("{at}: bad count"));
                case.steps.push(Step::Send {
                    line: line.to_string(),
                    payload: args[1].clone(),
                    replies,
                    norm: Norm::Exact,
                });
            } else {
                let (norm, cmd) = match line.split_once(' ') {
                    Some(("~sort", c)) => (Norm::Sort, c),
                    Some(("~info", c)) => (Norm::Info, c),
                    Some(("~clients", c)) => (Norm::Clients, c),
                    Some(("~id", c)) => (Norm::Id, c),
                    Some(("~clock", c)) => (Norm::Clock, c),
                    _ => (Norm::Exact, line),
                };
                let args =
                    split_args(cmd.as_bytes()).unwrap_or_else(|| panic!("{at}: unbalanced quotes"));
                case.steps.push(Step::Send {
                    line: line.to_string(),
                    payload: encode(&args),
                    replies: 1,
                    norm,
                });
            }
        }
    }
    cases
}

/// The length of the complete RESP2/RESP3 reply at the front of `buf`, if it has arrived.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let nl = buf.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&buf[1..nl]).ok()?;
    let after = nl + 2;
    match buf[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after),
        b'$' | b'=' | b'!' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(after);
            }
            let end = after + n as usize + 2;
            (buf.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n: i64 = head.parse().ok()?;
            let items = if matches!(buf[0], b'%' | b'|') {
                n * 2
            } else {
                n
            };
            let mut pos = after;
            for _ in 0..items.max(0) {
                pos += frame_len(&buf[pos..])?;
            }
            Some(pos)
        }
        other => panic!(
            "unexpected reply type byte {:?} in {:?}",
            other as char,
            String::from_utf8_lossy(buf)
        ),
    }
}

/// Reads one complete RESP2/RESP3 reply; None on EOF or timeout.
pub fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    // Bounded by the deadline.
    loop {
        if !buf.is_empty() {
            if let Some(used) = frame_len(buf) {
                return Some(buf.drain(..used).collect());
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

pub fn expect_closed(stream: &mut TcpStream, buf: &[u8]) -> bool {
    if !buf.is_empty() {
        return false;
    }
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut chunk = [0u8; 1024];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Splits an aggregate reply into its header line and the bytes of each element.
pub fn split_aggregate(reply: &[u8]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    if !matches!(reply.first(), Some(b'*' | b'~' | b'%')) {
        return None;
    }
    let nl = reply.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut rest = reply[nl..].to_vec();
    let mut items = Vec::new();
    while !rest.is_empty() {
        let used = frame_len(&rest)?;
        items.push(rest.drain(..used).collect());
    }
    Some((reply[..nl].to_vec(), items))
}

pub fn sort_reply(reply: &[u8]) -> Vec<u8> {
    let Some((header, mut items)) = split_aggregate(reply) else {
        return reply.to_vec();
    };
    // SCAN-like [cursor, [items]]: sort the inner list.
    if items.len() == 2
        && matches!(items[1].first(), Some(b'*'))
        && matches!(items[0].first(), Some(b'$'))
    {
        items[1] = sort_reply(&items[1]);
    } else {
        items.sort();
    }
    let mut out = header;
    for i in items {
        out.extend_from_slice(&i);
    }
    out
}

pub fn text_of(reply: &[u8]) -> String {
    let s = String::from_utf8_lossy(reply).into_owned();
    let body = s
        .split_once("\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    body.strip_prefix("txt:")
        .map(str::to_string)
        .unwrap_or(body)
}

pub fn normalise(reply: &[u8], norm: Norm) -> Vec<u8> {
    match norm {
        Norm::Exact | Norm::Clock => reply.to_vec(),
        Norm::Sort => sort_reply(reply),
        Norm::Info => {
            let kept: Vec<String> = text_of(reply)
                .lines()
                .filter(|l| l.starts_with("# ") || l.starts_with("db"))
                .map(str::to_string)
                .collect();
            format!(
                "{}|{}",
                reply.first().map_or(' ', |&b| b as char),
                kept.join("|")
            )
            .into_bytes()
        }
        Norm::Clients => {
            let stable = [
                "name", "db", "flags", "cmd", "user", "resp", "multi", "sub", "psub", "ssub",
            ];
            let lines: Vec<String> = text_of(reply)
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    l.split(' ')
                        .map(|kv| match kv.split_once('=') {
                            Some((k, v)) if stable.contains(&k) => format!("{k}={v}"),
                            Some((k, _)) => k.to_string(),
                            None => kv.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            format!(
                "{}|{}",
                reply.first().map_or(' ', |&b| b as char),
                lines.join("|")
            )
            .into_bytes()
        }
        Norm::Id => {
            let s = String::from_utf8_lossy(reply).into_owned();
            let mut out = String::new();
            let mut rest = s.as_str();
            // Mask ":<digits>" right after an "id" key, or a lone integer reply.
            if rest.starts_with(':') {
                return b":<id>\r\n".to_vec();
            }
            while let Some(i) = rest.find("$2\r\nid\r\n:") {
                out.push_str(&rest[..i + 9]);
                rest = &rest[i + 9..];
                let end = rest.find("\r\n").unwrap_or(rest.len());
                out.push_str("<id>");
                rest = &rest[end..];
            }
            out.push_str(rest);
            out.into_bytes()
        }
    }
}

/// Whether two normalised replies count as the same under `norm`.
pub fn replies_agree(a: &[u8], b: &[u8], norm: Norm) -> bool {
    if norm != Norm::Clock {
        return a == b;
    }
    let int = |r: &[u8]| -> Option<i64> {
        std::str::from_utf8(r.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
            .ok()?
            .parse()
            .ok()
    };
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x.abs_diff(y) <= 1,
        _ => a == b,
    }
}

pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

pub fn redis_server_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

pub fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listening on 127.0.0.1:{port}");
}

pub fn start_redis(bin: &Path, auth: bool) -> RedisServer {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--databases", "1", "--daemonize", "no", "--dir"])
    .arg(dir.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if auth {
        cmd.args(["--requirepass", PASSWORD]);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    wait_for(port);
    RedisServer {
        child,
        port,
        _dir: dir,
    }
}

pub fn connect(port: u16) -> TcpStream {
    let s =
        TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    s.set_nodelay(true).ok();
    s
}

pub fn flush(port: u16, auth: bool) {
    let mut s = connect(port);
    let mut buf = Vec::new();
    if auth {
        s.write_all(&encode(&[b"AUTH".to_vec(), PASSWORD.as_bytes().to_vec()]))
            .ok();
        read_reply(&mut s, &mut buf);
    }
    s.write_all(&encode(&[b"FLUSHDB".to_vec()])).ok();
    let r = read_reply(&mut s, &mut buf);
    assert_eq!(
        r.as_deref(),
        Some(&b"+OK\r\n"[..]),
        "FLUSHDB on port {port}"
    );
    hang_up(s);
}

/// Closes our side and waits (bounded) for the server to close its side, so a
/// later CLIENT LIST does not race the server noticing this connection is gone.
pub fn hang_up(mut s: TcpStream) {
    let _ = s.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

pub struct Outcome {
    pub exchanges: usize,
    pub matched: usize,
    pub failures: Vec<String>,
}

pub fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let s = if s.len() > 400 {
        format!("{}...", &s[..400])
    } else {
        s.into_owned()
    };
    format!("{s:?}")
}

pub fn run_case(case: &Case, proto: u8, redis_port: u16, our_port: u16, out: &mut Outcome) {
    flush(redis_port, case.auth);
    flush(our_port, case.auth);
    let mut conns = [connect(redis_port), connect(our_port)];
    let mut bufs = [Vec::new(), Vec::new()];
    let mut steps: Vec<Step> = Vec::new();
    if proto == 3 {
        steps.push(Step::Send {
            line: "~id hello 3".to_string(),
            payload: encode(&[b"HELLO".to_vec(), b"3".to_vec()]),
            replies: 1,
            norm: Norm::Id,
        });
    }
    let all = steps.iter().chain(case.steps.iter());
    for step in all {
        match step {
            Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            Step::Closed => {
                out.exchanges += 1;
                let closed: Vec<bool> = (0..2)
                    .map(|i| expect_closed(&mut conns[i], &bufs[i]))
                    .collect();
                if closed == [true, true] {
                    out.matched += 1;
                } else {
                    out.failures.push(format!(
                        "{} / {} (RESP{proto}): closed: redis={} ours={}",
                        case.file, case.name, closed[0], closed[1]
                    ));
                }
            }
            Step::Send {
                line,
                payload,
                replies,
                norm,
            } => {
                for c in conns.iter_mut() {
                    let _ = c.write_all(payload);
                }
                for _ in 0..*replies {
                    out.exchanges += 1;
                    let got: Vec<Option<Vec<u8>>> = (0..2)
                        .map(|i| {
                            read_reply(&mut conns[i], &mut bufs[i]).map(|r| normalise(&r, *norm))
                        })
                        .collect();
                    let agree = match (&got[0], &got[1]) {
                        (Some(a), Some(b)) => replies_agree(a, b, *norm),
                        _ => false,
                    };
                    if agree {
                        out.matched += 1;
                    } else {
                        out.failures.push(format!(
                            "{} / {} (RESP{proto}): `{line}`\n    redis: {}\n    ours:  {}",
                            case.file,
                            case.name,
                            got[0].as_deref().map_or("<no reply>".to_string(), show),
                            got[1].as_deref().map_or("<no reply>".to_string(), show),
                        ));
                    }
                }
            }
        }
    }
    for c in conns {
        hang_up(c);
    }
}

/// The redis-server binary, or None after printing a skip notice; under
/// `CI=true` a missing redis-server fails the test instead.
pub fn redis_server_or_skip(test: &str) -> Option<PathBuf> {
    let bin = redis_server_binary();
    if bin.is_none() {
        let msg = "redis-server not found: run scripts/install-test-deps.sh (as root) to install Debian's redis-server";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED {test}: {msg}");
    }
    bin
}

/// A case the server under test does not run, with the reason.
pub struct Skip {
    pub file: &'static str,
    pub case: &'static str,
    pub reason: &'static str,
}

/// Runs every case (RESP2, then RESP3) against redis-servers started from `bin`
/// and the server under test (`ports[0]` without a password, `ports[1]` with
/// requirepass [`PASSWORD`]), minus `skips`; panics listing every difference.
pub fn run_suite(label: &str, bin: &Path, cases: &[Case], skips: &[Skip], ports: [u16; 2]) {
    assert!(!cases.is_empty(), "no cases found");
    for s in skips {
        assert!(
            cases.iter().any(|c| c.file == s.file && c.name == s.case),
            "skip list names a case that does not exist: {} / {}",
            s.file,
            s.case
        );
    }
    let redis = [start_redis(bin, false), start_redis(bin, true)];
    let mut out = Outcome {
        exchanges: 0,
        matched: 0,
        failures: Vec::new(),
    };
    let run: Vec<&Case> = cases
        .iter()
        .filter(|c| !skips.iter().any(|s| s.file == c.file && s.case == c.name))
        .collect();
    for proto in [2u8, 3] {
        for case in &run {
            let i = case.auth as usize;
            run_case(case, proto, redis[i].port, ports[i], &mut out);
        }
    }
    for s in skips {
        eprintln!("{label}: skipped {} / {}: {}", s.file, s.case, s.reason);
    }
    eprintln!(
        "{label}: {} of {} cases, {} exchanges (RESP2 + RESP3): {} match redis-server byte for byte, {} differ",
        run.len(),
        cases.len(),
        out.exchanges,
        out.matched,
        out.failures.len()
    );
    for f in &out.failures {
        eprintln!("MISMATCH {f}");
    }
    assert!(
        out.failures.is_empty(),
        "{label}: {} replies differ from redis-server",
        out.failures.len()
    );
}
