//! Region descriptors as stored in the meta namespace and carried by snapshots
//! (`RegionDescriptor::decode`, formats 1 and 2).
//!
//! Checks: no panic, no allocation from the peer count beyond the input; a format-2
//! descriptor re-encodes to exactly its bytes, a format-1 one to a descriptor that decodes
//! the same; the range checks agree with the bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_raft::RegionDescriptor;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = RegionDescriptor::decode(data) else {
        return;
    };
    let bytes = d.encode();
    if data[0] == 2 {
        assert_eq!(bytes, data, "descriptor round trip");
    }
    assert_eq!(RegionDescriptor::decode(&bytes).ok().as_ref(), Some(&d));
    assert_eq!(
        d.contains(&d.start_key),
        d.end_key.is_empty() || d.start_key < d.end_key
    );
    for p in &d.peers {
        assert!(d.peer(p.peer_id).is_some() && d.peer_on_store(p.store_id).is_some());
    }
});
