//! `nokv-tool stores`: the registered stores, their addresses and liveness.

use crate::render;
use nokv_coordinator::proto::{StoreAdminState, StoreInfo, StoreState};
use serde::Serialize;

/// One store as printed (`--json`: one object of the array).
#[derive(Debug, Serialize)]
pub struct StoreRow {
    /// Store id.
    pub id: u64,
    /// The store's Redis port.
    pub redis_addr: String,
    /// The store's internal RPC port.
    pub rpc_addr: String,
    /// Cores (executors) the store runs.
    pub cores: u32,
    /// The store's build version.
    pub version: String,
    /// `up`, `down` or `unknown`.
    pub state: &'static str,
    /// `serving`, `decommissioning` (its replicas move away) or `removed` (drained).
    pub admin_state: &'static str,
    /// Milliseconds since the store's last heartbeat; `null` once another store registered
    /// at its RPC address (`replaced`).
    pub since_heartbeat_ms: Option<u64>,
    /// Another store registered at this store's RPC address (its disk was wiped or it
    /// moved): this one is gone.
    pub replaced: bool,
    /// Region replicas, from the last heartbeat (`null` before the first).
    pub regions: Option<u64>,
    /// Region leaders, from the last heartbeat (`null` before the first).
    pub leaders: Option<u64>,
}

/// The printed form of a coordinator's store record.
pub fn row(info: &StoreInfo) -> StoreRow {
    let meta = info.meta.clone().unwrap_or_default();
    let state = match StoreState::try_from(info.state) {
        Ok(StoreState::Up) => "up",
        Ok(StoreState::Down) => "down",
        _ => "unknown",
    };
    let replaced = info.since_heartbeat_ms == u64::MAX;
    let admin_state = match meta.admin_state() {
        StoreAdminState::Serving => "serving",
        StoreAdminState::Decommissioning => "decommissioning",
        StoreAdminState::Removed => "removed",
    };
    StoreRow {
        admin_state,
        id: meta.id,
        redis_addr: meta.redis_addr,
        rpc_addr: meta.rpc_addr,
        cores: meta.cores,
        version: meta.version,
        state,
        since_heartbeat_ms: (!replaced).then_some(info.since_heartbeat_ms),
        replaced,
        regions: info.stats.as_ref().map(|s| s.region_count),
        leaders: info.stats.as_ref().map(|s| s.leader_count),
    }
}

/// The `STATE` cell: the liveness of a serving store (`up`, `down`), `decommissioning`
/// (`decommissioning,down` when down) or `removed`.
pub fn state_cell(r: &StoreRow) -> String {
    match r.admin_state {
        "serving" => r.state.to_string(),
        "removed" => "removed".to_string(),
        admin if r.state == "up" => admin.to_string(),
        admin => format!("{admin},{}", r.state),
    }
}

/// One line for `store decommission`.
pub fn decommission_line(r: &StoreRow) -> String {
    match r.admin_state {
        "removed" => format!("store {} is removed (it holds no replica)\n", r.id),
        _ => format!(
            "store {} is decommissioning: the scheduler moves its replicas away, then marks it removed (watch `nokv-tool stores`)\n",
            r.id
        ),
    }
}

/// The human table.
pub fn table(rows: &[StoreRow]) -> String {
    if rows.is_empty() {
        return "no stores registered\n".into();
    }
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                state_cell(r),
                match r.since_heartbeat_ms {
                    Some(ms) => render::age(ms),
                    None => "replaced".into(),
                },
                r.cores.to_string(),
                r.redis_addr.clone(),
                r.rpc_addr.clone(),
                opt(r.regions),
                opt(r.leaders),
                if r.version.is_empty() {
                    "-".into()
                } else {
                    r.version.clone()
                },
            ]
        })
        .collect();
    render::table(
        &[
            "ID",
            "STATE",
            "HEARTBEAT",
            "CORES",
            "REDIS",
            "RPC",
            "REGIONS",
            "LEADERS",
            "VERSION",
        ],
        &cells,
    )
}
