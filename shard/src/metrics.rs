//! Prometheus metrics (`--metrics-addr`): the `metrics` recorder, a small
//! HTTP/1.1 responder for `GET /metrics` on its own std thread (never on an
//! executor), the figures published at scrape time (engines, client memory,
//! connection counters), and the per-core handles the executors update.
//! Every exported metric is listed in docs/metrics.md.

use crate::error::{Error, Result};
use crate::memory::{ClientMemory, MemoryBudget};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use nokv::Db;
use nokv_raft::RoundStats;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Buckets of `nokv_command_duration_seconds`: 25 µs to 10 s.
pub const COMMAND_SECONDS_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Buckets of `nokv_raft_round_records`: records one poll round wrote.
pub const ROUND_RECORDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Largest HTTP request head the responder reads.
pub const MAX_REQUEST_BYTES: usize = 8 << 10;
/// How long the responder waits for a request (or for the client to take the reply).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often histogram samples are folded into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Counters the engine itself emits through the `metrics` facade (no labels: the
/// sum over every core's engine). Registered at zero so that they are always exported.
pub const ENGINE_FACADE_COUNTERS: &[&str] = &[
    "nokv_background_errors_total",
    "nokv_compaction_bytes_read_total",
    "nokv_compaction_bytes_written_total",
    "nokv_compaction_micros_total",
    "nokv_compactions_total",
    "nokv_flush_bytes_total",
    "nokv_flush_micros_total",
    "nokv_flushes_total",
    "nokv_range_del_bytes_dropped_total",
    "nokv_range_del_files_dropped_total",
    "nokv_txn_gc_records_total",
    "nokv_txn_gc_values_total",
    "nokv_trivial_moves_total",
    "nokv_user_bytes_total",
    "nokv_user_writes_total",
    "nokv_vlog_bytes_separated_total",
    "nokv_vlog_bytes_written_total",
    "nokv_vlog_gc_bytes_reclaimed_total",
    "nokv_vlog_gc_bytes_rewritten_total",
    "nokv_vlog_gc_bytes_scanned_total",
    "nokv_vlog_gc_deferred_total",
    "nokv_vlog_gc_rounds_total",
    "nokv_vlog_gc_segments_total",
    "nokv_vlog_read_bytes_total",
    "nokv_vlog_reads_total",
    "nokv_vlog_segments_created_total",
    "nokv_vlog_values_separated_total",
    "nokv_wal_bytes_total",
    "nokv_wal_group_batches_total",
    "nokv_wal_groups_total",
    "nokv_wal_segments_rotated_total",
    "nokv_wal_syncs_total",
    "nokv_write_slowdowns_total",
    "nokv_write_stall_micros_total",
];

/// Installs the Prometheus recorder as the process's `metrics` recorder. Must run
/// before the engines open and before the gateway's shared state is made: handles
/// registered earlier stay no-ops.
pub fn install() -> Result<PrometheusHandle> {
    let cfg = |e: metrics_exporter_prometheus::BuildError| {
        Error::Config(format!("metrics recorder: {e}"))
    };
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("nokv_command_duration_seconds".into()),
            COMMAND_SECONDS_BUCKETS,
        )
        .map_err(cfg)?
        .set_buckets_for_metric(
            Matcher::Full("nokv_raft_round_records".into()),
            ROUND_RECORDS_BUCKETS,
        )
        .map_err(cfg)?
        .install_recorder()
        .map_err(cfg)?;
    describe();
    for name in ENGINE_FACADE_COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for reason in ["query_buffer", "output_buffer", "memory_share"] {
        metrics::counter!("nokv_clients_evicted_total", "reason" => reason).increment(0);
    }
    for (name, reason) in nokv_raft::transport::stats::metric_names() {
        match reason {
            Some(r) => metrics::counter!(name, "reason" => r).increment(0),
            None => metrics::counter!(name).increment(0),
        }
    }
    for (name, help) in crate::snapship::metric_names() {
        metrics::describe_counter!(name, help);
        if name == "nokv_snapshot_failed_total" {
            for side in ["send", "receive"] {
                metrics::counter!(name, "side" => side).increment(0);
            }
        } else {
            metrics::counter!(name).increment(0);
        }
    }
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("nokv_commands_total", "Commands answered, by command");
    describe_counter!(
        "nokv_command_errors_total",
        "Commands answered with an error reply, by command"
    );
    describe_histogram!(
        "nokv_command_duration_seconds",
        Unit::Seconds,
        "Time from parsing a command to its reply being ready to send, by command"
    );
    describe_gauge!("nokv_core_connections", "Client connections a core serves");
    describe_gauge!(
        "nokv_core_remote_handlers",
        "Requests from other cores a core is working on"
    );
    describe_gauge!(
        "nokv_core_remote_waiting",
        "Requests a core waits on from other cores"
    );
    describe_counter!("nokv_raft_poll_rounds_total", "Raft poll rounds run");
    describe_histogram!(
        "nokv_raft_round_records",
        "Raft records (entries and hard states) written per poll round"
    );
    describe_counter!("nokv_raft_applied_entries_total", "Raft entries applied");
    describe_counter!("nokv_raft_proposals_total", "Writes proposed to raft");
    describe_counter!(
        "nokv_raft_proposals_rejected_total",
        "Proposals refused (busy, not leader, too large)"
    );
    describe_gauge!(
        "nokv_raft_pending_proposals",
        "Proposals waiting to be applied"
    );
    describe_counter!(
        "nokv_forwarded_total",
        "Commands sent to the store leading their region (--redirect forward)"
    );
    describe_gauge!("nokv_raft_leaders", "Regions this core leads");
    describe_gauge!("nokv_raft_regions", "Regions this core hosts");
    describe_counter!(
        "nokv_connections_received_total",
        "Client connections accepted"
    );
    describe_counter!(
        "nokv_connections_rejected_total",
        "Client connections refused over --max-clients"
    );
    describe_counter!(
        "nokv_clients_evicted_total",
        "Connections closed for holding too much memory, by reason"
    );
    describe_gauge!(
        "nokv_client_buffer_bytes",
        Unit::Bytes,
        "Bytes held in client query and output buffers"
    );
    describe_gauge!(
        "nokv_client_buffer_peak_bytes",
        Unit::Bytes,
        "Most bytes client buffers held at once since start"
    );
    describe_gauge!(
        "nokv_memory_limit_bytes",
        Unit::Bytes,
        "The store's memory quota (--memory-limit)"
    );
    describe_gauge!(
        "nokv_memory_budget_bytes",
        Unit::Bytes,
        "The quota's split: memtables, block_cache (all cores), clients"
    );
    for (name, help) in [
        (
            "nokv_transport_messages_sent_total",
            "Raft messages written to other stores",
        ),
        (
            "nokv_transport_frames_sent_total",
            "Frames written to other stores",
        ),
        (
            "nokv_transport_sent_bytes_total",
            "Frame bytes written to other stores",
        ),
        (
            "nokv_transport_messages_received_total",
            "Raft messages from other stores that passed the checks",
        ),
        (
            "nokv_transport_messages_delivered_total",
            "Raft messages put into a core's inbox",
        ),
        (
            "nokv_transport_connects_total",
            "Connections made to other stores",
        ),
        (
            "nokv_transport_connect_failures_total",
            "Failed attempts to connect to another store",
        ),
        (
            "nokv_transport_connections_accepted_total",
            "Connections accepted on the RPC port",
        ),
        (
            "nokv_transport_connections_refused_total",
            "Connections refused on the RPC port (too many on a core)",
        ),
        (
            "nokv_transport_messages_dropped_total",
            "Raft messages dropped on their way, by reason",
        ),
        (
            "nokv_transport_frames_rejected_total",
            "Frames refused on the RPC port (connection dropped), by reason",
        ),
        (
            "nokv_transport_envelopes_rejected_total",
            "Raft messages refused on arrival (wrong store or core), by reason",
        ),
    ] {
        describe_counter!(name, help);
    }
}

/// Handles of one core's metrics (label `core`), made once per core.
pub struct CoreMetrics {
    rounds: Counter,
    round_records: Histogram,
    applied: Counter,
    proposals: Counter,
    rejected: Counter,
    forwarded: Counter,
    connections: Gauge,
    handlers: Gauge,
    waiting: Gauge,
    pending: Gauge,
    leaders: Gauge,
    regions: Gauge,
    hibernating: Gauge,
}

/// What a core's sampler reads from the executor once a second.
#[derive(Debug, Clone, Copy, Default)]
pub struct CoreSample {
    /// Client connections.
    pub connections: usize,
    /// Requests from other cores being worked on.
    pub handlers: usize,
    /// Requests waiting on other cores.
    pub waiting: usize,
    /// Raft proposals waiting to be applied.
    pub pending: usize,
    /// Regions led.
    pub leaders: usize,
    /// Regions hosted.
    pub regions: usize,
    /// Regions hibernating (neither ticked nor polled).
    pub hibernating: usize,
}

impl CoreMetrics {
    /// Registers core `core`'s metrics.
    pub fn new(core: usize) -> CoreMetrics {
        let c = core.to_string();
        CoreMetrics {
            rounds: metrics::counter!("nokv_raft_poll_rounds_total", "core" => c.clone()),
            round_records: metrics::histogram!("nokv_raft_round_records", "core" => c.clone()),
            applied: metrics::counter!("nokv_raft_applied_entries_total", "core" => c.clone()),
            proposals: metrics::counter!("nokv_raft_proposals_total", "core" => c.clone()),
            rejected: metrics::counter!("nokv_raft_proposals_rejected_total", "core" => c.clone()),
            forwarded: metrics::counter!("nokv_forwarded_total", "core" => c.clone()),
            connections: metrics::gauge!("nokv_core_connections", "core" => c.clone()),
            handlers: metrics::gauge!("nokv_core_remote_handlers", "core" => c.clone()),
            waiting: metrics::gauge!("nokv_core_remote_waiting", "core" => c.clone()),
            pending: metrics::gauge!("nokv_raft_pending_proposals", "core" => c.clone()),
            leaders: metrics::gauge!("nokv_raft_leaders", "core" => c.clone()),
            regions: metrics::gauge!("nokv_raft_regions", "core" => c.clone()),
            hibernating: metrics::gauge!("nokv_raft_hibernating_regions", "core" => c),
        }
    }

    /// Records one poll round.
    pub fn round(&self, stats: &RoundStats) {
        self.rounds.increment(1);
        if stats.records > 0 {
            self.round_records.record(stats.records as f64);
        }
        self.applied.increment(stats.applied as u64);
    }

    /// Records a proposal (`accepted`: raft took it).
    pub fn proposal(&self, accepted: bool) {
        if accepted {
            self.proposals.increment(1);
        } else {
            self.rejected.increment(1);
        }
    }

    /// Records a command sent to the store leading its region.
    pub fn forwarded(&self) {
        self.forwarded.increment(1);
    }

    /// Publishes a sample of the core's queues.
    pub fn sample(&self, s: &CoreSample) {
        self.connections.set(s.connections as f64);
        self.handlers.set(s.handlers as f64);
        self.waiting.set(s.waiting as f64);
        self.pending.set(s.pending as f64);
        self.leaders.set(s.leaders as f64);
        self.regions.set(s.regions as f64);
        self.hibernating.set(s.hibernating as f64);
    }
}

/// What a scrape reads besides the recorder: the engines, the client account and
/// the gateway's counters.
pub struct Sources {
    /// Gateway counters (connections, evictions).
    pub gateway: Arc<nokv_gateway::Shared>,
    /// The client buffer account.
    pub clients: Arc<ClientMemory>,
    /// The memory split.
    pub budget: MemoryBudget,
    engines: Mutex<Vec<Db>>,
}

impl Sources {
    /// Sources over every core's engine (`engines[n]` is core n's).
    pub fn new(
        gateway: Arc<nokv_gateway::Shared>,
        clients: Arc<ClientMemory>,
        budget: MemoryBudget,
        engines: Vec<Db>,
    ) -> Arc<Sources> {
        Arc::new(Sources {
            gateway,
            clients,
            budget,
            engines: Mutex::new(engines),
        })
    }

    /// Drops the engine handles (at shutdown, so the engines close with their cores).
    pub fn release_engines(&self) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Publishes the scrape-time figures into the recorder.
    pub fn publish(&self) {
        let g = &self.gateway;
        metrics::counter!("nokv_connections_received_total")
            .absolute(g.connections_received.load(Ordering::Relaxed));
        metrics::counter!("nokv_connections_rejected_total")
            .absolute(g.rejected_connections.load(Ordering::Relaxed));
        for (reason, c) in [
            ("query_buffer", &g.query_buffer_disconnections),
            ("output_buffer", &g.output_buffer_disconnections),
            ("memory_share", &g.evicted_clients),
        ] {
            metrics::counter!("nokv_clients_evicted_total", "reason" => reason)
                .absolute(c.load(Ordering::Relaxed));
        }
        metrics::gauge!("nokv_client_buffer_bytes").set(self.clients.used() as f64);
        metrics::gauge!("nokv_client_buffer_peak_bytes").set(self.clients.peak() as f64);
        let b = &self.budget;
        metrics::gauge!("nokv_memory_limit_bytes").set(b.limit as f64);
        let cores = b.cores as u64;
        for (part, bytes) in [
            ("memtables", b.memtable_bytes_per_core() * cores),
            ("block_cache", b.block_cache_bytes * cores),
            ("clients", b.client_bytes),
        ] {
            metrics::gauge!("nokv_memory_budget_bytes", "part" => part).set(bytes as f64);
        }
        let engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        for (core, db) in engines.iter().enumerate() {
            publish_engine(core, &db.stats());
        }
    }
}

/// Per-core engine figures from `Db::stats()` (label `core`; levels also `level`).
fn publish_engine(core: usize, s: &nokv::Stats) {
    let c = core.to_string();
    let gauge = |name: &'static str, v: f64| metrics::gauge!(name, "core" => c.clone()).set(v);
    gauge("nokv_engine_memtable_bytes", s.memtable_bytes as f64);
    gauge(
        "nokv_engine_immutable_memtables",
        s.immutable_memtables as f64,
    );
    gauge("nokv_engine_block_cache_bytes", s.block_cache_bytes as f64);
    gauge("nokv_engine_wal_segments", s.wal_segments as f64);
    gauge("nokv_engine_disk_bytes", s.disk_bytes as f64);
    gauge("nokv_engine_live_bytes", s.live_bytes_estimate as f64);
    gauge("nokv_engine_vlog_bytes", s.vlog_bytes as f64);
    gauge("nokv_engine_write_amplification", s.write_amplification);
    let counter =
        |name: &'static str, v: u64| metrics::counter!(name, "core" => c.clone()).absolute(v);
    counter("nokv_engine_block_cache_hits_total", s.block_cache_hits);
    counter("nokv_engine_block_cache_misses_total", s.block_cache_misses);
    counter("nokv_engine_user_writes_total", s.user_writes);
    counter("nokv_engine_user_bytes_total", s.user_bytes);
    counter("nokv_engine_wal_bytes_total", s.wal_bytes);
    counter("nokv_engine_wal_syncs_total", s.wal_syncs);
    counter("nokv_engine_flushes_total", s.flushes);
    counter("nokv_engine_compactions_total", s.compactions);
    counter(
        "nokv_engine_compaction_bytes_written_total",
        s.compaction_bytes_written,
    );
    counter("nokv_engine_background_errors_total", s.background_errors);
    for (level, l) in s.levels.iter().enumerate() {
        let lv = level.to_string();
        metrics::gauge!("nokv_engine_level_files", "core" => c.clone(), "level" => lv.clone())
            .set(l.files as f64);
        metrics::gauge!("nokv_engine_level_bytes", "core" => c.clone(), "level" => lv)
            .set(l.bytes as f64);
    }
}

/// The running metrics endpoint: dropping it stops and joins its threads (a thread left
/// running while the process exits can crash the exit).
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    upkeep: Option<std::thread::JoinHandle<()>>,
    responder: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.upkeep.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        // A connection wakes the responder's accept; it sees the flag and returns (a
        // request being served ends within HTTP_TIMEOUT). If none can be made, the
        // thread is left blocked in accept rather than waited for.
        let woke = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.responder.take() {
            if woke {
                let _ = t.join();
            }
        }
    }
}

/// Binds `addr` and serves `GET /metrics` from two std threads (responder, upkeep),
/// until the returned server is dropped.
pub fn serve(addr: &str, handle: PrometheusHandle, sources: Arc<Sources>) -> Result<MetricsServer> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            Error::AddrInUse {
                addr: addr.to_string(),
            }
        } else {
            Error::Net {
                op: "bind metrics",
                addr: addr.to_string(),
                source: e,
            }
        }
    })?;
    let bound = listener.local_addr().map_err(|e| Error::Net {
        op: "local address of",
        addr: addr.to_string(),
        source: e,
    })?;
    let upkeep = handle.clone();
    let spawn_err = |e: std::io::Error| Error::Net {
        op: "start the metrics thread for",
        addr: addr.to_string(),
        source: e,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let upkeep_stop = stop.clone();
    let upkeep = std::thread::Builder::new()
        .name("nokv-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::park_timeout(UPKEEP_INTERVAL);
            if upkeep_stop.load(Ordering::Acquire) {
                return;
            }
            upkeep.run_upkeep();
        })
        .map_err(spawn_err)?;
    let responder_stop = stop.clone();
    let responder = std::thread::Builder::new()
        .name("nokv-metrics".into())
        .spawn(move || {
            // Serves one request per connection, one connection at a time; each is
            // bounded by HTTP_TIMEOUT and MAX_REQUEST_BYTES.
            for conn in listener.incoming() {
                if responder_stop.load(Ordering::Acquire) {
                    return;
                }
                match conn {
                    Ok(stream) => {
                        if let Err(e) = respond(stream, &|| {
                            sources.publish();
                            handle.render()
                        }) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map_err(spawn_err)?;
    Ok(MetricsServer {
        addr: bound,
        stop,
        upkeep: Some(upkeep),
        responder: Some(responder),
    })
}

/// What an HTTP request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// GET (or HEAD: no body) /metrics.
    Metrics { head: bool },
    /// 400, 404, 405 or 431 with a reason.
    Status(u16, &'static str),
}

/// Routes a complete request head (`bytes` ends with the blank line).
fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::Status(400, "Bad Request");
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Status(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::Status(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head: false },
        ("HEAD", "/metrics") => Route::Metrics { head: true },
        (_, "/metrics") => Route::Status(405, "Method Not Allowed"),
        _ => Route::Status(404, "Not Found"),
    }
}

fn respond(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Each round reads at least one byte or returns: bounded by MAX_REQUEST_BYTES.
    let route = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break route(&head[..end + 4]);
        }
        if head.len() >= MAX_REQUEST_BYTES {
            break Route::Status(431, "Request Header Fields Too Large");
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let (status, reason, body, head_only) = match route {
        Route::Metrics { head } => (200, "OK", render(), head),
        Route::Status(code, reason) => (code, reason, format!("{reason}\n"), false),
    };
    let header = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()?;
    // Closing with unread input would reset the connection and could destroy the
    // reply before the client reads it: end our side, then drain a bounded amount.
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut drained = 0;
    while drained < 16 * MAX_REQUEST_BYTES {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(
            route(b"GET / HTTP/1.1\r\n\r\n"),
            Route::Status(404, "Not Found")
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::Status(405, "Method Not Allowed")
        );
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(route(bad), Route::Status(400, "Bad Request"), "{bad:?}");
        }
    }

    #[test]
    fn responder_answers_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..3 {
                let (s, _) = listener.accept().unwrap();
                respond(s, &|| "nokv_x 1\n".to_string()).unwrap();
            }
        });
        let ask = |req: &[u8]| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            c.write_all(req).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nnokv_x 1\n"), "{ok}");
        assert!(ask(b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let huge = vec![b'a'; MAX_REQUEST_BYTES * 2];
        assert!(ask(&huge).starts_with("HTTP/1.1 431"));
        server.join().unwrap();
    }
}
