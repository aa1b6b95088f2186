//! Percolator transactions on the `CF_DEFAULT` / `CF_LOCK` / `CF_WRITE` column families.
//!
//! Pure logic for the replicated apply path: every operation reads through a
//! [`MvccRead`] (the engine, a pinned snapshot, or the in-memory [`MemStore`]) and returns
//! the [`crate::WriteBatch`] that carries out its decision; it never writes by itself, and
//! the caller serialises operations on the same keys (latches). Layout of a key `k` of a
//! transaction that started at `start_ts` and committed at `commit_ts`:
//!
//! - `CF_LOCK`, version [`LOCK_VERSION`]: its [`Lock`] while prewritten;
//! - `CF_DEFAULT`, version `start_ts`: its value, when longer than [`SHORT_VALUE_MAX_LEN`];
//! - `CF_WRITE`, version `commit_ts`: its [`Write`] record (a rollback at `start_ts`).
//!
//! Timestamps are hybrid TSO timestamps (see [`ts`]). `docs/transactions.md` has the rules.

pub mod commit;
pub mod error;
pub(crate) mod gc;
pub mod heartbeat;
pub mod lock;
pub mod mvcc;
pub mod one_pc;
pub mod prewrite;
pub mod read;
pub mod reader;
pub mod resolve;
pub mod rollback;
pub mod status;
pub mod ts;
pub mod write;

pub use commit::commit;
pub use error::{CodecError, TxnError, TxnResult};
pub use heartbeat::heart_beat;
pub use lock::{Lock, LockKind};
pub use mvcc::{LOCK_VERSION, SHORT_VALUE_MAX_LEN};
pub use one_pc::{commit_1pc, OnePc};
pub use prewrite::{prewrite, Mutation, MutationOp, PrewriteOptions};
pub use read::{get, lock_blocks_read, scan};
pub use reader::{DbReader, MemStore, MvccRead};
pub use resolve::resolve_lock;
pub use rollback::rollback;
pub use status::{check_txn_status, TxnStatus};
pub use write::{Write, WriteKind};

#[cfg(test)]
mod tests;
