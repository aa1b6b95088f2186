//! Frames: the one envelope for every message between NoKV processes (store to store,
//! store or client to coordinator).
//!
//! A frame is a fixed 28-byte header and a payload (usually a prost message):
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `NKVF` |
//! | 4..6 | protocol version (u16 LE), [`PROTOCOL_VERSION`] |
//! | 6..8 | kind (u16 LE): what the payload is, see [`kind`] |
//! | 8..16 | cluster id (u64 LE) |
//! | 16..24 | request id (u64 LE): pairs a response with its request; 0 for one-way frames |
//! | 24..28 | payload length (u32 LE), at most the reader's bound |
//! | 28..32 | crc32 (crc32fast) of the header's first 28 bytes and the payload |
//!
//! A receiver refuses a frame of another cluster, of an unknown version, over its size
//! bound, or with a bad checksum; the caller drops the connection and counts it. Nothing of
//! a refused frame is used.

use std::io::{self, Read, Write};
use thiserror::Error;

/// The protocol version this build speaks; frames of any other version are refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// Header length in bytes.
pub const HEADER_LEN: usize = 32;

/// Default bound on a frame's payload (16 MiB): raft batches and snapshot chunks stay below.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;

const MAGIC: [u8; 4] = *b"NKVF";

/// Frame kinds: what a frame's payload holds.
pub mod kind {
    /// Raft messages for peers on one (store, core), batched.
    pub const RAFT_BATCH: u16 = 1;
    /// A request to the coordinator.
    pub const COORD_REQUEST: u16 = 2;
    /// The coordinator's response.
    pub const COORD_RESPONSE: u16 = 3;
    /// A chunk of a region snapshot.
    pub const SNAPSHOT_CHUNK: u16 = 4;
    /// A key-value request to a store (clients, forwarding).
    pub const KV_REQUEST: u16 = 5;
    /// A store's key-value response.
    pub const KV_RESPONSE: u16 = 6;
}

/// Why a frame was refused.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The bytes do not start with the frame magic (not a NoKV peer, or a desynchronised stream).
    #[error("bad frame magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// The frame was written by another protocol version.
    #[error("frame protocol version {got}, this build speaks {PROTOCOL_VERSION}")]
    Version {
        /// The version in the frame.
        got: u16,
    },
    /// The frame belongs to another cluster.
    #[error("frame of cluster {got}, this is cluster {expected}")]
    Cluster {
        /// This process's cluster id.
        expected: u64,
        /// The id in the frame.
        got: u64,
    },
    /// The payload is larger than the receiver accepts.
    #[error("frame payload of {len} bytes is over the bound of {max}")]
    TooLarge {
        /// The announced length.
        len: u32,
        /// The bound.
        max: u32,
    },
    /// Header or payload do not match the checksum.
    #[error("frame (kind {kind}, {len} bytes) fails its checksum")]
    Checksum {
        /// The frame kind.
        kind: u16,
        /// The payload length.
        len: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes read of the frame.
        got: usize,
        /// Bytes the frame needs.
        want: usize,
    },
    /// The payload is not a valid message of its kind.
    #[error("frame kind {kind}: undecodable payload: {detail}")]
    Payload {
        /// The frame kind.
        kind: u16,
        /// What the decoder said.
        detail: String,
    },
    /// The transport failed.
    #[error("frame io: {0}")]
    Io(#[from] io::Error),
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the payload holds ([`kind`]).
    pub kind: u16,
    /// Pairs a response with its request; 0 for one-way frames.
    pub request_id: u64,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Decodes the payload as the prost message `M`.
    pub fn decode<M: prost::Message + Default>(&self) -> Result<M, FrameError> {
        M::decode(self.payload.as_slice()).map_err(|e| FrameError::Payload {
            kind: self.kind,
            detail: e.to_string(),
        })
    }
}

/// What a receiver accepts: its cluster id and payload bound.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Frames of another cluster are refused.
    pub cluster_id: u64,
    /// Frames with a longer payload are refused before it is read.
    pub max_payload: u32,
}

impl FrameLimits {
    /// Limits for `cluster_id` with the default payload bound.
    pub fn new(cluster_id: u64) -> FrameLimits {
        FrameLimits {
            cluster_id,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Appends one frame holding `payload` to `out`.
pub fn encode_raw(out: &mut Vec<u8>, kind: u16, cluster_id: u64, request_id: u64, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&cluster_id.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..]);
    crc.update(payload);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// Appends one frame holding the prost message `msg` to `out`.
pub fn encode<M: prost::Message>(
    out: &mut Vec<u8>,
    kind: u16,
    cluster_id: u64,
    request_id: u64,
    msg: &M,
) {
    encode_raw(out, kind, cluster_id, request_id, &msg.encode_to_vec());
}

/// A parsed header, before the payload is read.
struct Header {
    kind: u16,
    request_id: u64,
    len: u32,
    crc: u32,
}

fn parse_header(h: &[u8; HEADER_LEN], limits: &FrameLimits) -> Result<Header, FrameError> {
    let field = |r: std::ops::Range<usize>| &h[r];
    let magic: [u8; 4] = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(field(i..i + 4));
        u32::from_le_bytes(b)
    };
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(field(i..i + 8));
        u64::from_le_bytes(b)
    };
    let version = u16_at(4);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version });
    }
    let cluster = u64_at(8);
    if cluster != limits.cluster_id {
        return Err(FrameError::Cluster {
            expected: limits.cluster_id,
            got: cluster,
        });
    }
    let len = u32_at(24);
    if len > limits.max_payload {
        return Err(FrameError::TooLarge {
            len,
            max: limits.max_payload,
        });
    }
    Ok(Header {
        kind: u16_at(6),
        request_id: u64_at(16),
        len,
        crc: u32_at(28),
    })
}

fn check(h: &[u8; HEADER_LEN], head: &Header, payload: &[u8]) -> Result<(), FrameError> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[..28]);
    crc.update(payload);
    if crc.finalize() != head.crc {
        return Err(FrameError::Checksum {
            kind: head.kind,
            len: head.len,
        });
    }
    Ok(())
}

/// Incremental decoder for a byte stream that arrives in pieces (non-blocking sockets).
#[derive(Debug)]
pub struct FrameDecoder {
    limits: FrameLimits,
    buf: Vec<u8>,
    /// Bytes of `buf` already returned as frames.
    consumed: usize,
}

impl FrameDecoder {
    /// A decoder that accepts frames within `limits`.
    pub fn new(limits: FrameLimits) -> FrameDecoder {
        FrameDecoder {
            limits,
            buf: Vec::new(),
            consumed: 0,
        }
    }

    /// Adds bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.consumed > 0 && self.consumed == self.buf.len() {
            self.buf.clear();
            self.consumed = 0;
        } else if self.consumed > (64 << 10) && self.consumed * 2 > self.buf.len() {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed. An error is final: the
    /// stream cannot be resynchronised and the connection should be dropped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let rest = &self.buf[self.consumed..];
        let Some(h) = rest.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(h);
        let head = parse_header(&header, &self.limits)?;
        let total = HEADER_LEN + head.len as usize;
        let Some(payload) = rest.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        check(&header, &head, payload)?;
        let frame = Frame {
            kind: head.kind,
            request_id: head.request_id,
            payload: payload.to_vec(),
        };
        self.consumed += total;
        Ok(Some(frame))
    }

    /// Bytes buffered that do not form a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// At the end of the stream: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.pending() {
            0 => Ok(()),
            got => Err(FrameError::Truncated {
                got,
                want: self.wanted(),
            }),
        }
    }

    fn wanted(&self) -> usize {
        let rest = &self.buf[self.consumed..];
        match rest.get(24..28) {
            Some(b) => HEADER_LEN + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => HEADER_LEN,
        }
    }
}

/// Reads one frame from a blocking stream; `Ok(None)` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read, limits: &FrameLimits) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got,
                    want: HEADER_LEN,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let head = parse_header(&header, limits)?;
    let mut payload = vec![0u8; head.len as usize];
    let mut have = 0;
    while have < payload.len() {
        match r.read(&mut payload[have..]) {
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got: HEADER_LEN + have,
                    want: HEADER_LEN + payload.len(),
                })
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    check(&header, &head, &payload)?;
    Ok(Some(Frame {
        kind: head.kind,
        request_id: head.request_id,
        payload,
    }))
}

/// Writes one frame holding the prost message `msg` to a blocking stream.
pub fn write_frame<M: prost::Message>(
    w: &mut impl Write,
    kind: u16,
    cluster_id: u64,
    request_id: u64,
    msg: &M,
) -> Result<(), FrameError> {
    let mut buf = Vec::new();
    encode(&mut buf, kind, cluster_id, request_id, msg);
    w.write_all(&buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Ping {
        #[prost(uint64, tag = "1")]
        n: u64,
        #[prost(bytes = "vec", tag = "2")]
        body: Vec<u8>,
    }

    fn limits() -> FrameLimits {
        FrameLimits {
            cluster_id: 7,
            max_payload: 1 << 20,
        }
    }

    fn frame(kind: u16, cluster: u64, req: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_raw(&mut out, kind, cluster, req, payload);
        out
    }

    #[test]
    fn a_prost_message_round_trips_through_a_blocking_stream() {
        let msg = Ping {
            n: 42,
            body: b"hello".to_vec(),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::COORD_REQUEST, 7, 9, &msg).expect("write");
        let mut r = buf.as_slice();
        let f = read_frame(&mut r, &limits())
            .expect("read")
            .expect("a frame");
        assert_eq!((f.kind, f.request_id), (kind::COORD_REQUEST, 9));
        assert_eq!(f.decode::<Ping>().expect("decode"), msg);
        assert!(read_frame(&mut r, &limits()).expect("eof").is_none());
    }

    #[test]
    fn another_cluster_version_or_magic_is_refused() {
        let other = frame(1, 8, 0, b"x");
        assert!(matches!(
            read_frame(&mut other.as_slice(), &limits()),
            Err(FrameError::Cluster {
                expected: 7,
                got: 8
            })
        ));
        let mut v2 = frame(1, 7, 0, b"x");
        v2[4] = 2;
        assert!(matches!(
            read_frame(&mut v2.as_slice(), &limits()),
            Err(FrameError::Version { got: 2 })
        ));
        let mut junk = frame(1, 7, 0, b"x");
        junk[0] = b'G';
        assert!(matches!(
            read_frame(&mut junk.as_slice(), &limits()),
            Err(FrameError::BadMagic(_))
        ));
    }

    #[test]
    fn an_oversized_frame_is_refused_before_its_payload_is_read() {
        let big = frame(1, 7, 0, &[0u8; 100]);
        let small = FrameLimits {
            cluster_id: 7,
            max_payload: 99,
        };
        // Only the header is offered: the bound is checked on the announced length.
        let mut r = &big[..HEADER_LEN];
        assert!(matches!(
            read_frame(&mut r, &small),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        ));
    }

    #[test]
    fn a_flipped_bit_or_a_cut_stream_is_detected() {
        let good = frame(1, 7, 3, b"payload bytes");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(
                read_frame(&mut bad.as_slice(), &limits()).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        for cut in 1..good.len() {
            assert!(matches!(
                read_frame(&mut &good[..cut], &limits()),
                Err(FrameError::Truncated { .. })
            ));
            let mut d = FrameDecoder::new(limits());
            d.feed(&good[..cut]);
            assert!(d.next_frame().expect("partial").is_none());
            assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
        }
    }

    proptest! {
        #[test]
        fn the_incremental_decoder_returns_every_frame_whatever_the_split(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            splits in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                encode_raw(&mut stream, 1, 7, i as u64, p);
            }
            let mut d = FrameDecoder::new(limits());
            let mut got = Vec::new();
            let mut at = 0;
            let mut s = splits.iter().cycle();
            while at < stream.len() {
                let n = (*s.next().unwrap_or(&1)).min(stream.len() - at);
                d.feed(&stream[at..at + n]);
                at += n;
                while let Some(f) = d.next_frame().expect("valid stream") {
                    got.push(f);
                }
            }
            prop_assert!(d.finish().is_ok());
            prop_assert_eq!(got.len(), payloads.len());
            for (i, (f, p)) in got.iter().zip(&payloads).enumerate() {
                prop_assert_eq!(f.request_id, i as u64);
                prop_assert_eq!(&f.payload, p);
            }
        }
    }
}
