//! `nokv-tool region list` (the catalog's regions), `nokv-tool region split` and
//! `region merge` (the `NOKV.REGION SPLIT` and `MERGE` operator commands on a store's Redis
//! port).

use crate::error::{Error, Result};
use crate::render;
use crate::resp::{Conn, Reply};
use nokv_coordinator::proto::{Peer, Route};
use serde::Serialize;
use std::time::{Duration, Instant};

/// A region's epoch.
#[derive(Debug, Serialize)]
pub struct EpochRow {
    /// Bumped by splits and merges.
    pub version: u64,
    /// Bumped by membership changes.
    pub conf_version: u64,
}

/// Hash slots `[start, end)`.
#[derive(Debug, Serialize)]
pub struct SlotsRow {
    /// First slot.
    pub start: u32,
    /// One past the last slot.
    pub end: u32,
}

/// One replica as printed.
#[derive(Debug, Serialize)]
pub struct PeerRow {
    /// Raft peer id.
    pub peer_id: u64,
    /// The store holding it.
    pub store_id: u64,
    /// The store's core hosting it (`null`: not known to the coordinator yet).
    pub core: Option<u32>,
    /// `leader`, `voter` or `learner`.
    pub role: &'static str,
    /// The store's Redis address, if the route names it.
    pub redis_addr: Option<String>,
}

/// One region as printed (`--json`: one object of the array).
#[derive(Debug, Serialize)]
pub struct RegionRow {
    /// Region id.
    pub id: u64,
    /// The range for people (`slots [a, b)` or `keys ["..", ..)`).
    pub range: String,
    /// The hash slots, for Redis-namespace regions (`null` otherwise).
    pub slots: Option<SlotsRow>,
    /// First key, hex (empty: the start of the key space).
    pub start_key: String,
    /// End key (exclusive), hex (empty: unbounded).
    pub end_key: String,
    /// The region's epoch.
    pub epoch: EpochRow,
    /// The leader (`null`: none known yet).
    pub leader: Option<PeerRow>,
    /// Every replica.
    pub peers: Vec<PeerRow>,
    /// The region's data size as its leader last reported it (`null`: not yet).
    pub approximate_size_bytes: Option<u64>,
}

fn peer_row(route: &Route, p: &Peer) -> PeerRow {
    PeerRow {
        peer_id: p.id,
        store_id: p.store_id,
        core: p.core,
        role: if p.learner {
            "learner"
        } else if route.leader_peer_id != 0 && p.id == route.leader_peer_id {
            "leader"
        } else {
            "voter"
        },
        redis_addr: route.store(p.store_id).map(|s| s.redis_addr.clone()),
    }
}

/// The printed form of a route (None: a route without a region, never sent).
pub fn row(route: &Route) -> Option<RegionRow> {
    let region = route.region.as_ref()?;
    Some(RegionRow {
        id: region.id,
        range: render::range(&region.start_key, &region.end_key),
        slots: render::slot_range(&region.start_key, &region.end_key)
            .map(|(start, end)| SlotsRow { start, end }),
        start_key: render::hex(&region.start_key),
        end_key: render::hex(&region.end_key),
        epoch: EpochRow {
            version: region.epoch_version,
            conf_version: region.epoch_conf_version,
        },
        leader: route.leader().map(|p| peer_row(route, p)),
        peers: region.peers.iter().map(|p| peer_row(route, p)).collect(),
        approximate_size_bytes: route.approximate_size_bytes,
    })
}

fn store_core(p: &PeerRow) -> String {
    match p.core {
        Some(c) => format!("{}:{c}", p.store_id),
        None => format!("{}:?", p.store_id),
    }
}

/// The human table.
pub fn table(rows: &[RegionRow]) -> String {
    if rows.is_empty() {
        return "no regions (the cluster is not bootstrapped yet)\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.range.clone(),
                format!("{}/{}", r.epoch.version, r.epoch.conf_version),
                r.approximate_size_bytes
                    .map_or_else(|| "-".into(), render::bytes),
                r.leader.as_ref().map_or_else(|| "-".into(), store_core),
                r.peers
                    .iter()
                    .map(|p| format!("{}({})", store_core(p), p.role))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    render::table(&["ID", "RANGE", "EPOCH", "SIZE", "LEADER", "PEERS"], &cells)
}

/// A split's result.
#[derive(Debug, Serialize)]
pub struct SplitDone {
    /// The region that was split (it keeps the lower part).
    pub region: u64,
    /// The new region (the upper part).
    pub new_region: u64,
    /// The first slot of the new region, when the store said or `--slot` gave it.
    pub slot: Option<u64>,
    /// The store that ran the split.
    pub store: String,
}

impl SplitDone {
    /// The line printed for people.
    pub fn line(&self) -> String {
        match self.slot {
            Some(s) => format!(
                "region {} split at slot {s}: new region {}",
                self.region, self.new_region
            ),
            None => format!(
                "region {} split: new region {}",
                self.region, self.new_region
            ),
        }
    }
}

/// What a store answered to one split command.
enum Answer {
    Done { new_region: u64, slot: Option<u64> },
    Moved { addr: String },
}

/// Sends `NOKV.REGION SPLIT <region> [<slot>]` to the store at `addr`, following one
/// `-MOVED` redirect; everything, connects included, within `timeout`.
pub fn split(
    addr: &str,
    region: u64,
    slot: Option<u16>,
    password: Option<&str>,
    timeout: Duration,
) -> Result<SplitDone> {
    let deadline = Instant::now() + timeout;
    let mut target = addr.to_string();
    let mut hops = 0;
    // Bounded: at most one redirect is followed.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let left = if left.is_zero() {
            Duration::from_millis(1)
        } else {
            left
        };
        let mut conn = Conn::connect(&target, left)?;
        match send_split(&mut conn, region, slot, password)? {
            Answer::Done { new_region, slot } => {
                return Ok(SplitDone {
                    region,
                    new_region,
                    slot,
                    store: target,
                })
            }
            Answer::Moved { addr } if hops == 0 => {
                hops += 1;
                target = addr;
            }
            Answer::Moved { addr } => {
                return Err(Error::Refused {
                    addr: target,
                    command: split_label(region, slot),
                    message: format!("MOVED to {addr} again after following one redirect"),
                })
            }
        }
    }
}

fn split_label(region: u64, slot: Option<u16>) -> String {
    match slot {
        Some(s) => format!("NOKV.REGION SPLIT {region} {s}"),
        None => format!("NOKV.REGION SPLIT {region}"),
    }
}

fn send_split(
    conn: &mut Conn,
    region: u64,
    slot: Option<u16>,
    password: Option<&str>,
) -> Result<Answer> {
    let addr = conn.addr().to_string();
    conn.auth(password)?;
    let label = split_label(region, slot);
    let region_arg = region.to_string();
    let slot_arg = slot.map(|s| s.to_string());
    let mut args: Vec<&[u8]> = vec![b"NOKV.REGION", b"SPLIT", region_arg.as_bytes()];
    if let Some(s) = &slot_arg {
        args.push(s.as_bytes());
    }
    let reply = conn.call(&args, &label)?;
    let unexpected = |detail: String| Error::Reply {
        addr: addr.clone(),
        command: label.clone(),
        detail,
    };
    match reply {
        Reply::Int(n) if n > 0 => Ok(Answer::Done {
            new_region: n as u64,
            slot: slot.map(u64::from),
        }),
        Reply::Array(Some(items)) => match items.as_slice() {
            [Reply::Int(n), Reply::Int(s)] if *n > 0 && *s >= 0 => Ok(Answer::Done {
                new_region: *n as u64,
                slot: Some(*s as u64),
            }),
            _ => Err(unexpected(format!(
                "expected [new region id, split slot], got {items:?}"
            ))),
        },
        Reply::Error(message) => match moved_to(&message) {
            Some(Ok(to)) => Ok(Answer::Moved { addr: to }),
            Some(Err(())) => Err(unexpected(format!("malformed redirect {message:?}"))),
            None => Err(Error::Refused {
                addr,
                command: label,
                message,
            }),
        },
        other => Err(unexpected(format!(
            "expected the new region's id, got {other:?}"
        ))),
    }
}

/// A merge's result.
#[derive(Debug, Serialize)]
pub struct MergeDone {
    /// The two regions merged, as given.
    pub regions: [u64; 2],
    /// The region that holds both ranges now (the other one is gone).
    pub region: u64,
    /// The store that ran the merge.
    pub store: String,
}

impl MergeDone {
    /// The line printed for people.
    pub fn line(&self) -> String {
        format!(
            "regions {} and {} merged: region {} holds both",
            self.regions[0], self.regions[1], self.region
        )
    }
}

/// Sends `NOKV.REGION MERGE <a> <b>` to the store at `addr`, within `timeout`.
pub fn merge(
    addr: &str,
    a: u64,
    b: u64,
    password: Option<&str>,
    timeout: Duration,
) -> Result<MergeDone> {
    let mut conn = Conn::connect(addr, timeout)?;
    conn.auth(password)?;
    let label = format!("NOKV.REGION MERGE {a} {b}");
    let (a_arg, b_arg) = (a.to_string(), b.to_string());
    let reply = conn.call(
        &[b"NOKV.REGION", b"MERGE", a_arg.as_bytes(), b_arg.as_bytes()],
        &label,
    )?;
    match reply {
        Reply::Int(n) if n as u64 == a || n as u64 == b => Ok(MergeDone {
            regions: [a, b],
            region: n as u64,
            store: addr.to_string(),
        }),
        Reply::Error(message) => Err(Error::Refused {
            addr: addr.to_string(),
            command: label,
            message,
        }),
        other => Err(Error::Reply {
            addr: addr.to_string(),
            command: label,
            detail: format!("expected the id of region {a} or {b}, got {other:?}"),
        }),
    }
}

/// The address of a `MOVED <slot> <host:port>` error (None: another error; Err: a MOVED
/// error that does not parse).
fn moved_to(message: &str) -> Option<std::result::Result<String, ()>> {
    let rest = message.strip_prefix("MOVED ")?;
    let mut parts = rest.split_whitespace();
    let parsed = match (parts.next(), parts.next(), parts.next()) {
        (Some(slot), Some(addr), None)
            if slot.parse::<u16>().is_ok() && crate::parse_addr(addr).is_ok() =>
        {
            Ok(addr.to_string())
        }
        _ => Err(()),
    };
    Some(parsed)
}

/// The Redis address of `route`'s leader store.
pub fn leader_redis_addr(route: &Route, region: u64) -> Result<String> {
    route
        .leader()
        .and_then(|p| route.store(p.store_id))
        .map(|s| s.redis_addr.clone())
        .filter(|a| !a.is_empty())
        .ok_or(Error::NoLeader { region })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_coordinator::proto::{Region, StoreMeta};

    #[test]
    fn moved_errors_parse() {
        assert_eq!(
            moved_to("MOVED 4096 127.0.0.1:7001"),
            Some(Ok("127.0.0.1:7001".into()))
        );
        assert_eq!(moved_to("MOVED 4096"), Some(Err(())));
        assert_eq!(moved_to("MOVED x 127.0.0.1:7001"), Some(Err(())));
        assert_eq!(moved_to("ERR nope"), None);
    }

    #[test]
    fn regions_print_peers_as_store_core_role() {
        let route = Route {
            region: Some(Region {
                id: 9,
                start_key: vec![0x10, 0x00],
                end_key: vec![0x20, 0x00],
                epoch_version: 3,
                epoch_conf_version: 5,
                peers: vec![
                    Peer {
                        id: 11,
                        store_id: 1,
                        core: Some(0),
                        learner: false,
                    },
                    Peer {
                        id: 12,
                        store_id: 2,
                        core: Some(1),
                        learner: false,
                    },
                    Peer {
                        id: 13,
                        store_id: 3,
                        core: None,
                        learner: true,
                    },
                ],
            }),
            leader_peer_id: 12,
            stores: vec![StoreMeta {
                id: 2,
                redis_addr: "127.0.0.1:6382".into(),
                ..Default::default()
            }],
            approximate_size_bytes: Some(3 << 19),
        };
        let rows = vec![row(&route).expect("row")];
        assert_eq!(
            table(&rows),
            "ID  RANGE               EPOCH  SIZE    LEADER  PEERS\n\
             9   slots [4096, 8192)  3/5    1.5MiB  2:1     1:0(voter) 2:1(leader) 3:?(learner)\n"
        );
        assert_eq!(
            leader_redis_addr(&route, 9).expect("leader"),
            "127.0.0.1:6382"
        );
        let leaderless = Route {
            leader_peer_id: 0,
            ..route
        };
        assert!(matches!(
            leader_redis_addr(&leaderless, 9),
            Err(Error::NoLeader { region: 9 })
        ));
    }
}
