//! NoKV's cluster client (`nokv-client`).
//!
//! A [`Client`] learns the regions from the coordinator (following its leader), keeps them
//! in a route cache ([`routes`]), and sends each region's part of a command to the store
//! leading it, as a `KvRequest` frame (`nokv_raft::kv`) on one pipelined connection per
//! store ([`conn`]). `NotLeader` hints, stale routes, dead stores and elections are retried
//! with exponential backoff and jitter ([`backoff`]) until the call's deadline. Commands
//! whose keys span regions are split and merged like the store does it ([`plan`]).
//! [`gateway`] serves the Redis protocol in front of a cluster with this client (the
//! `nokv-redis` binary). Blocking std networking, no async runtime. See `docs/client.md`.

pub mod backoff;
pub mod client;
pub mod conn;
pub mod error;
pub mod gateway;
pub mod plan;
pub mod routes;
pub mod txn;

pub use client::{now_ms, position, Client, ClientOptions, ScanResult, Stats};
pub use error::{Error, Result};
pub use plan::Work;
pub use routes::routing_key;
pub use txn::{Transacted, Transaction, DEFAULT_LOCK_TTL_MS};
