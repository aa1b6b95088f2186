//! A standalone Redis gateway in front of a cluster: the gateway crate's sans-IO sessions
//! (RESP2/RESP3, the command table, validation) on blocking threads, one per connection,
//! with every read and write sent through a [`Client`]. The `nokv-redis` binary runs it.

use crate::client::{now_ms, Client};
use crate::error::Error;
use nokv_gateway::session::{Config, Session, Shared, State};
use nokv_gateway::store::Backend;
use nokv_gateway::{ReadOp, Reply, WriteCommand};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 16 << 10;
/// How often blocked accepts and reads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// The gateway's [`Backend`]: reads and writes go to the cluster; a call that fails
/// answers a Redis error (`-TRYAGAIN`, `-CLUSTERDOWN`, `-ERR`).
pub struct ClusterBackend {
    client: Arc<Client>,
}

impl ClusterBackend {
    /// A backend sending through `client`.
    pub fn new(client: Arc<Client>) -> ClusterBackend {
        ClusterBackend { client }
    }
}

/// The Redis error reply for a failed call.
pub fn error_reply(e: &Error) -> Reply {
    match e {
        // Their texts start with the Redis error code.
        Error::TryAgain { .. } | Error::ClusterDown { .. } | Error::WriteUndetermined { .. } => {
            Reply::error(e.to_string())
        }
        Error::Server { message, .. } => Reply::error(message.clone()),
        other => Reply::error(format!("ERR {other}")),
    }
}

impl Backend for ClusterBackend {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn read(&self, op: &ReadOp) -> Reply {
        self.client
            .read(op.clone())
            .unwrap_or_else(|e| error_reply(&e))
    }

    fn write(&self, cmd: &WriteCommand) -> Reply {
        self.client
            .write(cmd.clone())
            .unwrap_or_else(|e| error_reply(&e))
    }
}

/// A connection's byte stream (the socket, or a TLS session over it).
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// Turns an accepted socket (read timeouts set) into the stream the session talks over:
/// `nokv-redis --tls-cert-file` wraps it in TLS.
pub type Wrap = Arc<dyn Fn(TcpStream) -> std::io::Result<Box<dyn Conn>> + Send + Sync>;

/// Serves Redis clients on `listener` until `stop` is set: a thread per connection, at
/// most `max_clients` at once (then `-ERR max number of clients reached`).
pub fn serve(
    listener: TcpListener,
    client: Arc<Client>,
    config: Config,
    max_clients: usize,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    serve_with(listener, client, config, max_clients, stop, None)
}

/// [`serve`], each connection's socket first given to `wrap` (TLS).
pub fn serve_with(
    listener: TcpListener,
    client: Arc<Client>,
    config: Config,
    max_clients: usize,
    stop: Arc<AtomicBool>,
    wrap: Option<Wrap>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let backend = Arc::new(ClusterBackend::new(client));
    let shared = Shared::new(config, now_ms());
    let live = Arc::new(AtomicUsize::new(0));
    // Bounded by the stop flag.
    while !stop.load(Ordering::SeqCst) {
        let (mut stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.config.refuses_peer(Some(peer.ip())) {
            shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.write_all(nokv_gateway::session::PROTECTED_MODE_DENIED);
            continue;
        }
        if live.load(Ordering::SeqCst) >= max_clients {
            shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let (backend, shared, stop, live2, wrap) = (
            backend.clone(),
            shared.clone(),
            stop.clone(),
            live.clone(),
            wrap.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("nokv-redis-conn".into())
            .spawn(move || {
                if let Err(e) = serve_conn(stream, peer, &*backend, shared, &stop, wrap) {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                live2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start a connection thread");
            live.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

fn serve_conn(
    socket: TcpStream,
    peer: SocketAddr,
    backend: &dyn Backend,
    shared: Arc<Shared>,
    stop: &AtomicBool,
    wrap: Option<Wrap>,
) -> std::io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(POLL))?;
    socket.set_nodelay(true)?;
    let laddr = socket.local_addr()?.to_string();
    let mut stream: Box<dyn Conn> = match wrap {
        Some(wrap) => wrap(socket)?,
        None => Box::new(socket),
    };
    let mut session = Session::new(shared, peer.to_string(), laddr, now_ms());
    let mut buf = vec![0u8; READ_CHUNK];
    // Bounded by the connection: each turn reads or ends.
    while !stop.load(Ordering::SeqCst) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if session.feed(&buf[..n]).is_err() {
            return Ok(());
        }
        // Bounded: every round runs requests or stops (no input left, or closing).
        loop {
            session.run(backend);
            if session.state() == State::CloseNow {
                return Ok(());
            }
            let out = session.take_output();
            stream.write_all(&out)?;
            if session.state() == State::CloseAfterFlush {
                return stream.flush();
            }
            if !session.budget_exhausted() {
                break;
            }
            session.resume();
        }
    }
    Ok(())
}
