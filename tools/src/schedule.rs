//! `nokv-tool schedule`: the coordinator scheduler's operators in flight and counters, and
//! switching it on or off.

use crate::render;
use nokv_coordinator::proto::{OperatorKind, OperatorsResponse};
use serde::Serialize;

/// One operator as printed (`--json`: one object of `operators`).
#[derive(Debug, Serialize)]
pub struct OperatorRow {
    /// The operator's id (unique within one coordinator leadership).
    pub id: u64,
    /// The region.
    pub region: u64,
    /// `add-learner`, `promote`, `remove-peer`, `transfer-leader` or `unknown`.
    pub kind: &'static str,
    /// The peer the step is about.
    pub peer_id: u64,
    /// The peer's store.
    pub store: u64,
    /// The peer's core (`null`: not known).
    pub core: Option<u32>,
    /// The store the step moves away from (`null`: none).
    pub from_store: Option<u64>,
    /// `repair`, `decommission`, `balance-region`, `balance-size`, `balance-leader` or
    /// `balance-leader-load`.
    pub reason: String,
    /// Milliseconds since the operator was issued.
    pub age_ms: u64,
}

/// The scheduler as printed.
#[derive(Debug, Serialize)]
pub struct Schedule {
    /// Whether the scheduler issues new operators.
    pub enabled: bool,
    /// Operators issued since this coordinator leads.
    pub issued: u64,
    /// Operators the heartbeats showed done.
    pub completed: u64,
    /// Operators given up (timed out, or their target store went down).
    pub expired: u64,
    /// In flight, by region.
    pub operators: Vec<OperatorRow>,
}

fn kind_name(kind: OperatorKind) -> &'static str {
    match kind {
        OperatorKind::AddLearner => "add-learner",
        OperatorKind::Promote => "promote",
        OperatorKind::RemovePeer => "remove-peer",
        OperatorKind::TransferLeader => "transfer-leader",
        OperatorKind::Unknown => "unknown",
    }
}

/// The printed form of the coordinator's answer.
pub fn from(resp: &OperatorsResponse) -> Schedule {
    Schedule {
        enabled: resp.enabled,
        issued: resp.issued,
        completed: resp.completed,
        expired: resp.expired,
        operators: resp
            .operators
            .iter()
            .map(|o| {
                let peer = o.peer.clone().unwrap_or_default();
                OperatorRow {
                    id: o.id,
                    region: o.region_id,
                    kind: kind_name(o.kind()),
                    peer_id: peer.id,
                    store: peer.store_id,
                    core: peer.core,
                    from_store: (o.from_store != 0).then_some(o.from_store),
                    reason: o.reason.clone(),
                    age_ms: o.age_ms,
                }
            })
            .collect(),
    }
}

/// The human form: a summary line, then a table of the operators in flight.
pub fn text(s: &Schedule) -> String {
    let mut out = format!(
        "scheduling {}: {} in flight, {} issued, {} completed, {} expired\n",
        if s.enabled { "on" } else { "off" },
        s.operators.len(),
        s.issued,
        s.completed,
        s.expired
    );
    if s.operators.is_empty() {
        return out;
    }
    let cells: Vec<Vec<String>> = s
        .operators
        .iter()
        .map(|o| {
            vec![
                o.id.to_string(),
                o.region.to_string(),
                o.kind.to_string(),
                format!(
                    "{}:{}",
                    o.store,
                    o.core.map_or_else(|| "?".to_string(), |c| c.to_string())
                ),
                o.peer_id.to_string(),
                o.from_store
                    .map_or_else(|| "-".to_string(), |s| s.to_string()),
                o.reason.clone(),
                render::age(o.age_ms),
            ]
        })
        .collect();
    out.push_str(&render::table(
        &[
            "ID", "REGION", "KIND", "TARGET", "PEER", "FROM", "REASON", "AGE",
        ],
        &cells,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_coordinator::proto::{Operator, Peer};

    #[test]
    fn operators_print_as_a_table_and_json() {
        let resp = OperatorsResponse {
            operators: vec![Operator {
                id: 3,
                region_id: 8,
                kind: OperatorKind::AddLearner as i32,
                peer: Some(Peer {
                    id: 41,
                    store_id: 4,
                    core: Some(1),
                    learner: true,
                }),
                reason: "decommission".into(),
                from_store: 2,
                age_ms: 1500,
            }],
            issued: 5,
            completed: 4,
            expired: 0,
            enabled: true,
        };
        let s = from(&resp);
        let t = text(&s);
        assert!(
            t.starts_with("scheduling on: 1 in flight, 5 issued, 4 completed, 0 expired\n"),
            "{t}"
        );
        assert!(t.contains("add-learner"), "{t}");
        assert!(t.contains("4:1"), "{t}");
        assert!(t.contains("decommission"), "{t}");
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["operators"][0]["from_store"], 2);
        assert_eq!(json["operators"][0]["kind"], "add-learner");
        let off = from(&OperatorsResponse::default());
        assert_eq!(
            text(&off),
            "scheduling off: 0 in flight, 0 issued, 0 completed, 0 expired\n"
        );
    }
}
