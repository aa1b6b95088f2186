//! Raft log records as the WAL replays them (`codec`: entries, hard states, checkpoints).
//!
//! Input: `[selector u8][record bytes]`.
//!
//! Checks: no panic; a record that decodes re-encodes to exactly the same bytes (the
//! encodings are canonical: fixed-width integers, one entry type byte, length-prefixed data).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_raft::codec;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rec)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok((region, e)) = codec::decode_entry(rec) {
                assert_eq!(codec::encode_entry(region, &e), rec, "entry round trip");
            }
        }
        1 => {
            if let Ok((region, hs)) = codec::decode_hard_state(rec) {
                assert_eq!(
                    codec::encode_hard_state(region, &hs),
                    rec,
                    "hard state round trip"
                );
            }
        }
        _ => {
            if let Ok((region, c)) = codec::decode_checkpoint(rec) {
                assert_eq!(
                    codec::encode_checkpoint(region, &c),
                    rec,
                    "checkpoint round trip"
                );
            }
        }
    }
});
