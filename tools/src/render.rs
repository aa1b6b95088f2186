//! Text forms shared by the subcommands: key ranges (hash slots or escaped bytes), ages,
//! and aligned tables.

use nokv_gateway::model::SLOTS;

/// The hash slots `[start, end)` a region covers, if both bounds are slot bounds: empty (the
/// start or end of the key space) or a 2-byte big-endian slot number up to [`SLOTS`], as
/// Redis-namespace regions are (shard/src/layout.rs).
pub fn slot_range(start: &[u8], end: &[u8]) -> Option<(u32, u32)> {
    let bound = |key: &[u8], empty: u32| -> Option<u32> {
        match key {
            [] => Some(empty),
            [a, b] => Some(u16::from_be_bytes([*a, *b]) as u32).filter(|s| *s <= SLOTS as u32),
            _ => None,
        }
    };
    let (s, e) = (bound(start, 0)?, bound(end, SLOTS as u32)?);
    (s < e).then_some((s, e))
}

/// `bytes` with printable ASCII as is and everything else (and `\` and `"`) escaped.
pub fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// A region's range for people: `slots [a, b)` for Redis-namespace regions, else
/// `keys ["start", "end")` with escaped bytes (`+inf` for an unbounded end).
pub fn range(start: &[u8], end: &[u8]) -> String {
    match slot_range(start, end) {
        Some((s, e)) => format!("slots [{s}, {e})"),
        None => {
            let end = if end.is_empty() {
                "+inf".to_string()
            } else {
                format!("\"{}\"", escape(end))
            };
            format!("keys [\"{}\", {end})", escape(start))
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A duration in milliseconds, short: `850ms`, `12.3s`, `5m03s`, `2h05m`.
pub fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A byte count, short: `512B`, `3.4KiB`, `96.0MiB`, `1.2GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// `rows` under `headers`, columns left-aligned and two spaces apart, one line each.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                pad.saturating_sub(cell.chars().count()),
            ));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_print_short() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(3 * 1024 + 400), "3.4KiB");
        assert_eq!(bytes(96 << 20), "96.0MiB");
        assert_eq!(bytes(5 << 40), "5.0TiB");
        assert_eq!(bytes(u64::MAX), "16777216.0TiB");
    }

    #[test]
    fn slot_bounds_print_as_slots_and_other_keys_escaped() {
        assert_eq!(range(b"", &[0x10, 0x00]), "slots [0, 4096)");
        assert_eq!(range(&[0x10, 0x00], &[0x20, 0x00]), "slots [4096, 8192)");
        assert_eq!(range(&[0x30, 0x00], b""), "slots [12288, 16384)");
        assert_eq!(range(b"", b""), "slots [0, 16384)");
        assert_eq!(range(b"m", b""), "keys [\"m\", +inf)");
        assert_eq!(range(b"", b"a\x00\"\\"), "keys [\"\", \"a\\x00\\\"\\\\\")");
        // Two bytes above the slot count are a key, not a slot.
        assert_eq!(range(b"ab", b"ac"), "keys [\"ab\", \"ac\")");
        assert_eq!(range(b"abc", b""), "keys [\"abc\", +inf)");
        assert_eq!(slot_range(&[0x10, 0x00], &[0x10, 0x00]), None);
        assert_eq!(hex(&[0x00, 0xab]), "00ab");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(0), "0ms");
        assert_eq!(age(999), "999ms");
        assert_eq!(age(12_345), "12.3s");
        assert_eq!(age(303_000), "5m03s");
        assert_eq!(age(7_500_000), "2h05m");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME", "X"],
            &[
                vec!["1".into(), "long-name".into(), "a".into()],
                vec!["22".into(), "n".into(), "".into()],
            ],
        );
        assert_eq!(t, "ID  NAME       X\n1   long-name  a\n22  n\n");
    }
}
