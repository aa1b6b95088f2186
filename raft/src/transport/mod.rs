//! Store-to-store transport, the runtime-agnostic part: the messages ([`message`]), the
//! bounded per-destination send queue that cuts frames ([`queue`]), reconnect delays
//! ([`backoff`]), store addresses and their cache ([`resolve`]), checks on arrival
//! ([`inbound`]) and the counters ([`stats`]). The node (`nokv-shard`'s `transport`
//! module) runs them on its executors: listeners, connections, routing to cores.

pub mod backoff;
pub mod inbound;
pub mod message;
pub mod queue;
pub mod resolve;
pub mod stats;

pub use backoff::{Backoff, BackoffConfig};

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// True when a TCP connect reached its own socket: with nothing listening on a port of
/// the ephemeral range, the kernel can pick that very port as the local one and the
/// connection "succeeds" to itself (TCP self-connect), then swallows everything sent.
pub fn connected_to_itself<E1, E2>(
    local: Result<SocketAddr, E1>,
    peer: Result<SocketAddr, E2>,
) -> bool {
    matches!((local, peer), (Ok(l), Ok(p)) if l == p)
}

/// `TcpStream::connect_timeout` that refuses a self-connection (see [`connected_to_itself`]).
pub fn connect_std(addr: &SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(addr, timeout)?;
    if connected_to_itself(s.local_addr(), s.peer_addr()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("connect {addr}: connected to itself (nothing listens there)"),
        ));
    }
    Ok(s)
}
pub use inbound::{Inbound, InboundDecoder, LocalStore};
pub use message::{encode_batch, RaftBatch, RaftEnvelope, Route};
pub use queue::{DropReason, OutFrame, QueueLimits, SendQueue};
pub use resolve::{ResolveFuture, ResolverCache, StaticResolver, StoreResolver};
pub use stats::{DropCause, EnvelopeReject, Event, FrameReject, TransportStats};
