//! Helpers shared by the gateway's fuzz targets and their seed generator (`examples/seeds.rs`).

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

/// Checks that `out` is a sequence of whole, well-formed RESP2/RESP3 frames (what a
/// client must be able to read); returns the number of top-level frames, or why not.
pub fn check_resp_stream(out: &[u8]) -> Result<usize, String> {
    let mut pos = 0;
    let mut n = 0;
    while pos < out.len() {
        pos = frame(out, pos, 0)?;
        n += 1;
    }
    Ok(n)
}

fn line(out: &[u8], pos: usize) -> Result<(&[u8], usize), String> {
    let rest = out.get(pos..).ok_or("frame past the end")?;
    let cr = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .ok_or_else(|| format!("unterminated line at {pos}"))?;
    if rest.get(cr..cr + 2) != Some(b"\r\n") {
        return Err(format!("bare CR or LF at {}", pos + cr));
    }
    Ok((&rest[..cr], pos + cr + 2))
}

fn int(l: &[u8], pos: usize) -> Result<i64, String> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad integer {:?} at {pos}", String::from_utf8_lossy(l)))
}

fn frame(out: &[u8], pos: usize, depth: usize) -> Result<usize, String> {
    if depth > 64 {
        return Err("frames nested too deep".into());
    }
    let t = *out.get(pos).ok_or("frame past the end")?;
    let (l, next) = line(out, pos + 1)?;
    match t {
        b'+' | b'-' | b',' | b'(' => Ok(next),
        b':' => int(l, pos).map(|_| next),
        b'#' if l == b"t" || l == b"f" => Ok(next),
        b'_' if l.is_empty() => Ok(next),
        b'$' | b'=' | b'!' => {
            let n = int(l, pos)?;
            if n == -1 && t == b'$' {
                return Ok(next);
            }
            let n = usize::try_from(n).map_err(|_| format!("bad length at {pos}"))?;
            let end = next.checked_add(n).ok_or("length overflow")?;
            let body = out.get(next..end).ok_or("bulk past the end")?;
            if t == b'=' && (n < 4 || body[3] != b':') {
                return Err(format!("bad verbatim string at {pos}"));
            }
            if out.get(end..end + 2) != Some(b"\r\n") {
                return Err(format!("bulk at {pos} not followed by CRLF"));
            }
            Ok(end + 2)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int(l, pos)?;
            if n == -1 && t == b'*' {
                return Ok(next);
            }
            let n = usize::try_from(n).map_err(|_| format!("bad count at {pos}"))?;
            let items = if matches!(t, b'%' | b'|') { 2 * n } else { n };
            let mut p = next;
            for _ in 0..items {
                p = frame(out, p, depth + 1)?;
            }
            if t == b'|' {
                // Attributes precede the frame they describe.
                p = frame(out, p, depth + 1)?;
            }
            Ok(p)
        }
        other => Err(format!("unknown frame type {:?} at {pos}", other as char)),
    }
}
