//! Store-to-store transport on the executors (`--rpc-addr`): raft messages between the
//! cores of different stores, batched per destination store into frames
//! (`nokv_raft::transport`, `nokv_raft::wire`).
//!
//! - **Sending** ([`CoreTransport::send`]): a message for another store goes into this
//!   core's bounded queue toward that store ([`outbound`]); a writer task per (core,
//!   store) connects (address from the [`StoreResolver`], cached per core and forgotten
//!   when a connect fails; retries with capped exponential backoff and jitter while
//!   messages wait), cuts frames from the queue and writes them. A full queue drops the
//!   message and counts it; nothing ever waits on the send path. A message for this store
//!   goes straight to the owning core (inbox or mesh).
//! - **Receiving** ([`listen`]): every core listens on the same address (SO_REUSEPORT);
//!   a reader task per connection decodes and checks frames (`InboundDecoder`: cluster,
//!   version, size bound, checksum, truncation; then the store and core of each message)
//!   and routes each message to the core that owns its peer: into this core's inbox, or
//!   over the transport mesh (try_send: a full channel drops and counts) to the other
//!   core's inbox. A refused frame drops the connection; nothing of it is delivered.
//! - **The raft core** reads its [`Inbox`] ([`CoreTransport::inbox`]): `ready().await`,
//!   then `drain(max)`.
//! - **Key-value requests** (`nokv_raft::kv`) arriving on a connection are run by the
//!   core's [`KvService`] (set by the node; without one they are refused), at most
//!   [`MAX_KV_INFLIGHT`] at once per connection, and answered on the same connection in
//!   the order they finish. A core sends its own (commands forwarded to their region's
//!   leader) with [`CoreTransport::kv_call`], over one connection per store.

mod faults;
mod inbox;
mod kv_client;
mod listen;
mod outbound;
mod secure;

pub use faults::{NetFaults, Rules as NetFaultRules};
pub use inbox::{Inbox, Ready};
pub use kv_client::KvCallError;
pub use nokv_raft::transport::{
    BackoffConfig, DropCause, Event, QueueLimits, RaftEnvelope, StaticResolver, StoreResolver,
    TransportStats,
};

use crate::error::{Error, Result};
use crate::event::Event as Signal;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use nokv_raft::transport::ResolverCache;
use outbound::Link;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Most key-value requests of one connection running at once; the connection is not read
/// while that many wait.
pub const MAX_KV_INFLIGHT: usize = 1024;

/// Runs the key-value requests that arrive on this core's connections (the node).
pub trait KvService {
    /// Runs `request` and gives its answer.
    fn call(
        self: Rc<Self>,
        request: nokv_raft::kv::KvRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = nokv_raft::kv::KvResponse>>>;
}

/// Settings of a store's transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Frames of another cluster are refused; ours carry this id.
    pub cluster_id: u64,
    /// This store's id: messages addressed to another store are refused.
    pub store_id: u64,
    /// Cores of this store (one listener and one inbox each).
    pub cores: usize,
    /// The RPC address every core listens on (a concrete port, see [`reserve_addr`]).
    pub listen: SocketAddr,
    /// Bounds of each send queue and of the frames cut from it.
    pub queue: QueueLimits,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Largest frame payload accepted on arrival (bytes).
    pub max_payload: u32,
    /// Messages each core's inbox holds before arrivals are dropped.
    pub inbox_capacity: usize,
    /// Capacity of each transport mesh channel (per ordered pair of cores).
    pub mesh_capacity: usize,
    /// Longest a connect may take.
    pub connect_timeout: Duration,
    /// Longest a write may wait for the other side to read; then the connection is dropped.
    pub write_timeout: Duration,
    /// Most incoming connections a core serves at once; more are closed and counted.
    pub max_inbound_connections: usize,
    /// The store's workdir: region snapshots are received into its cores' snapshot
    /// directories (`None`: snapshot frames are refused).
    pub workdir: Option<std::path::PathBuf>,
    /// Injected network faults (test-only, `NOKV_DEBUG_NET_FAULTS`; `None` in production).
    pub net_faults: Option<NetFaults>,
    /// Mutual TLS on every connection, in and out (`--tls-cluster`; `None`: plain TCP).
    pub tls: Option<Arc<crate::tls::ClusterTls>>,
}

impl TransportConfig {
    /// The defaults for a store of `cores` cores listening on `listen`.
    pub fn new(cluster_id: u64, store_id: u64, cores: usize, listen: SocketAddr) -> Self {
        TransportConfig {
            cluster_id,
            store_id,
            cores,
            listen,
            queue: QueueLimits::default(),
            backoff: BackoffConfig::default(),
            max_payload: nokv_raft::wire::DEFAULT_MAX_PAYLOAD,
            inbox_capacity: 8192,
            mesh_capacity: 1024,
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            max_inbound_connections: 1024,
            workdir: None,
            net_faults: None,
            tls: None,
        }
    }
}

/// Checks `addr` is free for the cores' listeners and fixes its port (port 0 picks one);
/// see [`crate::addr::reserve`]. A running server makes this fail (its listeners would
/// otherwise silently share the port).
pub fn reserve_addr(addr: &str) -> Result<SocketAddr> {
    crate::addr::reserve(addr)
}

/// What every core of a store shares.
struct Shared {
    config: TransportConfig,
    resolver: Arc<dyn StoreResolver>,
    stats: Arc<TransportStats>,
}

/// A store's transport before its cores start: made on the main thread, one clone per
/// executor, each of which calls [`StoreTransport::start_core`].
#[derive(Clone)]
pub struct StoreTransport {
    shared: Arc<Shared>,
    mesh: MeshBuilder<RaftEnvelope, Full>,
}

impl StoreTransport {
    /// A transport with `config`, finding other stores through `resolver`. Counters go to
    /// a new [`TransportStats`] (and the installed `metrics` recorder).
    pub fn new(config: TransportConfig, resolver: Arc<dyn StoreResolver>) -> StoreTransport {
        let mesh = MeshBuilder::full(config.cores.max(1), config.mesh_capacity.max(1));
        StoreTransport {
            shared: Arc::new(Shared {
                config,
                resolver,
                stats: Arc::new(TransportStats::new()),
            }),
            mesh,
        }
    }

    /// The store's counters.
    pub fn stats(&self) -> Arc<TransportStats> {
        self.shared.stats.clone()
    }

    /// The settings.
    pub fn config(&self) -> &TransportConfig {
        &self.shared.config
    }

    /// Starts core `core`'s part on the calling executor: joins the transport mesh (waits
    /// until every core has joined), binds the listener, starts accepting. Runs until
    /// [`CoreTransport::shutdown`] (or the executor ends).
    pub async fn start_core(&self, core: usize) -> Result<Rc<CoreTransport>> {
        let cfg = &self.shared.config;
        let (senders, mut receivers) =
            self.mesh
                .clone()
                .join()
                .await
                .map_err(|e| Error::Executor {
                    core,
                    detail: format!("join the transport mesh: {e}"),
                })?;
        let listener = listen::bind(cfg.listen).map_err(|source| Error::Net {
            op: "bind rpc",
            addr: cfg.listen.to_string(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Net {
            op: "local address of rpc",
            addr: cfg.listen.to_string(),
            source,
        })?;
        let t = Rc::new(CoreTransport {
            core,
            shared: self.shared.clone(),
            inbox: Rc::new(Inbox::new(cfg.inbox_capacity)),
            mesh: senders,
            links: RefCell::new(HashMap::new()),
            resolver: ResolverCache::new(self.shared.resolver.clone()),
            stop: Signal::new(),
            tasks: Rc::new(Tasks::default()),
            listener_fd: Cell::new(Some(listener.fd())),
            local_addr,
            inbound: Cell::new(0),
            kv: RefCell::new(None),
            kv_links: Default::default(),
            roll: RefCell::new(faults::Roll::new((cfg.store_id << 16) ^ core as u64)),
            tls_refused: Cell::new(0),
        });
        for (_, stream) in receivers.streams() {
            let inbox = t.inbox.clone();
            let stats = self.shared.stats.clone();
            let stop = t.stop.clone();
            let guard = t.task();
            glommio::spawn_local(async move {
                let _guard = guard;
                loop {
                    let got = futures_lite::future::or(stream.recv(), async {
                        stop.wait().await;
                        None
                    })
                    .await;
                    let Some(env) = got else { break };
                    let _ = deliver_to(&inbox, &stats, env);
                }
            })
            .detach();
        }
        let guard = t.task();
        let accept = listen::accept_loop(t.clone(), listener);
        glommio::spawn_local(async move {
            let _guard = guard;
            accept.await
        })
        .detach();
        tracing::debug!(core, addr = %local_addr, "rpc listening");
        Ok(t)
    }
}

/// Puts `env` into `inbox`, counting it as delivered or dropped.
fn deliver_to(
    inbox: &Inbox,
    stats: &TransportStats,
    env: RaftEnvelope,
) -> std::result::Result<(), DropCause> {
    match inbox.push(env) {
        Ok(()) => {
            stats.add(Event::MessagesDelivered, 1);
            Ok(())
        }
        Err(_) => {
            stats.add(Event::Dropped(DropCause::InboxFull), 1);
            Err(DropCause::InboxFull)
        }
    }
}

/// One core's transport: its send queues, listener, inbox. Lives on the core's executor.
pub struct CoreTransport {
    core: usize,
    shared: Arc<Shared>,
    inbox: Rc<Inbox>,
    mesh: Senders<RaftEnvelope>,
    links: RefCell<HashMap<u64, Rc<Link>>>,
    resolver: ResolverCache,
    stop: Signal,
    /// The listener, connection and mesh tasks still running (see [`CoreTransport::shutdown`]).
    tasks: Rc<Tasks>,
    /// The listener's descriptor until [`CoreTransport::shutdown`] shut it down.
    listener_fd: Cell<Option<std::os::fd::RawFd>>,
    local_addr: SocketAddr,
    inbound: Cell<usize>,
    /// Runs key-value requests (None: refused).
    kv: RefCell<Option<Rc<dyn KvService>>>,
    /// Connections for the key-value requests this core sends.
    kv_links: kv_client::KvLinks,
    /// Draws for injected network faults.
    roll: RefCell<faults::Roll>,
    /// Incoming connections whose TLS handshake failed (their warnings are rate-limited).
    tls_refused: Cell<u64>,
}

/// How long [`CoreTransport::shutdown`] waits for the transport's tasks to end.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Counts a core's transport tasks, so that shutdown can wait until their sockets closed.
#[derive(Default)]
struct Tasks {
    live: Cell<usize>,
    none_left: Signal,
}

/// Held by a running transport task; dropped when it ends.
struct TaskGuard(Rc<Tasks>);

impl TaskGuard {
    /// Counts one more running task.
    fn new(tasks: &Rc<Tasks>) -> TaskGuard {
        tasks.live.set(tasks.live.get() + 1);
        TaskGuard(tasks.clone())
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let left = self.0.live.get() - 1;
        self.0.live.set(left);
        if left == 0 {
            self.0.none_left.fire();
        }
    }
}

impl CoreTransport {
    /// Sends a raft message to `env.to_store`'s core `env.to_core`. Never waits: the message
    /// is queued (or handed to the owning core of this store), or dropped and counted
    /// (`Err` says why). Messages from one core to one (store, core) arrive in order,
    /// unless some are dropped.
    pub fn send(self: &Rc<Self>, env: RaftEnvelope) -> std::result::Result<(), DropCause> {
        let stats = &self.shared.stats;
        if self.stop.is_fired() {
            stats.add(Event::Dropped(DropCause::Stopping), 1);
            return Err(DropCause::Stopping);
        }
        if env.to_store == self.shared.config.store_id {
            return self.deliver(env);
        }
        nokv::crash_point!("transport::before_send");
        if let Some(faults) = &self.shared.config.net_faults {
            let rules = faults.rules();
            let verdict = rules.verdict(self.store_id(), env.to_store, |n| {
                self.roll.borrow_mut().below(n)
            });
            match verdict {
                faults::Verdict::Send => {}
                faults::Verdict::Drop => {
                    stats.add(Event::Dropped(DropCause::Fault), 1);
                    return Err(DropCause::Fault);
                }
                faults::Verdict::Duplicate => {
                    let _ = self.push(env.clone());
                }
                faults::Verdict::Delay(d) => {
                    let me = self.clone();
                    let guard = self.task();
                    glommio::spawn_local(async move {
                        let _guard = guard;
                        glommio::timer::sleep(d).await;
                        let _ = me.push(env);
                    })
                    .detach();
                    return Ok(());
                }
            }
        }
        self.push(env)
    }

    /// Queues `env` toward its (other) store.
    fn push(self: &Rc<Self>, env: RaftEnvelope) -> std::result::Result<(), DropCause> {
        let stats = &self.shared.stats;
        let link = self
            .links
            .borrow_mut()
            .entry(env.to_store)
            .or_insert_with(|| Link::start(self, env.to_store))
            .clone();
        link.push(env).inspect_err(|cause| {
            stats.add(Event::Dropped(*cause), 1);
        })
    }

    /// The inbox of this core: messages that arrived for its peers.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// The store's counters.
    pub fn stats(&self) -> &TransportStats {
        &self.shared.stats
    }

    /// This store's id.
    pub fn store_id(&self) -> u64 {
        self.shared.config.store_id
    }

    /// This core's number.
    pub fn core(&self) -> usize {
        self.core
    }

    /// The address of store `store_id` (cached per core), `None` if unknown.
    pub async fn resolve(&self, store_id: u64) -> Option<SocketAddr> {
        self.resolver.resolve(store_id).await.ok()
    }

    /// The cluster id frames carry.
    pub fn cluster_id(&self) -> u64 {
        self.shared.config.cluster_id
    }

    /// Core `core`'s snapshot directory, `None` without a workdir or for no such core.
    pub fn snap_dir(&self, core: usize) -> Option<std::path::PathBuf> {
        let w = self.shared.config.workdir.as_ref()?;
        (core < self.shared.config.cores).then(|| crate::snapship::snap_dir(w, core))
    }

    /// Mutual TLS between stores (`--tls-cluster`), if on.
    pub fn cluster_tls(&self) -> Option<&Arc<crate::tls::ClusterTls>> {
        self.shared.config.tls.as_ref()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops this core's part: the listener and connections close, queued messages are
    /// dropped (counted), later sends are refused.
    /// Waits (at most [`SHUTDOWN_WAIT`]) until its tasks ended: a listener left open would
    /// keep taking a restarted store's connections (SO_REUSEPORT) into a queue nobody reads.
    pub async fn shutdown(&self) {
        // First, so that no store connects any more once connections start closing. The
        // accept loop keeps the descriptor open until it sees the stop fired (below).
        if let Some(fd) = self.listener_fd.take() {
            listen::shutdown_fd(fd);
        }
        self.stop.fire();
        self.mesh.close();
        if self.tasks.live.get() > 0 {
            futures_lite::future::or(self.tasks.none_left.wait(), async {
                glommio::timer::sleep(SHUTDOWN_WAIT).await;
            })
            .await;
        }
    }

    /// Sets what runs the key-value requests arriving on this core's connections.
    pub fn set_kv_service(&self, service: Rc<dyn KvService>) {
        *self.kv.borrow_mut() = Some(service);
    }

    /// The key-value service, if set.
    fn kv_service(&self) -> Option<Rc<dyn KvService>> {
        self.kv.borrow().clone()
    }

    /// Counts a task spawned for this transport until it ends.
    fn task(&self) -> TaskGuard {
        TaskGuard::new(&self.tasks)
    }

    /// Hands a message for this store to the core that owns its peer.
    pub(crate) fn deliver(&self, env: RaftEnvelope) -> std::result::Result<(), DropCause> {
        let stats = &self.shared.stats;
        let to = env.to_core as usize;
        if to >= self.shared.config.cores {
            stats.add(Event::Dropped(DropCause::NoSuchCore), 1);
            return Err(DropCause::NoSuchCore);
        }
        if to == self.core {
            return deliver_to(&self.inbox, stats, env);
        }
        // Never wait on a full channel toward another core (two cores doing that to each
        // other would deadlock): drop, raft sends again.
        self.mesh.try_send_to(to, env).map_err(|_| {
            stats.add(Event::Dropped(DropCause::MeshFull), 1);
            DropCause::MeshFull
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    fn env(to_store: u64, to_core: u32) -> RaftEnvelope {
        RaftEnvelope {
            region_id: 1,
            to_store,
            to_core,
            message: vec![7; 10],
            ..RaftEnvelope::default()
        }
    }

    #[test]
    fn a_full_send_queue_drops_and_counts_without_waiting() {
        let ex = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 << 10)
            .make()
            .expect("executor");
        ex.run(async {
            // Nobody listens there: the writer cannot drain the queue.
            let dead = reserve_addr("127.0.0.1:0").expect("a free port");
            let mut cfg = TransportConfig::new(1, 1, 1, reserve_addr("127.0.0.1:0").expect("port"));
            cfg.queue.max_queued_messages = 10;
            let st = StoreTransport::new(cfg, Arc::new(StaticResolver::new([(2, dead)])));
            let stats = st.stats();
            let t = st.start_core(0).await.expect("start");
            // No await between the sends: the writer has not run, the queue holds 10.
            let results: Vec<_> = (0..25).map(|_| t.send(env(2, 0))).collect();
            assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
            assert!(results[10..]
                .iter()
                .all(|r| *r == Err(DropCause::QueueFull)));
            assert_eq!(stats.get(Event::Dropped(DropCause::QueueFull)), 15);
            // This store: straight to the core's inbox, or refused for a missing core.
            assert_eq!(t.send(env(1, 0)), Ok(()));
            assert_eq!(t.inbox().len(), 1);
            assert_eq!(t.send(env(1, 5)), Err(DropCause::NoSuchCore));
            assert_eq!(stats.get(Event::Dropped(DropCause::NoSuchCore)), 1);
            assert_eq!(stats.get(Event::MessagesDelivered), 1);
            t.shutdown().await;
            assert_eq!(t.send(env(2, 0)), Err(DropCause::Stopping));
        });
    }
}
