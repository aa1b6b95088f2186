//! Errors of the benchmark driver.

use std::path::PathBuf;

/// Everything that can make a benchmark run fail.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command-line value is out of range or inconsistent with another.
    #[error("invalid flag: {0}")]
    Flag(String),
    /// A benchmark name that this driver does not implement.
    #[error("unknown benchmark '{0}'")]
    UnknownBenchmark(String),
    /// A filesystem operation on a path failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine returned an error.
    #[error("engine error during {op}: {msg}")]
    Engine {
        /// The operation that failed.
        op: &'static str,
        /// The engine's error message.
        msg: String,
    },
    /// Benchmark output that cannot be plotted.
    #[error("plot: {0}")]
    Plot(String),
    /// The event-loop client driver failed (epoll, socket setup).
    #[error("client driver: {what}: {source}")]
    Driver {
        /// What the driver was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread panicked.
    #[error("benchmark thread panicked")]
    ThreadPanic,
    /// Refusing to delete a directory that was not created by a benchmark.
    #[error("refusing to destroy {0}: not empty and not a nokv-bench database (no {marker} file)", marker = crate::db::MARKER_FILE)]
    NotABenchDb(PathBuf),
}

/// Result alias for the benchmark driver.
pub type Result<T> = std::result::Result<T, BenchError>;

impl BenchError {
    /// Wraps an IO error with what was being done and on which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Wraps an IO error of the event-loop driver with what it was doing.
    pub fn driver(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Driver {
            what: what.into(),
            source,
        }
    }

    /// Wraps an engine error with the operation that failed.
    pub fn engine(op: &'static str, err: impl std::fmt::Display) -> Self {
        BenchError::Engine {
            op,
            msg: err.to_string(),
        }
    }
}
