//! Transport frames from another store: the incremental `FrameDecoder` against the
//! blocking `read_frame`, and what a store's RPC port makes of each accepted frame
//! (`InboundDecoder`: raft batches and the raft-rs messages inside, snapshot frames,
//! key-value requests).
//!
//! Input: `[chunking seed u8][stream bytes]`; the seed cuts the stream into the pieces a
//! socket would deliver (0: all at once).
//!
//! Checks: no panic, no allocation from a length field beyond the bound; the incremental
//! decoder returns the same frames as the blocking reader over the whole stream and fails
//! the same way; every payload that decodes re-encodes to a message that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_raft::snapshot_stream::SnapFrame;
use nokv_raft::transport::{Inbound, InboundDecoder, LocalStore, TransportStats};
use nokv_raft::wire::{read_frame, Frame, FrameDecoder, FrameError, FrameLimits};
use nokv_raft_fuzz::{chunks, CLUSTER};

const LIMITS: FrameLimits = FrameLimits {
    cluster_id: CLUSTER,
    max_payload: 1 << 16,
};

/// The variant of an error (details like a truncated frame's wanted size may differ).
fn variant(e: &FrameError) -> String {
    let s = format!("{e:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn incremental(pieces: &[&[u8]]) -> (Vec<Frame>, Option<String>) {
    let mut dec = FrameDecoder::new(LIMITS);
    let mut frames = Vec::new();
    for p in pieces {
        dec.feed(p);
        // Each round returns a frame (consuming its bytes) or stops.
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(variant(&e))),
            }
        }
    }
    let end = dec.finish().err().map(|e| variant(&e));
    (frames, end)
}

fn blocking(mut stream: &[u8]) -> (Vec<Frame>, Option<String>) {
    let mut frames = Vec::new();
    // Each round consumes at least a header, or ends.
    loop {
        match read_frame(&mut stream, &LIMITS) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(variant(&e))),
        }
    }
}

fn check_payloads(pieces: &[&[u8]]) {
    let stats = TransportStats::new();
    let mut dec = InboundDecoder::new(
        LIMITS,
        LocalStore {
            store_id: 2,
            cores: 2,
        },
    );
    for p in pieces {
        dec.feed(p);
        loop {
            match dec.next_inbound(&stats, true) {
                Ok(Some(Inbound::Batch(envs))) => {
                    for env in envs {
                        assert!(
                            env.to_store == 2 && env.to_core < 2,
                            "a misaddressed envelope"
                        );
                        let Ok(m) = env.message() else { continue };
                        let bytes = protobuf::Message::write_to_bytes(&m)
                            .expect("a decoded raft message encodes");
                        let again: nokv_raft::raftpb::Message =
                            protobuf::Message::parse_from_bytes(&bytes)
                                .expect("a re-encoded raft message decodes");
                        assert_eq!(again, m, "raft message round trip");
                    }
                }
                Ok(Some(Inbound::Snapshot(payload))) => {
                    if let Ok(f) = SnapFrame::decode(&payload) {
                        let again = SnapFrame::decode(&f.encode()).ok();
                        assert_eq!(again.as_ref(), Some(&f), "snapshot frame round trip");
                    }
                }
                Ok(Some(Inbound::Kv { request, .. })) => {
                    let bytes = prost::Message::encode_to_vec(&request);
                    let again: nokv_raft::kv::KvRequest = prost::Message::decode(bytes.as_slice())
                        .expect("a re-encoded request decodes");
                    assert_eq!(again, request, "key-value request round trip");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let pieces = chunks(stream, seed);
    let (inc, inc_end) = incremental(&pieces);
    let (whole, whole_end) = blocking(stream);
    assert_eq!(
        inc, whole,
        "incremental and blocking decoders disagree on the frames"
    );
    assert_eq!(
        inc_end, whole_end,
        "incremental and blocking decoders end differently"
    );
    check_payloads(&pieces);
});
