//! NoKV's Redis gateway, sans-IO.
//!
//! Bytes in, reply bytes out: a [`session::Session`] parses RESP2/RESP3 requests
//! ([`resp`]), checks them against the command table ([`command`]) and turns each
//! into a local reply, a read ([`exec::ReadOp`], evaluated with [`exec::read`]
//! against a [`store::ReadView`]) or a write ([`exec::WriteCommand`], a
//! serializable value for the Raft log, evaluated at apply time with
//! [`exec::apply`] against a [`store::StateView`]). [`model`] maps Redis keys
//! and values onto the engine's key spaces. No threads, no blocking, no async
//! runtime: the caller owns the sockets.

pub mod atomic;
pub mod command;
pub mod error;
pub mod exec;
pub mod glob;
pub mod lock;
pub mod model;
pub mod numeric;
pub mod resp;
pub mod session;
pub mod store;

pub use error::{Error, Result};
pub use exec::{ReadOp, WriteCommand, WriteOp};
pub use resp::{Protocol, Reply};
pub use session::{Action, Config, Eviction, Session, Shared, State, Ticket};
pub use store::{Backend, DbStore, ReadView, StateView};
