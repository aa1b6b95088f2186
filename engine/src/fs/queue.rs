//! A completion-based IO queue: operations are submitted and return at once, and their
//! completions are collected later, so the caller can keep computing while IO runs.
//!
//! Backends:
//! - [`InlineQueue`] performs each operation at submission (deterministic; used with
//!   in-memory and fault-injecting filesystems so their semantics stay exact);
//! - [`ThreadQueue`] runs operations, in order, on one background worker thread;
//! - [`UringQueue`] keeps several operations in flight on its own small io_uring.
//!
//! Contract shared by every backend:
//! - the caller keeps at most [`IoQueue::depth`] operations in flight (submitted and not yet
//!   handed back by [`IoQueue::complete`]);
//! - operations may complete in any order, and a `sync_data` covers only the writes whose
//!   completions were collected before it was submitted;
//! - dropping a queue waits for every operation in flight to finish (results are discarded).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, squeue, types, IoUring};

use super::File;

/// In-flight limit of the queues [`new_queue`] creates.
pub const DEFAULT_QUEUE_DEPTH: usize = 16;
/// Largest byte count submitted in one io_uring write SQE.
const MAX_SQE_BYTES: usize = 1 << 30;

/// Identifies one submitted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

impl Ticket {
    /// The ticket's number (unique within its queue, increasing with submission order).
    pub fn id(self) -> u64 {
        self.0
    }
}

/// The outcome of one operation.
#[derive(Debug)]
pub struct Completion {
    /// The ticket [`IoQueue::submit_write`] or [`IoQueue::submit_sync_data`] returned.
    pub ticket: Ticket,
    /// Whether the whole operation succeeded.
    pub result: io::Result<()>,
    /// A write's buffer, handed back for reuse (`None` for syncs, or if the buffer was lost).
    pub buf: Option<Vec<u8>>,
}

/// A completion-based IO queue: submissions return at once; completions are collected later.
pub trait IoQueue: Send {
    /// Most operations the caller may keep in flight.
    fn depth(&self) -> usize;
    /// Submits a write of all of `buf` at `offset`.
    fn submit_write(&mut self, file: Arc<dyn File>, offset: u64, buf: Vec<u8>) -> Ticket;
    /// Submits an fdatasync of `file` (covering writes already completed).
    fn submit_sync_data(&mut self, file: Arc<dyn File>) -> Ticket;
    /// Returns completed operations, waiting until at least `min` are available (0 polls;
    /// `min` is capped at [`IoQueue::in_flight`]).
    fn complete(&mut self, min: usize) -> Vec<Completion>;
    /// Operations submitted whose completions have not been returned yet.
    fn in_flight(&self) -> usize;
}

/// Which [`IoQueue`] backend [`new_queue`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// [`InlineQueue`]: synchronous, deterministic.
    #[default]
    Inline,
    /// [`ThreadQueue`]: one background worker thread.
    Thread,
    /// [`UringQueue`]: an io_uring; falls back to [`ThreadQueue`] if io_uring is unavailable.
    Uring,
}

/// Creates a queue of `kind` with [`DEFAULT_QUEUE_DEPTH`], falling back to a simpler backend
/// (uring, then thread, then inline) when one cannot be set up.
pub fn new_queue(kind: QueueKind) -> Box<dyn IoQueue> {
    static WARNED_URING: AtomicBool = AtomicBool::new(false);
    static WARNED_THREAD: AtomicBool = AtomicBool::new(false);
    match kind {
        QueueKind::Inline => Box::new(InlineQueue::new()),
        QueueKind::Thread => match ThreadQueue::new(DEFAULT_QUEUE_DEPTH) {
            Ok(q) => Box::new(q),
            Err(e) => {
                if !WARNED_THREAD.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot start an IO thread; using inline IO");
                }
                Box::new(InlineQueue::new())
            }
        },
        QueueKind::Uring => match UringQueue::new(DEFAULT_QUEUE_DEPTH) {
            Ok(q) => Box::new(q),
            Err(e) => {
                if !WARNED_URING.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "io_uring queue unavailable; using an IO thread");
                }
                new_queue(QueueKind::Thread)
            }
        },
    }
}

/// One operation, as the inline and thread backends carry it.
enum Request {
    Write {
        file: Arc<dyn File>,
        offset: u64,
        buf: Vec<u8>,
    },
    Sync {
        file: Arc<dyn File>,
    },
}

impl Request {
    /// Performs the operation with the file's synchronous methods.
    fn run(self, ticket: Ticket) -> Completion {
        match self {
            Request::Write { file, offset, buf } => Completion {
                ticket,
                result: file.write_all_at(&buf, offset),
                buf: Some(buf),
            },
            Request::Sync { file } => Completion {
                ticket,
                result: file.sync_data(),
                buf: None,
            },
        }
    }
}

/// Performs every operation synchronously inside `submit_*`.
#[derive(Debug, Default)]
pub struct InlineQueue {
    next: u64,
    ready: VecDeque<Completion>,
}

impl InlineQueue {
    /// An empty queue.
    pub fn new() -> InlineQueue {
        InlineQueue::default()
    }

    fn submit(&mut self, req: Request) -> Ticket {
        let ticket = Ticket(self.next);
        self.next += 1;
        debug_assert!(
            self.ready.len() < DEFAULT_QUEUE_DEPTH,
            "IO queue over depth"
        );
        self.ready.push_back(req.run(ticket));
        ticket
    }
}

impl IoQueue for InlineQueue {
    fn depth(&self) -> usize {
        DEFAULT_QUEUE_DEPTH
    }

    fn submit_write(&mut self, file: Arc<dyn File>, offset: u64, buf: Vec<u8>) -> Ticket {
        self.submit(Request::Write { file, offset, buf })
    }

    fn submit_sync_data(&mut self, file: Arc<dyn File>) -> Ticket {
        self.submit(Request::Sync { file })
    }

    fn complete(&mut self, _min: usize) -> Vec<Completion> {
        self.ready.drain(..).collect()
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }
}

/// Runs operations in submission order on one background worker thread.
///
/// Requests travel on a channel bounded by the depth; completions come back on a channel
/// that holds at most the operations in flight. The worker exits when the queue drops.
pub struct ThreadQueue {
    depth: usize,
    next: u64,
    tx: Option<mpsc::SyncSender<(Ticket, Request)>>,
    rx: mpsc::Receiver<Completion>,
    worker: Option<JoinHandle<()>>,
    /// Handed to the worker, completion not received yet (in submission order).
    outstanding: VecDeque<Ticket>,
    /// Received (or performed inline after the worker died), not yet returned.
    ready: VecDeque<Completion>,
}

impl std::fmt::Debug for ThreadQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadQueue")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl ThreadQueue {
    /// Starts the worker thread; at most `depth` operations may be in flight.
    pub fn new(depth: usize) -> io::Result<ThreadQueue> {
        let depth = depth.max(1);
        let (tx, req_rx) = mpsc::sync_channel::<(Ticket, Request)>(depth);
        let (done_tx, rx) = mpsc::channel::<Completion>();
        let worker = std::thread::Builder::new()
            .name("nokv-io".into())
            .spawn(move || {
                for (ticket, req) in req_rx {
                    if done_tx.send(req.run(ticket)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(ThreadQueue {
            depth,
            next: 0,
            tx: Some(tx),
            rx,
            worker: Some(worker),
            outstanding: VecDeque::new(),
            ready: VecDeque::new(),
        })
    }

    fn submit(&mut self, req: Request) -> Ticket {
        let ticket = Ticket(self.next);
        self.next += 1;
        debug_assert!(self.in_flight() < self.depth, "IO queue over depth");
        let req = match &self.tx {
            Some(tx) => match tx.send((ticket, req)) {
                Ok(()) => {
                    self.outstanding.push_back(ticket);
                    return ticket;
                }
                Err(mpsc::SendError((_, req))) => req,
            },
            None => req,
        };
        // The worker is gone (it panicked): perform the operation here.
        self.tx = None;
        self.ready.push_back(req.run(ticket));
        ticket
    }

    fn take(&mut self, c: Completion) {
        if let Some(i) = self.outstanding.iter().position(|t| *t == c.ticket) {
            self.outstanding.remove(i);
        }
        self.ready.push_back(c);
    }

    /// The worker died: every operation it held fails.
    fn orphan(&mut self) {
        self.tx = None;
        for ticket in self.outstanding.drain(..) {
            self.ready.push_back(Completion {
                ticket,
                result: Err(io::Error::other("IO worker thread exited")),
                buf: None,
            });
        }
    }
}

impl IoQueue for ThreadQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn submit_write(&mut self, file: Arc<dyn File>, offset: u64, buf: Vec<u8>) -> Ticket {
        self.submit(Request::Write { file, offset, buf })
    }

    fn submit_sync_data(&mut self, file: Arc<dyn File>) -> Ticket {
        self.submit(Request::Sync { file })
    }

    fn complete(&mut self, min: usize) -> Vec<Completion> {
        let min = min.min(self.in_flight());
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.take(c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.orphan();
                    break;
                }
            }
        }
        while self.ready.len() < min {
            match self.rx.recv() {
                Ok(c) => self.take(c),
                Err(mpsc::RecvError) => self.orphan(),
            }
        }
        self.ready.drain(..).collect()
    }

    fn in_flight(&self) -> usize {
        self.outstanding.len() + self.ready.len()
    }
}

impl Drop for ThreadQueue {
    fn drop(&mut self) {
        // Closing the request channel lets the worker finish what it holds, then exit.
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::warn!("IO worker thread panicked");
            }
        }
    }
}

/// An operation the kernel may be working on.
struct Pending {
    /// Keeps the descriptor open while the kernel uses it.
    file: Arc<dyn File>,
    fd: RawFd,
    op: PendingOp,
}

enum PendingOp {
    /// `buf[done..]` still has to be written at `offset + done`.
    Write {
        buf: Vec<u8>,
        offset: u64,
        done: usize,
    },
    Sync,
}

/// What a completion queue entry means for its operation.
enum Outcome {
    /// Submit (the rest of) the operation again.
    Again,
    /// The operation finished.
    Done(io::Result<()>),
}

/// True for completion or enter errors that mean "try again".
fn is_transient(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN || errno == libc::EBUSY
}

/// Keeps up to its depth of writes and fdatasyncs in flight on its own io_uring.
///
/// Writes are flagged `IOSQE_ASYNC` so the kernel copies the data on its worker threads
/// while the submitter keeps computing. Short writes are resubmitted. Files without a raw
/// descriptor (see [`File::raw_fd`]) are written synchronously at submission. If the ring
/// fails, operations in flight report an error and later ones run synchronously.
pub struct UringQueue {
    /// `None` once the ring broke.
    ring: Option<IoUring>,
    depth: usize,
    next: u64,
    pending: HashMap<u64, Pending>,
    ready: VecDeque<Completion>,
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .field("broken", &self.ring.is_none())
            .finish_non_exhaustive()
    }
}

impl UringQueue {
    /// Creates a ring for up to `depth` (at most 32) operations in flight.
    pub fn new(depth: usize) -> io::Result<UringQueue> {
        let depth = depth.clamp(1, 32);
        // Twice the depth, so resubmissions always find room in the submission queue.
        let entries = (2 * depth as u32).next_power_of_two().clamp(16, 64);
        Ok(UringQueue {
            ring: Some(IoUring::new(entries)?),
            depth,
            next: 0,
            pending: HashMap::with_capacity(depth),
            ready: VecDeque::new(),
        })
    }

    fn next_ticket(&mut self) -> Ticket {
        debug_assert!(self.in_flight() < self.depth, "IO queue over depth");
        let t = Ticket(self.next);
        self.next += 1;
        t
    }

    /// Starts `p` (registered under `ticket`), or performs it inline without a usable ring.
    fn start(&mut self, ticket: Ticket, p: Pending) {
        if self.ring.is_none() {
            self.ready.push_back(Self::run_inline(ticket, p));
            return;
        }
        self.pending.insert(ticket.0, p);
        let pushed = self.push(ticket.0).and_then(|()| self.submit_nowait());
        if let Err(e) = pushed {
            self.break_ring(e);
        }
    }

    /// Performs a pending operation with the file's synchronous methods.
    fn run_inline(ticket: Ticket, p: Pending) -> Completion {
        match p.op {
            PendingOp::Write { buf, offset, done } => Completion {
                ticket,
                result: p.file.write_all_at(&buf[done..], offset + done as u64),
                buf: Some(buf),
            },
            PendingOp::Sync => Completion {
                ticket,
                result: p.file.sync_data(),
                buf: None,
            },
        }
    }

    /// Pushes the SQE for (the rest of) pending operation `id`.
    fn push(&mut self, id: u64) -> io::Result<()> {
        let (Some(ring), Some(p)) = (self.ring.as_mut(), self.pending.get(&id)) else {
            return Err(io::Error::other(
                "io_uring queue: no ring or unknown operation",
            ));
        };
        let fd = types::Fd(p.fd);
        let entry = match &p.op {
            PendingOp::Write { buf, offset, done } => {
                let rest = &buf[*done..];
                let len = rest.len().min(MAX_SQE_BYTES) as u32;
                opcode::Write::new(fd, rest.as_ptr(), len)
                    .offset(offset + *done as u64)
                    .build()
                    .flags(squeue::Flags::ASYNC)
            }
            PendingOp::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        let entry = entry.user_data(id);
        // SAFETY: the SQE points into the heap storage of a `Vec` owned by `self.pending[id]`
        // (moving the `Vec` does not move that storage); it is neither modified nor freed
        // until the operation's completion has been reaped, and if the ring breaks first it
        // is leaked instead. The descriptor stays open because the same entry holds the file.
        unsafe { ring.submission().push(&entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Hands pushed SQEs to the kernel without waiting.
    fn submit_nowait(&mut self) -> io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        match ring.submit() {
            Ok(_) => Ok(()),
            // Left in the submission queue: the next enter submits them.
            Err(e) if is_transient(e.raw_os_error().unwrap_or(0)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits pushed SQEs and waits for at least one completion.
    fn wait_one(&mut self) -> io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            return Ok(());
        };
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(e) if is_transient(e.raw_os_error().unwrap_or(0)) => {
                    if !ring.completion().is_empty() {
                        return Ok(());
                    }
                    std::thread::yield_now();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves finished operations to `ready`, resubmitting short or interrupted ones.
    fn reap(&mut self) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut again = Vec::new();
        for (id, res) in cqes {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            match Self::outcome(&mut p.op, res) {
                Outcome::Again => again.push(id),
                Outcome::Done(result) => {
                    if let Some(p) = self.pending.remove(&id) {
                        let buf = match p.op {
                            PendingOp::Write { buf, .. } => Some(buf),
                            PendingOp::Sync => None,
                        };
                        self.ready.push_back(Completion {
                            ticket: Ticket(id),
                            result,
                            buf,
                        });
                    }
                }
            }
        }
        if again.is_empty() {
            return;
        }
        let resubmitted = again
            .into_iter()
            .try_for_each(|id| self.push(id))
            .and_then(|()| self.submit_nowait());
        if let Err(e) = resubmitted {
            self.break_ring(e);
        }
    }

    /// Applies one CQE result to its operation.
    fn outcome(op: &mut PendingOp, res: i32) -> Outcome {
        if res < 0 {
            return if is_transient(-res) {
                Outcome::Again
            } else {
                Outcome::Done(Err(io::Error::from_raw_os_error(-res)))
            };
        }
        match op {
            PendingOp::Sync => Outcome::Done(Ok(())),
            PendingOp::Write { buf, done, .. } => {
                if res == 0 {
                    return Outcome::Done(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "io_uring write returned 0 bytes",
                    )));
                }
                *done += res as usize;
                if *done < buf.len() {
                    Outcome::Again
                } else {
                    Outcome::Done(Ok(()))
                }
            }
        }
    }

    /// Abandons the ring after an unrecoverable error: operations in flight fail, and
    /// their buffers are leaked because the kernel may still be reading them.
    fn break_ring(&mut self, e: io::Error) {
        tracing::warn!(error = %e, "io_uring queue failed; continuing with synchronous IO");
        self.ring = None;
        for (id, p) in self.pending.drain() {
            if let PendingOp::Write { buf, .. } = p.op {
                std::mem::forget(buf);
            }
            self.ready.push_back(Completion {
                ticket: Ticket(id),
                result: Err(io::Error::new(e.kind(), format!("io_uring failed: {e}"))),
                buf: None,
            });
        }
    }
}

impl IoQueue for UringQueue {
    fn depth(&self) -> usize {
        self.depth
    }

    fn submit_write(&mut self, file: Arc<dyn File>, offset: u64, buf: Vec<u8>) -> Ticket {
        let ticket = self.next_ticket();
        let fd = file.raw_fd();
        let p = Pending {
            file,
            fd: fd.unwrap_or(-1),
            op: PendingOp::Write {
                buf,
                offset,
                done: 0,
            },
        };
        let empty = matches!(&p.op, PendingOp::Write { buf, .. } if buf.is_empty());
        if fd.is_none() || empty {
            self.ready.push_back(Self::run_inline(ticket, p));
        } else {
            self.start(ticket, p);
        }
        ticket
    }

    fn submit_sync_data(&mut self, file: Arc<dyn File>) -> Ticket {
        let ticket = self.next_ticket();
        let fd = file.raw_fd();
        let p = Pending {
            file,
            fd: fd.unwrap_or(-1),
            op: PendingOp::Sync,
        };
        if fd.is_none() {
            self.ready.push_back(Self::run_inline(ticket, p));
        } else {
            self.start(ticket, p);
        }
        ticket
    }

    fn complete(&mut self, min: usize) -> Vec<Completion> {
        let min = min.min(self.in_flight());
        self.reap();
        while self.ready.len() < min && self.ring.is_some() {
            match self.wait_one() {
                Ok(()) => self.reap(),
                Err(e) => self.break_ring(e),
            }
        }
        self.ready.drain(..).collect()
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.ready.len()
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may be using the buffers: wait until every operation has finished.
        while !self.pending.is_empty() && self.ring.is_some() {
            match self.wait_one() {
                Ok(()) => self.reap(),
                Err(e) => self.break_ring(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, OpenMode, StdFs};

    /// The three backends, each tested the same way.
    fn queues() -> Vec<(&'static str, Box<dyn IoQueue>)> {
        let mut qs: Vec<(&'static str, Box<dyn IoQueue>)> = vec![
            ("inline", Box::new(InlineQueue::new())),
            ("thread", Box::new(ThreadQueue::new(8).unwrap())),
        ];
        match UringQueue::new(8) {
            Ok(q) => qs.push(("uring", Box::new(q))),
            Err(e) => eprintln!("skipping UringQueue: io_uring setup failed ({e})"),
        }
        qs
    }

    fn drain(q: &mut dyn IoQueue) -> Vec<Completion> {
        let mut all = Vec::new();
        while q.in_flight() > 0 {
            let n = q.in_flight();
            all.extend(q.complete(n));
        }
        all
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn writes_land_and_sync_succeeds() {
        for (name, mut q) in queues() {
            let tmp = tempfile::tempdir().unwrap();
            let fs = StdFs::new();
            let f = fs.open(&tmp.path().join("f"), OpenMode::CreateNew).unwrap();
            // Out-of-order offsets, a large chunk and an empty write.
            let chunks: Vec<(u64, Vec<u8>)> = vec![
                (3 << 20, pattern(1, 1 << 20)),
                (0, pattern(2, 3 << 20)),
                (4 << 20, pattern(3, 12345)),
                (4 << 20, Vec::new()),
            ];
            let mut tickets = Vec::new();
            for (off, buf) in &chunks {
                let cap = buf.capacity();
                tickets.push((q.submit_write(f.clone(), *off, buf.clone()), cap));
            }
            assert!(q.in_flight() <= chunks.len(), "{name}");
            let done = drain(&mut *q);
            assert_eq!(done.len(), chunks.len(), "{name}");
            assert_eq!(q.in_flight(), 0, "{name}");
            let mut seen: Vec<Ticket> = done.iter().map(|c| c.ticket).collect();
            seen.sort();
            let mut want: Vec<Ticket> = tickets.iter().map(|(t, _)| *t).collect();
            want.sort();
            want.dedup();
            assert_eq!(seen, want, "{name}: each ticket completes exactly once");
            for c in &done {
                assert!(c.result.is_ok(), "{name}: {:?}", c.result);
                assert!(c.buf.is_some(), "{name}: write buffers come back");
            }
            let sync = q.submit_sync_data(f.clone());
            let done = q.complete(1);
            assert_eq!(done.len(), 1, "{name}");
            assert_eq!(done[0].ticket, sync, "{name}");
            assert!(done[0].result.is_ok(), "{name}");
            assert!(done[0].buf.is_none(), "{name}");
            assert_eq!(f.len().unwrap(), (4 << 20) + 12345, "{name}");
            for (off, buf) in &chunks {
                let mut back = vec![0u8; buf.len()];
                f.read_exact_at(&mut back, *off).unwrap();
                assert!(&back == buf, "{name}: data at {off}");
            }
        }
    }

    #[test]
    fn tickets_are_unique_and_polling_never_blocks_past_in_flight() {
        for (name, mut q) in queues() {
            let tmp = tempfile::tempdir().unwrap();
            let f = StdFs::new()
                .open(&tmp.path().join("f"), OpenMode::CreateNew)
                .unwrap();
            assert!(q.complete(0).is_empty(), "{name}");
            assert!(
                q.complete(5).is_empty(),
                "{name}: min is capped at in_flight"
            );
            let mut all = Vec::new();
            for round in 0..20u64 {
                let t = q.submit_write(f.clone(), round * 10, pattern(round as u8, 10));
                all.push(t);
                if q.in_flight() >= 3 {
                    let got = q.complete(1);
                    assert!(!got.is_empty(), "{name}");
                    for c in got {
                        c.result.unwrap();
                    }
                }
            }
            for c in drain(&mut *q) {
                c.result.unwrap();
            }
            let mut ids: Vec<u64> = all.iter().map(|t| t.id()).collect();
            ids.dedup();
            assert_eq!(ids.len(), 20, "{name}");
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}");
            assert_eq!(f.len().unwrap(), 200, "{name}");
        }
    }

    #[test]
    fn errors_are_reported_with_the_buffer() {
        for (name, mut q) in queues() {
            let tmp = tempfile::tempdir().unwrap();
            let p = tmp.path().join("f");
            let fs = StdFs::new();
            fs.open(&p, OpenMode::CreateNew)
                .unwrap()
                .write_all_at(b"abc", 0)
                .unwrap();
            let ro = fs.open(&p, OpenMode::Read).unwrap();
            let bad = q.submit_write(ro.clone(), 0, b"xyz".to_vec());
            let good_file = fs.open(&tmp.path().join("g"), OpenMode::CreateNew).unwrap();
            let good = q.submit_write(good_file.clone(), 0, b"ok".to_vec());
            let done = drain(&mut *q);
            assert_eq!(done.len(), 2, "{name}");
            for c in done {
                if c.ticket == bad {
                    let e = c.result.unwrap_err();
                    assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{name}: {e}");
                    assert_eq!(c.buf.as_deref(), Some(&b"xyz"[..]), "{name}");
                } else {
                    assert_eq!(c.ticket, good, "{name}");
                    c.result.unwrap();
                }
            }
            // The queue stays usable after a failed operation.
            q.submit_sync_data(good_file.clone());
            let done = q.complete(1);
            assert!(done[0].result.is_ok(), "{name}");
            let mut back = [0u8; 3];
            ro.read_exact_at(&mut back, 0).unwrap();
            assert_eq!(&back, b"abc", "{name}");
        }
    }

    #[test]
    fn dropping_a_queue_waits_for_in_flight_writes() {
        for (name, mut q) in queues() {
            let tmp = tempfile::tempdir().unwrap();
            let f = StdFs::new()
                .open(&tmp.path().join("f"), OpenMode::CreateNew)
                .unwrap();
            for i in 0..4u64 {
                q.submit_write(f.clone(), i << 20, pattern(i as u8, 1 << 20));
            }
            drop(q);
            assert_eq!(f.len().unwrap(), 4 << 20, "{name}");
        }
    }

    #[test]
    fn files_without_a_descriptor_still_work() {
        let fs = crate::fs::FaultFs::new();
        let dir = std::path::Path::new("/db");
        fs.create_dir_all(dir).unwrap();
        for (name, mut q) in queues() {
            let p = dir.join(name);
            let f = fs.open(&p, OpenMode::CreateNew).unwrap();
            assert!(f.raw_fd().is_none());
            q.submit_write(f.clone(), 0, b"hello".to_vec());
            for c in drain(&mut *q) {
                c.result.unwrap();
            }
            q.submit_sync_data(f.clone());
            for c in drain(&mut *q) {
                c.result.unwrap();
            }
            let mut back = [0u8; 5];
            f.read_exact_at(&mut back, 0).unwrap();
            assert_eq!(&back, b"hello", "{name}");
        }
    }
}
