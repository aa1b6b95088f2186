//! One core's RPC listener (SO_REUSEPORT: every core binds the same address and the kernel
//! spreads incoming connections) and the reader task of each accepted connection.

use super::CoreTransport;
use futures_lite::{future, AsyncReadExt};
use glommio::net::{TcpListener, TcpStream};
use nokv_raft::transport::{Event, Inbound, InboundDecoder, LocalStore};
use nokv_raft::wire::FrameLimits;
use std::rc::Rc;
use std::time::Duration;

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 64 << 10;

/// Accepts connections until the transport stops.
pub(super) async fn accept_loop(t: Rc<CoreTransport>, listener: TcpListener) {
    loop {
        let accepted = future::or(async { Some(listener.accept().await) }, async {
            t.stop.wait().await;
            None
        })
        .await;
        let Some(accepted) = accepted else { break };
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
        glommio::spawn_local(async move {
            read_connection(&c, stream).await;
            c.inbound.set(c.inbound.get() - 1);
        })
        .detach();
    }
}

/// Reads frames and hands each accepted message to its core. Returns (closing the
/// connection) at the end of the stream, on a refused frame (counted; nothing of it is
/// delivered), on an IO error, or when the transport stops.
async fn read_connection(t: &Rc<CoreTransport>, mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
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
            None => return,
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

/// Binds this core's listener on `addr` (a concrete port: every core shares it).
pub(super) fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| std::io::Error::other(e.to_string()))
}
