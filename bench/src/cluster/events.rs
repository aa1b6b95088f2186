//! The event-loop driver of `nokv-bench cluster` (`--driver events`): a phase's logical
//! clients are dealt over a few threads, each running one epoll loop over its clients'
//! non-blocking connections. The semantics are the threaded driver's: every logical client
//! has its own connections (NoKV: one per store it has talked to, opened lazily; etcd: one
//! to its member) and one request outstanding; an operation's latency runs from its first
//! send to its full reply (redirects and retries included); `-MOVED` updates the shared
//! slot map and resends, `-TRYAGAIN` resends after 5 ms (a deadline in a timer heap, not a
//! sleep); an I/O error fails the operation and drops the connection.
//!
//! The epoll set is level-triggered: EPOLLIN is always on and each wake-up does one `read`
//! (what is left is reported again); EPOLLOUT is on only while a request has an unsent tail
//! (a write hit EAGAIN). Connects are blocking (loopback, once per client and store), as
//! in the threaded driver. A request without a reply for 30 s fails, like the threaded
//! driver's read timeout.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::wire::{self, RecvBuf, Reply};
use super::{
    etcd_outcome, etcd_request, nokv_command, nokv_outcome, ClientStats, Gate, Phase, Release, Rng,
    Router, Step, System, MAX_TRIES, TRYAGAIN_DELAY,
};
use crate::error::{BenchError, Result};

/// A request unanswered for this long fails (the threaded driver's read timeout).
const STALL: Duration = Duration::from_secs(30);

/// How often outstanding requests are checked against [`STALL`].
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Longest wait for a TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Events taken from the kernel per `epoll_wait`.
const EVENTS: usize = 256;

/// An epoll instance.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned descriptor is checked and then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: `ev` outlives the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for events; Ok(0) on timeout or EINTR.
    fn wait(&self, events: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

/// One non-blocking connection of a logical client.
struct EvConn {
    stream: TcpStream,
    addr: String,
    /// The client (index in the loop) that owns it.
    owner: usize,
    recv: RecvBuf,
    /// Encoded requests; `out[sent..]` is not written yet.
    out: Vec<u8>,
    sent: usize,
    /// EPOLLOUT is registered (an unsent tail waits for room).
    writing: bool,
}

/// The connections of a logical client.
enum Links {
    /// NoKV: the client's router and its connection per store.
    Nokv {
        router: Router,
        conns: Vec<(String, usize)>,
    },
    /// etcd: the member's address and the connection to it.
    Etcd { addr: String, conn: Option<usize> },
}

/// The operation a client has outstanding.
struct Pending {
    key: Vec<u8>,
    /// When the operation started (its latency's origin).
    t0: Instant,
    tries: u32,
    /// The connection the current attempt was sent on (None while waiting to retry).
    conn: Option<usize>,
    /// When the current attempt was sent.
    sent: Instant,
}

/// One logical client.
struct EvClient {
    rng: Rng,
    links: Links,
    pending: Option<Pending>,
    stats: ClientStats,
}

/// A complete answer on a connection.
enum Answer {
    /// A RESP reply (NoKV).
    Resp(Reply),
    /// An HTTP response (etcd).
    Http(wire::HttpResponse),
}

/// What to do with a client after an answer.
enum Next {
    Finish(std::result::Result<bool, String>),
    Attempt,
    Retry,
    Drop,
}

/// What a loop is doing: warming up until an instant, or measuring through a gate.
enum Mode<'a> {
    Warm(Instant),
    Measured(Gate<'a>),
}

/// One driver thread's event loop.
struct Loop<'a> {
    phase: &'a Phase<'a>,
    ep: Epoll,
    conns: Vec<Option<EvConn>>,
    free: Vec<usize>,
    clients: Vec<EvClient>,
    /// Clients whose operation has ended: start their next one.
    ready: VecDeque<usize>,
    /// -TRYAGAIN retries: (when, client).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Clients with an operation outstanding or about to start one.
    active: usize,
    mode: Mode<'a>,
}

/// Runs the clients `ids` of a phase on this thread: warm-up, the release, the measured
/// closed loop; their measurements in `ids` order.
pub(super) fn drive(phase: &Phase, release: &Release, ids: Vec<usize>) -> Result<Vec<ClientStats>> {
    let mut lp = match Loop::new(phase, &ids) {
        Ok(lp) => lp,
        Err(e) => {
            // Still meet the others at the start line, then report.
            release.wait();
            return Err(BenchError::driver("epoll_create1", e));
        }
    };
    let warm = lp.run(Mode::Warm(Instant::now() + phase.warmup));
    let before: Vec<u64> = lp.clients.iter().map(|c| c.redirects()).collect();
    let begun = release.wait();
    warm?;
    lp.run(Mode::Measured(phase.gate(begun)))?;
    Ok(lp
        .clients
        .into_iter()
        .zip(before)
        .map(|(c, before)| {
            let redirects = c.redirects() - before;
            ClientStats {
                redirects,
                ..c.stats
            }
        })
        .collect())
}

impl EvClient {
    fn redirects(&self) -> u64 {
        match &self.links {
            Links::Nokv { router, .. } => router.redirects,
            Links::Etcd { .. } => 0,
        }
    }
}

/// Opens a non-blocking, TCP_NODELAY connection to `addr`.
fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for sa in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

impl<'a> Loop<'a> {
    fn new(phase: &'a Phase<'a>, ids: &[usize]) -> io::Result<Self> {
        let target = phase.target;
        let clients = ids
            .iter()
            .map(|&t| EvClient {
                rng: Rng::for_client(t),
                links: match target.system {
                    System::Nokv => Links::Nokv {
                        router: Router::new(target.endpoint(t), target.slots.clone()),
                        conns: Vec::new(),
                    },
                    System::Etcd => Links::Etcd {
                        addr: target.endpoint(t),
                        conn: None,
                    },
                },
                pending: None,
                stats: ClientStats::new(),
            })
            .collect();
        Ok(Loop {
            phase,
            ep: Epoll::new()?,
            conns: Vec::new(),
            free: Vec::new(),
            clients,
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            active: 0,
            mode: Mode::Warm(Instant::now()),
        })
    }

    /// Runs every client in `mode` until none has anything left to do.
    fn run(&mut self, mode: Mode<'a>) -> Result<()> {
        self.mode = mode;
        self.active = self.clients.len();
        self.ready.extend(0..self.clients.len());
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut next_check = Instant::now() + STALL_CHECK;
        loop {
            while let Some(ci) = self.ready.pop_front() {
                self.start_next(ci);
            }
            if self.active == 0 {
                return Ok(());
            }
            let now = Instant::now();
            while let Some(&Reverse((at, ci))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                self.attempt(ci);
            }
            if now >= next_check {
                self.expire_stalled(now);
                next_check = now + STALL_CHECK;
            }
            let mut wake = next_check;
            if let Some(&Reverse((at, _))) = self.timers.peek() {
                wake = wake.min(at);
            }
            // Clients to restart (attempts that failed at once): only poll, so that a
            // client failing in a tight loop cannot starve the others' sockets.
            if !self.ready.is_empty() {
                wake = now;
            }
            let n = self
                .ep
                .wait(&mut events, wake.saturating_duration_since(now))
                .map_err(|e| BenchError::driver("epoll_wait", e))?;
            for ev in &events[..n] {
                let (bits, token) = (ev.events, ev.u64 as usize);
                if bits & libc::EPOLLOUT as u32 != 0 {
                    self.flush(token);
                }
                if bits & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                    self.on_readable(token);
                }
            }
        }
    }

    /// Starts client `ci`'s next operation, or retires it when the mode says it is done.
    fn start_next(&mut self, ci: usize) {
        let t0 = match &self.mode {
            Mode::Warm(end) => Some(Instant::now()).filter(|now| now < end),
            Mode::Measured(gate) => gate.admit(),
        };
        let c = &mut self.clients[ci];
        match t0 {
            None => {
                self.active -= 1;
                c.stats.end = Instant::now();
            }
            Some(t0) => {
                c.pending = Some(Pending {
                    key: self.phase.key(&mut c.rng),
                    t0,
                    tries: 0,
                    conn: None,
                    sent: t0,
                });
                self.attempt(ci);
            }
        }
    }

    /// Ends client `ci`'s operation with `r` (recorded when measuring); its next one starts
    /// from the main loop (no recursion through failing attempts).
    fn finish(&mut self, ci: usize, r: std::result::Result<bool, String>) {
        let c = &mut self.clients[ci];
        let Some(p) = c.pending.take() else {
            return;
        };
        if let Mode::Measured(_) = self.mode {
            c.stats.record(p.t0, r);
        }
        self.ready.push_back(ci);
    }

    /// Sends one attempt of client `ci`'s outstanding operation.
    fn attempt(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        let Some(p) = c.pending.as_mut() else {
            return;
        };
        p.tries += 1;
        if p.tries > MAX_TRIES {
            let e = format!("no leader after {MAX_TRIES} tries (-MOVED/-TRYAGAIN)");
            return self.finish(ci, Err(e));
        }
        let addr = match &mut c.links {
            Links::Nokv { router, .. } => router.addr_for(wire::slot(&p.key)).to_string(),
            Links::Etcd { addr, .. } => addr.clone(),
        };
        let cid = match self.conn_to(ci, &addr) {
            Ok(cid) => cid,
            Err(e) => return self.finish(ci, Err(format!("connect {addr}: {e}"))),
        };
        let c = &mut self.clients[ci];
        let Some(p) = c.pending.as_mut() else {
            return;
        };
        let Some(conn) = self.conns[cid].as_mut() else {
            return;
        };
        let (op, value) = (self.phase.op, self.phase.value);
        match &c.links {
            Links::Nokv { .. } => nokv_command(&mut conn.out, op, &p.key, value),
            Links::Etcd { addr, .. } => {
                let (path, body) = etcd_request(op, &p.key, value);
                wire::encode_post(&mut conn.out, addr, path, &body);
            }
        }
        p.conn = Some(cid);
        p.sent = Instant::now();
        self.flush(cid);
    }

    /// Client `ci`'s connection to `addr`, opened and registered if it has none.
    fn conn_to(&mut self, ci: usize, addr: &str) -> io::Result<usize> {
        let have = match &self.clients[ci].links {
            Links::Nokv { conns, .. } => conns.iter().find(|(a, _)| a == addr).map(|&(_, c)| c),
            Links::Etcd { conn, .. } => *conn,
        };
        if let Some(cid) = have {
            return Ok(cid);
        }
        let stream = connect(addr)?;
        let cid = match self.free.pop() {
            Some(cid) => cid,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        if let Err(e) = self.ep.ctl(
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            libc::EPOLLIN as u32,
            cid,
        ) {
            self.free.push(cid);
            return Err(e);
        }
        self.conns[cid] = Some(EvConn {
            stream,
            addr: addr.to_string(),
            owner: ci,
            recv: RecvBuf::default(),
            out: Vec::with_capacity(256),
            sent: 0,
            writing: false,
        });
        match &mut self.clients[ci].links {
            Links::Nokv { conns, .. } => conns.push((addr.to_string(), cid)),
            Links::Etcd { conn, .. } => *conn = Some(cid),
        }
        Ok(cid)
    }

    /// Writes what connection `cid` has unsent; on EAGAIN keeps the tail and asks for
    /// EPOLLOUT, which is dropped again once everything is written.
    fn flush(&mut self, cid: usize) {
        let Some(conn) = self.conns.get_mut(cid).and_then(Option::as_mut) else {
            return;
        };
        while conn.sent < conn.out.len() {
            match (&conn.stream).write(&conn.out[conn.sent..]) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "socket took no bytes");
                    return self.drop_conn(cid, e);
                }
                Ok(n) => conn.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.writing {
                        let fd = conn.stream.as_raw_fd();
                        let bits = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
                        if let Err(e) = self.ep.ctl(libc::EPOLL_CTL_MOD, fd, bits, cid) {
                            return self.drop_conn(cid, e);
                        }
                        conn.writing = true;
                    }
                    return;
                }
                Err(e) => return self.drop_conn(cid, e),
            }
        }
        conn.out.clear();
        conn.sent = 0;
        if conn.writing {
            let fd = conn.stream.as_raw_fd();
            if let Err(e) = self
                .ep
                .ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, cid)
            {
                return self.drop_conn(cid, e);
            }
            conn.writing = false;
        }
    }

    /// Reads once from connection `cid` and handles every complete reply received.
    fn on_readable(&mut self, cid: usize) {
        let Some(conn) = self.conns.get_mut(cid).and_then(Option::as_mut) else {
            return;
        };
        match conn.recv.read_from(&mut conn.stream) {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
                return self.drop_conn(cid, e);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return
            }
            Err(e) => return self.drop_conn(cid, e),
        }
        // Closed loop: normally exactly one reply; loop in case of more.
        loop {
            let Some(conn) = self.conns.get_mut(cid).and_then(Option::as_mut) else {
                return;
            };
            let data = conn.recv.data();
            let parsed = match self.phase.target.system {
                System::Nokv => {
                    wire::parse_reply(data).map(|o| o.map(|(r, n)| (Answer::Resp(r), n)))
                }
                System::Etcd => {
                    wire::parse_http_response(data).map(|o| o.map(|(r, n)| (Answer::Http(r), n)))
                }
            };
            match parsed {
                Ok(None) => return,
                Ok(Some((answer, n))) => {
                    conn.recv.consume(n);
                    self.on_answer(cid, answer);
                }
                Err(e) => return self.drop_conn(cid, e),
            }
        }
    }

    /// Handles a complete answer on connection `cid`: a RESP reply (NoKV) or an HTTP
    /// response (etcd).
    fn on_answer(&mut self, cid: usize, answer: Answer) {
        let Some(conn) = self.conns.get(cid).and_then(Option::as_ref) else {
            return;
        };
        let ci = conn.owner;
        let c = &mut self.clients[ci];
        let Some(p) = c.pending.as_mut().filter(|p| p.conn == Some(cid)) else {
            let e = io::Error::new(io::ErrorKind::InvalidData, "a reply without a request");
            return self.drop_conn(cid, e);
        };
        p.conn = None;
        let op = self.phase.op;
        let next = match (&mut c.links, answer) {
            (Links::Nokv { router, .. }, Answer::Resp(reply)) => {
                match router.route(wire::slot(&p.key), reply) {
                    Step::Done(r) => Next::Finish(nokv_outcome(op, r)),
                    Step::Redirected => Next::Attempt,
                    Step::TryAgain => Next::Retry,
                    Step::Failed(e) => Next::Finish(Err(format!("{}: -{e}", conn.addr))),
                }
            }
            (Links::Etcd { addr, .. }, Answer::Http((status, body))) => {
                Next::Finish(etcd_outcome(op, status, &body).map_err(|e| format!("{addr} {e}")))
            }
            // on_readable parses by the target's system, which also fixed the links.
            _ => Next::Drop,
        };
        match next {
            Next::Finish(r) => self.finish(ci, r),
            Next::Attempt => self.attempt(ci),
            Next::Retry => self
                .timers
                .push(Reverse((Instant::now() + TRYAGAIN_DELAY, ci))),
            Next::Drop => {
                let e = io::Error::new(io::ErrorKind::InvalidData, "answer of the wrong protocol");
                self.drop_conn(cid, e)
            }
        }
    }

    /// Closes connection `cid` after `err`; its owner's attempt on it, if any, fails.
    fn drop_conn(&mut self, cid: usize, err: io::Error) {
        let Some(conn) = self.conns.get_mut(cid).and_then(Option::take) else {
            return;
        };
        // Closing the descriptor (its only copy) also removes it from the epoll set.
        drop(conn.stream);
        self.free.push(cid);
        let ci = conn.owner;
        let c = &mut self.clients[ci];
        match &mut c.links {
            Links::Nokv { conns, .. } => conns.retain(|&(_, x)| x != cid),
            Links::Etcd { conn, .. } => *conn = None,
        }
        if c.pending.as_ref().is_some_and(|p| p.conn == Some(cid)) {
            self.finish(ci, Err(format!("{}: {err}", conn.addr)));
        }
    }

    /// Fails the attempts that have waited longer than [`STALL`] for a reply.
    fn expire_stalled(&mut self, now: Instant) {
        let stalled: Vec<usize> = self
            .clients
            .iter()
            .filter_map(|c| c.pending.as_ref())
            .filter(|p| now.duration_since(p.sent) > STALL)
            .filter_map(|p| p.conn)
            .collect();
        for cid in stalled {
            let e = io::Error::new(io::ErrorKind::TimedOut, "no reply in 30 s");
            self.drop_conn(cid, e);
        }
    }
}
