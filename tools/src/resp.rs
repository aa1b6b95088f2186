//! A tiny blocking RESP2 client: a command goes out as an array of bulk strings, one reply
//! comes back. Every connect, write and read is bounded by one deadline per connection, and
//! replies are bounded in size and nesting, so a wrong or stuck peer cannot hang the tool.

use crate::error::{Error, Result};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest reply line (type byte to CRLF).
const MAX_LINE: u64 = 64 * 1024;
/// Largest bulk string accepted.
const MAX_BULK: i64 = 64 << 20;
/// Most elements of one array accepted.
const MAX_ARRAY: i64 = 1 << 20;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 8;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...`
    Status(String),
    /// `-...` (without the `-`).
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` and the bytes; `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` and the elements; `None` for `*-1`.
    Array(Option<Vec<Reply>>),
}

/// A socket whose every read and write fails with `TimedOut` once the deadline passed.
struct DeadlineStream {
    stream: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// One connection to a store's Redis port.
pub struct Conn {
    addr: String,
    timeout: Duration,
    reader: BufReader<DeadlineStream>,
}

impl Conn {
    /// Connects to `addr` (host:port); this connection's commands must be answered within
    /// `timeout` of now, the connect included.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Conn> {
        let deadline = Instant::now() + timeout;
        let connect_err = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_err)?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
        for a in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                break;
            }
            match TcpStream::connect_timeout(&a, left) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn {
                        addr: addr.to_string(),
                        timeout,
                        reader: BufReader::new(DeadlineStream { stream, deadline }),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(connect_err(last))
    }

    /// The address this connection was made to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `AUTH <password>` when a password is given; a refusal is an error.
    pub fn auth(&mut self, password: Option<&str>) -> Result<()> {
        let Some(pw) = password else {
            return Ok(());
        };
        let addr = self.addr.clone();
        match self.call(&[b"AUTH", pw.as_bytes()], "AUTH")? {
            Reply::Status(_) => Ok(()),
            Reply::Error(message) => Err(Error::Refused {
                addr,
                command: "AUTH".into(),
                message,
            }),
            other => Err(Error::Reply {
                addr,
                command: "AUTH".into(),
                detail: format!("expected +OK, got {other:?}"),
            }),
        }
    }

    /// Sends `args` as one command and reads its reply; `label` names the command in errors
    /// (so that secrets such as a password stay out of them).
    pub fn call(&mut self, args: &[&[u8]], label: &str) -> Result<Reply> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        let io_err = |this: &Conn, op: &str, e: io::Error| this.io_error(label, op, e);
        let stream = self.reader.get_mut();
        if let Err(e) = stream.write_all(&out).and_then(|_| stream.flush()) {
            return Err(io_err(self, "send", e));
        }
        match read_reply(&mut self.reader, 0) {
            Ok(r) => Ok(r),
            Err(ReadError::Io(e)) => Err(io_err(self, "read the reply", e)),
            Err(ReadError::Protocol(detail)) => Err(Error::Reply {
                addr: self.addr.clone(),
                command: label.to_string(),
                detail,
            }),
        }
    }

    fn io_error(&self, label: &str, op: &str, e: io::Error) -> Error {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout {
                addr: self.addr.clone(),
                command: label.to_string(),
                after: self.timeout,
            },
            _ => Error::StoreIo {
                addr: self.addr.clone(),
                command: label.to_string(),
                source: io::Error::new(e.kind(), format!("{op}: {e}")),
            },
        }
    }
}

/// Why a reply could not be read.
#[derive(Debug)]
enum ReadError {
    /// The socket failed, timed out or closed.
    Io(io::Error),
    /// The bytes are not a RESP2 reply within the bounds.
    Protocol(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn protocol(detail: impl Into<String>) -> ReadError {
    ReadError::Protocol(detail.into())
}

/// One CRLF-terminated line without the CRLF.
fn read_line(r: &mut impl BufRead) -> std::result::Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    let n = r.take(MAX_LINE + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the store before a reply",
        )));
    }
    match line.strip_suffix(b"\r\n") {
        Some(body) => Ok(body.to_vec()),
        None if line.len() as u64 > MAX_LINE => Err(protocol(format!(
            "a reply line is longer than {MAX_LINE} bytes"
        ))),
        None => Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the store inside a reply",
        ))),
    }
}

fn parse_int(body: &[u8]) -> std::result::Result<i64, ReadError> {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| protocol(format!("{:?} is not an integer", lossy(body))))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned()
}

/// Reads one reply (arrays recursively, at most [`MAX_DEPTH`] deep).
fn read_reply(r: &mut impl BufRead, depth: usize) -> std::result::Result<Reply, ReadError> {
    let line = read_line(r)?;
    let Some((&kind, body)) = line.split_first() else {
        return Err(protocol("an empty reply line"));
    };
    match kind {
        b'+' => Ok(Reply::Status(String::from_utf8_lossy(body).into_owned())),
        b'-' => Ok(Reply::Error(String::from_utf8_lossy(body).into_owned())),
        b':' => Ok(Reply::Int(parse_int(body)?)),
        b'$' => match parse_int(body)? {
            -1 => Ok(Reply::Bulk(None)),
            n if (0..=MAX_BULK).contains(&n) => {
                let mut data = vec![0u8; n as usize + 2];
                r.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(protocol("a bulk string does not end with CRLF"));
                }
                data.truncate(n as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            n => Err(protocol(format!("bulk length {n} out of bounds"))),
        },
        b'*' => match parse_int(body)? {
            -1 => Ok(Reply::Array(None)),
            _ if depth >= MAX_DEPTH => {
                Err(protocol(format!("arrays nested deeper than {MAX_DEPTH}")))
            }
            n if (0..=MAX_ARRAY).contains(&n) => {
                let mut items = Vec::with_capacity((n as usize).min(64));
                for _ in 0..n {
                    items.push(read_reply(r, depth + 1)?);
                }
                Ok(Reply::Array(Some(items)))
            }
            n => Err(protocol(format!("array length {n} out of bounds"))),
        },
        other => Err(protocol(format!(
            "reply starts with {:?}, not one of + - : $ *",
            other as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> std::result::Result<Reply, ReadError> {
        read_reply(&mut io::Cursor::new(bytes.to_vec()), 0)
    }

    #[test]
    fn replies_of_every_type_parse() {
        assert_eq!(parse(b"+OK\r\n").ok(), Some(Reply::Status("OK".into())));
        assert_eq!(
            parse(b"-ERR no\r\n").ok(),
            Some(Reply::Error("ERR no".into()))
        );
        assert_eq!(parse(b":-17\r\n").ok(), Some(Reply::Int(-17)));
        assert_eq!(
            parse(b"$3\r\na\r\n\r\n").ok(),
            Some(Reply::Bulk(Some(b"a\r\n".to_vec())))
        );
        assert_eq!(parse(b"$-1\r\n").ok(), Some(Reply::Bulk(None)));
        assert_eq!(
            parse(b"*2\r\n:17\r\n:4096\r\n").ok(),
            Some(Reply::Array(Some(vec![Reply::Int(17), Reply::Int(4096)])))
        );
        assert_eq!(parse(b"*-1\r\n").ok(), Some(Reply::Array(None)));
    }

    #[test]
    fn malformed_or_unbounded_replies_are_refused() {
        for bad in [
            &b"?what\r\n"[..],
            b":12x\r\n",
            b"$5\r\nab\r\n",
            b"$99999999999\r\n",
            b"*-5\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?} parsed", lossy(bad));
        }
        let mut deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        deep.extend_from_slice(b":1\r\n");
        assert!(matches!(parse(&deep), Err(ReadError::Protocol(_))));
        let mut long = b"+".to_vec();
        long.resize(MAX_LINE as usize + 10, b'a');
        long.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&long), Err(ReadError::Protocol(_))));
        // A reply cut short is the connection closing, not a protocol error.
        assert!(matches!(parse(b"+OK"), Err(ReadError::Io(_))));
        assert!(matches!(parse(b""), Err(ReadError::Io(_))));
    }
}
