//! The node: start-up, one pinned glommio executor per core, the channel mesh,
//! each core's raft driver, connections, and graceful shutdown.
//!
//! Engine calls (reads, `append_opaque` with its fdatasync, applies) run inline
//! on the executor thread and block it while they run: a known gap until the
//! engine gets a glommio IO backend (see docs/architecture.md).

use crate::config::{Settings, REGIONS_PER_CORE};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::layout::{self, OpenedCore, RouteTable, StoreMeta, STORE_ID};
use crate::route::{self, Plan, Work};
use crate::view::RegionView;
use futures_lite::future;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use nokv::Db;
use nokv_gateway::exec::{self, WriteCommand};
use nokv_gateway::{Action, Reply, Session, State};
use nokv_raft::raftpb::Message;
use nokv_raft::{Apply, CoreConfig, RaftCore, RegionDescriptor};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Capacity of each mesh channel (per ordered pair of cores).
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Most requests from other cores a core works on at once.
pub const MAX_REMOTE_HANDLERS: usize = 4096;
/// Most requests a core waits on from other cores at once.
pub const MAX_REMOTE_WAITING: usize = 8192;
/// Raft tick interval.
pub const TICK: Duration = Duration::from_millis(100);
/// How often each core tries to truncate its raft logs.
pub const LOG_COMPACT_INTERVAL: Duration = Duration::from_secs(5);
/// Locked-memory budget of one process's io_uring buffers (all executors, 3 rings each): RLIMIT_MEMLOCK
/// is 8 MiB here and io_uring charges it per user, so several servers (tests) must fit together.
pub const IO_MEMORY_BUDGET: usize = 768 << 10;
/// Longest a graceful shutdown waits for connections and other cores.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a socket at a time.
pub const READ_CHUNK: usize = 16 << 10;

/// `-TRYAGAIN` when a bounded queue toward another core is full.
const BUSY: &str = "TRYAGAIN core is busy, retry";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request from one core to another.
struct Request {
    from: usize,
    id: u64,
    work: Work,
}

/// The answer to a [`Request`].
struct Response {
    id: u64,
    reply: Reply,
}

/// What every core shares (read-mostly).
struct NodeShared {
    cores: usize,
    routes: RouteTable,
    gateway: Arc<nokv_gateway::Shared>,
    durability: nokv::Durability,
    max_clients: usize,
    clients: AtomicUsize,
    shutdown: Arc<AtomicBool>,
    failed: AtomicBool,
    listening: AtomicUsize,
    drained: AtomicUsize,
}

/// Byte size of each executor's io_uring buffer pool: the budget over 3 rings per executor.
pub fn io_memory_per_executor(cores: usize) -> usize {
    let per = IO_MEMORY_BUDGET / (3 * cores.max(1));
    (per.clamp(32 << 10, 128 << 10)) & !4095
}

/// Runs the node until SIGTERM/SIGINT; returns once every core has stopped.
pub fn run(settings: Settings) -> Result<()> {
    let _lock = layout::lock_workdir(&settings.workdir)?;
    // Probe the address without SO_REUSEPORT: a running server (whose listeners set it)
    // makes this bind fail, where glommio's own bind would silently share the port.
    let probe = std::net::TcpListener::bind(&settings.redis_addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse {
                addr: settings.redis_addr.clone(),
            }
        } else {
            Error::Net {
                op: "bind",
                addr: settings.redis_addr.clone(),
                source: e,
            }
        }
    })?;
    let addr = probe.local_addr().map_err(|e| Error::Net {
        op: "local address of",
        addr: settings.redis_addr.clone(),
        source: e,
    })?;
    drop(probe);
    let meta = match layout::read_store_meta(&settings.workdir)? {
        Some(m) => {
            if let Some(c) = settings.cores {
                if c != m.cores {
                    return Err(Error::Layout(format!(
                        "{} was created with {} cores; start with --cores {} (moving regions between cores is not supported yet)",
                        settings.workdir.display(),
                        m.cores,
                        m.cores
                    )));
                }
            }
            m
        }
        None => {
            let cores = settings
                .cores
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let m = StoreMeta {
                store_id: STORE_ID,
                cores,
                regions_per_core: REGIONS_PER_CORE,
            };
            layout::write_store_meta(&settings.workdir, &m)?;
            tracing::info!(cores, regions_per_core = REGIONS_PER_CORE, workdir = %settings.workdir.display(), "bootstrapping an empty workdir");
            m
        }
    };
    let cores = meta.cores;
    // Core n runs on the n-th CPU of the list, round-robin when there are more cores.
    let cpus = settings.cpus.clone().unwrap_or_else(|| {
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
    });

    let mut opened: Vec<OpenedCore> = Vec::with_capacity(cores);
    for core in 0..cores {
        opened.push(layout::open_core(
            &settings.workdir,
            &meta,
            core,
            settings.durability,
        )?);
    }
    let per_core: Vec<Vec<RegionDescriptor>> = opened.iter().map(|o| o.regions.clone()).collect();
    let routes = RouteTable::build(&per_core)?;

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone())
            .map_err(|e| Error::Config(format!("install signal handler: {e}")))?;
    }
    let gateway_config = nokv_gateway::Config {
        requirepass: settings.requirepass.as_ref().map(|p| p.as_bytes().to_vec()),
        limits: nokv_gateway::resp::Limits {
            max_bulk_bytes: settings.max_bulk_bytes,
            ..Default::default()
        },
        max_query_buffer_bytes: settings.max_bulk_bytes.saturating_mul(2).max(64 << 20),
        max_clients: settings.max_clients,
        port: addr.port(),
        ..Default::default()
    };
    let node = Arc::new(NodeShared {
        cores,
        routes,
        gateway: nokv_gateway::Shared::new(gateway_config, now_ms()),
        durability: settings.durability,
        max_clients: settings.max_clients,
        clients: AtomicUsize::new(0),
        shutdown,
        failed: AtomicBool::new(false),
        listening: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
    });
    let requests: MeshBuilder<Request, _> = MeshBuilder::full(cores, MESH_CHANNEL_CAPACITY);
    let responses: MeshBuilder<Response, _> = MeshBuilder::full(cores, MESH_CHANNEL_CAPACITY);
    let io_memory = io_memory_per_executor(cores);
    let mut handles = Vec::with_capacity(cores);
    for (core, o) in opened.into_iter().enumerate() {
        let cpu = cpus[core % cpus.len()];
        let node = node.clone();
        let requests = requests.clone();
        let responses = responses.clone();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("core-{core}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                let r = core_main(core, node.clone(), o, addr, requests, responses).await;
                if let Err(e) = &r {
                    tracing::error!(core, error = %e, "core stopped with an error");
                    node.failed.store(true, Ordering::SeqCst);
                    node.shutdown.store(true, Ordering::SeqCst);
                }
                r
            })
            .map_err(|e| Error::Executor {
                core,
                detail: e.to_string(),
            })?;
        handles.push(h);
    }
    // Announce once every core listens (tests and scripts wait for this line).
    loop {
        if node.listening.load(Ordering::SeqCst) == cores {
            println!("nokv-server listening on {addr} ({cores} cores)");
            tracing::info!(%addr, cores, io_memory, "listening");
            break;
        }
        if node.failed.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut first_err = None;
    for (core, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(Error::Executor {
                    core,
                    detail: format!("panicked or failed: {e}"),
                });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

type Waiter = LocalSender<Reply>;

/// One core's state, shared by its tasks.
struct Core {
    id: usize,
    node: Arc<NodeShared>,
    db: Db,
    raft: RefCell<RaftCore<Waiter>>,
    requests: Senders<Request>,
    responses: Senders<Response>,
    waiting: RefCell<HashMap<u64, Waiter>>,
    next_id: Cell<u64>,
    handlers: Cell<usize>,
    connections: Cell<usize>,
    notify: LocalSender<()>,
    stop: Event,
}

/// Applies committed entries on this core's engine and answers their proposers.
struct Applier<'a> {
    db: &'a Db,
}

impl Apply<Waiter> for Applier<'_> {
    fn apply(&mut self, region: &RegionDescriptor, index: u64, data: &[u8], token: Option<Waiter>) {
        let reply = match WriteCommand::decode(data) {
            // Version = the entry's raft index: fixed by the log, identical on every replica,
            // growing with every write of the region.
            Ok(cmd) => exec::apply(&cmd, &mut RegionView::apply(self.db, region, index), index),
            Err(e) => {
                tracing::error!(region = region.id, index, error = %e, "undecodable raft entry skipped");
                Reply::error(format!("ERR {e}"))
            }
        };
        if let Some(t) = token {
            let _ = t.try_send(reply);
        }
    }

    fn abandon(&mut self, token: Waiter, error: nokv_raft::Error) {
        let _ = token.try_send(Reply::error(format!("ERR {error}")));
    }

    fn send(&mut self, region: u64, _msg: Message) {
        tracing::warn!(
            region,
            "raft message dropped: no transport yet (single replica)"
        );
    }
}

async fn core_main(
    id: usize,
    node: Arc<NodeShared>,
    opened: OpenedCore,
    addr: std::net::SocketAddr,
    requests: MeshBuilder<Request, glommio::channels::channel_mesh::Full>,
    responses: MeshBuilder<Response, glommio::channels::channel_mesh::Full>,
) -> Result<()> {
    let cfg = CoreConfig {
        store_id: STORE_ID,
        durability: node.durability,
        ..CoreConfig::default()
    };
    let raft = RaftCore::open(opened.db.clone(), cfg, opened.regions, opened.replayed)
        .map_err(|source| Error::Raft { core: id, source })?;
    let (req_tx, mut req_rx) = requests.join().await.map_err(|e| Error::Executor {
        core: id,
        detail: format!("join the request mesh: {e}"),
    })?;
    let (rep_tx, mut rep_rx) = responses.join().await.map_err(|e| Error::Executor {
        core: id,
        detail: format!("join the response mesh: {e}"),
    })?;
    let (notify_tx, notify_rx) = local_channel::new_bounded::<()>(1);
    let core = Rc::new(Core {
        id,
        node: node.clone(),
        db: opened.db,
        raft: RefCell::new(raft),
        requests: req_tx,
        responses: rep_tx,
        waiting: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        handlers: Cell::new(0),
        connections: Cell::new(0),
        notify: notify_tx,
        stop: Event::new(),
    });

    let driver_stop = Event::new();
    let driver = glommio::spawn_local(raft_driver(core.clone(), notify_rx, driver_stop.clone()));
    for (from, stream) in req_rx.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            // Bounded by the channel; ends when the sender side closes.
            while let Some(req) = stream.recv().await {
                if core.handlers.get() >= MAX_REMOTE_HANDLERS {
                    let _ = core
                        .responses
                        .send_to(
                            from,
                            Response {
                                id: req.id,
                                reply: Reply::error(BUSY),
                            },
                        )
                        .await;
                    continue;
                }
                core.handlers.set(core.handlers.get() + 1);
                let c = core.clone();
                glommio::spawn_local(async move {
                    let reply = execute_local(&c, req.work).await;
                    // Response receivers never block, so awaiting here cannot close a cycle.
                    let _ = c
                        .responses
                        .send_to(req.from, Response { id: req.id, reply })
                        .await;
                    c.handlers.set(c.handlers.get() - 1);
                })
                .detach();
            }
        })
        .detach();
    }
    for (_, stream) in rep_rx.streams() {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(rep) = stream.recv().await {
                if let Some(w) = core.waiting.borrow_mut().remove(&rep.id) {
                    let _ = w.try_send(rep.reply);
                }
            }
        })
        .detach();
    }

    let listener = TcpListener::bind(addr).map_err(|e| Error::Net {
        op: "bind",
        addr: addr.to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    node.listening.fetch_add(1, Ordering::SeqCst);
    tracing::debug!(core = id, "accepting");

    // Shutdown watcher: turns the process-wide flag into this core's event.
    {
        let core = core.clone();
        glommio::spawn_local(async move {
            while !core.node.shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            core.stop.fire();
        })
        .detach();
    }

    // Accept until shutdown.
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            core.stop.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(core = id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if node.clients.fetch_add(1, Ordering::SeqCst) >= node.max_clients {
            node.clients.fetch_sub(1, Ordering::SeqCst);
            node.gateway
                .rejected_connections
                .fetch_add(1, Ordering::Relaxed);
            let mut stream = stream;
            let _ = stream
                .write_all(b"-ERR max number of clients reached\r\n")
                .await;
            continue;
        }
        core.connections.set(core.connections.get() + 1);
        let c = core.clone();
        glommio::spawn_local(async move {
            serve_connection(&c, stream).await;
            c.connections.set(c.connections.get() - 1);
            c.node.clients.fetch_sub(1, Ordering::SeqCst);
        })
        .detach();
    }
    drop(listener);
    tracing::info!(core = id, "draining");

    // Drain: this core's connections finish their current requests and close, while the
    // driver and mesh handlers keep serving every core; then wait for the other cores.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while core.connections.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    node.drained.fetch_add(1, Ordering::SeqCst);
    while node.drained.load(Ordering::SeqCst) < node.cores && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    while (core.handlers.get() > 0 || core.raft.borrow().pending() > 0) && Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    driver_stop.fire();
    let _ = core.notify.try_send(());
    let driven = driver.await;
    // Flush so that a restart finds every region's data in SSTs and replays nothing.
    let flushed = core
        .db
        .flush()
        .map_err(|source| Error::Engine { core: id, source });
    core.requests.close();
    core.responses.close();
    driven?;
    flushed?;
    tracing::info!(core = id, "stopped");
    Ok(())
}

/// Drives the core's raft peers: a poll round whenever something is ready, ticks,
/// periodic log truncation.
async fn raft_driver(
    core: Rc<Core>,
    notify: local_channel::LocalReceiver<()>,
    stop: Event,
) -> Result<()> {
    let mut last_tick = Instant::now();
    let mut last_compact = Instant::now();
    loop {
        let ready = core.raft.borrow().has_ready();
        if !ready {
            if stop.is_fired() {
                return Ok(());
            }
            let wait = TICK.saturating_sub(last_tick.elapsed());
            future::or(
                async {
                    notify.recv().await;
                },
                glommio::timer::sleep(wait),
            )
            .await;
        }
        if last_tick.elapsed() >= TICK {
            core.raft.borrow_mut().tick();
            last_tick = Instant::now();
        }
        let result = {
            let mut raft = core.raft.borrow_mut();
            let mut applier = Applier { db: &core.db };
            let r = raft.poll_round(&mut applier);
            if r.is_ok() && last_compact.elapsed() >= LOG_COMPACT_INTERVAL {
                last_compact = Instant::now();
                raft.compact_log().map(|_| Default::default())
            } else {
                r
            }
        };
        if let Err(source) = result {
            // The engine failed under the raft log: nothing more can be acknowledged here.
            // Stop the whole node (exit status 1) rather than leave writes hanging.
            tracing::error!(core = core.id, error = %source, "raft driver failed; stopping the node");
            core.node.failed.store(true, Ordering::SeqCst);
            core.node.shutdown.store(true, Ordering::SeqCst);
            return Err(Error::Raft {
                core: core.id,
                source,
            });
        }
        // Let connections run (and propose more) before the next round.
        glommio::yield_if_needed().await;
    }
}

/// Runs work for a region this core owns.
async fn execute_local(core: &Rc<Core>, work: Work) -> Reply {
    match work {
        Work::Read { region, op } => {
            let raft = core.raft.borrow();
            let Some(desc) = raft.region(region) else {
                return Reply::error(format!("ERR {}", nokv_raft::Error::RegionNotFound(region)));
            };
            // Single replica: the leader's engine is the only copy, and a write is answered
            // only after it is applied, so reading it directly is linearizable.
            exec::read(&op, &RegionView::read(&core.db, desc), now_ms())
        }
        Work::Write { region, cmd } => {
            let (tx, rx) = local_channel::new_bounded(1);
            let proposed = core.raft.borrow_mut().propose(region, cmd.encode(), tx);
            if let Err((e, _)) = proposed {
                return Reply::error(match e {
                    nokv_raft::Error::Busy { .. } => BUSY.to_string(),
                    e => format!("ERR {e}"),
                });
            }
            let _ = core.notify.try_send(());
            rx.recv()
                .await
                .unwrap_or_else(|| Reply::error("ERR write abandoned: the core is stopping"))
        }
    }
}

/// Runs work on the owning core: inline here, or over the mesh.
async fn execute(core: &Rc<Core>, target: usize, work: Work) -> Reply {
    if target == core.id {
        return execute_local(core, work).await;
    }
    if core.waiting.borrow().len() >= MAX_REMOTE_WAITING {
        return Reply::error(BUSY);
    }
    let id = core.next_id.get();
    core.next_id.set(id + 1);
    let (tx, rx) = local_channel::new_bounded(1);
    core.waiting.borrow_mut().insert(id, tx);
    let req = Request {
        from: core.id,
        id,
        work,
    };
    // Never await a full channel toward another core: two cores doing that to each
    // other would deadlock. Answer busy instead.
    if core.requests.try_send_to(target, req).is_err() {
        core.waiting.borrow_mut().remove(&id);
        return Reply::error(BUSY);
    }
    rx.recv()
        .await
        .unwrap_or_else(|| Reply::error("ERR request abandoned: the core is stopping"))
}

/// Runs a plan's parts concurrently and merges their replies.
async fn run_plan(core: &Rc<Core>, plan: Plan) -> Reply {
    let Plan { mut parts, merge } = plan;
    if parts.len() == 1 {
        if let Some((target, work)) = parts.pop() {
            let reply = execute(core, target, work).await;
            return route::merge(merge, vec![reply]);
        }
    }
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|(target, work)| {
            let c = core.clone();
            glommio::spawn_local(async move { execute(&c, target, work).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(tasks.len());
    for t in tasks {
        replies.push(t.await);
    }
    route::merge(merge, replies)
}

async fn run_action(core: Rc<Core>, action: Action) -> (nokv_gateway::Ticket, Reply) {
    match action {
        Action::Read { ticket, op } => {
            let plan = route::plan_read(&core.node.routes, op);
            (ticket, run_plan(&core, plan).await)
        }
        Action::Write { ticket, cmd } => match route::plan_write(&core.node.routes, cmd) {
            Ok(plan) => (ticket, run_plan(&core, plan).await),
            Err(reply) => (ticket, reply),
        },
    }
}

/// Evaluates every action the buffered input yields. A read waits for the writes
/// before it on this connection, so a client always reads its own writes; writes
/// (and reads with no write before them) run concurrently.
async fn drive(core: &Rc<Core>, session: &mut Session) {
    let mut inflight: Vec<(glommio::Task<(nokv_gateway::Ticket, Reply)>, bool)> = Vec::new();
    while let Some(action) = session.next_action(now_ms()) {
        let is_write = matches!(action, Action::Write { .. });
        if !is_write && inflight.iter().any(|(_, w)| *w) {
            for (t, _) in inflight.drain(..) {
                let (ticket, reply) = t.await;
                session.complete(ticket, reply);
            }
        }
        inflight.push((
            glommio::spawn_local(run_action(core.clone(), action)),
            is_write,
        ));
    }
    for (t, _) in inflight {
        let (ticket, reply) = t.await;
        session.complete(ticket, reply);
    }
}

async fn serve_connection(core: &Rc<Core>, mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(core.node.gateway.clone(), peer, local, now_ms());
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if core.stop.is_fired() {
            return;
        }
        let read = future::or(async { Some(stream.read(&mut buf).await) }, async {
            core.stop.wait().await;
            None
        })
        .await;
        let n = match read {
            None | Some(Err(_)) | Some(Ok(0)) => return,
            Some(Ok(n)) => n,
        };
        if let Err(e) = session.feed(&buf[..n]) {
            tracing::debug!(error = %e, "closing connection");
            return;
        }
        // Each round parses at most the per-read budget; bounded by the input.
        loop {
            drive(core, &mut session).await;
            let out = session.take_output();
            if session.state() == State::CloseNow {
                return;
            }
            if !out.is_empty() && stream.write_all(&out).await.is_err() {
                return;
            }
            if session.state() == State::CloseAfterFlush {
                let _ = stream.flush().await;
                return;
            }
            if session.budget_exhausted() {
                session.resume();
            } else {
                break;
            }
        }
    }
}
