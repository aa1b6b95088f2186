//! NoKV's node as a library: the `nokv-server` binary is [`run`] on parsed flags;
//! tests run a node in-process with injected pieces through [`run_with`] and
//! [`NodeHooks`] (a fault-injecting filesystem, a stop flag).

pub mod addr;
pub mod alloc;
pub mod cluster;
pub mod config;
pub mod consistency;
pub mod error;
mod event;
pub mod hooks;
pub mod knobs;
pub mod layout;
pub mod logging;
pub mod memory;
pub mod metrics;
mod node;
mod oneshot;
mod route;
pub mod snapship;
pub mod tls;
pub mod transport;
mod view;

pub use config::{Flags, Settings};
pub use error::{Error, Result};
pub use hooks::NodeHooks;
pub use node::{io_memory_per_executor, run, run_with};
