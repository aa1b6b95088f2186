//! One pipelined connection per store: requests are written under a lock, a reader thread
//! hands each response to the caller waiting for its request id. A failed connection fails
//! every request in flight on it and is replaced at the next call.

use nokv_raft::kv::{self, KvRequest, KvResponse};
use nokv_raft::wire::{self, FrameLimits};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Why one request on a connection got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// Connecting failed.
    Connect(String),
    /// The connection failed before the request was written: the store did not see it.
    Broken(String),
    /// The connection failed after the request was written: the store may have run it.
    Lost(String),
    /// No response within the wait.
    Timeout,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Connect(e) => write!(f, "connect: {e}"),
            ConnError::Broken(e) => write!(f, "connection: {e}"),
            ConnError::Lost(e) => write!(f, "connection lost after the request was sent: {e}"),
            ConnError::Timeout => write!(f, "no response in time"),
        }
    }
}

/// A connection's two directions once set up: what the reader thread reads responses from
/// and what requests are written to (the socket itself, or a TLS session's halves).
pub struct Halves {
    /// Read by the connection's reader thread.
    pub reader: Box<dyn Read + Send>,
    /// Written under the connection's lock.
    pub writer: Box<dyn Write + Send>,
}

/// Sets up a connected socket to a store's RPC port: the store's address, the socket
/// (its timeouts set), the halves to use. The stores of a `--tls-cluster` cluster need a
/// TLS session here (`nokv_shard::tls::ClusterTls::store_connector`).
#[derive(Clone)]
pub struct StoreConnector(
    pub Arc<dyn Fn(SocketAddr, TcpStream) -> std::io::Result<Halves> + Send + Sync>,
);

impl std::fmt::Debug for StoreConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreConnector")
    }
}

type Waiter = SyncSender<Result<KvResponse, String>>;

struct Pending {
    /// Set once the reader stopped: no new request may wait on this connection.
    failed: Option<String>,
    waiters: HashMap<u64, Waiter>,
}

/// A connection to one store's RPC port.
pub struct StoreConn {
    addr: String,
    writer: Mutex<Box<dyn Write + Send>>,
    /// The socket, to shut it down (the reader thread's read then returns).
    socket: TcpStream,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    cluster_id: u64,
}

impl StoreConn {
    /// Connects to `addr` (host:port) within `timeout`, through `connector` when given (a
    /// TLS session), and starts the reader thread.
    pub fn connect(
        addr: &str,
        cluster_id: u64,
        timeout: Duration,
        max_frame_bytes: u32,
        connector: Option<&StoreConnector>,
    ) -> Result<Arc<StoreConn>, ConnError> {
        let sock: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| ConnError::Connect(format!("resolve {addr}: {e}")))?
            .next()
            .ok_or_else(|| ConnError::Connect(format!("resolve {addr}: no address")))?;
        let stream =
            nokv_raft::transport::connect_std(&sock, timeout.max(Duration::from_millis(1)))
                .map_err(|e| ConnError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(timeout.max(Duration::from_secs(1))))
            .map_err(|e| ConnError::Connect(format!("{addr}: set write timeout: {e}")))?;
        let clone = |s: &TcpStream| {
            s.try_clone()
                .map_err(|e| ConnError::Connect(format!("{addr}: clone socket: {e}")))
        };
        let socket = clone(&stream)?;
        let halves = match connector {
            None => Halves {
                reader: Box::new(clone(&stream)?),
                writer: Box::new(stream),
            },
            Some(c) => {
                // The set-up (a TLS handshake) is bounded by the socket's timeouts.
                stream
                    .set_read_timeout(Some(timeout.max(Duration::from_secs(1))))
                    .map_err(|e| ConnError::Connect(format!("{addr}: set read timeout: {e}")))?;
                let halves =
                    (c.0)(sock, stream).map_err(|e| ConnError::Connect(format!("{addr}: {e}")))?;
                socket
                    .set_read_timeout(None)
                    .map_err(|e| ConnError::Connect(format!("{addr}: set read timeout: {e}")))?;
                halves
            }
        };
        let pending = Arc::new(Mutex::new(Pending {
            failed: None,
            waiters: HashMap::new(),
        }));
        let limits = FrameLimits {
            cluster_id,
            max_payload: max_frame_bytes,
        };
        let p = pending.clone();
        let name = addr.to_string();
        std::thread::Builder::new()
            .name("nokv-client-rx".into())
            .spawn(move || read_loop(halves.reader, limits, &p, &name))
            .map_err(|e| ConnError::Connect(format!("{addr}: spawn reader: {e}")))?;
        Ok(Arc::new(StoreConn {
            addr: addr.to_string(),
            writer: Mutex::new(halves.writer),
            socket,
            pending,
            next_id: AtomicU64::new(1),
            cluster_id,
        }))
    }

    /// The address this connection goes to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection failed (it must be replaced).
    pub fn is_broken(&self) -> bool {
        self.pending.lock().failed.is_some()
    }

    /// Sends `req` and waits at most `wait` for its response.
    pub fn request(&self, req: &KvRequest, wait: Duration) -> Result<KvResponse, ConnError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut p = self.pending.lock();
            if let Some(e) = &p.failed {
                return Err(ConnError::Broken(e.clone()));
            }
            p.waiters.insert(id, tx);
        }
        self.write_request(id, req)?;
        match rx.recv_timeout(wait) {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ConnError::Lost(e)),
            Err(RecvTimeoutError::Timeout) => {
                // A late response finds no waiter and is dropped.
                self.pending.lock().waiters.remove(&id);
                Err(ConnError::Timeout)
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(ConnError::Lost(format!("{}: reader stopped", self.addr)))
            }
        }
    }

    /// Sends `req` without waiting for its response: the response, when it comes, finds
    /// no waiter and is dropped.
    pub fn send_only(&self, req: &KvRequest) -> Result<(), ConnError> {
        if let Some(e) = &self.pending.lock().failed {
            return Err(ConnError::Broken(e.clone()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write_request(id, req)
    }

    /// Writes `req` as request `id` (a write failure fails the connection).
    fn write_request(&self, id: u64, req: &KvRequest) -> Result<(), ConnError> {
        let mut frame = Vec::with_capacity(64 + req.payload.len());
        kv::encode_request(&mut frame, self.cluster_id, id, req);
        let written = {
            let mut w = self.writer.lock();
            w.write_all(&frame).and_then(|()| w.flush())
        };
        if let Err(e) = written {
            self.fail(format!("write to {}: {e}", self.addr));
            return Err(ConnError::Broken(format!("write to {}: {e}", self.addr)));
        }
        Ok(())
    }

    /// Marks the connection failed and shuts the socket down (the reader then stops and
    /// fails every waiter).
    fn fail(&self, why: String) {
        fail_all(&self.pending, why);
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Drop for StoreConn {
    fn drop(&mut self) {
        // Stops the reader thread (its read returns).
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

fn fail_all(pending: &Mutex<Pending>, why: String) {
    let waiters = {
        let mut p = pending.lock();
        if p.failed.is_none() {
            p.failed = Some(why.clone());
        }
        std::mem::take(&mut p.waiters)
    };
    for (_, w) in waiters {
        let _ = w.try_send(Err(why.clone()));
    }
}

fn read_loop(
    mut stream: Box<dyn Read + Send>,
    limits: FrameLimits,
    pending: &Mutex<Pending>,
    addr: &str,
) {
    // Bounded by the stream: every turn reads a frame or stops.
    let why = loop {
        let frame = match wire::read_frame(&mut stream, &limits) {
            Ok(Some(f)) => f,
            Ok(None) => break format!("{addr} closed the connection"),
            Err(e) => break format!("read from {addr}: {e}"),
        };
        if frame.kind != wire::kind::KV_RESPONSE {
            break format!("{addr} sent a frame of kind {}", frame.kind);
        }
        let resp = match frame.decode::<KvResponse>() {
            Ok(r) => r,
            Err(e) => break format!("{addr}: {e}"),
        };
        if let Some(w) = pending.lock().waiters.remove(&frame.request_id) {
            let _ = w.try_send(Ok(resp));
        }
    };
    tracing::debug!(addr, why = %why, "store connection closed");
    fail_all(pending, why);
}

/// How long a store that could not be connected to is passed over when another voter
/// can be tried.
pub const DOWN_MEMO: Duration = Duration::from_secs(1);

/// The connections of one client, one per store.
#[derive(Default)]
pub struct ConnPool {
    conns: Mutex<HashMap<u64, Arc<StoreConn>>>,
    /// Stores whose last connect failed, and when.
    down: Mutex<HashMap<u64, std::time::Instant>>,
}

impl ConnPool {
    /// The connection to store `store` at `addr`: the live one, or a new one (made
    /// without holding the pool's lock).
    pub fn get(
        &self,
        store: u64,
        addr: &str,
        cluster_id: u64,
        timeout: Duration,
        max_frame_bytes: u32,
        connector: Option<&StoreConnector>,
    ) -> Result<Arc<StoreConn>, ConnError> {
        if let Some(c) = self.conns.lock().get(&store) {
            if !c.is_broken() && c.addr() == addr {
                return Ok(c.clone());
            }
        }
        let c = match StoreConn::connect(addr, cluster_id, timeout, max_frame_bytes, connector) {
            Ok(c) => c,
            Err(e) => {
                self.down.lock().insert(store, std::time::Instant::now());
                return Err(e);
            }
        };
        self.down.lock().remove(&store);
        self.conns.lock().insert(store, c.clone());
        Ok(c)
    }

    /// Whether connecting to `store` failed within [`DOWN_MEMO`].
    pub fn recently_down(&self, store: u64) -> bool {
        self.down
            .lock()
            .get(&store)
            .is_some_and(|t| t.elapsed() < DOWN_MEMO)
    }

    /// Drops the connection to `store` if it is `conn` (a newer one is kept).
    pub fn drop_conn(&self, store: u64, conn: &Arc<StoreConn>) {
        let mut m = self.conns.lock();
        if m.get(&store).is_some_and(|c| Arc::ptr_eq(c, conn)) {
            m.remove(&store);
        }
    }

    /// Closes every connection.
    pub fn clear(&self) {
        self.conns.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokv_raft::kv::{KvKind, KvOutcome};
    use std::net::TcpListener;

    fn request(region: u64) -> KvRequest {
        KvRequest {
            region_id: region,
            kind: KvKind::Read as i32,
            payload: vec![region as u8],
            timeout_ms: 100,
            from_store: 0,
        }
    }

    /// A server that reads `n` requests, then answers them in reverse order (each with
    /// `NotLeader(region)`), then closes the connection.
    fn reversing_server(n: usize) -> (String, std::thread::JoinHandle<Vec<KvRequest>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let limits = FrameLimits::new(7);
            let mut got = Vec::new();
            for _ in 0..n {
                let f = wire::read_frame(&mut s, &limits)
                    .expect("frame")
                    .expect("not closed");
                assert_eq!(f.kind, wire::kind::KV_REQUEST);
                got.push((f.request_id, f.decode::<KvRequest>().expect("request")));
            }
            for (id, req) in got.iter().rev() {
                let mut out = Vec::new();
                let resp = KvResponse::new(KvOutcome::NotLeader(req.region_id));
                kv::encode_response(&mut out, 7, *id, &resp);
                s.write_all(&out).expect("answer");
            }
            got.into_iter().map(|(_, r)| r).collect()
        });
        (addr, h)
    }

    #[test]
    fn pipelined_responses_reach_their_callers_in_any_order() {
        let (addr, server) = reversing_server(4);
        let conn =
            StoreConn::connect(&addr, 7, Duration::from_secs(5), 1 << 20, None).expect("connect");
        let callers: Vec<_> = (1..=4u64)
            .map(|region| {
                let c = conn.clone();
                std::thread::spawn(move || c.request(&request(region), Duration::from_secs(30)))
            })
            .collect();
        for (i, h) in callers.into_iter().enumerate() {
            let resp = h.join().expect("caller").expect("response");
            assert_eq!(resp.outcome, Some(KvOutcome::NotLeader(i as u64 + 1)));
        }
        let seen = server.join().expect("server");
        let mut regions: Vec<u64> = seen.iter().map(|r| r.region_id).collect();
        regions.sort_unstable();
        assert_eq!(regions, vec![1, 2, 3, 4]);
        assert_eq!(seen[0].payload, vec![seen[0].region_id as u8]);
    }

    #[test]
    fn a_closed_connection_fails_its_requests_and_the_pool_reconnects() {
        let (addr, server) = reversing_server(1);
        let pool = ConnPool::default();
        let c = pool
            .get(1, &addr, 7, Duration::from_secs(5), 1 << 20, None)
            .expect("connect");
        assert!(c.request(&request(1), Duration::from_secs(30)).is_ok());
        server.join().expect("server");
        // The server closed the connection after its answer: the next request fails
        // (on the write, or when the reader sees the end of the stream).
        match c.request(&request(2), Duration::from_secs(30)) {
            Err(ConnError::Broken(_)) => {}
            other => panic!("expected a broken connection, got {other:?}"),
        }
        assert!(c.is_broken());
        // Nothing listens any more: the pool's reconnect fails with a connect error.
        match pool.get(1, &addr, 7, Duration::from_secs(1), 1 << 20, None) {
            Err(ConnError::Connect(_)) => {}
            Err(e) => panic!("expected a connect error, got {e}"),
            Ok(_) => panic!("connected to a closed port"),
        }
        // A new server on another port: the pool connects to the new address.
        let (addr2, server2) = reversing_server(1);
        let c2 = pool
            .get(1, &addr2, 7, Duration::from_secs(5), 1 << 20, None)
            .expect("reconnect");
        assert!(!Arc::ptr_eq(&c, &c2));
        assert!(c2.request(&request(3), Duration::from_secs(30)).is_ok());
        server2.join().expect("server");
    }

    #[test]
    fn no_answer_is_a_timeout_and_the_connection_stays() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let conn =
            StoreConn::connect(&addr, 7, Duration::from_secs(5), 1 << 20, None).expect("connect");
        let (_s, _) = l.accept().expect("accept");
        assert_eq!(
            conn.request(&request(1), Duration::from_millis(50)),
            Err(ConnError::Timeout)
        );
        assert!(!conn.is_broken());
    }
}
