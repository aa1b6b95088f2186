//! The two wire codecs of `nokv-bench cluster`, hand-written over `std::net::TcpStream`
//! (no client-library dependencies): RESP2 for NoKV (with Redis Cluster's `-MOVED`
//! redirection) and HTTP/1.1 keep-alive with JSON bodies for etcd's v3 gRPC-gateway
//! (`POST /v3/kv/put`, `POST /v3/kv/range`; keys and values in base64).

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Number of Redis Cluster hash slots.
pub const SLOTS: usize = 16384;

/// A key's hash slot (Redis Cluster's CRC16), as NoKV's gateway computes it.
pub use nokv_gateway::model::slot;

/// One RESP2 reply, as far as SET and GET need.
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

fn read_line<R: BufRead>(r: &mut R, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    let n = r.read_until(b'\n', line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("line without CRLF"));
    }
    line.truncate(line.len() - 2);
    Ok(())
}

/// Reads one RESP2 reply (not arrays: SET and GET never answer one).
pub fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    let mut line = Vec::with_capacity(64);
    read_line(r, &mut line)?;
    let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
    let text = String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Simple(text)),
        b'-' => Ok(Reply::Error(text)),
        b':' => text
            .parse()
            .map(Reply::Int)
            .map_err(|_| bad(format!("bad integer reply {text:?}"))),
        b'$' => {
            let n: i64 = text
                .parse()
                .map_err(|_| bad(format!("bad bulk length {text:?}")))?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(bad("bulk string without CRLF"));
            }
            buf.truncate(n as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        other => Err(bad(format!("unexpected reply type byte {other:#x}"))),
    }
}

/// A connection: a buffered reader over the socket and the socket for writes.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    buf: Vec<u8>,
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
            buf: Vec::with_capacity(512),
        })
    }

    /// Sends one RESP command and reads its reply.
    pub fn resp(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.buf.clear();
        encode_command(&mut self.buf, args);
        self.writer.write_all(&self.buf)?;
        read_reply(&mut self.reader)
    }

    /// Sends one HTTP/1.1 POST with a JSON body and reads the response (status, body).
    pub fn post(&mut self, host: &str, path: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.buf.clear();
        encode_post(&mut self.buf, host, path, body);
        self.writer.write_all(&self.buf)?;
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

/// Reads one HTTP/1.1 response: status and body (Content-Length or chunked).
pub fn read_http_response<R: BufRead>(r: &mut R) -> io::Result<(u16, Vec<u8>)> {
    let mut line = Vec::with_capacity(128);
    read_line(r, &mut line)?;
    let status_line = String::from_utf8_lossy(&line).into_owned();
    let status: u16 = status_line
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad HTTP status line {status_line:?}")))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    loop {
        read_line(r, &mut line)?;
        if line.is_empty() {
            break;
        }
        let h = String::from_utf8_lossy(&line);
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
    let mut body = Vec::new();
    if chunked {
        loop {
            read_line(r, &mut line)?;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or("").trim();
            let n = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {size:?}")))?;
            if n == 0 {
                // Trailers until the empty line.
                loop {
                    read_line(r, &mut line)?;
                    if line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r, &mut line)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        return Err(bad("HTTP response without Content-Length or chunking"));
    }
    Ok((status, body))
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
