//! Writes the seed corpus of nokv-raft's fuzz targets (`corpus/<target>/`) from the real
//! encoders. Run from `raft/fuzz/`: `cargo run --example seeds`.

use std::path::Path;

use nokv_raft::codec::{self, Checkpoint};
use nokv_raft::raftpb::{Entry, HardState, Message, MessageType};
use nokv_raft::snapshot::SnapshotKey;
use nokv_raft::snapshot_stream::{FileMeta, SnapFrame};
use nokv_raft::transport::{encode_batch, RaftEnvelope, Route};
use nokv_raft::wire::{encode_raw, kind};
use nokv_raft::{Epoch, PeerMeta, RegionDescriptor, SplitRequest};
use nokv_raft_fuzz::{join_parts, CLUSTER};

fn save(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn with(prefix: u8, bytes: &[u8]) -> Vec<u8> {
    [[prefix].as_slice(), bytes].concat()
}

fn parent() -> RegionDescriptor {
    RegionDescriptor {
        id: 3,
        start_key: b"a".to_vec(),
        end_key: b"m".to_vec(),
        epoch: Epoch {
            version: 4,
            conf_version: 2,
        },
        peers: vec![
            PeerMeta::voter(1, 31),
            PeerMeta::voter(2, 32),
            PeerMeta::learner(3, 33),
        ],
    }
}

fn main() {
    // Codec records.
    let mut e = Entry {
        term: 3,
        index: 42,
        ..Default::default()
    };
    e.data = b"\x01write command".to_vec().into();
    e.context = b"ctx".to_vec().into();
    save("codec", "entry", &with(0, &codec::encode_entry(7, &e)));
    let hs = HardState {
        term: 3,
        vote: 2,
        commit: 41,
        ..Default::default()
    };
    save(
        "codec",
        "hard-state",
        &with(1, &codec::encode_hard_state(7, &hs)),
    );
    let c = Checkpoint {
        hard_state: hs,
        truncated_index: 40,
        truncated_term: 3,
    };
    save(
        "codec",
        "checkpoint",
        &with(2, &codec::encode_checkpoint(7, &c)),
    );

    // Region descriptors: format 2, and the same region in format 1 (no roles).
    let d = parent();
    let bytes = d.encode();
    save("region_descriptor", "format-2", &bytes);
    let mut v1 = vec![1u8];
    v1.extend_from_slice(&bytes[1..bytes.len() - 3 * 17]);
    for p in &d.peers {
        v1.extend_from_slice(&p.store_id.to_be_bytes());
        v1.extend_from_slice(&p.peer_id.to_be_bytes());
    }
    save("region_descriptor", "format-1", &v1);

    // A split of that region.
    let req = SplitRequest {
        split_key: b"g".to_vec(),
        new_region: 9,
        new_peers: vec![(1, 91), (2, 92), (3, 93)],
        epoch: d.epoch,
    };
    save(
        "split_request",
        "split",
        &join_parts(&[bytes, req.encode()]),
    );

    // Snapshot frames.
    let key = SnapshotKey {
        region: 3,
        term: 2,
        index: 40,
    };
    let data = b"table bytes".to_vec();
    let chunk = |offset: u64, data: &[u8]| SnapFrame::Chunk {
        key,
        to_core: 1,
        file: "part-0/000001.sst".into(),
        offset,
        data: data.to_vec(),
        crc: crc32fast::hash(data),
    };
    let done = SnapFrame::Done {
        key,
        to_core: 1,
        files: vec![FileMeta {
            name: "part-0/000001.sst".into(),
            size: 22,
            crc: crc32fast::hash(&[data.clone(), data.clone()].concat()),
        }],
        envelope: b"envelope".to_vec(),
    };
    let frames = [chunk(0, &data), chunk(11, &data), done];
    let payloads: Vec<Vec<u8>> = frames.iter().map(SnapFrame::encode).collect();
    save("snapshot_stream", "transfer", &join_parts(&payloads));

    // A stream of frames: a raft batch, snapshot frames, a key-value request.
    let mut msg = Message {
        msg_type: MessageType::MsgAppend,
        to: 32,
        from: 31,
        term: 3,
        log_term: 3,
        index: 41,
        commit: 41,
        ..Default::default()
    };
    msg.entries = vec![e].into();
    let route = Route {
        region_id: 3,
        epoch: d.epoch,
        from_store: 1,
        to_store: 2,
        to_core: 1,
    };
    let env = RaftEnvelope::new(route, &msg).expect("envelope");
    let mut stream = Vec::new();
    encode_batch(&mut stream, CLUSTER, vec![env.clone(), env]);
    for p in &payloads {
        encode_raw(&mut stream, kind::SNAPSHOT_CHUNK, CLUSTER, 0, p);
    }
    let req = nokv_raft::kv::KvRequest {
        region_id: 3,
        kind: 2,
        payload: b"\x01command".to_vec(),
        timeout_ms: 500,
        from_store: 0,
    };
    encode_raw(
        &mut stream,
        kind::KV_REQUEST,
        CLUSTER,
        77,
        &prost::Message::encode_to_vec(&req),
    );
    save("frames", "stream-whole", &with(0, &stream));
    save("frames", "stream-chunked", &with(5, &stream));
    println!("seeds written under corpus/");
}
