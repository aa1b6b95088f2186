//! Key-value requests on a store's RPC port: one region's part of a client command, run by
//! the store that leads the region, and its answer.
//!
//! A store forwards the part of a Redis command whose region is led by another store
//! (`shard/src/forward.rs`); the cluster client (`nokv-client`) sends them directly. Each
//! travels in a [`kind::KV_REQUEST`] frame whose header's request id the
//! [`kind::KV_RESPONSE`] frame repeats; a connection carries many requests at once and
//! answers may come in any order. The command and the reply are the gateway's binary
//! encodings (`WriteCommand::encode`, `ReadOp::encode`, `Reply::to_binary`), opaque here.
//!
//! The store that receives a request never forwards it again: when it does not lead the
//! region it answers [`KvResponse::NotLeader`] with the leader it knows, and the sender
//! retries there.

use crate::wire::{self, kind};

/// What a [`KvRequest`]'s payload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum KvKind {
    /// Not set (refused).
    Unknown = 0,
    /// A read (`ReadOp::encode`), served under the leader's lease or after a ReadIndex round.
    Read = 1,
    /// A write (`WriteCommand::encode`), answered once applied.
    Write = 2,
    /// A transactional operation (`crate::txn_wire::TxnRequest`), answered with a bulk
    /// reply holding a `TxnResponse` (writes once applied) or an error reply.
    Txn = 3,
}

/// One region's part of a client command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KvRequest {
    /// The region the command's keys belong to.
    #[prost(uint64, tag = "1")]
    pub region_id: u64,
    /// Read or write.
    #[prost(enumeration = "KvKind", tag = "2")]
    pub kind: i32,
    /// The encoded command.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// How long the sender still waits, in milliseconds (0: the receiver's default).
    #[prost(uint32, tag = "4")]
    pub timeout_ms: u32,
    /// The store that forwarded the command (0: a client).
    #[prost(uint64, tag = "5")]
    pub from_store: u64,
}

/// The answer to a [`KvRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct KvResponse {
    /// What happened.
    #[prost(oneof = "KvOutcome", tags = "1, 2, 3, 4")]
    pub outcome: Option<KvOutcome>,
}

/// The outcome of a [`KvRequest`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum KvOutcome {
    /// The command ran: its reply (`Reply::to_binary`), possibly a Redis error reply.
    #[prost(bytes = "vec", tag = "1")]
    Reply(Vec<u8>),
    /// This store does not lead the region: the store it believes does (0: none known).
    #[prost(uint64, tag = "2")]
    NotLeader(u64),
    /// This store holds no replica of the region (the sender's routes are stale).
    #[prost(uint64, tag = "3")]
    RegionNotFound(u64),
    /// The request was refused (undecodable, unknown kind, the store is stopping).
    #[prost(string, tag = "4")]
    Refused(String),
}

impl KvResponse {
    /// A response carrying `outcome`.
    pub fn new(outcome: KvOutcome) -> KvResponse {
        KvResponse {
            outcome: Some(outcome),
        }
    }
}

/// Appends the frame of request `id` to `out`.
pub fn encode_request(out: &mut Vec<u8>, cluster_id: u64, id: u64, req: &KvRequest) {
    wire::encode(out, kind::KV_REQUEST, cluster_id, id, req);
}

/// Appends the frame answering request `id` to `out`.
pub fn encode_response(out: &mut Vec<u8>, cluster_id: u64, id: u64, resp: &KvResponse) {
    wire::encode(out, kind::KV_RESPONSE, cluster_id, id, resp);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameDecoder, FrameLimits};

    #[test]
    fn requests_and_responses_round_trip_in_frames() {
        let req = KvRequest {
            region_id: 9,
            kind: KvKind::Write as i32,
            payload: b"cmd".to_vec(),
            timeout_ms: 500,
            from_store: 2,
        };
        let resp = KvResponse::new(KvOutcome::NotLeader(3));
        let mut out = Vec::new();
        encode_request(&mut out, 7, 41, &req);
        encode_response(&mut out, 7, 41, &resp);
        let mut d = FrameDecoder::new(FrameLimits::new(7));
        d.feed(&out);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.request_id), (kind::KV_REQUEST, 41));
        assert_eq!(f.decode::<KvRequest>().unwrap(), req);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.request_id), (kind::KV_RESPONSE, 41));
        assert_eq!(f.decode::<KvResponse>().unwrap(), resp);
        assert_eq!(KvKind::try_from(req.kind), Ok(KvKind::Write));
    }
}
