//! SST block-level decoders: data and index blocks (restart array, prefix-compressed
//! entries, the sampled restart keys of index blocks), block trailers with LZ4, bloom
//! filters, the properties block, the range-deletion block, WAL batch payloads.
//!
//! Input: `[selector u8][bytes]`; the selector picks the decoder.
//!
//! Checks: no panic, no unbounded loop (cursor walks are counted against the block's
//! size), and round trips: a block built from entries reads them back in both directions
//! and seeks land where a sorted model says (sampled and unsampled alike); properties and
//! range-deletion blocks re-encode to what they decoded from.
#![no_main]

use std::cmp::Ordering;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nokv::fuzzing::{self, BlockReader};
use nokv::key::{compare_internal, make_internal_key, KIND_SEEK};
use nokv_fuzz::entries_from;

/// Walks a block forward from the first entry and backward from the last one; every step
/// consumes at least three bytes of the block, so more steps than that is a loop.
fn walk(mut b: BlockReader, len: usize) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let cap = len / 3 + 1;
    let mut fwd = Vec::new();
    b.seek_to_first();
    while b.valid() {
        assert!(fwd.len() <= cap, "forward walk does not end");
        fwd.push((b.key().to_vec(), b.value().to_vec()));
        b.next();
    }
    let fwd_ok = !b.corrupt();
    let mut back = 0;
    b.seek_to_last();
    while b.valid() {
        assert!(back <= cap, "backward walk does not end");
        back += 1;
        b.prev();
    }
    fwd_ok.then_some(fwd)
}

fn block_raw(data: &[u8], sample: bool) {
    let Some(b) = BlockReader::new(data.to_vec(), sample) else {
        return;
    };
    walk(b, data.len());
    // Seeks to keys cut from the block itself.
    if let Some(mut b) = BlockReader::new(data.to_vec(), sample) {
        for w in data.chunks(24).take(8) {
            if w.len() >= 16 {
                b.seek(w);
                let mut steps = 0;
                while b.valid() && steps < 4 {
                    b.next();
                    steps += 1;
                }
            }
        }
    }
}

/// A block built from `entries` must read back exactly, and seek like the model.
fn block_model(bytes: &[u8]) {
    let Some((&interval, rest)) = bytes.split_first() else {
        return;
    };
    let entries = entries_from(rest);
    let interval = usize::from(interval % 20) + 1;
    let data = fuzzing::build_block(&entries, interval);
    for sample in [false, true] {
        let b = BlockReader::new(data.clone(), sample).expect("a built block is valid");
        let fwd = walk(b, data.len()).expect("a built block is not corrupt");
        assert_eq!(fwd, entries, "block does not read back what was built");
        let mut b = BlockReader::new(data.clone(), sample).expect("a built block is valid");
        let mut back = Vec::new();
        b.seek_to_last();
        while b.valid() {
            back.push((b.key().to_vec(), b.value().to_vec()));
            b.prev();
        }
        back.reverse();
        assert_eq!(back, entries, "backward walk differs");
        // Seek to every key, to a lookup key just before each, and past the last.
        let mut targets: Vec<Vec<u8>> = Vec::new();
        for (k, _) in &entries {
            targets.push(k.clone());
            let logical = &k[..k.len() - 16];
            targets.push(make_internal_key(
                logical,
                u64::MAX,
                u64::MAX >> 8,
                KIND_SEEK,
            ));
        }
        targets.push(make_internal_key(b"\xff\xff\xff", 0, 0, 0));
        for t in &targets {
            b.seek(t);
            let want = entries
                .iter()
                .find(|(k, _)| compare_internal(k, t) != Ordering::Less);
            match want {
                Some((k, v)) => {
                    assert!(b.valid() && !b.corrupt(), "seek found nothing");
                    assert_eq!(
                        (b.key(), b.value()),
                        (&k[..], &v[..]),
                        "seek landed elsewhere"
                    );
                }
                None => assert!(
                    !b.valid() && !b.corrupt(),
                    "seek past the end found an entry"
                ),
            }
        }
    }
}

/// Block trailer: `stored | type | crc32(stored | type)`, with a valid crc.
fn contents(bytes: &[u8]) {
    let Some((&ty, stored)) = bytes.split_first() else {
        return;
    };
    let mut raw = stored.to_vec();
    raw.push(ty % 4);
    let mut h = crc32fast::Hasher::new();
    h.update(&raw);
    raw.extend_from_slice(&h.finalize().to_le_bytes());
    if let Ok(out) = fuzzing::decode_block_contents(raw) {
        match ty % 4 {
            0 => assert_eq!(out, stored),
            // An LZ4 block states its length; 255x is LZ4's largest expansion.
            _ => assert!(out.len() <= stored.len() * 256 + 64),
        }
    }
}

fn bloom(bytes: &[u8]) {
    let hashes: Vec<u64> = bytes
        .chunks(8)
        .take(16)
        .map(|c| c.iter().fold(0u64, |a, b| a.rotate_left(8) ^ u64::from(*b)))
        .collect();
    let _ = fuzzing::bloom_probe(bytes.to_vec(), &hashes);
}

fn properties(bytes: &[u8]) {
    if let Some(p) = fuzzing::decode_table_properties(bytes) {
        let again = fuzzing::decode_table_properties(&fuzzing::encode_table_properties(&p));
        assert_eq!(again.as_ref(), Some(&p), "properties do not round-trip");
    }
}

fn range_dels(bytes: &[u8]) {
    let path = Path::new("fuzz.sst");
    let _ = nokv::range_del::decode_block(bytes, path, 0);
    // The same bytes with a valid checksum.
    let mut sealed = bytes.to_vec();
    sealed.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    if let Ok(t) = nokv::range_del::decode_block(&sealed, path, 0) {
        let again = nokv::range_del::decode_block(&nokv::range_del::encode_block(&t), path, 0);
        assert_eq!(
            again.ok().as_ref(),
            Some(&t),
            "range-deletion block does not round-trip"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 8 {
        0 => block_raw(rest, false),
        1 => block_raw(rest, true),
        2 => block_model(rest),
        3 => contents(rest),
        4 => bloom(rest),
        5 => properties(rest),
        6 => range_dels(rest),
        _ => {
            let _ = fuzzing::decode_batch(rest);
        }
    }
});
