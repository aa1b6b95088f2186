//! The two wire codecs of `nokv-bench cluster`, hand-written over `std::net::TcpStream`
//! (no client-library dependencies): RESP2 for NoKV (with Redis Cluster's `-MOVED`
//! redirection) and HTTP/1.1 keep-alive with JSON bodies for etcd's v3 gRPC-gateway
//! (`POST /v3/kv/put`, `POST /v3/kv/range`; keys and values in base64).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Number of Redis Cluster hash slots.
pub const SLOTS: usize = 16384;

/// A key's hash slot (Redis Cluster's CRC16), as NoKV's gateway computes it.
pub use nokv_gateway::model::slot;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+...` a simple string.
    Simple(String),
    /// `$n` a bulk string, None for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `:n` an integer.
    Int(i64),
    /// `-...` an error.
    Error(String),
    /// `*n` an array, None for `*-1`.
    Array(Option<Vec<Reply>>),
}

/// `MOVED <slot> <host:port>` of an error reply.
pub fn parse_moved(err: &str) -> Option<(u16, String)> {
    let mut it = err.split_ascii_whitespace();
    if it.next()? != "MOVED" {
        return None;
    }
    let slot = it.next()?.parse().ok()?;
    let addr = it.next()?.to_string();
    Some((slot, addr))
}

/// Appends a RESP2 command (an array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// An incremental parse: the message and the bytes it took, or None while incomplete.
pub type Parsed<T> = io::Result<Option<(T, usize)>>;

/// An HTTP response: status and body.
pub type HttpResponse = (u16, Vec<u8>);

/// Longest RESP line (simple string, error, length) and longest HTTP response head.
pub const MAX_LINE: usize = 64 * 1024;

/// Longest RESP bulk string and HTTP response body.
pub const MAX_BODY: usize = 64 << 20;

/// Deepest nesting of RESP arrays accepted.
const MAX_DEPTH: usize = 8;

/// The CRLF-terminated line starting at `buf[from]`: the line without its CRLF and the offset
/// just past it; Ok(None) while incomplete; an error for a bare LF or a line over `limit`.
fn line_at(buf: &[u8], from: usize, limit: usize) -> io::Result<Option<(&[u8], usize)>> {
    let rest = buf.get(from..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) if i > limit => Err(bad(format!("line longer than {limit} bytes"))),
        Some(i) => match rest[..i].strip_suffix(b"\r") {
            Some(line) => Ok(Some((line, from + i + 1))),
            None => Err(bad("line without CRLF")),
        },
        None if rest.len() > limit => Err(bad(format!("line longer than {limit} bytes"))),
        None => Ok(None),
    }
}

/// A decimal length or count of a RESP header line.
fn parse_len(text: &str, what: &str) -> io::Result<i64> {
    text.parse()
        .map_err(|_| bad(format!("bad {what} {text:?}")))
}

/// Parses one RESP2 reply from the start of `buf`: the reply and the bytes it took, or
/// Ok(None) when `buf` holds only a prefix of it. Oversized lines and bulks are errors.
pub fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    parse_reply_at(buf, 0, 0)
}

fn parse_reply_at(buf: &[u8], from: usize, depth: usize) -> Parsed<Reply> {
    let Some((line, next)) = line_at(buf, from, MAX_LINE)? else {
        return Ok(None);
    };
    let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
    let text = String::from_utf8_lossy(rest);
    let reply = match kind {
        b'+' => Reply::Simple(text.into_owned()),
        b'-' => Reply::Error(text.into_owned()),
        b':' => Reply::Int(parse_len(&text, "integer reply")?),
        b'$' => {
            let n = parse_len(&text, "bulk length")?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            if n as u64 > MAX_BODY as u64 {
                return Err(bad(format!("bulk string of {n} bytes over {MAX_BODY}")));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(bad("bulk string without CRLF"));
            }
            return Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)));
        }
        b'*' => {
            let n = parse_len(&text, "array length")?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if depth >= MAX_DEPTH || n as u64 > MAX_BODY as u64 {
                return Err(bad(format!("array of {n} at depth {depth} too large")));
            }
            let mut items = Vec::with_capacity((n as usize).min(64));
            let mut at = next;
            for _ in 0..n {
                let Some((item, after)) = parse_reply_at(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = after;
            }
            return Ok(Some((Reply::Array(Some(items)), at)));
        }
        other => return Err(bad(format!("unexpected reply type byte {other:#x}"))),
    };
    Ok(Some((reply, next)))
}

/// Parses one HTTP/1.1 response (status, body) from the start of `buf`, framed by
/// Content-Length or chunked transfer encoding: the response and the bytes it took, or
/// Ok(None) while incomplete. A head over [`MAX_LINE`] or a body over [`MAX_BODY`] is an error.
pub fn parse_http_response(buf: &[u8]) -> Parsed<HttpResponse> {
    let Some((line, mut pos)) = line_at(buf, 0, MAX_LINE)? else {
        return Ok(None);
    };
    let status_line = String::from_utf8_lossy(line);
    let status: u16 = status_line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad HTTP status line {status_line:?}")))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        let limit = MAX_LINE
            .checked_sub(pos)
            .ok_or_else(|| bad("HTTP response head too long"))?;
        let Some((line, next)) = line_at(buf, pos, limit)? else {
            return Ok(None);
        };
        pos = next;
        if line.is_empty() {
            break;
        }
        let h = String::from_utf8_lossy(line);
        if let Some((name, value)) = h.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("bad Content-Length {value:?}")))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let too_big = |n: usize| bad(format!("HTTP body of {n} bytes over {MAX_BODY}"));
    if chunked {
        let mut body = Vec::new();
        loop {
            let Some((line, next)) = line_at(buf, pos, MAX_LINE)? else {
                return Ok(None);
            };
            let text = String::from_utf8_lossy(line);
            let size = text.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            pos = next;
            if n == 0 {
                // Trailers until the empty line.
                loop {
                    let Some((line, next)) = line_at(buf, pos, MAX_LINE)? else {
                        return Ok(None);
                    };
                    pos = next;
                    if line.is_empty() {
                        return Ok(Some(((status, body), pos)));
                    }
                }
            }
            if n > MAX_BODY - body.len() {
                return Err(too_big(body.len().saturating_add(n)));
            }
            let Some(chunk) = buf.get(pos..pos + n) else {
                return Ok(None);
            };
            body.extend_from_slice(chunk);
            // The line ending the chunk's data.
            let Some((_, next)) = line_at(buf, pos + n, MAX_LINE)? else {
                return Ok(None);
            };
            pos = next;
        }
    }
    let n = length.ok_or_else(|| bad("HTTP response without Content-Length or chunking"))?;
    if n > MAX_BODY {
        return Err(too_big(n));
    }
    Ok(buf
        .get(pos..pos + n)
        .map(|body| ((status, body.to_vec()), pos + n)))
}

/// Reads one message from a blocking reader with an incremental parser (`parse_reply`,
/// `parse_http_response`), consuming exactly the message's bytes from `r`.
fn read_with<R: BufRead, T>(r: &mut R, parse: impl Fn(&[u8]) -> Parsed<T>) -> io::Result<T> {
    // Bytes of the message consumed from `r` so far (empty while it fits one buffer).
    let mut acc: Vec<u8> = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let got = buf.len();
        let old = acc.len();
        let parsed = if old == 0 {
            parse(buf)?
        } else {
            acc.extend_from_slice(buf);
            parse(&acc)?
        };
        match parsed {
            Some((v, n)) => {
                // A message ends in the bytes just read (it was incomplete without them).
                r.consume(n.saturating_sub(old).min(got));
                return Ok(v);
            }
            None => {
                if old == 0 {
                    acc.extend_from_slice(buf);
                }
                r.consume(got);
            }
        }
    }
}

/// Reads one RESP2 reply from a blocking reader.
pub fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    read_with(r, parse_reply)
}

/// A receive buffer for non-blocking reads: bytes in `buf[start..end]`, read into the
/// spare space after `end`, compacted to the front when the space runs out.
#[derive(Debug, Default)]
pub struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// Bytes asked of each `read` at least.
const READ_CHUNK: usize = 16 * 1024;

impl RecvBuf {
    /// The received bytes not consumed yet.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops the first `n` unconsumed bytes.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// One `read` from `r` into the spare space (compacting or growing first); Ok(0) at EOF.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.buf.len() - self.end < READ_CHUNK {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_CHUNK {
                let want = (self.buf.len() * 2).max(self.end + READ_CHUNK);
                self.buf.resize(want, 0);
            }
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// A connection: a buffered reader over the socket and the socket for writes.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Connects to `addr` (TCP_NODELAY, 30 s read timeout).
    pub fn connect(addr: &str) -> io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(16 * 1024, s.try_clone()?),
            writer: s,
        })
    }

    /// Sends a whole encoded request.
    pub fn send(&mut self, req: &[u8]) -> io::Result<()> {
        self.writer.write_all(req)
    }

    /// Reads one RESP reply.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// Reads one HTTP response (status, body).
    pub fn read_http(&mut self) -> io::Result<HttpResponse> {
        read_http_response(&mut self.reader)
    }
}

/// Appends an HTTP/1.1 keep-alive POST of a JSON body to `out`.
pub fn encode_post(out: &mut Vec<u8>, host: &str, path: &str, body: &[u8]) {
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// Reads one HTTP/1.1 response (status, body) from a blocking reader.
pub fn read_http_response<R: BufRead>(r: &mut R) -> io::Result<HttpResponse> {
    read_with(r, parse_http_response)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64_encode(data: &[u8], out: &mut Vec<u8>) {
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(B64[(n >> 18) as usize & 63]);
        out.push(B64[(n >> 12) as usize & 63]);
        out.push(if c.len() > 1 {
            B64[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if c.len() > 2 {
            B64[n as usize & 63]
        } else {
            b'='
        });
    }
}

/// Decodes standard base64 (padding optional); None on a byte outside the alphabet.
pub fn b64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for &b in text {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The JSON body of etcd's `/v3/kv/put`.
pub fn etcd_put_body(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + key.len() * 2 + value.len() * 2);
    b.extend_from_slice(b"{\"key\":\"");
    b64_encode(key, &mut b);
    b.extend_from_slice(b"\",\"value\":\"");
    b64_encode(value, &mut b);
    b.extend_from_slice(b"\"}");
    b
}

/// The JSON body of etcd's `/v3/kv/range` for one key (linearizable: no `serializable`).
pub fn etcd_range_body(key: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + key.len() * 2);
    b.extend_from_slice(b"{\"key\":\"");
    b64_encode(key, &mut b);
    b.extend_from_slice(b"\"}");
    b
}

/// The value of the first kv in a `/v3/kv/range` response; Ok(None) when there is none.
pub fn etcd_range_value(body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "range response is not UTF-8".to_string())?;
    let Some(kvs) = text.find("\"kvs\"") else {
        if text.contains("\"header\"") {
            return Ok(None);
        }
        return Err(format!("unexpected range response {text:?}"));
    };
    let rest = &text[kvs..];
    let Some(v) = rest.find("\"value\":\"") else {
        return Ok(Some(Vec::new())); // an empty value is omitted
    };
    let rest = &rest[v + 9..];
    let end = rest
        .find('"')
        .ok_or_else(|| format!("unterminated value in {text:?}"))?;
    b64_decode(&rest.as_bytes()[..end])
        .map(Some)
        .ok_or_else(|| format!("bad base64 value in {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_gateway::model::crc16;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and redis-cli CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 16383);
    }

    #[test]
    fn resp_round_trip_and_moved() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b"vv"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
        let mut r: &[u8] = b"+OK\r\n$3\r\nabc\r\n$-1\r\n-MOVED 866 127.0.0.1:6382\r\n:7\r\n";
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(None));
        let Reply::Error(e) = read_reply(&mut r).unwrap() else {
            panic!("expected an error reply")
        };
        assert_eq!(parse_moved(&e), Some((866, "127.0.0.1:6382".to_string())));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Int(7));
        assert!(read_reply(&mut r).is_err());
        assert_eq!(
            parse_moved("TRYAGAIN region 3 has no known leader yet"),
            None
        );
        assert_eq!(parse_moved("MOVED x 1.2.3.4:1"), None);
    }

    /// Parses every message of `input` incrementally, feeding it in two parts split at every
    /// byte boundary: None until a message is complete, then the same value and length.
    fn split_everywhere<T: PartialEq + std::fmt::Debug>(
        input: &[u8],
        parse: impl Fn(&[u8]) -> Parsed<T>,
        expected: &[T],
    ) {
        // The whole-buffer parse: the reference messages and their lengths.
        let mut whole = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let (v, n) = parse(&input[at..]).unwrap().expect("complete message");
            assert!(n > 0);
            whole.push((v, at, n));
            at += n;
        }
        let values: Vec<&T> = whole.iter().map(|(v, _, _)| v).collect();
        assert_eq!(values, expected.iter().collect::<Vec<_>>());
        for (v, start, n) in &whole {
            let msg = &input[*start..];
            for cut in 0..=*n {
                match parse(&msg[..cut]).unwrap() {
                    None => assert!(cut < *n, "complete at {cut} of {n}"),
                    Some((got, used)) => {
                        assert_eq!(cut, *n, "complete early at {cut} of {n}");
                        assert_eq!((&got, used), (v, *n));
                    }
                }
            }
            // Through a RecvBuf fed one byte at a time.
            let mut rb = RecvBuf::default();
            let mut src: &[u8] = &msg[..*n];
            let mut one = [0u8; 1];
            let mut done = None;
            while !src.is_empty() {
                one[0] = src[0];
                src = &src[1..];
                assert_eq!(rb.read_from(&mut &one[..]).unwrap(), 1);
                if let Some((got, used)) = parse(rb.data()).unwrap() {
                    rb.consume(used);
                    done = Some(got);
                }
            }
            assert_eq!(done.as_ref(), Some(v));
            assert!(rb.data().is_empty());
        }
    }

    #[test]
    fn resp_incremental_at_every_split() {
        let input: &[u8] =
            b"+OK\r\n$3\r\nabc\r\n$-1\r\n-MOVED 866 127.0.0.1:6382\r\n:7\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n*-1\r\n";
        let expected = [
            Reply::Simple("OK".into()),
            Reply::Bulk(Some(b"abc".to_vec())),
            Reply::Bulk(None),
            Reply::Error("MOVED 866 127.0.0.1:6382".into()),
            Reply::Int(7),
            Reply::Bulk(Some(Vec::new())),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"GET".to_vec())),
                Reply::Array(None),
            ])),
        ];
        split_everywhere(input, parse_reply, &expected);
        // Two pipelined replies in one buffer: the first, then the rest.
        let (r, n) = parse_reply(b"+OK\r\n:1\r\n").unwrap().unwrap();
        assert_eq!((r, n), (Reply::Simple("OK".into()), 5));
        assert_eq!(
            parse_reply(&b"+OK\r\n:1\r\n"[n..]).unwrap(),
            Some((Reply::Int(1), 4))
        );
        // The blocking reader consumes exactly one reply of a pipelined buffer.
        let mut r: &[u8] = b"$3\r\nabc\r\n+OK\r\n";
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Bulk(Some(b"abc".to_vec()))
        );
        assert_eq!(r, b"+OK\r\n");
    }

    #[test]
    fn resp_malformed_and_oversize_rejected() {
        for bad in [
            &b"+OK\n"[..],
            b"?x\r\n",
            b"\r\n",
            b":x\r\n",
            b"$3\r\nabcd\r\n",
            b"$x\r\n",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
        // A bulk over the limit is refused from its header, before any body arrives.
        assert!(parse_reply(format!("${}\r\n", MAX_BODY + 1).as_bytes()).is_err());
        assert!(parse_reply(format!("${MAX_BODY}\r\n").as_bytes())
            .unwrap()
            .is_none());
        // A line that never ends is refused once over the limit, not buffered forever.
        let long = vec![b'+'; MAX_LINE + 1];
        assert!(parse_reply(&long[..MAX_LINE]).unwrap().is_none());
        assert!(parse_reply(&long).is_err());
        // Arrays nested too deep.
        assert!(parse_reply(&b"*1\r\n".repeat(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn http_incremental_at_every_split() {
        let input: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n\
HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
        let expected = [
            (200, b"hello".to_vec()),
            (503, b"abcde".to_vec()),
            (204, Vec::new()),
        ];
        split_everywhere(input, parse_http_response, &expected);
        // The blocking reader over a tiny buffer (messages span many fills) agrees.
        let mut r = BufReader::with_capacity(3, input);
        for e in &expected {
            assert_eq!(&read_http_response(&mut r).unwrap(), e);
        }
        assert!(read_http_response(&mut r).is_err());
    }

    #[test]
    fn http_malformed_and_oversize_rejected() {
        for bad in [
            &b"HTTP/1.1 abc\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_http_response(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(parse_http_response(big.as_bytes()).is_err());
        let big = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            MAX_BODY + 1
        );
        assert!(parse_http_response(big.as_bytes()).is_err());
        // A head of many short lines is bounded too.
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() <= MAX_LINE {
            head.extend_from_slice(b"X-Pad: 0123456789\r\n");
        }
        assert!(parse_http_response(&head).is_err());
    }

    #[test]
    fn base64_round_trip() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            let mut e = Vec::new();
            b64_encode(s, &mut e);
            assert_eq!(b64_decode(&e).unwrap(), s);
        }
        let mut e = Vec::new();
        b64_encode(b"foobar", &mut e);
        assert_eq!(e, b"Zm9vYmFy");
        assert!(b64_decode(b"a b").is_none());
    }

    #[test]
    fn http_content_length_and_chunked() {
        let mut out = Vec::new();
        encode_post(&mut out, "h:1", "/v3/kv/put", b"{}");
        assert!(out.starts_with(b"POST /v3/kv/put HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(out.ends_with(b"Content-Length: 2\r\n\r\n{}"));
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello\
HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            read_http_response(&mut r).unwrap(),
            (200, b"hello".to_vec())
        );
        assert_eq!(
            read_http_response(&mut r).unwrap(),
            (503, b"abcde".to_vec())
        );
        assert!(read_http_response(&mut r).is_err());
    }

    #[test]
    fn etcd_json_bodies() {
        assert_eq!(
            etcd_put_body(b"foo", b"bar"),
            b"{\"key\":\"Zm9v\",\"value\":\"YmFy\"}"
        );
        assert_eq!(etcd_range_body(b"foo"), b"{\"key\":\"Zm9v\"}");
        let hit = br#"{"header":{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"5","mod_revision":"5","version":"1","value":"YmFy"}],"count":"1"}"#;
        assert_eq!(etcd_range_value(hit).unwrap(), Some(b"bar".to_vec()));
        let miss =
            br#"{"header":{"cluster_id":"1","member_id":"2","revision":"5","raft_term":"2"}}"#;
        assert_eq!(etcd_range_value(miss).unwrap(), None);
        assert!(etcd_range_value(br#"{"error":"x","code":14}"#).is_err());
    }
}
