//! The coordinator side: a [`CoordClient`] on the `--coordinator` endpoints and the
//! catalog reads the subcommands need.

use crate::error::{Error, Result};
use nokv_coordinator::proto::{OperatorsResponse, Route, StoreInfo};
use nokv_coordinator::{ClientOptions, CoordClient};
use std::collections::HashSet;
use std::time::Duration;

/// A coordinator client that names its endpoints in errors.
pub struct Coord {
    client: CoordClient,
    endpoints: String,
}

impl Coord {
    /// A client of the coordinator replicas at `endpoints` for cluster `cluster_id`; each
    /// call (its retries and leader changes included) gives up after `timeout`.
    pub fn new(endpoints: &[String], cluster_id: u64, timeout: Duration) -> Result<Coord> {
        let joined = endpoints.join(",");
        let opts = ClientOptions {
            call_timeout: timeout,
            connect_timeout: timeout.min(ClientOptions::default().connect_timeout),
            ..ClientOptions::default()
        };
        let client = CoordClient::new(endpoints.to_vec(), cluster_id, opts).map_err(|source| {
            Error::Coordinator {
                op: "connect".into(),
                endpoints: joined.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(Coord {
            client,
            endpoints: joined,
        })
    }

    fn err(&self, op: impl Into<String>) -> impl FnOnce(nokv_coordinator::Error) -> Error + '_ {
        let op = op.into();
        move |source| Error::Coordinator {
            op,
            endpoints: self.endpoints.clone(),
            source: Box::new(source),
        }
    }

    /// Every registered store, by id.
    pub fn stores(&self) -> Result<Vec<StoreInfo>> {
        let mut stores = self.client.stores().map_err(self.err("list stores"))?;
        stores.sort_by_key(|s| s.meta.as_ref().map_or(0, |m| m.id));
        Ok(stores)
    }

    /// Marks a store decommissioning; its record afterwards.
    pub fn decommission(&self, store: u64) -> Result<StoreInfo> {
        self.client
            .decommission_store(store)
            .map_err(self.err(format!("decommission store {store}")))
    }

    /// The scheduler's operators in flight and counters.
    pub fn operators(&self) -> Result<OperatorsResponse> {
        self.client
            .operators()
            .map_err(self.err("list scheduler operators"))
    }

    /// Switches the scheduler; its operators and counters afterwards.
    pub fn set_scheduling(&self, enabled: bool) -> Result<OperatorsResponse> {
        let what = if enabled { "on" } else { "off" };
        self.client
            .set_scheduling(enabled)
            .map_err(self.err(format!("switch scheduling {what}")))
    }

    /// The route of one region.
    pub fn route(&self, region: u64) -> Result<Route> {
        self.client
            .route_by_id(region)
            .map_err(self.err(format!("look up region {region}")))
    }

    /// Every region's route, in key order (several scans when one answer does not hold
    /// them all).
    pub fn routes(&self) -> Result<Vec<Route>> {
        let mut out: Vec<Route> = Vec::new();
        let mut seen = HashSet::new();
        let mut start = Vec::new();
        // Bounded: each turn either adds a region or returns, and regions are finite.
        loop {
            let batch = self
                .client
                .scan_regions(&start, b"", 0)
                .map_err(self.err("scan regions"))?;
            let before = out.len();
            for route in batch {
                let Some(id) = route.region.as_ref().map(|r| r.id) else {
                    continue;
                };
                if seen.insert(id) {
                    out.push(route);
                }
            }
            let end = out
                .last()
                .and_then(|r| r.region.as_ref())
                .map(|r| r.end_key.clone());
            match end {
                Some(end) if !end.is_empty() && out.len() > before => start = end,
                _ => return Ok(out),
            }
        }
    }
}
