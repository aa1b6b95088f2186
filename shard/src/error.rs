//! The node's one error type.

use std::path::PathBuf;
use thiserror::Error;

/// Why the node could not start or had to stop.
#[derive(Debug, Error)]
pub enum Error {
    /// A flag or configuration value is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The config file is not valid TOML, has an unknown key, or a value of the wrong type
    /// or out of range.
    #[error("config file {}{}: {detail}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The 1-based line, when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        detail: String,
    },
    /// Another process holds the workdir.
    #[error("workdir {path} is in use by another nokv-server (its LOCK file is locked)")]
    WorkdirLocked {
        /// The workdir.
        path: PathBuf,
    },
    /// The Redis address is taken.
    #[error("address {addr} is already in use (is another server running?)")]
    AddrInUse {
        /// The address.
        addr: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Network set-up failed.
    #[error("{op} {addr}: {source}")]
    Net {
        /// What was being done.
        op: &'static str,
        /// Which address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The workdir's layout is inconsistent or was made for other settings.
    #[error("workdir layout: {0}")]
    Layout(String),
    /// The engine of a core failed.
    #[error("core {core}: engine: {source}")]
    Engine {
        /// The core.
        core: usize,
        /// The engine's error.
        source: nokv::Error,
    },
    /// The raft layer of a core failed.
    #[error("core {core}: {source}")]
    Raft {
        /// The core.
        core: usize,
        /// The raft layer's error.
        source: nokv_raft::Error,
    },
    /// An executor could not be started.
    #[error("core {core}: executor: {detail}")]
    Executor {
        /// The core.
        core: usize,
        /// What glommio said.
        detail: String,
    },
    /// The store cannot take its place in the cluster (`--coordinator`).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A call to the coordinator failed.
    #[error("coordinator: {op}: {source}")]
    Coordinator {
        /// What the store asked for.
        op: &'static str,
        /// The coordinator client's error.
        source: nokv_coordinator::Error,
    },
}

/// Shorthand for results with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
