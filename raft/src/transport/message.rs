//! The messages stores exchange: a raft message addressed to one peer on one (store, core),
//! and a batch of them, the payload of one [`wire::kind::RAFT_BATCH`] frame.
//!
//! Hand-written prost structs (no protoc). The raft-rs message inside travels as opaque
//! bytes (raft-rs 0.7's rust-protobuf codec), so this layer never depends on its schema.

use crate::error::{Error, Result};
use crate::raftpb::Message;
use crate::region::Epoch;
use crate::wire::{self, kind};

/// One raft message for one peer, with everything the receiving store needs to route it
/// to the owning core and to check it against the region it knows.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftEnvelope {
    /// The region (raft group).
    #[prost(uint64, tag = "1")]
    pub region_id: u64,
    /// The sending peer.
    #[prost(uint64, tag = "2")]
    pub from_peer: u64,
    /// The receiving peer.
    #[prost(uint64, tag = "3")]
    pub to_peer: u64,
    /// The sender's region epoch: membership version.
    #[prost(uint64, tag = "4")]
    pub conf_ver: u64,
    /// The sender's region epoch: split/merge version.
    #[prost(uint64, tag = "5")]
    pub version: u64,
    /// The sending store.
    #[prost(uint64, tag = "6")]
    pub from_store: u64,
    /// The receiving store.
    #[prost(uint64, tag = "7")]
    pub to_store: u64,
    /// The core of the receiving store that owns `to_peer`.
    #[prost(uint32, tag = "8")]
    pub to_core: u32,
    /// The raft-rs message, serialised with its own codec ([`RaftEnvelope::message`]).
    #[prost(bytes = "vec", tag = "9")]
    pub message: Vec<u8>,
}

/// The raft messages of one frame, all for one store.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    /// The messages, in the order they were sent.
    #[prost(message, repeated, tag = "1")]
    pub envelopes: Vec<RaftEnvelope>,
}

/// Where a raft message goes and who sends it: the addressing part of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The region.
    pub region_id: u64,
    /// The sender's region epoch.
    pub epoch: Epoch,
    /// The sending store.
    pub from_store: u64,
    /// The receiving store.
    pub to_store: u64,
    /// The receiving store's core that owns the region's peer.
    pub to_core: u32,
}

impl RaftEnvelope {
    /// Wraps a raft-rs message (its `from` and `to` peers are taken from it).
    pub fn new(route: Route, msg: &Message) -> Result<RaftEnvelope> {
        let bytes = protobuf::Message::write_to_bytes(msg).map_err(|e| Error::Message {
            region: route.region_id,
            detail: format!("encode raft message: {e}"),
        })?;
        Ok(RaftEnvelope {
            region_id: route.region_id,
            from_peer: msg.from,
            to_peer: msg.to,
            conf_ver: route.epoch.conf_version,
            version: route.epoch.version,
            from_store: route.from_store,
            to_store: route.to_store,
            to_core: route.to_core,
            message: bytes,
        })
    }

    /// The raft-rs message it carries.
    pub fn message(&self) -> Result<Message> {
        protobuf::Message::parse_from_bytes(&self.message).map_err(|e| Error::Message {
            region: self.region_id,
            detail: format!("decode raft message: {e}"),
        })
    }

    /// The sender's region epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch {
            version: self.version,
            conf_version: self.conf_ver,
        }
    }

    /// Bytes this envelope adds to a batch payload (its encoding with the field header).
    pub fn batch_bytes(&self) -> usize {
        let len = prost::Message::encoded_len(self);
        // Tag (1 byte) + length varint + the message.
        1 + prost::encoding::encoded_len_varint(len as u64) + len
    }
}

/// Appends one [`kind::RAFT_BATCH`] frame holding `envelopes` to `out`.
pub fn encode_batch(out: &mut Vec<u8>, cluster_id: u64, envelopes: Vec<RaftEnvelope>) {
    wire::encode(
        out,
        kind::RAFT_BATCH,
        cluster_id,
        0,
        &RaftBatch { envelopes },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raftpb::{Entry, MessageType};
    use crate::wire::{FrameDecoder, FrameLimits};
    use proptest::prelude::*;

    fn envelope() -> impl Strategy<Value = RaftEnvelope> {
        (
            any::<[u64; 7]>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(|(n, to_core, message)| RaftEnvelope {
                region_id: n[0],
                from_peer: n[1],
                to_peer: n[2],
                conf_ver: n[3],
                version: n[4],
                from_store: n[5],
                to_store: n[6],
                to_core,
                message,
            })
    }

    proptest! {
        #[test]
        fn a_batch_round_trips_through_a_frame(
            envelopes in proptest::collection::vec(envelope(), 0..20),
        ) {
            let mut frame = Vec::new();
            encode_batch(&mut frame, 7, envelopes.clone());
            let expected_payload: usize = envelopes.iter().map(RaftEnvelope::batch_bytes).sum();
            prop_assert_eq!(frame.len(), wire::HEADER_LEN + expected_payload);
            let mut d = FrameDecoder::new(FrameLimits::new(7));
            d.feed(&frame);
            let f = d.next_frame().expect("valid").expect("whole");
            prop_assert_eq!(f.kind, kind::RAFT_BATCH);
            let batch: RaftBatch = f.decode().expect("decodes");
            prop_assert_eq!(batch.envelopes, envelopes);
        }

        #[test]
        fn a_raft_message_round_trips_through_an_envelope(
            from in 1u64..1000, to in 1u64..1000, term in any::<u64>(), index in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            version in any::<u64>(), conf_version in any::<u64>(), to_core in any::<u32>(),
        ) {
            let mut msg = Message::default();
            msg.set_msg_type(MessageType::MsgAppend);
            msg.from = from;
            msg.to = to;
            msg.term = term;
            msg.index = index;
            let e = Entry {
                data: data.into(),
                index: index.wrapping_add(1),
                ..Entry::default()
            };
            msg.entries = vec![e].into();
            let route = Route {
                region_id: 9,
                epoch: Epoch { version, conf_version },
                from_store: 1,
                to_store: 2,
                to_core,
            };
            let env = RaftEnvelope::new(route, &msg).expect("encode");
            prop_assert_eq!((env.from_peer, env.to_peer, env.to_core), (from, to, to_core));
            prop_assert_eq!(env.epoch(), route.epoch);
            let bytes = prost::Message::encode_to_vec(&env);
            let back: RaftEnvelope = prost::Message::decode(bytes.as_slice()).expect("decode");
            prop_assert_eq!(&back, &env);
            prop_assert_eq!(back.message().expect("raft message"), msg);
        }
    }

    #[test]
    fn garbage_message_bytes_are_an_error_not_a_panic() {
        let env = RaftEnvelope {
            region_id: 3,
            message: vec![0xff; 9],
            ..RaftEnvelope::default()
        };
        let e = env.message().expect_err("garbage");
        assert!(e.to_string().contains("region 3"), "{e}");
    }
}
