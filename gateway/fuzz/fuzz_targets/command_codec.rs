//! The binary codecs of commands and replies that travel between stores and through the
//! raft log (`WriteCommand`, `ReadOp`, `Reply::{to,from}_binary`): a store decodes them
//! from a peer's key-value requests and from its log at apply time.
//!
//! Input: `[selector u8][bytes]`.
//!
//! Checks: no panic, no allocation from a count beyond the input, bounded nesting; what
//! decodes re-encodes to bytes that decode and re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nokv_gateway::{ReadOp, Reply, WriteCommand};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(c) = WriteCommand::decode(bytes) {
                let enc = c.encode();
                let again = WriteCommand::decode(&enc).expect("a re-encoded write decodes");
                assert_eq!(again.encode(), enc, "write command round trip");
            }
        }
        1 => {
            if let Ok(op) = ReadOp::decode(bytes) {
                let enc = op.encode();
                let again = ReadOp::decode(&enc).expect("a re-encoded read decodes");
                assert_eq!(again, op, "read op round trip");
            }
        }
        _ => {
            if let Ok(r) = Reply::from_binary(bytes) {
                let enc = r.to_binary();
                let again = Reply::from_binary(&enc).expect("a re-encoded reply decodes");
                assert_eq!(again.to_binary(), enc, "reply round trip");
            }
        }
    }
});
