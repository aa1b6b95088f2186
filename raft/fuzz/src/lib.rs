//! Helpers shared by nokv-raft's fuzz targets and their seed generator (`examples/seeds.rs`).

/// Separates the parts of one input.
pub const SEP: &[u8] = b"\xffNOKVSEP";

/// The cluster id the targets' decoders accept.
pub const CLUSTER: u64 = 7;

/// Splits `data` at [`SEP`] into at most `max` parts (the last one keeps any later separator).
pub fn split_parts(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() + 1 < max {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// The inverse of [`split_parts`] (for seeds).
pub fn join_parts(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEP);
        }
        out.extend_from_slice(p);
    }
    out
}

/// Cuts `data` into chunks whose sizes come from `seed` (1 to 64 bytes, or all at once
/// when `seed` is 0), as a socket may deliver them.
pub fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut state = u32::from(seed);
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((state >> 16) as usize % 64 + 1).min(rest.len());
        out.push(&rest[..n]);
        rest = &rest[n..];
    }
    out
}
