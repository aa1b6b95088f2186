//! The tool's one error type: what failed, with the context to name it, and the fix an
//! operator should try ([`Error::fix`]).

use std::io;
use std::time::Duration;

/// Result with the tool's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Every way a subcommand can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A coordinator call failed (unreachable, timed out, refused the request).
    #[error("coordinator {endpoints}: {op} failed: {source}")]
    Coordinator {
        /// What the tool asked for.
        op: String,
        /// The `--coordinator` endpoints, comma-separated.
        endpoints: String,
        /// The client's error (boxed: it is large, and errors travel in every `Result`).
        #[source]
        source: Box<nokv_coordinator::Error>,
    },
    /// A connection to a store's Redis port could not be made.
    #[error("store {addr}: cannot connect: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A command to a store was not answered within the timeout.
    #[error("store {addr}: no reply to {command} within {after:?}")]
    Timeout {
        /// The store's address.
        addr: String,
        /// The command (arguments that are secrets left out).
        command: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// Sending a command to a store or reading its reply failed.
    #[error("store {addr}: {command}: {source}")]
    StoreIo {
        /// The store's address.
        addr: String,
        /// The command (arguments that are secrets left out).
        command: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The store's reply is not RESP2, or not of the shape the command answers with.
    #[error("store {addr}: unexpected reply to {command}: {detail}")]
    Reply {
        /// The store's address.
        addr: String,
        /// The command.
        command: String,
        /// What was wrong with the reply.
        detail: String,
    },
    /// The store answered the command with an error.
    #[error("store {addr}: {command} refused: {message}")]
    Refused {
        /// The store's address.
        addr: String,
        /// The command.
        command: String,
        /// The store's error line (without the leading `-`).
        message: String,
    },
    /// The coordinator knows no leader for the region (yet).
    #[error("region {region}: the coordinator knows no leader with a Redis address")]
    NoLeader {
        /// The region.
        region: u64,
    },
    /// Writing the output failed.
    #[error("write the output: {0}")]
    Output(#[source] io::Error),
    /// Encoding the `--json` output failed.
    #[error("encode the JSON output: {0}")]
    Json(#[source] serde_json::Error),
}

impl Error {
    /// What the operator should try, in one short sentence.
    pub fn fix(&self) -> String {
        use nokv_coordinator::Error as C;
        match self {
            Error::Coordinator { source, .. } => match source.as_ref() {
                C::NotBootstrapped => "the cluster has no regions yet: start the stores with \
                    --coordinator, it bootstraps once enough of them are up"
                    .into(),
                C::RegionNotFound(_) => "`nokv-tool region list` shows the regions".into(),
                C::StoreNotFound(_) => "`nokv-tool stores` shows the stores".into(),
                C::InvalidArgument(_) => "check the arguments (`--help`)".into(),
                _ => "check that a coordinator serves at --coordinator (list every replica), \
                    that --cluster-id is the cluster's (default 1), or raise --timeout"
                    .into(),
            },
            Error::Connect { .. } => "check that a store serves Redis at that address \
                (`nokv-tool stores` lists each store's Redis address)"
                .into(),
            Error::Timeout { .. } => "check that the store is up, or raise --timeout".into(),
            Error::StoreIo { .. } => {
                "check that the address is a store's Redis port and the store is up".into()
            }
            Error::Reply { .. } => "check that the address is a NoKV store's Redis port".into(),
            Error::Refused { message, .. } => {
                let upper = message.to_ascii_uppercase();
                if upper.starts_with("NOAUTH") || upper.starts_with("WRONGPASS") {
                    "pass the store's password with --password".into()
                } else if upper.starts_with("MOVED") {
                    "the region's leader moved again: run the command once more".into()
                } else if upper.contains("USAGE") || upper.starts_with("ERR UNKNOWN") {
                    "this store does not run that command (docs/redis.md, \"Operator commands\")"
                        .into()
                } else {
                    "see the store's log for the cause".into()
                }
            }
            Error::NoLeader { .. } => {
                "retry once the region has elected a leader, or pass --addr".into()
            }
            Error::Output(_) => "check where the output goes (disk full, closed pipe)".into(),
            Error::Json(_) => "report this as a bug".into(),
        }
    }

    /// Whether this is the output pipe being closed (`nokv-tool ... | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// `s` on one line: control characters (newlines included) become spaces.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_on_one_line_with_a_fix() {
        let e = Error::Refused {
            addr: "127.0.0.1:6380".into(),
            command: "NOKV.REGION SPLIT 7".into(),
            message: "NOAUTH Authentication required.".into(),
        };
        assert_eq!(
            e.to_string(),
            "store 127.0.0.1:6380: NOKV.REGION SPLIT 7 refused: NOAUTH Authentication required."
        );
        assert!(e.fix().contains("--password"));
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        let e = Error::Coordinator {
            op: "list stores".into(),
            endpoints: "127.0.0.1:1".into(),
            source: Box::new(nokv_coordinator::Error::NotBootstrapped),
        };
        assert!(e.fix().contains("bootstraps"), "{}", e.fix());
    }
}
