//! [`Client`]: routes each command to its regions' leaders and retries under a deadline.

use crate::backoff::Backoff;
use crate::conn::{ConnError, ConnPool};
use crate::error::{show_key, Error, Result};
use crate::plan::{self, Part, PlanError, Work};
use crate::routes::{routing_key, RegionRoute, RouteCache};
use nokv_coordinator::{ClientOptions as CoordOptions, CoordClient};
use nokv_gateway::atomic::{self, Runner};
use nokv_gateway::exec::{
    ExpiryUpdate, ReadOp, ScanArgs, SetCondition, SetReply, WriteCommand, WriteOp,
};
use nokv_gateway::lock::Locked;
use nokv_gateway::Reply;
use nokv_raft::kv::{KvKind, KvOutcome, KvRequest};
use nokv_raft::txn_wire::{TxnRequest, TxnResponse};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Client timing and bounds.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The cluster id every frame carries (the stores' and coordinator's `--cluster-id`).
    pub cluster_id: u64,
    /// Deadline of one call, retries included.
    pub call_timeout: Duration,
    /// Longest one connection attempt to a store may take.
    pub connect_timeout: Duration,
    /// Longest one attempt waits for a store's answer before trying again (also sent to
    /// the store as the request's timeout).
    pub attempt_timeout: Duration,
    /// First backoff after a failure.
    pub backoff_initial: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Largest accepted response payload.
    pub max_frame_bytes: u32,
    /// How a connection to a store's RPC port is set up after the connect (`None`: plain
    /// TCP; stores with `--tls-cluster` need TLS here).
    pub connector: Option<crate::conn::StoreConnector>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            cluster_id: 1,
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            max_frame_bytes: 64 << 20,
            connector: None,
        }
    }
}

/// Extra time an attempt waits beyond the timeout the store was given.
const GRACE: Duration = Duration::from_millis(250);
/// Redirects followed in a row before a backoff (a hint loop while leaders change).
const REDIRECTS_BEFORE_BACKOFF: u32 = 3;
/// Voters passed over in a row because their store was just found down (a region has 3).
const MAX_SKIPS: usize = 3;
/// Pages one [`Client::scan`] reads at most (beside its deadline per page).
const MAX_SCAN_PAGES: usize = 1 << 20;

/// Counters of a client's retries (since it was made).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent to stores.
    pub attempts: u64,
    /// `NotLeader` answers with a hint that were followed.
    pub redirects: u64,
    /// Attempts that failed and were retried (connection, timeout, no leader, stale route).
    pub retries: u64,
    /// Route lookups at the coordinator.
    pub route_refreshes: u64,
}

#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    redirects: AtomicU64,
    retries: AtomicU64,
    route_refreshes: AtomicU64,
}

/// A page of [`Client::scan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanResult {
    /// Keys in position order (hash slot, then key bytes).
    pub keys: Vec<Vec<u8>>,
    /// Where to continue (pass as `start`); None when the range is done.
    pub next: Option<Vec<u8>>,
}

/// The position of `key` in the order [`Client::scan`] walks: its hash slot (big-endian)
/// followed by the key.
pub fn position(key: &[u8]) -> Vec<u8> {
    nokv_gateway::model::meta_key(key)
}

/// The current unix time in milliseconds (a write's `now_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where one attempt goes.
enum Target<'a> {
    /// The region holding this routing key (resolved again at every attempt).
    Key(&'a [u8]),
    /// This region.
    Region(u64),
}

/// A blocking client of a NoKV cluster; thread-safe (share it in an `Arc`).
pub struct Client {
    coord: CoordClient,
    opts: ClientOptions,
    cache: RwLock<RouteCache>,
    pool: ConnPool,
    counters: Counters,
}

impl Client {
    /// A client of the cluster whose coordinators are at `endpoints` (host:port; the
    /// leader is followed). No connection is made until the first call.
    pub fn new(endpoints: Vec<String>, opts: ClientOptions) -> Result<Client> {
        if opts.call_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "call_timeout must not be zero".into(),
            ));
        }
        let coord_opts = CoordOptions {
            // One route lookup may take at most a quarter of a call's deadline.
            call_timeout: (opts.call_timeout / 4).max(Duration::from_millis(250)),
            connect_timeout: opts.connect_timeout,
            ..CoordOptions::default()
        };
        let coord = CoordClient::new(endpoints, opts.cluster_id, coord_opts)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(Client {
            coord,
            opts,
            cache: RwLock::new(RouteCache::new()),
            pool: ConnPool::default(),
            counters: Counters::default(),
        })
    }

    /// [`Client::new`], then loads every route (fails if the coordinator gives none
    /// within the call deadline).
    pub fn connect(endpoints: Vec<String>, opts: ClientOptions) -> Result<Client> {
        let c = Client::new(endpoints, opts)?;
        c.refresh_routes()?;
        Ok(c)
    }

    /// The options the client was made with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// The retry counters.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            attempts: c.attempts.load(Ordering::Relaxed),
            redirects: c.redirects.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            route_refreshes: c.route_refreshes.load(Ordering::Relaxed),
        }
    }

    /// Reloads every route from the coordinator (retried until the call deadline).
    pub fn refresh_routes(&self) -> Result<()> {
        let deadline = Instant::now() + self.opts.call_timeout;
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        // Bounded by the deadline: each turn returns or sleeps a backoff.
        loop {
            let last = match self.try_refresh_all() {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if !backoff.sleep(deadline) {
                return Err(Error::ClusterDown {
                    what: "the key space".into(),
                    deadline: self.opts.call_timeout,
                    last,
                });
            }
        }
    }

    fn try_refresh_all(&self) -> std::result::Result<(), String> {
        self.counters
            .route_refreshes
            .fetch_add(1, Ordering::Relaxed);
        let mut routes = Vec::new();
        let mut start: Vec<u8> = Vec::new();
        // Pages of the coordinator's scan: bounded by the regions (each page moves on).
        for _ in 0..1024 {
            let page = self
                .coord
                .scan_regions(&start, &[], 0)
                .map_err(|e| format!("coordinator: {e}"))?;
            let Some(last) = page.last().and_then(|r| r.region.as_ref()) else {
                break;
            };
            let end = last.end_key.clone();
            routes.extend(page);
            if end.is_empty() || end <= start {
                break;
            }
            start = end;
        }
        let mut cache = self.cache.write();
        cache.replace_all(&routes);
        if cache.is_complete() {
            Ok(())
        } else {
            Err(format!(
                "the coordinator's {} routes do not cover the key space (not bootstrapped?)",
                cache.len()
            ))
        }
    }

    /// The region holding `key` (from the cache, else the coordinator).
    pub fn region_for_key(&self, key: &[u8]) -> Result<u64> {
        let rk = routing_key(key);
        if let Some(r) = self.cache.read().lookup(&rk) {
            return Ok(r.id);
        }
        let deadline = Instant::now() + self.opts.call_timeout;
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        // Bounded by the deadline.
        loop {
            let last = match self.refresh_key(&rk) {
                Ok(id) => return Ok(id),
                Err(e) => e,
            };
            if !backoff.sleep(deadline) {
                return Err(Error::ClusterDown {
                    what: format!("key {}", show_key(key)),
                    deadline: self.opts.call_timeout,
                    last,
                });
            }
        }
    }

    fn refresh_key(&self, rk: &[u8]) -> std::result::Result<u64, String> {
        self.counters
            .route_refreshes
            .fetch_add(1, Ordering::Relaxed);
        let route = self
            .coord
            .route_by_key(rk)
            .map_err(|e| format!("coordinator: {e}"))?;
        self.cache
            .write()
            .insert_route(&route)
            .ok_or_else(|| "coordinator route without a region".to_string())
    }

    fn refresh_region(&self, id: u64) -> std::result::Result<u64, String> {
        self.counters
            .route_refreshes
            .fetch_add(1, Ordering::Relaxed);
        let route = self
            .coord
            .route_by_id(id)
            .map_err(|e| format!("coordinator: {e}"))?;
        self.cache
            .write()
            .insert_route(&route)
            .ok_or_else(|| "coordinator route without a region".to_string())
    }

    /// A timestamp from the coordinator's TSO.
    /// Retried with backoff until the call deadline (a coordinator election).
    pub fn timestamp(&self) -> Result<u64> {
        let deadline = Instant::now() + self.opts.call_timeout;
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        // Bounded by the deadline.
        loop {
            let last = match self.coord.get_timestamp() {
                Ok(ts) => return Ok(ts),
                Err(e) => e.to_string(),
            };
            if !backoff.sleep(deadline) {
                return Err(Error::ClusterDown {
                    what: "a timestamp".into(),
                    deadline: self.opts.call_timeout,
                    last,
                });
            }
        }
    }

    /// The cached route of the region holding routing key `rk` (asking the coordinator
    /// when the cache lacks it), within `deadline`.
    pub(crate) fn route_at(&self, rk: &[u8], deadline: Instant) -> Result<RegionRoute> {
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        // Bounded by the deadline.
        loop {
            if let Some(r) = self.cache.read().lookup(rk) {
                return Ok(r.clone());
            }
            let last = match self.refresh_key(rk) {
                Ok(_) => continue,
                Err(e) => e,
            };
            if !backoff.sleep(deadline) {
                return Err(Error::ClusterDown {
                    what: format!("routing key {}", show_key(rk)),
                    deadline: self.opts.call_timeout,
                    last,
                });
            }
        }
    }

    /// Forgets the cached route of `region` (a store said a key is not in it).
    pub(crate) fn forget_region(&self, region: u64) {
        self.cache.write().remove(region);
    }

    /// Sends a transactional request to the leader of the region holding routing key
    /// `rk`, retrying like every call until `deadline`: the region and the store's
    /// response (an error reply is [`Error::Server`]).
    pub fn txn_request(
        &self,
        rk: &[u8],
        req: TxnRequest,
        deadline: Instant,
    ) -> Result<(u64, TxnResponse)> {
        let part = Part {
            region: 0,
            routing: rk.to_vec(),
            key: rk.to_vec(),
            work: Work::Txn(req),
        };
        let (region, reply) = self.attempts(Target::Key(rk), &part, deadline)?;
        match reply {
            Reply::Bulk(b) => {
                TxnResponse::decode(&b)
                    .map(|r| (region, r))
                    .map_err(|e| Error::UnexpectedReply {
                        region,
                        detail: format!("undecodable transaction response: {e}"),
                    })
            }
            Reply::Error(message) => Err(Error::Server {
                region,
                key: show_key(rk),
                message,
            }),
            other => Err(Error::UnexpectedReply {
                region,
                detail: format!("a transaction request answered {other:?}"),
            }),
        }
    }

    /// Sends a transactional request to the leader the route cache knows for routing key
    /// `rk` without waiting for its answer (one attempt, no retry): for work that readers
    /// finish when it is lost, such as the secondary commits of a committed transaction.
    pub fn txn_send_only(&self, rk: &[u8], req: TxnRequest) -> Result<()> {
        let (region, store, addr) =
            self.resolve(&Target::Key(rk))
                .map_err(|last| Error::ClusterDown {
                    what: format!("key {}", show_key(rk)),
                    deadline: self.opts.call_timeout,
                    last,
                })?;
        let conn = self
            .pool
            .get(
                store,
                &addr,
                self.opts.cluster_id,
                self.opts.connect_timeout,
                self.opts.max_frame_bytes,
                self.opts.connector.as_ref(),
            )
            .map_err(|e| Error::TryAgain {
                region,
                key: show_key(rk),
                deadline: self.opts.call_timeout,
                attempts: 1,
                last: format!("store {store}: {e}"),
            })?;
        let wait = self.opts.attempt_timeout;
        let request = KvRequest {
            region_id: region,
            kind: KvKind::Txn as i32,
            payload: req.encode(),
            timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1),
            from_store: 0,
        };
        conn.send_only(&request).map_err(|e| {
            self.pool.drop_conn(store, &conn);
            Error::TryAgain {
                region,
                key: show_key(rk),
                deadline: self.opts.call_timeout,
                attempts: 1,
                last: format!("store {store} ({addr}): {e}"),
            }
        })
    }

    /// GET: the value of `key`, None if it does not exist.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.read_key(key, ReadOp::Get(key.to_vec()))? {
            (_, Reply::Bulk(v)) => Ok(Some(v)),
            (_, Reply::Null) => Ok(None),
            (region, other) => Err(unexpected(region, key, other)),
        }
    }

    /// SET: stores `value` under `key` (no expiry).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let op = WriteOp::Set {
            key: key.to_vec(),
            value: value.to_vec(),
            condition: SetCondition::Always,
            expiry: ExpiryUpdate::Clear,
            reply: SetReply::Ok,
        };
        match self.write_key(key, op)? {
            (_, Reply::Simple(_)) => Ok(()),
            (region, other) => Err(unexpected(region, key, other)),
        }
    }

    /// DEL: removes `key`; whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let op = WriteOp::Del {
            keys: vec![key.to_vec()],
        };
        match self.write_key(key, op)? {
            (_, Reply::Int(n)) => Ok(n > 0),
            (region, other) => Err(unexpected(region, key, other)),
        }
    }

    /// Up to `limit` keys from position `start` (inclusive) to `end` (exclusive; empty:
    /// no bound), walking the regions in order. Positions are [`position`]s: keys come in
    /// hash-slot order, not in byte order. Each page is one call with its own deadline.
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<ScanResult> {
        let mut out = ScanResult::default();
        let mut cursor = start.to_vec();
        for _ in 0..MAX_SCAN_PAGES {
            if out.keys.len() >= limit {
                out.next = Some(cursor);
                return Ok(out);
            }
            if !end.is_empty() && cursor.as_slice() >= end {
                return Ok(out);
            }
            let want = (limit - out.keys.len()).min(1024) as u64;
            let op = ReadOp::Scan(ScanArgs {
                cursor: 0,
                resume: Some(cursor.clone()),
                pattern: None,
                count: want,
                kind: None,
                invalid: None,
            });
            let page = match self.read(op)? {
                Reply::Scan(p) => p,
                Reply::Error(e) => {
                    return Err(Error::Server {
                        region: 0,
                        key: show_key(&cursor),
                        message: e,
                    })
                }
                other => return Err(unexpected(0, &cursor, other)),
            };
            for item in page.items {
                let Reply::Bulk(k) = item else {
                    return Err(unexpected(0, &cursor, item));
                };
                if !end.is_empty() && position(&k).as_slice() >= end {
                    return Ok(out);
                }
                out.keys.push(k);
            }
            match page.next {
                Some(n) if n > cursor => cursor = n,
                // The last region ran out, or no progress (a store bug): done.
                _ => return Ok(out),
            }
        }
        out.next = Some(cursor);
        Ok(out)
    }

    fn read_key(&self, key: &[u8], op: ReadOp) -> Result<(u64, Reply)> {
        let rk = routing_key(key);
        let deadline = Instant::now() + self.opts.call_timeout;
        let part = Part {
            region: 0,
            routing: rk.to_vec(),
            key: key.to_vec(),
            work: Work::Read(op),
        };
        self.run_part_resolving(&part, deadline)
    }

    /// [`Client::run_part`], with the locks of multi-region writes in flight resolved and
    /// the part run again (`nokv_gateway::atomic`).
    fn run_part_resolving(&self, part: &Part, deadline: Instant) -> Result<(u64, Reply)> {
        let (region, first) = self.run_part(part, deadline)?;
        let reply = self.resolving(first, || {
            let deadline = Instant::now() + self.opts.call_timeout;
            self.run_part(part, deadline).map(|(_, r)| r)
        });
        Ok((region, reply))
    }

    fn write_key(&self, key: &[u8], op: WriteOp) -> Result<(u64, Reply)> {
        let rk = routing_key(key);
        let deadline = Instant::now() + self.opts.call_timeout;
        let part = Part {
            region: 0,
            routing: rk.to_vec(),
            key: key.to_vec(),
            work: Work::Write(WriteCommand {
                now_ms: now_ms(),
                op,
            }),
        };
        let (region, reply) = self.run_part_resolving(&part, deadline)?;
        match reply {
            Reply::Error(message) => Err(Error::Server {
                region,
                key: show_key(key),
                message,
            }),
            r => Ok((region, r)),
        }
    }

    /// Runs a read over every region its keys live in and merges the replies as the store
    /// would (a Redis error reply is returned as a reply, not an error). Keys locked by a
    /// multi-region write in flight are resolved, and an EXISTS over several regions counts
    /// its keys as of one instant (`nokv_gateway::atomic`).
    pub fn read(&self, op: ReadOp) -> Result<Reply> {
        if let ReadOp::Exists(keys) = &op {
            if plan::spans_regions(&self.cache.read(), &op.keys()) {
                // Counted as of one instant (`nokv_gateway::atomic::exists`).
                return Ok(atomic::block_on(atomic::exists(&Steps(self), keys.clone())));
            }
        }
        let first = self.execute(|cache| plan::plan_read(cache, op.clone()))?;
        Ok(self.resolving(first, || {
            self.execute(|cache| plan::plan_read(cache, op.clone()))
        }))
    }

    /// Runs a write over every region its keys live in and merges the replies: MSET,
    /// MSETNX and DEL over several regions atomically (`nokv_gateway::atomic`, see
    /// `docs/client.md`). Keys locked by a multi-region write in flight are resolved.
    pub fn write(&self, cmd: WriteCommand) -> Result<Reply> {
        if atomic::needs_driver(&cmd.op) && plan::spans_regions(&self.cache.read(), &cmd.op.keys())
        {
            return Ok(atomic::block_on(atomic::drive(&Steps(self), cmd)));
        }
        let first = self.execute(|cache| plan::plan_write(cache, cmd.clone()))?;
        Ok(self.resolving(first, || {
            self.execute(|cache| plan::plan_write(cache, cmd.clone()))
        }))
    }

    /// `first` if it is not `-LOCKED`; else the reply of `again` once the locks it meets
    /// are resolved.
    fn resolving(&self, first: Reply, again: impl Fn() -> Result<Reply>) -> Reply {
        if Locked::of(&first).is_none() {
            return first;
        }
        let steps = Steps(self);
        atomic::block_on(atomic::resolving(&steps, Some(first), || async {
            again().unwrap_or_else(|e| crate::gateway::error_reply(&e))
        }))
    }

    /// Runs `work` on region `region`'s leader: the lower level of [`Client::read`] and
    /// [`Client::write`], for callers that plan themselves.
    pub fn call(&self, region: u64, work: Work) -> Result<Reply> {
        let deadline = Instant::now() + self.opts.call_timeout;
        let part = Part {
            region,
            routing: Vec::new(),
            key: Vec::new(),
            work,
        };
        self.attempts(Target::Region(region), &part, deadline)
            .map(|(_, r)| r)
    }

    fn execute(
        &self,
        make: impl Fn(&RouteCache) -> std::result::Result<plan::Plan, PlanError>,
    ) -> Result<Reply> {
        let deadline = Instant::now() + self.opts.call_timeout;
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        // Bounded by the deadline: each turn plans, or refreshes and sleeps a backoff.
        let plan = loop {
            let missing = match make(&self.cache.read()) {
                Ok(p) => break p,
                Err(PlanError::Reply(r)) => return Ok(r),
                Err(PlanError::NoRoute(k)) => k,
            };
            let last = match self.try_refresh_all() {
                Ok(()) => continue,
                Err(e) => e,
            };
            if !backoff.sleep(deadline) {
                return Err(Error::ClusterDown {
                    what: format!("routing key {}", show_key(&missing)),
                    deadline: self.opts.call_timeout,
                    last,
                });
            }
        };
        let replies: Vec<Reply> = match plan.parts.len() {
            0 => Vec::new(),
            1 => vec![self.run_part(&plan.parts[0], deadline)?.1],
            _ => std::thread::scope(|s| {
                let handles: Vec<_> = plan
                    .parts
                    .iter()
                    .map(|p| s.spawn(move || self.run_part(p, deadline)))
                    .collect();
                let mut out = Vec::with_capacity(handles.len());
                for h in handles {
                    match h.join() {
                        Ok(r) => out.push(r?.1),
                        Err(_) => {
                            return Err(Error::UnexpectedReply {
                                region: 0,
                                detail: "a part's thread panicked".into(),
                            })
                        }
                    }
                }
                Ok(out)
            })?,
        };
        Ok(plan::merge(plan.merge, replies))
    }

    fn run_part(&self, part: &Part, deadline: Instant) -> Result<(u64, Reply)> {
        if part.routing.is_empty() {
            self.attempts(Target::Region(part.region), part, deadline)
        } else {
            self.attempts(Target::Key(&part.routing), part, deadline)
        }
    }

    /// Resolves the target to (region, store, address), asking the coordinator for what
    /// the cache lacks.
    fn resolve(&self, target: &Target<'_>) -> std::result::Result<(u64, u64, String), String> {
        let cached = {
            let cache = self.cache.read();
            let r = match target {
                Target::Key(k) => cache.lookup(k),
                Target::Region(id) => cache.region(*id),
            };
            r.map(|r| (r.id, r.target()))
        };
        let (region, store) = match cached {
            Some((id, Some(s))) => (id, s),
            Some((id, None)) => return Err(format!("region {id} has no voter in its route")),
            None => {
                let id = match target {
                    Target::Key(k) => self.refresh_key(k)?,
                    Target::Region(id) => self.refresh_region(*id)?,
                };
                let s = self.cache.read().region(id).and_then(|r| r.target());
                match s {
                    Some(s) => (id, s),
                    None => return Err(format!("region {id} has no voter in its route")),
                }
            }
        };
        let known = self.cache.read().addr(store).map(str::to_string);
        let addr = match known {
            Some(a) => a,
            None => {
                let info = self
                    .coord
                    .store(store)
                    .map_err(|e| format!("address of store {store}: coordinator: {e}"))?;
                let addr = info.meta.map(|m| m.rpc_addr).unwrap_or_default();
                if addr.is_empty() {
                    return Err(format!("store {store} has no rpc address"));
                }
                self.cache.write().set_addr(store, addr.clone());
                addr
            }
        };
        Ok((region, store, addr))
    }

    /// Sends `part` until it is answered, a final error, or the deadline.
    fn attempts(&self, target: Target<'_>, part: &Part, deadline: Instant) -> Result<(u64, Reply)> {
        let (kind, payload) = match &part.work {
            Work::Read(op) => (KvKind::Read, op.encode()),
            Work::Write(cmd) => (KvKind::Write, cmd.encode()),
            Work::Txn(req) => (KvKind::Txn, req.encode()),
        };
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        let mut attempts = 0u32;
        let mut redirects = 0u32;
        let mut region = part.region;
        let mut last = String::from("none");
        // Whether the last failure was finding a route (the coordinator), not a store.
        let mut route_failed = false;
        // Voters passed over in a row because their store was just found down.
        let mut skipped = 0usize;
        // The backoff found no room for another attempt before the deadline.
        let mut out_of_time = false;
        // Bounded by the deadline: every turn returns, or sleeps a backoff, or follows a
        // hint (at most REDIRECTS_BEFORE_BACKOFF in a row).
        loop {
            let now = Instant::now();
            if now >= deadline || out_of_time {
                return Err(if route_failed {
                    Error::ClusterDown {
                        what: if part.key.is_empty() {
                            format!("region {region}")
                        } else {
                            format!("key {}", show_key(&part.key))
                        },
                        deadline: self.opts.call_timeout,
                        last,
                    }
                } else {
                    Error::TryAgain {
                        region,
                        key: show_key(&part.key),
                        deadline: self.opts.call_timeout,
                        attempts,
                        last,
                    }
                });
            }
            if attempts > 0 {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            let (r, store, addr) = match self.resolve(&target) {
                Ok(x) => x,
                Err(e) => {
                    last = e;
                    route_failed = true;
                    attempts += 1;
                    out_of_time |= !backoff.sleep(deadline);
                    continue;
                }
            };
            route_failed = false;
            region = r;
            if skipped < MAX_SKIPS && self.pool.recently_down(store) {
                // Another voter first (bounded: then this store is tried all the same).
                skipped += 1;
                self.cache.write().rotate(region, store);
                continue;
            }
            skipped = 0;
            attempts += 1;
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let conn = match self.pool.get(
                store,
                &addr,
                self.opts.cluster_id,
                self.opts.connect_timeout.min(remaining),
                self.opts.max_frame_bytes,
                self.opts.connector.as_ref(),
            ) {
                Ok(c) => c,
                Err(e) => {
                    last = format!("store {store}: {e}");
                    self.cache.write().rotate(region, store);
                    out_of_time |= !backoff.sleep(deadline);
                    continue;
                }
            };
            let wait = remaining.min(self.opts.attempt_timeout);
            let req = KvRequest {
                region_id: region,
                kind: kind as i32,
                payload: payload.clone(),
                timeout_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1),
                from_store: 0,
            };
            let is_write = matches!(part.work, Work::Write(_));
            let resp = match conn.request(&req, wait + GRACE) {
                Ok(r) => r,
                Err(e @ (ConnError::Timeout | ConnError::Lost(_))) if is_write => {
                    if !matches!(e, ConnError::Timeout) {
                        self.pool.drop_conn(store, &conn);
                    }
                    return Err(Error::WriteUndetermined {
                        region,
                        key: show_key(&part.key),
                        detail: format!("store {store} ({addr}): {e}"),
                    });
                }
                Err(e) => {
                    if !matches!(e, ConnError::Timeout) {
                        self.pool.drop_conn(store, &conn);
                    }
                    last = format!("store {store} ({addr}): {e}");
                    self.cache.write().rotate(region, store);
                    out_of_time |= !backoff.sleep(deadline);
                    continue;
                }
            };
            match resp.outcome {
                Some(KvOutcome::Reply(bytes)) => {
                    let reply = Reply::from_binary(&bytes).map_err(|e| Error::UnexpectedReply {
                        region,
                        detail: format!("store {store}: undecodable reply: {e}"),
                    })?;
                    match &reply {
                        Reply::Error(e) if is_write && may_still_apply(e) => {
                            return Err(Error::WriteUndetermined {
                                region,
                                key: show_key(&part.key),
                                detail: format!("store {store}: {e}"),
                            });
                        }
                        Reply::Error(e) if retryable(e) => {
                            last = format!("store {store}: {e}");
                            if e.starts_with("MOVED") {
                                self.cache.write().rotate(region, store);
                            }
                            if split_away(e) {
                                // The cached range is stale: look the key up again.
                                self.cache.write().remove(region);
                            }
                            out_of_time |= !backoff.sleep(deadline);
                        }
                        _ => return Ok((region, reply)),
                    }
                }
                Some(KvOutcome::NotLeader(hint)) if hint != 0 && hint != store => {
                    self.counters.redirects.fetch_add(1, Ordering::Relaxed);
                    last = format!("store {store}: not the leader, store {hint} is");
                    self.cache.write().set_leader(region, hint);
                    redirects += 1;
                    if redirects >= REDIRECTS_BEFORE_BACKOFF {
                        redirects = 0;
                        out_of_time |= !backoff.sleep(deadline);
                    }
                }
                Some(KvOutcome::NotLeader(_)) => {
                    last = format!("store {store}: not the leader, no leader known");
                    self.cache.write().rotate(region, store);
                    out_of_time |= !backoff.sleep(deadline);
                }
                Some(KvOutcome::RegionNotFound(_)) => {
                    last = format!("store {store}: no replica of region {region}");
                    // The route is stale: by key, ask again; by id, refresh the region.
                    self.cache.write().remove(region);
                    out_of_time |= !backoff.sleep(deadline);
                }
                Some(KvOutcome::Refused(message)) if message.contains("stopping") => {
                    // A store shutting down: another voter takes over.
                    last = format!("store {store}: {message}");
                    self.cache.write().rotate(region, store);
                    out_of_time |= !backoff.sleep(deadline);
                }
                Some(KvOutcome::Refused(message)) => {
                    return Err(Error::Refused {
                        store,
                        region,
                        key: show_key(&part.key),
                        message,
                    })
                }
                None => {
                    return Err(Error::UnexpectedReply {
                        region,
                        detail: format!("store {store}: a response without an outcome"),
                    })
                }
            }
        }
    }
}

/// Error replies that mean "not now" rather than an answer: the region is changing leader,
/// the store is catching up, or the request reached a replica that cannot serve it.
fn retryable(e: &str) -> bool {
    [
        "TRYAGAIN",
        "CLUSTERDOWN",
        "BUSY",
        "MOVED",
        "ASK ",
        "LOADING",
    ]
    .iter()
    .any(|p| e.starts_with(p))
}

/// A store's reply to a write it proposed but could not see decided (it says so): sending
/// the write again could apply it twice.
fn may_still_apply(e: &str) -> bool {
    e.contains("may still apply")
}

/// A retry reply that says the region no longer holds the key's range (a split moved it
/// to a new region): the cached route must be dropped, or every retry goes to it again.
fn split_away(e: &str) -> bool {
    e.starts_with("TRYAGAIN") && e.contains(" was split")
}

fn unexpected(region: u64, key: &[u8], reply: Reply) -> Error {
    match reply {
        Reply::Error(message) => Error::Server {
            region,
            key: show_key(key),
            message,
        },
        other => Error::UnexpectedReply {
            region,
            detail: format!("key {}: {other:?}", show_key(key)),
        },
    }
}

/// The atomic protocol's steps through a client: planned and sent like any write, a
/// failure as its Redis error reply.
struct Steps<'a>(&'a Client);

impl Runner for Steps<'_> {
    async fn write(&self, cmd: WriteCommand) -> Reply {
        self.0
            .execute(|cache| plan::plan_write(cache, cmd.clone()))
            .unwrap_or_else(|e| crate::gateway::error_reply(&e))
    }

    async fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_by_slot_then_key() {
        let a = position(b"a");
        assert_eq!(&a[..2], &nokv_gateway::model::slot(b"a").to_be_bytes());
        assert_eq!(&a[2..], b"a");
        assert!(position(b"{x}1") < position(b"{x}2"));
    }

    #[test]
    fn writes_that_may_still_apply_are_told_apart() {
        assert!(may_still_apply(
            "TRYAGAIN write not confirmed by a quorum within 2000 ms; it may still apply"
        ));
        assert!(!may_still_apply(
            "TRYAGAIN region 3 has no leader here now, retry"
        ));
        assert!(!may_still_apply("TRYAGAIN core is busy, retry"));
    }

    #[test]
    fn only_transient_error_replies_are_retried() {
        assert!(retryable("TRYAGAIN region 3 has no leader"));
        assert!(split_away(
            "TRYAGAIN region 16 was split; nothing was written, retry"
        ));
        assert!(!split_away("TRYAGAIN region 3 has no leader"));
        assert!(retryable("CLUSTERDOWN no quorum"));
        assert!(retryable("BUSY write stall"));
        assert!(!retryable(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        ));
        assert!(!retryable("ERR value is not an integer or out of range"));
    }

    #[test]
    fn a_zero_deadline_or_no_endpoint_is_refused() {
        let opts = ClientOptions {
            call_timeout: Duration::ZERO,
            ..ClientOptions::default()
        };
        assert!(matches!(
            Client::new(vec!["127.0.0.1:1".into()], opts),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            Client::new(Vec::new(), ClientOptions::default()),
            Err(Error::InvalidArgument(_))
        ));
    }
}
