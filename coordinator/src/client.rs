//! [`CoordClient`]: a blocking client of the coordinator.
//!
//! It takes a list of endpoints and keeps one connection to the one it believes is the
//! leader. A `NotLeader` answer moves it to the hinted leader (or the next endpoint); a
//! connection failure, a refused or cut frame or a `Busy` answer moves it to the next
//! endpoint after a backoff (doubling, capped). Every call has a deadline; when it passes
//! the call fails with [`Error::DeadlineExceeded`] naming the last failure. Other errors
//! (stale epoch, not found, invalid argument) are returned at once, typed.
//!
//! Retried calls may run twice on the server: harmless for reads, heartbeats, timestamps
//! and ids (a lost batch is skipped, never repeated); a retried first registration can
//! leave an unused store id behind.

use crate::error::{Error, Result};
use crate::proto::{
    request, response, AllocIdsRequest, BootstrapRequest, DecommissionStoreRequest,
    GetOperatorsRequest, GetRegionByIdRequest, GetRegionByKeyRequest, GetStoreRequest,
    GetStoresRequest, GetTsRequest, Operator, OperatorsResponse, Peer, PlaceReplicaRequest,
    PlaceReplicaResponse, Region, RegionHeartbeat, RegisterStoreRequest, Request, Response, Route,
    ScanRegionsRequest, SetSchedulingRequest, StoreInfo, StoreMeta, StoreStats,
};
use nokv_raft::wire::{self, FrameLimits};
use parking_lot::Mutex;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Client timing and bounds.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Deadline of one call, retries included.
    pub call_timeout: Duration,
    /// Longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// First backoff after a failure.
    pub backoff_initial: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Largest accepted response payload.
    pub max_frame_bytes: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            max_frame_bytes: 64 << 20,
        }
    }
}

struct Conn {
    /// Index in `endpoints` of the current target.
    endpoint: usize,
    /// A leader address learnt from a `NotLeader` answer, tried before `endpoint`.
    leader_hint: Option<String>,
    stream: Option<TcpStream>,
    next_request_id: u64,
}

/// A blocking coordinator client; thread-safe (calls are serialised on one connection).
pub struct CoordClient {
    endpoints: Vec<String>,
    cluster_id: u64,
    opts: ClientOptions,
    conn: Mutex<Conn>,
}

impl CoordClient {
    /// A client of the coordinators at `endpoints` (host:port) of cluster `cluster_id`. No
    /// connection is made until the first call.
    pub fn new(
        endpoints: Vec<String>,
        cluster_id: u64,
        opts: ClientOptions,
    ) -> Result<CoordClient> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no coordinator endpoints".into()));
        }
        Ok(CoordClient {
            endpoints,
            cluster_id,
            opts,
            conn: Mutex::new(Conn {
                endpoint: 0,
                leader_hint: None,
                stream: None,
                next_request_id: 1,
            }),
        })
    }

    /// The endpoint the next call goes to.
    pub fn current_endpoint(&self) -> String {
        let c = self.conn.lock();
        c.leader_hint
            .clone()
            .unwrap_or_else(|| self.endpoints[c.endpoint % self.endpoints.len()].clone())
    }

    /// Sends one request, following the leader and retrying until the deadline.
    pub fn call(&self, body: request::Body) -> Result<response::Body> {
        let req = Request { body: Some(body) };
        let deadline = Instant::now() + self.opts.call_timeout;
        let mut backoff = self.opts.backoff_initial;
        let mut conn = self.conn.lock();
        let mut last: Option<Error> = None;
        // Bounded by the deadline: every turn either returns or sleeps a backoff / redirects.
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::DeadlineExceeded {
                    deadline: self.opts.call_timeout,
                    last: last.map(|e| e.to_string()).unwrap_or_else(|| "none".into()),
                });
            }
            let err = match self.try_once(&mut conn, &req, deadline - now) {
                Ok(response::Body::Error(e)) => Error::from_proto(e),
                Ok(body) => return Ok(body),
                Err(e) => e,
            };
            if !err.is_retryable() {
                return Err(err);
            }
            conn.stream = None;
            let redirected = match &err {
                Error::NotLeader { leader_addr } if !leader_addr.is_empty() => {
                    conn.leader_hint = Some(leader_addr.clone());
                    true
                }
                _ => {
                    conn.leader_hint = None;
                    conn.endpoint = (conn.endpoint + 1) % self.endpoints.len();
                    false
                }
            };
            tracing::debug!(error = %err, endpoint = %self.target(&conn), "coordinator call retried");
            last = Some(err);
            // A fresh leader hint is tried at once; otherwise wait before the next endpoint
            // once every endpoint failed in this round.
            if !redirected {
                let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
                std::thread::sleep(pause);
                backoff = (backoff * 2).min(self.opts.backoff_max);
            }
        }
    }

    fn target(&self, c: &Conn) -> String {
        c.leader_hint
            .clone()
            .unwrap_or_else(|| self.endpoints[c.endpoint % self.endpoints.len()].clone())
    }

    fn try_once(&self, c: &mut Conn, req: &Request, remaining: Duration) -> Result<response::Body> {
        let target = self.target(c);
        if c.stream.is_none() {
            let addr = target
                .to_socket_addrs()
                .map_err(|e| Error::io(format!("resolve {target}"), e))?
                .next()
                .ok_or_else(|| {
                    Error::io(
                        format!("resolve {target}"),
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
                    )
                })?;
            let s =
                nokv_raft::transport::connect_std(&addr, self.opts.connect_timeout.min(remaining))
                    .map_err(|e| Error::io(format!("connect {target}"), e))?;
            let _ = s.set_nodelay(true);
            c.stream = Some(s);
        }
        let Some(stream) = c.stream.as_mut() else {
            return Err(Error::UnexpectedResponse("no connection".into()));
        };
        let timeout = Some(remaining.max(Duration::from_millis(1)));
        stream
            .set_read_timeout(timeout)
            .and_then(|_| stream.set_write_timeout(timeout))
            .map_err(|e| Error::io(format!("set timeouts on {target}"), e))?;
        let id = c.next_request_id;
        c.next_request_id += 1;
        wire::write_frame(stream, wire::kind::COORD_REQUEST, self.cluster_id, id, req)
            .map_err(|e| Error::frame(format!("send to {target}"), e))?;
        let limits = FrameLimits {
            cluster_id: self.cluster_id,
            max_payload: self.opts.max_frame_bytes,
        };
        let frame = wire::read_frame(stream, &limits)
            .map_err(|e| Error::frame(format!("receive from {target}"), e))?
            .ok_or_else(|| {
                Error::io(
                    format!("receive from {target}"),
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "connection closed by the coordinator",
                    ),
                )
            })?;
        let resp: Response = frame
            .decode()
            .map_err(|e| Error::frame(format!("response from {target}"), e))?;
        let body = resp
            .body
            .ok_or_else(|| Error::UnexpectedResponse(format!("empty response from {target}")))?;
        if frame.kind != wire::kind::COORD_RESPONSE {
            return Err(Error::UnexpectedResponse(format!(
                "frame kind {} from {target}",
                frame.kind
            )));
        }
        if frame.request_id != id {
            // A connection refused over the server's bound answers with id 0 and closes.
            if let response::Body::Error(e) = body {
                return Ok(response::Body::Error(e));
            }
            return Err(Error::UnexpectedResponse(format!(
                "response to request {} from {target}, expected {id}",
                frame.request_id
            )));
        }
        Ok(body)
    }

    /// Registers a store (id 0: new) and returns its id.
    pub fn register_store(&self, store: StoreMeta) -> Result<u64> {
        match self.call(request::Body::RegisterStore(RegisterStoreRequest {
            store: Some(store),
        }))? {
            response::Body::RegisterStore(r) => Ok(r.store_id),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a store heartbeat; returns the transaction GC safe point (0: none yet).
    pub fn store_heartbeat(&self, stats: StoreStats) -> Result<u64> {
        match self.call(request::Body::StoreHeartbeat(stats))? {
            response::Body::Ack(a) => Ok(a.txn_safe_point),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a region leader's heartbeat; a stale epoch comes back as
    /// [`Error::StaleEpoch`] with the coordinator's descriptor.
    pub fn region_heartbeat(&self, hb: RegionHeartbeat) -> Result<()> {
        self.region_heartbeat_op(hb).map(|_| ())
    }

    /// [`CoordClient::region_heartbeat`], returning the scheduler's operator for the
    /// region, if the answer carries one.
    pub fn region_heartbeat_op(&self, hb: RegionHeartbeat) -> Result<Option<Operator>> {
        match self.call(request::Body::RegionHeartbeat(hb))? {
            response::Body::Ack(a) => Ok(a.operator),
            other => Err(unexpected(&other)),
        }
    }

    /// The scheduler's operators in flight and counters.
    pub fn operators(&self) -> Result<OperatorsResponse> {
        match self.call(request::Body::GetOperators(GetOperatorsRequest {}))? {
            response::Body::Operators(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    /// Switches the scheduler on or off; answers its operators and counters afterwards.
    pub fn set_scheduling(&self, enabled: bool) -> Result<OperatorsResponse> {
        match self.call(request::Body::SetScheduling(SetSchedulingRequest {
            enabled,
        }))? {
            response::Body::Operators(o) => Ok(o),
            other => Err(unexpected(&other)),
        }
    }

    /// Marks store `store_id` decommissioning (its replicas move away, then it is removed);
    /// answers its record afterwards.
    pub fn decommission_store(&self, store_id: u64) -> Result<StoreInfo> {
        match self.call(request::Body::DecommissionStore(DecommissionStoreRequest {
            store_id,
        }))? {
            response::Body::Stores(s) => s
                .stores
                .into_iter()
                .next()
                .ok_or_else(|| Error::UnexpectedResponse("empty store list".into())),
            other => Err(unexpected(&other)),
        }
    }

    /// Bootstraps the cluster: regions split at `split_keys`, `replicas` each.
    pub fn bootstrap(&self, split_keys: Vec<Vec<u8>>, replicas: u32) -> Result<Vec<Region>> {
        match self.call(request::Body::Bootstrap(BootstrapRequest {
            split_keys,
            replicas,
        }))? {
            response::Body::Bootstrap(b) => Ok(b.regions),
            other => Err(unexpected(&other)),
        }
    }

    /// The route of the region holding `key`.
    pub fn route_by_key(&self, key: &[u8]) -> Result<Route> {
        self.route(request::Body::GetRegionByKey(GetRegionByKeyRequest {
            key: key.to_vec(),
        }))
    }

    /// The route of region `region_id`.
    pub fn route_by_id(&self, region_id: u64) -> Result<Route> {
        self.route(request::Body::GetRegionById(GetRegionByIdRequest {
            region_id,
        }))
    }

    /// Routes in key order from the region holding `start_key`, before `end_key` (empty:
    /// no bound), at most `limit` (0: the server's bound).
    pub fn scan_regions(&self, start_key: &[u8], end_key: &[u8], limit: u32) -> Result<Vec<Route>> {
        match self.call(request::Body::ScanRegions(ScanRegionsRequest {
            start_key: start_key.to_vec(),
            end_key: end_key.to_vec(),
            limit,
        }))? {
            response::Body::ScanRegions(s) => Ok(s.routes),
            other => Err(unexpected(&other)),
        }
    }

    /// One store.
    pub fn store(&self, store_id: u64) -> Result<StoreInfo> {
        match self.call(request::Body::GetStore(GetStoreRequest { store_id }))? {
            response::Body::Stores(s) => s
                .stores
                .into_iter()
                .next()
                .ok_or_else(|| Error::UnexpectedResponse("empty store list".into())),
            other => Err(unexpected(&other)),
        }
    }

    /// Every store.
    pub fn stores(&self) -> Result<Vec<StoreInfo>> {
        match self.call(request::Body::GetStores(GetStoresRequest {}))? {
            response::Body::Stores(s) => Ok(s.stores),
            other => Err(unexpected(&other)),
        }
    }

    /// `count` timestamps: returns the first; they are `first..first + count`.
    pub fn get_ts(&self, count: u32) -> Result<u64> {
        match self.call(request::Body::GetTs(GetTsRequest { count }))? {
            response::Body::Ts(t) if t.count == count => Ok(t.first),
            other => Err(unexpected(&other)),
        }
    }

    /// One timestamp.
    pub fn get_timestamp(&self) -> Result<u64> {
        self.get_ts(1)
    }

    /// `count` unique ids: returns the first; they are `first..first + count`.
    pub fn alloc_ids(&self, count: u32) -> Result<u64> {
        match self.call(request::Body::AllocIds(AllocIdsRequest { count }))? {
            response::Body::Ids(i) if i.count == count => Ok(i.first),
            other => Err(unexpected(&other)),
        }
    }

    /// A (store, core) and peer id for a new replica of `region_id`.
    pub fn place_replica(&self, region_id: u64) -> Result<Peer> {
        match self.call(request::Body::PlaceReplica(PlaceReplicaRequest {
            region_id,
        }))? {
            response::Body::PlaceReplica(PlaceReplicaResponse { peer: Some(p) }) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    fn route(&self, body: request::Body) -> Result<Route> {
        match self.call(body)? {
            response::Body::Route(r) => r
                .route
                .ok_or_else(|| Error::UnexpectedResponse("route response without a route".into())),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(body: &response::Body) -> Error {
    Error::UnexpectedResponse(format!("{body:?}"))
}
