//! Region splits as a replica applies them from its log: `SplitRequest::decode` of a
//! raft entry's data, then `apply_to` a parent descriptor.
//!
//! Input: parent descriptor bytes, `SEP`, entry data (`SplitRequest::encode`'s format).
//!
//! Checks: no panic (the same refusal on every replica, never a crash); a request that
//! decodes re-encodes to exactly its bytes; a split that applies cuts the parent's range
//! at the key into two adjacent ranges, one epoch version up, with one new peer per
//! replica on the same stores.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_raft::{RegionDescriptor, SplitRequest};
use nokv_raft_fuzz::split_parts;

fuzz_target!(|data: &[u8]| {
    let parts = split_parts(data, 2);
    let entry = parts[parts.len() - 1];
    let Some(Ok(req)) = SplitRequest::decode(entry) else {
        return;
    };
    assert_eq!(req.encode(), entry, "split entry round trip");
    if parts.len() < 2 {
        return;
    }
    let Ok(parent) = RegionDescriptor::decode(parts[0]) else {
        return;
    };
    let Ok((left, child)) = req.apply_to(&parent) else {
        return;
    };
    assert_eq!(left.start_key, parent.start_key);
    assert_eq!(left.end_key, req.split_key);
    assert_eq!(child.start_key, req.split_key);
    assert_eq!(child.end_key, parent.end_key);
    assert!(left.start_key < left.end_key, "the left half is empty");
    assert!(
        child.end_key.is_empty() || child.start_key < child.end_key,
        "the right half is empty"
    );
    assert_eq!(left.epoch.version, parent.epoch.version + 1);
    assert_eq!(child.epoch, left.epoch);
    assert_eq!((left.id, child.id), (parent.id, req.new_region));
    assert_eq!(left.peers, parent.peers);
    assert_eq!(child.peers.len(), parent.peers.len());
    for (c, p) in child.peers.iter().zip(&parent.peers) {
        assert_eq!((c.store_id, c.role), (p.store_id, p.role));
        assert!(
            parent.peer(c.peer_id).is_none(),
            "a new peer reuses a parent peer id"
        );
    }
});
