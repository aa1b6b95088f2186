//! The receiving side of one connection: bytes in, validated raft messages out.
//!
//! Frame-level checks (magic, protocol version, cluster id, size bound, checksum, a
//! stream that ends inside a frame, a payload that is not a raft batch) are final: the
//! error is counted, the caller drops the connection, and nothing of that frame is
//! delivered. Message-level checks (addressed to this store, to a core it has) reject
//! the one message, counted, and the rest of the frame goes on.

use super::message::RaftBatch;
use super::message::RaftEnvelope;
use super::stats::{EnvelopeReject, Event, FrameReject, TransportStats};
use crate::wire::{kind, FrameDecoder, FrameError, FrameLimits};

/// Who this store is, for message checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalStore {
    /// This store's id.
    pub store_id: u64,
    /// Its number of cores (valid `to_core` values are below it).
    pub cores: u32,
}

/// One accepted frame.
#[derive(Debug)]
pub enum Inbound {
    /// The raft messages of a batch that passed the message checks.
    Batch(Vec<RaftEnvelope>),
    /// The payload of a snapshot frame (`crate::snapshot_stream::SnapFrame`).
    Snapshot(Vec<u8>),
    /// A key-value request (`crate::kv::KvRequest`), to be answered on this connection
    /// with the frame's request id.
    Kv {
        /// The frame's request id.
        request_id: u64,
        /// The request.
        request: crate::kv::KvRequest,
    },
}

/// Decodes and checks the frames of one incoming connection.
#[derive(Debug)]
pub struct InboundDecoder {
    frames: FrameDecoder,
    local: LocalStore,
}

impl InboundDecoder {
    /// A decoder for a connection to `local`, accepting frames within `limits`.
    pub fn new(limits: FrameLimits, local: LocalStore) -> InboundDecoder {
        InboundDecoder {
            frames: FrameDecoder::new(limits),
            local,
        }
    }

    /// Adds bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.frames.feed(bytes);
    }

    /// The accepted messages of the next whole frame (possibly none), `Ok(None)` when more
    /// bytes are needed. An error has been counted in `stats` and is final: drop the
    /// connection.
    pub fn next_batch(
        &mut self,
        stats: &TransportStats,
    ) -> Result<Option<Vec<RaftEnvelope>>, FrameError> {
        match self.next_inbound(stats, false)? {
            Some(Inbound::Batch(envs)) => Ok(Some(envs)),
            Some(Inbound::Snapshot(_) | Inbound::Kv { .. }) | None => Ok(None),
        }
    }

    /// Like [`InboundDecoder::next_batch`], and with `store` (a store's RPC port, not a
    /// transport alone) a [`kind::SNAPSHOT_CHUNK`] frame's payload is handed back as it
    /// is, and a [`kind::KV_REQUEST`] frame decoded.
    pub fn next_inbound(
        &mut self,
        stats: &TransportStats,
        store: bool,
    ) -> Result<Option<Inbound>, FrameError> {
        let frame = match self.frames.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(counted(stats, e)),
        };
        if store && frame.kind == kind::SNAPSHOT_CHUNK {
            return Ok(Some(Inbound::Snapshot(frame.payload)));
        }
        if store && frame.kind == kind::KV_REQUEST {
            let request = frame.decode().map_err(|e| counted(stats, e))?;
            return Ok(Some(Inbound::Kv {
                request_id: frame.request_id,
                request,
            }));
        }
        if frame.kind != kind::RAFT_BATCH {
            return Err(counted(
                stats,
                FrameError::Payload {
                    kind: frame.kind,
                    detail: "not a raft batch, snapshot chunk or key-value request".into(),
                },
            ));
        }
        let batch: RaftBatch = frame.decode().map_err(|e| counted(stats, e))?;
        let mut out = Vec::with_capacity(batch.envelopes.len());
        for env in batch.envelopes {
            let reject = if env.to_store != self.local.store_id {
                Some(EnvelopeReject::WrongStore)
            } else if env.to_core >= self.local.cores {
                Some(EnvelopeReject::NoSuchCore)
            } else {
                None
            };
            match reject {
                Some(r) => stats.add(Event::EnvelopeRejected(r), 1),
                None => out.push(env),
            }
        }
        stats.add(Event::MessagesReceived, out.len() as u64);
        Ok(Some(Inbound::Batch(out)))
    }

    /// At the end of the stream: an error (counted) if it stopped inside a frame.
    pub fn finish(&self, stats: &TransportStats) -> Result<(), FrameError> {
        self.frames.finish().map_err(|e| counted(stats, e))
    }
}

fn counted(stats: &TransportStats, e: FrameError) -> FrameError {
    if let Some(r) = FrameReject::of(&e) {
        stats.add(Event::FrameRejected(r), 1);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::message::encode_batch;
    use crate::wire::{encode_raw, HEADER_LEN};

    const LOCAL: LocalStore = LocalStore {
        store_id: 2,
        cores: 2,
    };

    fn env(to_store: u64, to_core: u32) -> RaftEnvelope {
        RaftEnvelope {
            region_id: 5,
            to_store,
            to_core,
            message: b"m".to_vec(),
            ..RaftEnvelope::default()
        }
    }

    fn decoder() -> InboundDecoder {
        InboundDecoder::new(
            FrameLimits {
                cluster_id: 7,
                max_payload: 4096,
            },
            LOCAL,
        )
    }

    #[test]
    fn messages_for_another_store_or_core_are_rejected_and_counted() {
        let stats = TransportStats::new();
        let mut d = decoder();
        let mut bytes = Vec::new();
        encode_batch(
            &mut bytes,
            7,
            vec![env(2, 0), env(3, 0), env(2, 2), env(2, 1)],
        );
        d.feed(&bytes);
        let got = d.next_batch(&stats).expect("valid").expect("whole");
        assert_eq!(got, vec![env(2, 0), env(2, 1)]);
        assert_eq!(
            stats.get(Event::EnvelopeRejected(EnvelopeReject::WrongStore)),
            1
        );
        assert_eq!(
            stats.get(Event::EnvelopeRejected(EnvelopeReject::NoSuchCore)),
            1
        );
        assert_eq!(stats.get(Event::MessagesReceived), 2);
        assert!(d.next_batch(&stats).expect("empty").is_none());
        d.finish(&stats).expect("clean end");
    }

    #[test]
    fn bad_frames_are_final_and_counted_by_reason() {
        let stats = TransportStats::new();
        let mut good = Vec::new();
        encode_batch(&mut good, 7, vec![env(2, 0)]);
        let cases: Vec<(Vec<u8>, FrameReject)> = vec![
            {
                let mut b = Vec::new();
                encode_batch(&mut b, 8, vec![env(2, 0)]);
                (b, FrameReject::Cluster)
            },
            {
                let mut b = good.clone();
                b[4] = 9;
                (b, FrameReject::Version)
            },
            (
                b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
                FrameReject::Magic,
            ),
            {
                let mut b = Vec::new();
                encode_raw(&mut b, kind::RAFT_BATCH, 7, 0, &[0u8; 5000]);
                (b, FrameReject::TooLarge)
            },
            {
                let mut b = good.clone();
                let last = b.len() - 1;
                b[last] ^= 1;
                (b, FrameReject::Checksum)
            },
            {
                let mut b = Vec::new();
                encode_raw(&mut b, kind::KV_REQUEST, 7, 0, b"x");
                (b, FrameReject::Payload)
            },
            {
                let mut b = Vec::new();
                encode_raw(&mut b, kind::RAFT_BATCH, 7, 0, &[0xff, 0xff, 0xff]);
                (b, FrameReject::Payload)
            },
        ];
        for (bytes, reason) in cases {
            let before = stats.get(Event::FrameRejected(reason));
            let mut d = decoder();
            d.feed(&bytes);
            assert!(d.next_batch(&stats).is_err(), "{reason:?} accepted");
            assert_eq!(
                stats.get(Event::FrameRejected(reason)),
                before + 1,
                "{reason:?}"
            );
        }
        // A cut stream: no frame, then an error at the end.
        let mut d = decoder();
        d.feed(&good[..HEADER_LEN + 1]);
        assert!(d.next_batch(&stats).expect("partial").is_none());
        assert!(d.finish(&stats).is_err());
        assert_eq!(stats.get(Event::FrameRejected(FrameReject::Truncated)), 1);
        assert_eq!(stats.get(Event::MessagesReceived), 0);
    }
}
