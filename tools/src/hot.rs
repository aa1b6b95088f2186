//! `nokv-tool hot`: the busiest regions of stores over their last split-check interval
//! (`NOKV.REGION HOT` on each store's Redis port), busiest first, with each region's most
//! requested sampled key and its share: a region whose share is near 1 holds a hot key that
//! no split can spread (docs/regions.md, "Split by load").

use crate::error::{Error, Result};
use crate::resp::{Conn, Reply};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One region's load on one store.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HotRow {
    /// The store's Redis address.
    pub store: String,
    /// Region id.
    pub region: u64,
    /// The core leading it there.
    pub core: u64,
    /// Requests per second over the last interval.
    pub ops_per_sec: f64,
    /// Written bytes per second.
    pub bytes_per_sec: f64,
    /// The most requested sampled key (escaped).
    pub top_key: String,
    /// Its share of the samples (0..=1).
    pub top_share: f64,
}

/// Parses one `NOKV.REGION HOT` line.
fn parse_line(store: &str, line: &str) -> Option<HotRow> {
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
    };
    let key = line
        .split_once("top_key=\"")
        .and_then(|(_, rest)| rest.rsplit_once("\" top_share="))
        .map(|(k, _)| k.to_string())?;
    Some(HotRow {
        store: store.to_string(),
        region: field("region")?.parse().ok()?,
        core: field("core")?.parse().ok()?,
        ops_per_sec: field("ops_per_sec")?.parse().ok()?,
        bytes_per_sec: field("bytes_per_sec")?.parse().ok()?,
        top_key: key,
        top_share: line.rsplit_once("top_share=")?.1.trim().parse().ok()?,
    })
}

/// Asks every store in `addrs` for its busiest regions; all rows, busiest first.
pub fn hot(addrs: &[String], password: Option<&str>, timeout: Duration) -> Result<Vec<HotRow>> {
    let deadline = Instant::now() + timeout;
    let mut rows = Vec::new();
    for addr in addrs {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let mut conn = Conn::connect(addr, left)?;
        conn.auth(password)?;
        let label = "NOKV.REGION HOT";
        let bad = |detail: String| Error::Reply {
            addr: addr.clone(),
            command: label.into(),
            detail,
        };
        match conn.call(&[b"NOKV.REGION", b"HOT"], label)? {
            Reply::Array(Some(items)) => {
                for item in items {
                    let Reply::Bulk(Some(b)) = item else {
                        return Err(bad(format!("expected bulk lines, got {item:?}")));
                    };
                    let line = String::from_utf8_lossy(&b).into_owned();
                    rows.push(
                        parse_line(addr, &line)
                            .ok_or_else(|| bad(format!("unreadable line {line:?}")))?,
                    );
                }
            }
            Reply::Error(message) => {
                return Err(Error::Refused {
                    addr: addr.clone(),
                    command: label.into(),
                    message,
                })
            }
            other => return Err(bad(format!("expected an array, got {other:?}"))),
        }
    }
    rows.sort_by(|a, b| b.ops_per_sec.total_cmp(&a.ops_per_sec));
    Ok(rows)
}

/// The rows as a table.
pub fn table(rows: &[HotRow]) -> String {
    let header = [
        "STORE", "REGION", "CORE", "OPS/S", "BYTES/S", "TOP KEY", "SHARE",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.store.clone(),
                r.region.to_string(),
                r.core.to_string(),
                format!("{:.1}", r.ops_per_sec),
                format!("{:.0}", r.bytes_per_sec),
                r.top_key.clone(),
                format!("{:.2}", r.top_share),
            ]
        })
        .collect();
    crate::render::table(&header, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_line_parses_and_a_broken_one_does_not() {
        let line = "region=7 core=1 ops_per_sec=1234.5 bytes_per_sec=99 top_key=\"the \\\"hot\\\" key\" top_share=0.97";
        let row = parse_line("s:1", line).expect("parses");
        assert_eq!(row.region, 7);
        assert_eq!(row.core, 1);
        assert_eq!(row.ops_per_sec, 1234.5);
        assert_eq!(row.top_key, "the \\\"hot\\\" key");
        assert_eq!(row.top_share, 0.97);
        assert!(parse_line("s:1", "region=x core=1").is_none());
        assert!(table(&[row]).contains("1234.5"));
    }
}
