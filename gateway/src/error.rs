//! The gateway's one error type.

use thiserror::Error;

/// Everything that can go wrong below the reply level.
///
/// Command-level failures (wrong type, syntax, arity) are not errors: they are
/// `Reply::Error` values sent to the client. These are the failures that end a
/// connection or come from the storage below.
#[derive(Debug, Error)]
pub enum Error {
    /// Malformed RESP from the client; the text is the reply Redis sends before closing.
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// The client's unparsed input outgrew `Config::max_query_buffer_bytes`.
    #[error("query buffer of {len} bytes exceeds the limit of {limit} bytes")]
    QueryBufferFull {
        /// Bytes buffered.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Replies waiting to be sent outgrew `Config::max_output_bytes`.
    #[error("output buffer of {len} bytes exceeds the limit of {limit} bytes")]
    OutputBufferFull {
        /// Bytes buffered.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The storage engine failed.
    #[error("storage: {0}")]
    Store(#[from] nokv::Error),
    /// A stored record could not be decoded.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A `WriteCommand` (or other wire value) could not be decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// A reply could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
}

/// Shorthand for results with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
