//! The coordinator's TCP server: one std thread per connection, at most
//! `max_connections` of them (a connection over the bound gets a `Busy` error frame and is
//! closed). Each connection reads `COORD_REQUEST` frames and answers each with a
//! `COORD_RESPONSE` frame carrying the request's id; in replicated mode `RAFT_BATCH` frames
//! from the other replicas go to the raft driver (no response). A frame of another cluster or
//! protocol version, over the size bound, with a bad checksum, of another kind, or with an
//! undecodable payload is refused: counted, logged, and the connection dropped.

use crate::error::{Error, Result};
use crate::proto::{response, Request, Response};
use crate::service::Coordinator;
use nokv_raft::wire::{self, FrameDecoder, FrameLimits};
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked threads look at the stop flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Longest the shutdown waits for connection threads to finish.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Connections over the bound being answered `Busy` at once; more are closed silently.
pub const MAX_REFUSERS: usize = 16;
/// Longest a refused connection is kept open for its `Busy` answer to be read.
pub const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Longest a response write may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server bounds.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Connections served at once; more are refused.
    pub max_connections: usize,
    /// Largest accepted request payload in bytes.
    pub max_frame_bytes: u32,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 256,
            max_frame_bytes: 4 << 20,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// Counters of the server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub connections_accepted: AtomicU64,
    /// Connections refused over `max_connections`.
    pub connections_refused: AtomicU64,
    /// Frames refused (another cluster or version, too large, corrupt, wrong kind,
    /// undecodable, truncated); each dropped its connection.
    pub frames_refused: AtomicU64,
    /// Requests answered.
    pub requests: AtomicU64,
}

impl ServerStats {
    /// Frames refused so far.
    pub fn frames_refused(&self) -> u64 {
        self.frames_refused.load(Ordering::Relaxed)
    }

    /// Connections refused so far.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::Relaxed)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// A running server; [`Server::shutdown`] stops it.
pub struct Server {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    coord: Arc<Coordinator>,
    opts: ServerOptions,
    limits: FrameLimits,
    stop: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
    active: AtomicUsize,
    refusers: AtomicUsize,
}

impl Server {
    /// Binds `addr` and starts serving `coord`.
    pub fn start(coord: Arc<Coordinator>, addr: &str, opts: ServerOptions) -> Result<Server> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::io(format!("bind {addr}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| Error::io("listener address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("listener non-blocking", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServerStats::default());
        let shared = Arc::new(Shared {
            limits: FrameLimits {
                cluster_id: coord.cluster_id(),
                max_payload: opts.max_frame_bytes,
            },
            coord,
            opts,
            stop: stop.clone(),
            stats: stats.clone(),
            active: AtomicUsize::new(0),
            refusers: AtomicUsize::new(0),
        });
        let accept = std::thread::Builder::new()
            .name("nokv-coord-accept".into())
            .spawn(move || accept_loop(listener, shared))
            .map_err(|e| Error::io("spawn the accept thread", e))?;
        Ok(Server {
            local_addr,
            stop,
            stats,
            accept: Some(accept),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The flag that stops the server when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops accepting, waits (bounded) for connections to finish their current request.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Ends when the stop flag is set.
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => admit(&shared, stream, peer),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    // Bounded by SHUTDOWN_WAIT.
    while shared.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let active = shared.active.fetch_add(1, Ordering::SeqCst);
    if active >= shared.opts.max_connections {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        shared
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, max = shared.opts.max_connections, "connection refused: too many connections");
        refuse_busy(shared, stream);
        return;
    }
    shared
        .stats
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("nokv-coord-conn".into())
        .spawn(move || {
            if let Err(e) = serve(&s, stream, peer) {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            s.active.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        shared.active.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(%peer, error = %e, "cannot spawn a connection thread");
    }
}

/// Answers a connection over the bound with a `Busy` error frame (request id 0) and closes
/// it once the client has read it (a closing thread of its own, at most
/// [`MAX_REFUSERS`] at once; beyond that the connection is just closed).
fn refuse_busy(shared: &Arc<Shared>, stream: TcpStream) {
    if shared.refusers.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSERS {
        shared.refusers.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("nokv-coord-refuse".into())
        .spawn(move || {
            let mut stream = stream;
            let busy = Response {
                body: Some(response::Body::Error(
                    Error::Busy(format!(
                        "too many connections (max {})",
                        s.opts.max_connections
                    ))
                    .to_proto(),
                )),
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(REFUSE_LINGER));
            let _ = stream.set_read_timeout(Some(REFUSE_LINGER));
            if wire::write_frame(
                &mut stream,
                wire::kind::COORD_RESPONSE,
                s.limits.cluster_id,
                0,
                &busy,
            )
            .is_ok()
            {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                // Drain until the client closes (bounded by the read timeout and the bytes
                // it sent), so the close does not reset the answer away.
                let mut buf = [0u8; 4096];
                let deadline = Instant::now() + REFUSE_LINGER;
                while Instant::now() < deadline {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
            s.refusers.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        shared.refusers.fetch_sub(1, Ordering::SeqCst);
    }
}

fn refuse(shared: &Shared, peer: SocketAddr, why: &dyn std::fmt::Display) {
    shared.stats.frames_refused.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(%peer, reason = %why, "frame refused, connection dropped");
}

fn serve(shared: &Shared, mut stream: TcpStream, peer: SocketAddr) -> Result<()> {
    let ctx = |what: &str| format!("connection from {peer}: {what}");
    stream
        .set_nonblocking(false)
        .map_err(|e| Error::io(ctx("blocking mode"), e))?;
    stream
        .set_read_timeout(Some(POLL_INTERVAL))
        .map_err(|e| Error::io(ctx("read timeout"), e))?;
    stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .map_err(|e| Error::io(ctx("write timeout"), e))?;
    let _ = stream.set_nodelay(true);
    let mut decoder = FrameDecoder::new(shared.limits);
    let mut buf = vec![0u8; 64 << 10];
    let mut last_activity = Instant::now();
    let mut out = Vec::new();
    // Ends at end of stream, on a refused frame, on an IO error, when idle or stopping.
    while !shared.stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => {
                if let Err(e) = decoder.finish() {
                    refuse(shared, peer, &e);
                }
                return Ok(());
            }
            Ok(n) => {
                last_activity = Instant::now();
                decoder.feed(&buf[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if last_activity.elapsed() > shared.opts.idle_timeout {
                    tracing::debug!(%peer, "idle connection closed");
                    return Ok(());
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(ctx("read"), e)),
        }
        // Bounded by the bytes just read: each turn consumes one whole frame.
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    refuse(shared, peer, &e);
                    return Ok(());
                }
            };
            if frame.kind == wire::kind::RAFT_BATCH {
                // Raft traffic between coordinator replicas: one-way, no response.
                if let Err(e) = shared.coord.deliver_raft(&frame.payload) {
                    refuse(shared, peer, &e);
                    return Ok(());
                }
                continue;
            }
            if frame.kind != wire::kind::COORD_REQUEST {
                refuse(
                    shared,
                    peer,
                    &format!("frame kind {} is not a coordinator request", frame.kind),
                );
                return Ok(());
            }
            let req: Request = match frame.decode() {
                Ok(r) => r,
                Err(e) => {
                    refuse(shared, peer, &e);
                    return Ok(());
                }
            };
            let resp = shared.coord.handle(req);
            shared.stats.requests.fetch_add(1, Ordering::Relaxed);
            out.clear();
            wire::encode(
                &mut out,
                wire::kind::COORD_RESPONSE,
                shared.limits.cluster_id,
                frame.request_id,
                &resp,
            );
            std::io::Write::write_all(&mut stream, &out)
                .map_err(|e| Error::io(ctx("write response"), e))?;
        }
    }
    Ok(())
}
