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
pub use inbound::{Inbound, InboundDecoder, LocalStore};
pub use message::{encode_batch, RaftBatch, RaftEnvelope, Route};
pub use queue::{DropReason, OutFrame, QueueLimits, SendQueue};
pub use resolve::{ResolveFuture, ResolverCache, StaticResolver, StoreResolver};
pub use stats::{DropCause, EnvelopeReject, Event, FrameReject, TransportStats};
