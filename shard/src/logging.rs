//! Logs: `tracing` events formatted on the thread that logs, written to stderr by
//! a writer thread (`nokv-log`) behind a bounded queue, so an executor never
//! blocks on a slow or full stderr. When the queue is full, lines are dropped
//! and counted; the writer reports the count with its next line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Log lines the queue holds before new ones are dropped.
pub const QUEUE_LINES: usize = 8192;
/// Longest [`flush`] waits for the writer thread.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The `MakeWriter` handed to `tracing-subscriber`: each event's bytes become one
/// queued line.
#[derive(Clone)]
struct QueueWriter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Line(buf.to_vec()))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static QUEUE: OnceLock<QueueWriter> = OnceLock::new();

fn writer_thread(rx: Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let stderr = std::io::stderr();
    // Ends when every sender is gone (never, while the subscriber lives).
    for msg in rx {
        let mut out = stderr.lock();
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(out, "[nokv-log] {lost} log lines dropped (stderr too slow)");
        }
        match msg {
            Msg::Line(line) => {
                let _ = out.write_all(&line);
            }
            Msg::Flush(ack) => {
                let _ = out.flush();
                let _ = ack.try_send(());
            }
        }
    }
}

/// Installs the `tracing` subscriber (level from `RUST_LOG`: error, warn, info,
/// debug, trace) writing through the queue. Falls back to writing stderr directly
/// if the writer thread cannot start.
pub fn init() {
    let level = nokv_raft::logger::level_from_env();
    let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let d = dropped.clone();
    let started = std::thread::Builder::new()
        .name("nokv-log".into())
        .spawn(move || writer_thread(rx, d));
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_thread_names(true);
    if started.is_err() {
        builder.with_writer(std::io::stderr).init();
        return;
    }
    let writer = QueueWriter { tx, dropped };
    let _ = QUEUE.set(writer.clone());
    builder.with_writer(writer).init();
}

/// Waits (at most [`FLUSH_TIMEOUT`]) until every line logged so far is on stderr.
/// Call before the process exits.
pub fn flush() {
    let Some(q) = QUEUE.get() else { return };
    let (ack_tx, ack_rx) = mpsc::sync_channel(1);
    let mut msg = Msg::Flush(ack_tx);
    let deadline = std::time::Instant::now() + FLUSH_TIMEOUT;
    // Bounded by FLUSH_TIMEOUT.
    loop {
        match q.tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, rx) = mpsc::sync_channel(2);
        let mut w = QueueWriter {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..5 {
            assert_eq!(w.write(b"line\n").unwrap(), 5);
        }
        assert_eq!(w.dropped.load(Ordering::Relaxed), 3);
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Msg::Line(l) if l == b"line\n"));
    }
}
