//! The crate's one error type.

use crate::proto;
use nokv_raft::wire::FrameError;
use std::time::Duration;
use thiserror::Error;

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Everything the coordinator, its server and its client can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// The embedded engine failed (open, read, write).
    #[error("{context}: {source}")]
    Engine {
        /// What the coordinator was doing.
        context: String,
        /// The engine's error.
        source: nokv::Error,
    },
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A frame was refused or could not be read or written.
    #[error("{context}: {source}")]
    Frame {
        /// Which connection or call.
        context: String,
        /// The frame error.
        source: FrameError,
    },
    /// Persisted state does not decode.
    #[error("corrupt coordinator state: {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The workdir belongs to another cluster.
    #[error(
        "workdir belongs to cluster {found}, this coordinator was started for cluster {expected}"
    )]
    ClusterMismatch {
        /// The `--cluster-id` given.
        expected: u64,
        /// The id persisted in the workdir.
        found: u64,
    },
    /// A request is malformed or out of its bounds.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The cluster has no regions yet.
    #[error("cluster is not bootstrapped")]
    NotBootstrapped,
    /// Bootstrap was asked for twice.
    #[error("cluster is already bootstrapped")]
    AlreadyBootstrapped,
    /// Placement needs more stores that are up and hold no replica of the region.
    #[error("placement needs {need} stores that are up and not already holding the region, {have} available")]
    NotEnoughStores {
        /// Stores needed.
        need: usize,
        /// Stores available.
        have: usize,
    },
    /// No store with this id is registered.
    #[error("store {0} not found")]
    StoreNotFound(u64),
    /// No region with this id (or covering this key) is known.
    #[error("region {0} not found")]
    RegionNotFound(u64),
    /// No region covers this key.
    #[error("no region covers key {0:?}")]
    KeyNotCovered(Vec<u8>),
    /// A region heartbeat carries an epoch older than the coordinator's record.
    #[error("stale epoch for region {region}: the coordinator has a newer descriptor")]
    StaleEpoch {
        /// The region of the heartbeat.
        region: u64,
        /// The coordinator's current record (of this region or of the overlapping one).
        current: Box<proto::Region>,
    },
    /// This coordinator is not the leader; `leader_addr` is the hint (may be empty).
    #[error("not the coordinator leader (leader: {leader_addr:?})")]
    NotLeader {
        /// The leader's address if known.
        leader_addr: String,
    },
    /// The server refused work it could take later (too many connections, shutting down).
    #[error("coordinator busy: {0}")]
    Busy(String),
    /// The server answered with an error of a code this client does not know.
    #[error("coordinator error {code}: {message}")]
    Server {
        /// The error code.
        code: i32,
        /// The server's message.
        message: String,
    },
    /// A client call ran out of time; `last` is the last failure seen.
    #[error("coordinator call deadline of {deadline:?} exceeded; last error: {last}")]
    DeadlineExceeded {
        /// The call's deadline.
        deadline: Duration,
        /// The last failure before the deadline.
        last: String,
    },
    /// The server answered with something that is not a valid response to the call.
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
}

impl Error {
    /// An engine error with context.
    pub fn engine(context: impl Into<String>, source: nokv::Error) -> Error {
        Error::Engine {
            context: context.into(),
            source,
        }
    }

    /// An IO error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A frame error with context.
    pub fn frame(context: impl Into<String>, source: FrameError) -> Error {
        Error::Frame {
            context: context.into(),
            source,
        }
    }

    /// A corrupt-state error.
    pub fn corrupt(what: impl Into<String>, detail: impl ToString) -> Error {
        Error::Corrupt {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    /// Whether a client should try again (another endpoint, after a backoff).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Frame { .. } | Error::Busy(_) | Error::NotLeader { .. }
        )
    }

    /// The wire form of this error.
    pub fn to_proto(&self) -> proto::ErrorResponse {
        use proto::ErrorCode as C;
        let mut out = proto::ErrorResponse {
            code: C::Internal as i32,
            message: self.to_string(),
            ..Default::default()
        };
        let code = match self {
            Error::InvalidArgument(_) => C::InvalidArgument,
            Error::NotBootstrapped => C::NotBootstrapped,
            Error::AlreadyBootstrapped => C::AlreadyBootstrapped,
            Error::NotEnoughStores { need, have } => {
                out.need = *need as u64;
                out.have = *have as u64;
                C::NotEnoughStores
            }
            Error::StoreNotFound(id) => {
                out.id = *id;
                C::StoreNotFound
            }
            Error::RegionNotFound(id) => {
                out.id = *id;
                C::RegionNotFound
            }
            Error::KeyNotCovered(key) => {
                out.key = key.clone();
                C::KeyNotCovered
            }
            Error::StaleEpoch { current, .. } => {
                out.current_region = Some((**current).clone());
                C::StaleEpoch
            }
            Error::NotLeader { leader_addr } => {
                out.leader_addr = leader_addr.clone();
                C::NotLeader
            }
            Error::Busy(_) => C::Busy,
            _ => C::Internal,
        };
        out.code = code as i32;
        out
    }

    /// The client-side error for a server's error response.
    pub fn from_proto(e: proto::ErrorResponse) -> Error {
        use proto::ErrorCode as C;
        match C::try_from(e.code) {
            Ok(C::InvalidArgument) => Error::InvalidArgument(e.message),
            Ok(C::NotBootstrapped) => Error::NotBootstrapped,
            Ok(C::AlreadyBootstrapped) => Error::AlreadyBootstrapped,
            Ok(C::NotEnoughStores) => Error::NotEnoughStores {
                need: e.need as usize,
                have: e.have as usize,
            },
            Ok(C::StoreNotFound) => Error::StoreNotFound(e.id),
            Ok(C::RegionNotFound) => Error::RegionNotFound(e.id),
            Ok(C::KeyNotCovered) => Error::KeyNotCovered(e.key),
            Ok(C::StaleEpoch) => match e.current_region {
                Some(r) => Error::StaleEpoch {
                    region: r.id,
                    current: Box::new(r),
                },
                None => Error::Server {
                    code: e.code,
                    message: e.message,
                },
            },
            Ok(C::NotLeader) => Error::NotLeader {
                leader_addr: e.leader_addr,
            },
            Ok(C::Busy) => Error::Busy(e.message),
            _ => Error::Server {
                code: e.code,
                message: e.message,
            },
        }
    }
}
