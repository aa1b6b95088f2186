//! Starting the real `nokv-server` binary and talking raw RESP2 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Upper bound for start-up and single replies (a failure bound, not a timing assumption).
pub const LIMIT: Duration = Duration::from_secs(30);

/// A running server.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub stderr: PathBuf,
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

impl Server {
    /// Starts a server on a free loopback port and waits for its "listening on" line.
    pub fn start(workdir: &Path, extra: &[&str]) -> Server {
        Server::start_on(workdir, "127.0.0.1:0", extra)
    }

    /// Starts a server on `addr`.
    pub fn start_on(workdir: &Path, addr: &str, extra: &[&str]) -> Server {
        std::fs::create_dir_all(workdir).expect("workdir");
        let stderr = workdir.with_extension("stderr.log");
        let log = std::fs::File::create(&stderr).expect("stderr log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_nokv-server"))
            .arg("--workdir")
            .arg(workdir)
            .args(["--redis-addr", addr])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn nokv-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(LIMIT) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&stderr).unwrap_or_default();
                panic!("nokv-server did not start:\n{log}");
            }
        };
        Server {
            child,
            addr,
            stderr,
        }
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(&self.addr)
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    pub fn send(&mut self, args: &[&[u8]]) {
        self.writer.write_all(&encode(args)).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
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
