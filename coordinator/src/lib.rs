//! NoKV's coordinator: the cluster catalog (stores, regions, routes), placement of replicas
//! on a (store, core), the hybrid timestamp oracle and the id allocator, all persisted in an
//! embedded `nokv::Db`; served over TCP in `nokv_raft::wire` frames, with a blocking client.
//!
//! Modules: [`proto`] (messages), [`state`] (the persisted catalog and its commands),
//! [`service`] (request handling), [`tso`], [`ids`], [`placement`] (pure logic),
//! [`server`] (TCP), [`client`] ([`CoordClient`]), [`clock`].

pub mod args;
pub mod client;
pub mod clock;
pub mod error;
pub mod ids;
pub mod placement;
pub mod proto;
pub mod replica;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod state;
pub mod tso;

pub use client::{ClientOptions, CoordClient};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use replica::{LeaderStatus, ReplicaConfig};
pub use server::{Server, ServerOptions, ServerStats};
pub use service::{Config, Coordinator};

/// The coordinator's default listen address (etcd's 2379 is left alone).
pub const DEFAULT_ADDR: &str = "127.0.0.1:2390";
