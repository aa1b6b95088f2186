//! One core's RPC listener (SO_REUSEPORT: every core binds the same address and the kernel
//! spreads incoming connections) and the reader task of each accepted connection.

use super::secure::{self, RpcStream};
use super::{CoreTransport, MAX_KV_INFLIGHT};
use futures_lite::io::WriteHalf;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use nokv_raft::kv::{self, KvOutcome, KvResponse};
use nokv_raft::transport::{Event, Inbound, InboundDecoder, LocalStore};
use nokv_raft::wire::FrameLimits;
use socket2::{Domain, Protocol, Socket, Type};
use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 << 10;

/// Accepts connections until the transport stops. The accept is never raced against the
/// stop: an io_uring accept dropped in flight can still complete in the kernel, leaving
/// an accepted connection nobody reads or closes. [`CoreTransport::shutdown`] shuts the
/// listener down instead, which fails the pending accept.
pub(super) async fn accept_loop(t: Rc<CoreTransport>, listener: Listener) {
    loop {
        let accepted = listener.socket.accept().await;
        if t.stop.is_fired() {
            if let Ok(s) = &accepted {
                close_now(s);
            }
            break;
        }
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(core = t.core, error = %e, "rpc accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if t.inbound.get() >= t.shared.config.max_inbound_connections {
            t.shared.stats.add(Event::Refused, 1);
            tracing::warn!(
                core = t.core,
                limit = t.shared.config.max_inbound_connections,
                "rpc connection refused: too many on this core"
            );
            continue;
        }
        t.shared.stats.add(Event::Accepted, 1);
        t.inbound.set(t.inbound.get() + 1);
        let c = t.clone();
        let guard = t.task();
        glommio::spawn_local(async move {
            let _guard = guard;
            read_connection(&c, stream).await;
            c.inbound.set(c.inbound.get() - 1);
        })
        .detach();
    }
    drop(listener);
}

/// Shuts `socket` down at once. Dropping it is not enough while an io_uring read on it is
/// still in flight (its cancellation is only submitted at the next reactor poll, which a
/// stopping executor may never run), so the other store would not see it close.
pub(super) fn close_now(socket: &impl std::os::fd::AsRawFd) {
    shutdown_fd(socket.as_raw_fd());
}

/// shutdown(2) both ways on `fd`, which the caller keeps open for the call.
pub(super) fn shutdown_fd(fd: RawFd) {
    // SAFETY: the caller guarantees `fd` is an open socket of its own; shutdown(2)
    // neither closes nor frees it.
    let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Reads frames and hands each accepted message to its core. Returns (closing the
/// connection) at the end of the stream, on a refused frame (counted; nothing of it is
/// delivered), on an IO error, or when the transport stops.
async fn read_connection(t: &Rc<CoreTransport>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Answers are small frames, often several in flight on one connection: without
    // TCP_NODELAY a second answer waits for the ACK of the first, which the client delays
    // (about 40 ms).
    let _ = stream.set_nodelay(true);
    // Kept open by the handshake and then the halves below for the whole function.
    let fd = stream.as_raw_fd();
    let tls = t.shared.config.tls.as_deref();
    let timeout = t.shared.config.connect_timeout;
    let handshake = future::or(
        async { Some(secure::server(stream, tls, timeout).await) },
        async {
            t.stop.wait().await;
            // The handshake (and its socket) is still alive here.
            shutdown_fd(fd);
            None
        },
    )
    .await;
    let stream = match handshake {
        None => return,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            let n = t.tls_refused.get() + 1;
            t.tls_refused.set(n);
            if n == 1 || n.is_power_of_two() {
                tracing::warn!(core = t.core, %peer, error = %e, refused = n, "rpc connection refused: TLS handshake failed");
            }
            return;
        }
    };
    let (mut stream, writer) = futures_lite::io::split(stream);
    let mut writer = Some(writer);
    let mut kv: Option<KvAnswers> = None;
    let cfg = &t.shared.config;
    let mut decoder = InboundDecoder::new(
        FrameLimits {
            cluster_id: cfg.cluster_id,
            max_payload: cfg.max_payload,
        },
        LocalStore {
            store_id: cfg.store_id,
            cores: u32::try_from(cfg.cores).unwrap_or(u32::MAX),
        },
    );
    let mut buf = vec![0u8; READ_CHUNK];
    let mut snapshot = crate::snapship::Receiver::default();
    loop {
        let read = future::or(async { Some(stream.read(&mut buf).await) }, async {
            t.stop.wait().await;
            None
        })
        .await;
        let n = match read {
            None => {
                shutdown_fd(fd);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(core = t.core, %peer, error = %e, "rpc connection failed");
                return;
            }
            Some(Ok(0)) => {
                if let Err(e) = decoder.finish(&t.shared.stats) {
                    tracing::warn!(core = t.core, %peer, error = %e, "rpc connection ended inside a frame");
                }
                return;
            }
            Some(Ok(n)) => n,
        };
        decoder.feed(&buf[..n]);
        loop {
            match decoder.next_inbound(&t.shared.stats, t.shared.config.workdir.is_some()) {
                Ok(Some(Inbound::Batch(envelopes))) => {
                    for env in envelopes {
                        // Dropped or not, counted; the next message goes on.
                        let _ = t.deliver(env);
                    }
                }
                Ok(Some(Inbound::Kv {
                    request_id,
                    request,
                })) => {
                    let answers = match (&kv, writer.take()) {
                        (Some(a), _) => a.clone(),
                        (None, Some(w)) => kv.insert(KvAnswers::start(t, w)).clone(),
                        (None, None) => return,
                    };
                    // Bounds the requests of this connection running at once: the
                    // connection is not read while the bound is reached.
                    let Ok(permit) = answers.inflight.acquire_static_permit(1).await else {
                        return;
                    };
                    let service = t.kv_service();
                    glommio::spawn_local(async move {
                        let _permit = permit;
                        let response = match service {
                            Some(s) => s.call(request).await,
                            None => KvResponse::new(KvOutcome::Refused(
                                "this port serves no key-value requests".into(),
                            )),
                        };
                        let _ = answers.tx.send((request_id, response)).await;
                    })
                    .detach();
                }
                Ok(Some(Inbound::Snapshot(payload))) => {
                    // Awaits the chunk's write (blocking pool): the connection is not read
                    // meanwhile, so TCP holds the sender back.
                    if !snapshot.frame(t, payload).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(core = t.core, %peer, error = %e, "rpc frame refused; dropping the connection");
                    return;
                }
            }
        }
    }
}

/// The answering side of a connection that sent key-value requests: its request tasks
/// hand answers to a writer task that owns the connection's write half.
#[derive(Clone)]
struct KvAnswers {
    tx: Rc<LocalSender<(u64, KvResponse)>>,
    inflight: Rc<Semaphore>,
}

impl KvAnswers {
    /// Starts the writer task of `writer` (ends with the transport, a failed write, or
    /// once the reader and every request task are gone).
    fn start(t: &Rc<CoreTransport>, mut writer: WriteHalf<RpcStream>) -> KvAnswers {
        let (tx, rx) = local_channel::new_bounded::<(u64, KvResponse)>(MAX_KV_INFLIGHT);
        let guard = t.task();
        let c = t.clone();
        glommio::spawn_local(async move {
            let _guard = guard;
            let mut out = Vec::new();
            loop {
                let next = future::or(rx.recv(), async {
                    c.stop.wait().await;
                    None
                })
                .await;
                let Some((id, response)) = next else { break };
                out.clear();
                kv::encode_response(&mut out, c.shared.config.cluster_id, id, &response);
                // Whatever else is ready goes out in the same write.
                while let Some(Some((id, response))) = future::poll_once(rx.recv()).await {
                    kv::encode_response(&mut out, c.shared.config.cluster_id, id, &response);
                    if out.len() >= READ_CHUNK {
                        break;
                    }
                }
                if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        })
        .detach();
        KvAnswers {
            tx: Rc::new(tx),
            inflight: Rc::new(Semaphore::new(MAX_KV_INFLIGHT as u64)),
        }
    }
}

/// This core's listener and its descriptor (glommio's listener does not expose it).
pub(super) struct Listener {
    socket: TcpListener,
    fd: RawFd,
}

impl Listener {
    /// Its descriptor, open until the accept loop ends (after the transport stopped).
    pub(super) fn fd(&self) -> RawFd {
        self.fd
    }

    /// The bound address.
    pub(super) fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.socket
            .local_addr()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// Binds this core's listener on `addr` (a concrete port: every core shares it), with
/// SO_REUSEPORT as glommio's own `bind` does.
pub(super) fn bind(addr: std::net::SocketAddr) -> std::io::Result<Listener> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.bind(&addr.into())?;
    sk.listen(1024)?;
    let fd = sk.into_raw_fd();
    // SAFETY: `fd` is a bound, listening socket owned by nobody else; the listener takes it.
    let socket = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(Listener { socket, fd })
}
