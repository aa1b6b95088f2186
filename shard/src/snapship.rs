//! Snapshot shipping between stores (`nokv_raft::snapshot_stream` does the bytes).
//!
//! - **Sending** ([`ship`]): when a round's outbox holds a MsgSnapshot for a replica on
//!   another store, the driver resolves that store's RPC address and streams the export
//!   directory there on the core's blocking pool (never the executor: file and socket IO
//!   block), at most [`MAX_SENDS_PER_CORE`] at once per core (one more is refused and
//!   reported as failed: raft retries later). Every chunk first takes its bytes from
//!   the store's snapshot rate limit (`--snapshot-max-bytes-per-sec`, one
//!   `nokv_raft::RateLimiter` shared by the cores). The outcome goes back to raft through
//!   `report_snapshot(.., delivered)`.
//! - **Receiving** ([`Receiver`]): the RPC reader of a connection hands each
//!   `SNAPSHOT_CHUNK` frame here; chunks are written (blocking pool) into a staging
//!   directory under the owning core's snapshot directory; the final frame checks every
//!   file, moves the directory in place and delivers the MsgSnapshot to the core's inbox,
//!   whose raft driver steps it (the crash-safe `ApplySnapshot` ingests it). A transfer
//!   failing a check is discarded, counted, and its connection dropped.
//!
//! Counters (`metrics` facade): `nokv_snapshot_sent_total`, `nokv_snapshot_received_total`,
//! `nokv_snapshot_failed_total{side="send"|"receive"}`, `nokv_snapshot_bytes_sent_total`,
//! `nokv_snapshot_bytes_received_total`, `nokv_snapshot_throttled_milliseconds_total`.

use crate::transport::CoreTransport;
use nokv_raft::snapshot::SnapshotKey;
use nokv_raft::snapshot_stream::{send_snapshot, SnapFrame, Staging, StreamError};
use nokv_raft::transport::RaftEnvelope;
use nokv_raft::RateLimiter;
use prost::Message as _;
use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Snapshot sends running at once per core (each holds a blocking-pool thread).
pub const MAX_SENDS_PER_CORE: usize = 1;
/// Connect and per-write timeout of a snapshot send.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The directory of core `core`'s region snapshots in `workdir`.
pub fn snap_dir(workdir: &std::path::Path, core: usize) -> PathBuf {
    crate::layout::core_dir(workdir, core).join("snap")
}

fn sent(bytes: u64, throttled: Duration) {
    metrics::counter!("nokv_snapshot_sent_total").increment(1);
    metrics::counter!("nokv_snapshot_bytes_sent_total").increment(bytes);
    metrics::counter!("nokv_snapshot_throttled_milliseconds_total")
        .increment(throttled.as_millis() as u64);
}

fn failed(side: &'static str) {
    metrics::counter!("nokv_snapshot_failed_total", "side" => side).increment(1);
}

/// Every counter name this module reports, with its help text.
pub fn metric_names() -> [(&'static str, &'static str); 6] {
    [
        (
            "nokv_snapshot_sent_total",
            "region snapshots sent to other stores",
        ),
        (
            "nokv_snapshot_received_total",
            "region snapshots received and handed to raft",
        ),
        (
            "nokv_snapshot_failed_total",
            "snapshot transfers that failed, by side",
        ),
        ("nokv_snapshot_bytes_sent_total", "snapshot file bytes sent"),
        (
            "nokv_snapshot_bytes_received_total",
            "snapshot file bytes received",
        ),
        (
            "nokv_snapshot_throttled_milliseconds_total",
            "time snapshot sends waited for --snapshot-max-bytes-per-sec",
        ),
    ]
}

/// Sends of one core in flight ([`MAX_SENDS_PER_CORE`]).
#[derive(Debug, Default)]
pub struct Sends {
    running: Cell<usize>,
}

/// Streams the snapshot `key` (files in `dir`) with its raft message `env` to
/// `env.to_store`, on a task of the calling executor; `done(delivered)` runs there at the
/// end (report it to raft). Never blocks the executor.
pub fn ship(
    transport: Rc<CoreTransport>,
    sends: Rc<Sends>,
    dir: PathBuf,
    key: SnapshotKey,
    env: RaftEnvelope,
    limiter: Option<Arc<RateLimiter>>,
    done: impl FnOnce(bool) + 'static,
) {
    if sends.running.get() >= MAX_SENDS_PER_CORE {
        tracing::debug!(
            region = key.region,
            "snapshot send deferred: another one runs"
        );
        failed("send");
        done(false);
        return;
    }
    sends.running.set(sends.running.get() + 1);
    glommio::spawn_local(async move {
        let ok = send(&transport, dir, key, env, limiter).await;
        sends.running.set(sends.running.get() - 1);
        done(ok);
    })
    .detach();
}

async fn send(
    transport: &CoreTransport,
    dir: PathBuf,
    key: SnapshotKey,
    env: RaftEnvelope,
    limiter: Option<Arc<RateLimiter>>,
) -> bool {
    let to_store = env.to_store;
    let Some(addr) = transport.resolve(to_store).await else {
        tracing::warn!(
            region = key.region,
            store = to_store,
            "snapshot not sent: store address unknown"
        );
        failed("send");
        return false;
    };
    let cluster_id = transport.cluster_id();
    let to_core = env.to_core;
    let body = env.encode_to_vec();
    // Under --tls-cluster the transfer is a TLS session like every RPC connection.
    let connector = transport.cluster_tls().map(|t| t.snapshot_connector(addr));
    let result = glommio::executor()
        .spawn_blocking(move || {
            send_snapshot(
                addr,
                cluster_id,
                &dir,
                key,
                to_core,
                body,
                SEND_TIMEOUT,
                connector.as_deref(),
                limiter.as_deref(),
            )
        })
        .await;
    match result {
        Ok(s) => {
            tracing::info!(
                region = key.region,
                store = to_store,
                files = s.files,
                bytes = s.bytes,
                throttled_ms = s.throttled.as_millis() as u64,
                "snapshot sent"
            );
            sent(s.bytes, s.throttled);
            true
        }
        Err(e) => {
            tracing::warn!(region = key.region, store = to_store, error = %e, "snapshot send failed");
            failed("send");
            false
        }
    }
}

/// The snapshot transfer of one incoming connection.
#[derive(Debug, Default)]
pub struct Receiver {
    staging: Option<Staging>,
}

impl Receiver {
    /// Handles one snapshot frame's payload; `false`: the transfer failed (counted,
    /// discarded): drop the connection.
    pub async fn frame(&mut self, t: &CoreTransport, payload: Vec<u8>) -> bool {
        match self.step(t, payload).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(core = t.core(), error = %e, "snapshot transfer refused");
                failed("receive");
                if let Some(s) = self.staging.take() {
                    let _ = glommio::executor()
                        .spawn_blocking(move || s.discard())
                        .await;
                }
                false
            }
        }
    }

    async fn step(&mut self, t: &CoreTransport, payload: Vec<u8>) -> Result<(), StreamError> {
        let frame = SnapFrame::decode(&payload)?;
        drop(payload);
        let (key, to_core) = frame.key();
        let Some(root) = t.snap_dir(to_core as usize) else {
            return Err(StreamError::Mismatch {
                key: key.dir_name(),
                detail: format!("no snapshot directory for core {to_core} here"),
            });
        };
        let current = self.staging.as_ref().map(|s| (s.key, s.to_core));
        if current != Some((key, to_core)) {
            if let Some(old) = self.staging.take() {
                // A new transfer on the same connection: the old one never finished.
                failed("receive");
                let _ = glommio::executor()
                    .spawn_blocking(move || old.discard())
                    .await;
            }
            let r = root.clone();
            let s = glommio::executor()
                .spawn_blocking(move || Staging::start(&r, key, to_core))
                .await?;
            self.staging = Some(s);
        }
        let Some(mut staging) = self.staging.take() else {
            return Ok(());
        };
        match frame {
            SnapFrame::Chunk {
                file,
                offset,
                data,
                crc,
                ..
            } => {
                let n = data.len() as u64;
                let (staging, r) = glommio::executor()
                    .spawn_blocking(move || {
                        let r = staging.write_chunk(&file, offset, &data, crc);
                        (staging, r)
                    })
                    .await;
                self.staging = Some(staging);
                r?;
                metrics::counter!("nokv_snapshot_bytes_received_total").increment(n);
                Ok(())
            }
            SnapFrame::Done {
                files, envelope, ..
            } => {
                let (staging, r) = glommio::executor()
                    .spawn_blocking(move || {
                        let r = staging.finish(&root, &files);
                        (staging, r)
                    })
                    .await;
                if let Err(e) = r {
                    self.staging = Some(staging);
                    return Err(e);
                }
                let env = RaftEnvelope::decode(envelope.as_slice()).map_err(|e| {
                    StreamError::Decode(format!("snapshot {}: envelope: {e}", key.dir_name()))
                })?;
                if env.to_store != t.store_id() || env.region_id != key.region {
                    return Err(StreamError::Mismatch {
                        key: key.dir_name(),
                        detail: format!(
                            "message for store {} region {}",
                            env.to_store, env.region_id
                        ),
                    });
                }
                tracing::info!(
                    region = key.region,
                    index = key.index,
                    bytes = staging.bytes,
                    "snapshot received"
                );
                metrics::counter!("nokv_snapshot_received_total").increment(1);
                // Dropped (inbox full) or not: counted; the leader sends again if needed.
                let _ = t.deliver(env);
                Ok(())
            }
        }
    }
}
