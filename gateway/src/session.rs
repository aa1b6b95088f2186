//! Per-connection state machine: bytes in, reply bytes out.
//!
//! The caller owns the socket. It [`Session::feed`]s what it read, then pulls
//! [`Action`]s with [`Session::next_action`]: connection commands (PING, HELLO,
//! AUTH, CLIENT, CONFIG, COMMAND, ...) are answered inside the session; key
//! commands come out as a [`ReadOp`] or a [`WriteCommand`] with a [`Ticket`].
//! The caller evaluates them (locally, or on the owning shard after Raft) in any
//! order and hands each reply back with [`Session::complete`]; the session keeps
//! replies in request order, encodes them in the protocol the connection spoke
//! when the request was made, and exposes the bytes to send with
//! [`Session::output`] / [`Session::consume_output`]. [`Session::state`] says
//! when to close.

use crate::command::{self, CommandInfo, Lookup};
use crate::error::{Error, Result};
use crate::exec::{self, ExecItem, Prepared, ReadOp, WriteCommand, WriteOp};
use crate::resp::{self, Limits, Parsed, Protocol, Reply, ScanPage};
use crate::store::Backend;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Input buffer capacity kept between requests; a larger buffer (left by a big
/// request) is released once it is empty.
const KEEP_INPUT_CAPACITY: usize = 1 << 20;

/// Gateway settings shared by every connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// The default user's password (Redis `requirepass`); None: no AUTH needed (unless
    /// `users` is not empty: then the default user is off).
    pub requirepass: Option<Vec<u8>>,
    /// Named users (ACL-style), each with its password and rights; clients `AUTH <name>
    /// <password>`.
    pub users: Vec<User>,
    /// Redis' protected mode: without a password, clients not on the loopback interface
    /// are refused ([`Config::refuses_peer`], [`PROTECTED_MODE_DENIED`]).
    pub protected_mode: bool,
    /// Request parsing limits (bulk length, argument count, inline length).
    pub limits: Limits,
    /// Most unparsed input buffered per connection (Redis `client-query-buffer-limit`).
    pub max_query_buffer_bytes: usize,
    /// Most reply bytes buffered per connection before it must be closed.
    pub max_output_bytes: usize,
    /// Most requests parsed per read, and most replies outstanding per connection.
    pub max_pipeline_depth: usize,
    /// Most connections the server should accept (reported by CONFIG GET / INFO).
    pub max_clients: usize,
    /// SCAN/HSCAN cursors remembered per connection.
    pub scan_cursors_per_client: usize,
    /// The Redis version reported by HELLO and INFO (clients gate features on it).
    pub redis_version: String,
    /// The TCP port reported by INFO and CONFIG GET.
    pub port: u16,
    /// The memory limit reported by INFO and CONFIG GET `maxmemory` (0: none).
    pub maxmemory: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            requirepass: None,
            users: Vec::new(),
            protected_mode: true,
            limits: Limits::default(),
            max_query_buffer_bytes: 1 << 30,
            max_output_bytes: 1 << 30,
            max_pipeline_depth: 1024,
            max_clients: 10_000,
            scan_cursors_per_client: 16,
            redis_version: "7.0.15".to_string(),
            port: 6380,
            maxmemory: 0,
        }
    }
}

/// The reply to a client refused by protected mode, before it is disconnected (Redis'
/// wording, with NoKV's options).
pub const PROTECTED_MODE_DENIED: &[u8] = b"-DENIED NoKV is running in protected mode because protected mode is enabled and no password is set. In this mode connections are only accepted from the loopback interface. To accept connections from other hosts, set a password (--requirepass, recommended) or, on a trusted network only, disable protected mode (--protected-mode no), then restart the server.\r\n";

impl Config {
    /// Whether a client connecting from `peer` must be refused (protected mode on, no
    /// password, a peer not on the loopback interface; an unknown peer is refused too).
    pub fn refuses_peer(&self, peer: Option<std::net::IpAddr>) -> bool {
        self.protected_mode
            && self.requirepass.is_none()
            && self.users.is_empty()
            && !peer.is_some_and(is_loopback)
    }
}

/// A named user: `AUTH <name> <password>`; a read-only one may run no write command and
/// no `NOKV.*` administration (`-NOPERM`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name (case-sensitive; not `default`).
    pub name: Vec<u8>,
    /// The password.
    pub password: Vec<u8>,
    /// Reads only.
    pub read_only: bool,
}

impl User {
    /// Parses `NAME:PASSWORD` or `NAME:PASSWORD:readonly` (the name has no `:`; a password
    /// may contain `:` but not end in `:readonly`).
    pub fn parse(spec: &str) -> std::result::Result<User, String> {
        let (name, rest) = spec
            .split_once(':')
            .ok_or_else(|| format!("{spec:?}: expected NAME:PASSWORD[:readonly]"))?;
        let (password, read_only) = match rest.strip_suffix(":readonly") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        if name.is_empty()
            || name.eq_ignore_ascii_case("default")
            || name.contains(char::is_whitespace)
        {
            return Err(format!(
                "{name:?}: a user name is not empty, not `default` (use requirepass) and has no spaces"
            ));
        }
        if password.is_empty() {
            return Err(format!("user {name}: an empty password"));
        }
        Ok(User {
            name: name.as_bytes().to_vec(),
            password: password.as_bytes().to_vec(),
            read_only,
        })
    }
}

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 included).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What CLIENT LIST shows about one connection.
#[derive(Debug, Clone, Default)]
pub struct ClientEntry {
    /// Client id.
    pub id: u64,
    /// Peer address (`ip:port`).
    pub addr: String,
    /// Local address (`ip:port`).
    pub laddr: String,
    /// CLIENT SETNAME name.
    pub name: Vec<u8>,
    /// When the connection was opened (unix ms).
    pub created_ms: u64,
    /// When it last sent a command (unix ms).
    pub last_ms: u64,
    /// Its last command's full name.
    pub last_cmd: String,
    /// Protocol version (2 or 3).
    pub resp: u8,
}

/// Why a connection was closed for holding too much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its unparsed input outgrew `Config::max_query_buffer_bytes`.
    QueryBuffer,
    /// Its pending replies outgrew its output buffer limit.
    OutputBuffer,
    /// It pushed the store's client buffers over their share of the memory limit.
    MemoryShare,
}

/// Extra INFO lines for a section (`"memory"`, `"stats"`, ...), supplied by the server.
pub type InfoHook = Box<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// Process-wide gateway state: configuration, client registry and counters.
///
/// The registry sits behind a short `std::sync::Mutex`, touched on connect,
/// disconnect, CLIENT SETNAME/LIST and HELLO only, never per command.
pub struct Shared {
    /// Settings.
    pub config: Config,
    next_client_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, ClientEntry>>,
    started_ms: u64,
    /// Connections accepted since start.
    pub connections_received: AtomicU64,
    /// Connections refused (over `max_clients`).
    pub rejected_connections: AtomicU64,
    /// Commands processed since start.
    pub commands_processed: AtomicU64,
    /// Connections closed for their query buffer.
    pub query_buffer_disconnections: AtomicU64,
    /// Connections closed for their output buffer.
    pub output_buffer_disconnections: AtomicU64,
    /// Connections closed because client buffers exceeded their memory share.
    pub evicted_clients: AtomicU64,
    info_hook: OnceLock<InfoHook>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("started_ms", &self.started_ms)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// New shared state; `now_ms` is the start time INFO's uptime counts from.
    pub fn new(config: Config, now_ms: u64) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            next_client_id: AtomicU64::new(1),
            clients: Mutex::new(BTreeMap::new()),
            started_ms: now_ms,
            connections_received: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            commands_processed: AtomicU64::new(0),
            query_buffer_disconnections: AtomicU64::new(0),
            output_buffer_disconnections: AtomicU64::new(0),
            evicted_clients: AtomicU64::new(0),
            info_hook: OnceLock::new(),
        })
    }

    /// Counts a connection closed for holding too much memory (INFO stats).
    pub fn count_eviction(&self, why: Eviction) {
        let c = match why {
            Eviction::QueryBuffer => &self.query_buffer_disconnections,
            Eviction::OutputBuffer => &self.output_buffer_disconnections,
            Eviction::MemoryShare => &self.evicted_clients,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Installs the hook that adds server lines to INFO sections; only the first call counts.
    pub fn set_info_hook(&self, hook: InfoHook) {
        let _ = self.info_hook.set(hook);
    }

    /// Connections currently registered.
    pub fn connected_clients(&self) -> usize {
        self.registry().len()
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClientEntry>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ClientEntry)) {
        if let Some(e) = self.registry().get_mut(&id) {
            f(e);
        }
    }
}

/// Identifies an outstanding read or write of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Work the caller must do for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Evaluate `op` with [`exec::read`] on the owning shard(s) (after a lease
    /// check or ReadIndex) and pass the reply to [`Session::complete`].
    Read {
        /// Where the reply goes.
        ticket: Ticket,
        /// The read.
        op: ReadOp,
    },
    /// Propose `cmd` to the owning shard's log; once applied with
    /// [`exec::apply`], pass the reply to [`Session::complete`].
    Write {
        /// Where the reply goes.
        ticket: Ticket,
        /// The write.
        cmd: WriteCommand,
    },
    /// An operator command of the server (`NOKV.*`, e.g. `NOKV.REGION`): the caller
    /// evaluates `args` and passes the reply to [`Session::complete`].
    Admin {
        /// Where the reply goes.
        ticket: Ticket,
        /// The command and its arguments as sent.
        args: Vec<Vec<u8>>,
    },
}

/// Whether the connection should stay open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Keep reading.
    Open,
    /// Stop reading; send what is in the output buffer, then close (QUIT, protocol error).
    CloseAfterFlush,
    /// Close now without sending more (a buffer limit was hit).
    CloseNow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    None,
    Keys,
    Fields,
    /// WATCH's version read: recorded, answered `+OK`.
    Watch,
}

#[derive(Debug)]
struct Slot {
    proto: Protocol,
    reply: Option<Reply>,
    scan: ScanKind,
    /// The command's metrics (index into `Session::metrics`) and when it was dispatched.
    timing: Option<(usize, Instant)>,
}

/// Metric handles of one command, cached per session (labels: `command`).
struct CommandMetrics {
    calls: metrics::Counter,
    errors: metrics::Counter,
    latency: metrics::Histogram,
}

impl CommandMetrics {
    fn new(name: &'static str) -> CommandMetrics {
        CommandMetrics {
            calls: metrics::counter!("nokv_commands_total", "command" => name),
            errors: metrics::counter!("nokv_command_errors_total", "command" => name),
            latency: metrics::histogram!("nokv_command_duration_seconds", "command" => name),
        }
    }
}

/// One client connection.
pub struct Session {
    shared: Arc<Shared>,
    id: u64,
    input: Vec<u8>,
    input_pos: usize,
    output: Vec<u8>,
    proto: Protocol,
    authenticated: bool,
    /// The authenticated named user (index in `users`); None: the default user.
    user: Option<usize>,
    name: Vec<u8>,
    /// Replies not yet encoded, oldest first; the front has ticket `front_ticket`.
    pending: VecDeque<Slot>,
    front_ticket: u64,
    /// Requests still allowed before the caller must `resume`.
    budget: usize,
    state: State,
    cursors: VecDeque<(u64, Vec<u8>)>,
    cursor_seq: u64,
    limit_error: Option<Error>,
    /// Metric handles of the commands this session has seen, and their index by name.
    metrics: Vec<CommandMetrics>,
    metric_index: HashMap<&'static str, usize>,
    /// The command being dispatched: its replies carry this timing.
    timing: Option<(usize, Instant)>,
    /// The MULTI block being queued.
    multi: Option<Multi>,
    /// WATCHed keys and their versions (None until WATCH's read answered).
    watched: Vec<(Vec<u8>, Option<u64>)>,
}

/// A MULTI block being queued.
#[derive(Debug, Default)]
struct Multi {
    items: Vec<ExecItem>,
    /// About the memory the queued commands hold (their arguments).
    bytes: usize,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    dirty: bool,
}

/// Commands refused inside MULTI (they read or write every region, or keep cursors).
const NOT_IN_MULTI: &[&str] = &["scan", "hscan", "keys", "dbsize", "flushdb", "info"];
/// The reply to a command refused inside MULTI.
const NOT_ALLOWED_IN_MULTI: &str = "ERR Command not allowed inside a transaction";

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.registry().remove(&self.id);
    }
}

fn unknown_command(args: &[Vec<u8>]) -> String {
    let mut list = Vec::new();
    for a in &args[1..] {
        if list.len() >= 128 {
            break;
        }
        let room = 128 - list.len();
        list.push(b'\'');
        list.extend_from_slice(&a[..a.len().min(room)]);
        list.extend_from_slice(b"' ");
    }
    let name = &args[0][..args[0].len().min(128)];
    let text = format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(&list)
    );
    text.replace(['\r', '\n'], " ")
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | (a.len() != b.len()) as u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

impl Session {
    /// A new connection from `addr` to `laddr`, registered in `shared` at `now_ms`.
    pub fn new(shared: Arc<Shared>, addr: String, laddr: String, now_ms: u64) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        shared.connections_received.fetch_add(1, Ordering::Relaxed);
        shared.registry().insert(
            id,
            ClientEntry {
                id,
                addr,
                laddr,
                name: Vec::new(),
                created_ms: now_ms,
                last_ms: now_ms,
                last_cmd: "NULL".to_string(),
                resp: 2,
            },
        );
        let authenticated = shared.config.requirepass.is_none() && shared.config.users.is_empty();
        let budget = shared.config.max_pipeline_depth;
        Session {
            shared,
            id,
            input: Vec::new(),
            input_pos: 0,
            output: Vec::new(),
            proto: Protocol::Resp2,
            authenticated,
            user: None,
            name: Vec::new(),
            pending: VecDeque::new(),
            front_ticket: 0,
            budget,
            state: State::Open,
            cursors: VecDeque::new(),
            cursor_seq: 0,
            limit_error: None,
            metrics: Vec::new(),
            metric_index: HashMap::new(),
            timing: None,
            multi: None,
            watched: Vec::new(),
        }
    }

    /// Bytes this connection holds for input: its query buffer's capacity.
    pub fn held_input_bytes(&self) -> usize {
        // A MULTI block and WATCHed keys are input waiting to run: they count too, so
        // the store's client memory share bounds them like the query buffer.
        let queued = self.multi.as_ref().map_or(0, |m| m.bytes);
        let watched: usize = self.watched.iter().map(|(k, _)| k.len() + 16).sum();
        self.input.capacity() + queued + watched
    }

    /// Bytes this connection holds for output: encoded replies not yet taken, and
    /// replies completed but waiting for an earlier one.
    pub fn held_output_bytes(&self) -> usize {
        self.output.capacity()
            + self
                .pending
                .iter()
                .filter_map(|s| s.reply.as_ref())
                .map(Reply::approx_bytes)
                .sum::<usize>()
    }

    /// Bytes this connection holds in its buffers, input and output (what a
    /// server charges against its client memory).
    pub fn held_bytes(&self) -> usize {
        self.held_input_bytes() + self.held_output_bytes()
    }

    /// This connection's client id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The protocol the connection speaks now.
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// Whether the connection should stay open.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the session wants to close now, if a limit was hit.
    pub fn limit_error(&self) -> Option<&Error> {
        self.limit_error.as_ref()
    }

    /// Buffers bytes read from the socket and renews the per-read request budget.
    /// Fails (and the caller must close) when the unparsed input outgrows
    /// `Config::max_query_buffer_bytes`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<()> {
        if self.state != State::Open {
            return Ok(());
        }
        let buffered = self.input.len() - self.input_pos;
        let limit = self.shared.config.max_query_buffer_bytes;
        if buffered + bytes.len() > limit {
            self.state = State::CloseNow;
            let e = Error::QueryBufferFull {
                len: buffered + bytes.len(),
                limit,
            };
            self.limit_error = Some(Error::QueryBufferFull {
                len: buffered + bytes.len(),
                limit,
            });
            self.shared.count_eviction(Eviction::QueryBuffer);
            return Err(e);
        }
        if self.input_pos > 0 && self.input_pos * 2 >= self.input.len() {
            self.input.drain(..self.input_pos);
            self.input_pos = 0;
        }
        self.input.extend_from_slice(bytes);
        self.budget = self.shared.config.max_pipeline_depth;
        Ok(())
    }

    /// Renews the per-read request budget without new input (call after
    /// flushing output when [`Session::has_buffered_input`] is true).
    pub fn resume(&mut self) {
        self.budget = self.shared.config.max_pipeline_depth;
    }

    /// Whether parsing stopped because the per-read budget ran out with input left:
    /// flush the output, then [`Session::resume`] and drive again.
    pub fn budget_exhausted(&self) -> bool {
        self.budget == 0 && self.has_buffered_input()
    }

    /// Whether unparsed input is buffered.
    pub fn has_buffered_input(&self) -> bool {
        self.input_pos < self.input.len()
    }

    /// Reply bytes ready to send.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Drops the first `n` bytes of [`Session::output`] (they were sent).
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
    }

    /// Takes all ready reply bytes.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Closes the session now because the server evicted it (`why` is counted in INFO stats).
    pub fn evict(&mut self, why: Eviction) {
        if self.state != State::CloseNow {
            self.state = State::CloseNow;
            self.shared.count_eviction(why);
        }
    }

    /// Replies still owed by the caller (reads and writes in flight).
    pub fn outstanding(&self) -> usize {
        self.pending.iter().filter(|s| s.reply.is_none()).count()
    }

    /// Parses buffered requests, answering connection commands itself, until a
    /// read or write needs the caller (returned), input runs out, the per-read
    /// budget or the pipeline depth is reached, or the connection must close.
    pub fn next_action(&mut self, now_ms: u64) -> Option<Action> {
        // Each round consumes input or returns: bounded by the buffered bytes.
        loop {
            if self.state != State::Open
                || self.budget == 0
                || self.pending.len() >= self.shared.config.max_pipeline_depth
            {
                return None;
            }
            let unauth = !self.authenticated;
            let parsed = resp::parse_request(
                &self.input[self.input_pos..],
                &self.shared.config.limits,
                unauth,
            );
            match parsed {
                Err(e) => {
                    let text = match e {
                        Error::Protocol(m) => format!("ERR Protocol error: {m}"),
                        other => format!("ERR Protocol error: {other}"),
                    };
                    self.push_local(Reply::Error(text));
                    self.state = if self.state == State::CloseNow {
                        State::CloseNow
                    } else {
                        State::CloseAfterFlush
                    };
                    self.input.clear();
                    self.input_pos = 0;
                    return None;
                }
                Ok(Parsed::Incomplete) => return None,
                Ok(Parsed::Empty { consumed }) => self.input_pos += consumed,
                Ok(Parsed::Request { args, consumed }) => {
                    self.input_pos += consumed;
                    if self.input_pos == self.input.len() {
                        if self.input.capacity() > KEEP_INPUT_CAPACITY {
                            self.input = Vec::new();
                        } else {
                            self.input.clear();
                        }
                        self.input_pos = 0;
                    }
                    self.budget -= 1;
                    if let Some(action) = self.dispatch(args, now_ms) {
                        return Some(action);
                    }
                }
            }
        }
    }

    /// Hands back the reply of an outstanding read or write.
    pub fn complete(&mut self, ticket: Ticket, reply: Reply) {
        let Some(idx) = ticket.0.checked_sub(self.front_ticket) else {
            return;
        };
        if let Some(slot) = self.pending.get_mut(idx as usize) {
            if slot.reply.is_none() {
                slot.reply = Some(reply);
            }
        }
        self.flush_ready();
    }

    /// Drives the session synchronously against `backend` until it needs input.
    /// Returns how many reads and writes were evaluated.
    pub fn run(&mut self, backend: &dyn Backend) -> usize {
        let mut n = 0;
        while let Some(action) = self.next_action(backend.now_ms()) {
            n += 1;
            match action {
                Action::Read { ticket, op } => {
                    let reply = backend.read(&op);
                    self.complete(ticket, reply);
                }
                Action::Write { ticket, cmd } => {
                    let reply = backend.write(&cmd);
                    self.complete(ticket, reply);
                }
                Action::Admin { ticket, args } => {
                    let name = String::from_utf8_lossy(&args[0][..args[0].len().min(64)]);
                    let reply = Reply::Error(format!("ERR unknown command '{name}'"));
                    self.complete(ticket, reply);
                }
            }
        }
        n
    }

    fn push_slot(&mut self, mut slot: Slot) -> Ticket {
        slot.timing = self.timing.take();
        let ticket = Ticket(self.front_ticket + self.pending.len() as u64);
        self.pending.push_back(slot);
        ticket
    }

    /// A slot for a reply the caller owes (a read, write or admin action's).
    fn push_pending(&mut self, scan: ScanKind) -> Ticket {
        self.push_slot(Slot {
            proto: self.proto,
            reply: None,
            scan,
            timing: None,
        })
    }

    fn push_local(&mut self, reply: Reply) {
        self.push_slot(Slot {
            proto: self.proto,
            reply: Some(reply),
            scan: ScanKind::None,
            timing: None,
        });
        self.flush_ready();
    }

    /// Starts timing a command: the next reply slot pushed carries it.
    fn start_timing(&mut self, name: &'static str) {
        let idx = match self.metric_index.get(name) {
            Some(&i) => i,
            None => {
                self.metrics.push(CommandMetrics::new(name));
                let i = self.metrics.len() - 1;
                self.metric_index.insert(name, i);
                i
            }
        };
        self.timing = Some((idx, Instant::now()));
    }

    fn record(&self, timing: Option<(usize, Instant)>, reply: &Reply) {
        let Some((i, t)) = timing else { return };
        if let Some(m) = self.metrics.get(i) {
            m.calls.increment(1);
            m.latency.record(t.elapsed().as_secs_f64());
            if reply.is_error() {
                m.errors.increment(1);
            }
        }
    }

    fn flush_ready(&mut self) {
        // Bounded by the pending queue's length.
        while self.pending.front().is_some_and(|s| s.reply.is_some()) {
            let Some(slot) = self.pending.pop_front() else {
                break;
            };
            self.front_ticket += 1;
            let Some(mut reply) = slot.reply else {
                continue;
            };
            self.record(slot.timing, &reply);
            if let Reply::Scan(page) = reply {
                reply = self.scan_reply(page, slot.scan);
            } else if slot.scan == ScanKind::Watch {
                reply = self.watched_versions(reply);
            }
            if self.state == State::CloseNow {
                continue;
            }
            if let Err(e) = reply.encode(slot.proto, &mut self.output) {
                self.limit_error = Some(e);
                self.state = State::CloseNow;
                continue;
            }
            let limit = self.shared.config.max_output_bytes;
            if self.output.len() > limit {
                self.limit_error = Some(Error::OutputBufferFull {
                    len: self.output.len(),
                    limit,
                });
                self.state = State::CloseNow;
                self.shared.count_eviction(Eviction::OutputBuffer);
            }
        }
    }

    fn scan_reply(&mut self, page: ScanPage, kind: ScanKind) -> Reply {
        let cursor = match page.next {
            None => 0,
            Some(pos) => {
                self.cursor_seq += 1;
                let slot_bits = match kind {
                    ScanKind::Keys => pos
                        .get(..2)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) as u64),
                    _ => 0,
                };
                let id = (self.cursor_seq << 14) | (slot_bits & 0x3fff);
                if self.cursors.len() >= self.shared.config.scan_cursors_per_client.max(1) {
                    self.cursors.pop_front();
                }
                self.cursors.push_back((id, pos));
                id
            }
        };
        Reply::Array(vec![
            Reply::bulk(cursor.to_string()),
            Reply::Array(page.items),
        ])
    }

    fn resume_position(&self, cursor: u64) -> Option<Vec<u8>> {
        self.cursors
            .iter()
            .find(|(id, _)| *id == cursor)
            .map(|(_, pos)| pos.clone())
    }

    fn dispatch(&mut self, args: Vec<Vec<u8>>, now_ms: u64) -> Option<Action> {
        self.shared
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
        if args
            .first()
            .is_some_and(|a| a.len() > 5 && a[..5].eq_ignore_ascii_case(b"NOKV."))
        {
            self.start_timing("nokv.admin");
            if !self.authenticated {
                self.reject(Reply::error(NOAUTH));
                return None;
            }
            if self.multi.is_some() {
                self.reject(Reply::error(NOT_ALLOWED_IN_MULTI));
                return None;
            }
            let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
            if let Some(reply) = self.refused(&name, true) {
                self.reject(reply);
                return None;
            }
            let ticket = self.push_pending(ScanKind::None);
            return Some(Action::Admin { ticket, args });
        }
        let cmd = match command::lookup(&args) {
            Lookup::Found(c) => c,
            Lookup::Unknown => {
                self.start_timing("unknown");
                self.reject(Reply::Error(unknown_command(&args)));
                return None;
            }
            Lookup::UnknownSubcommand(c) => {
                self.start_timing(c.name);
                let sub = &args[1][..args[1].len().min(128)];
                let text = format!(
                    "ERR unknown subcommand '{}'. Try {} HELP.",
                    String::from_utf8_lossy(sub),
                    c.name.to_ascii_uppercase()
                );
                self.reject(Reply::Error(text.replace(['\r', '\n'], " ")));
                return None;
            }
        };
        self.start_timing(cmd.name);
        if !cmd.arity_ok(args.len()) {
            self.reject(Reply::Error(format!(
                "ERR wrong number of arguments for '{}' command",
                cmd.name
            )));
            return None;
        }
        if !self.authenticated && !cmd.has_flag("no_auth") {
            self.reject(Reply::error(NOAUTH));
            return None;
        }
        if let Some(reply) = self.refused(cmd.name, cmd.has_flag("write")) {
            self.reject(reply);
            return None;
        }
        if let Some(action) = self.transaction_command(cmd, &args, now_ms) {
            return action;
        }
        if self.multi.is_some() && cmd.name != "quit" {
            self.queue(cmd, args, now_ms);
            return None;
        }
        if let Some(reply) = self.connection_command(cmd, &args, now_ms) {
            self.push_local(reply);
            return None;
        }
        if cmd.name == "info" {
            return self.info(&args, now_ms);
        }
        match exec::prepare(cmd, args, now_ms) {
            Prepared::Reply(r) => {
                self.push_local(r);
                None
            }
            Prepared::Read(mut op) => {
                let scan = match &mut op {
                    ReadOp::Scan(a) => {
                        a.resume = self.resume_position(a.cursor);
                        ScanKind::Keys
                    }
                    ReadOp::HScan(_, a) => {
                        a.resume = self.resume_position(a.cursor);
                        ScanKind::Fields
                    }
                    _ => ScanKind::None,
                };
                let ticket = self.push_pending(scan);
                Some(Action::Read { ticket, op })
            }
            Prepared::Write(cmd) => {
                let ticket = self.push_pending(ScanKind::None);
                Some(Action::Write { ticket, cmd })
            }
        }
    }

    /// Answers a refused command; inside MULTI it also makes EXEC fail (EXECABORT).
    fn reject(&mut self, reply: Reply) {
        if let Some(m) = &mut self.multi {
            m.dirty = true;
        }
        self.push_local(reply);
    }

    /// MULTI, EXEC, DISCARD, WATCH and UNWATCH (None: another command; `Some(action)`:
    /// handled, with the action to run if any).
    fn transaction_command(
        &mut self,
        cmd: &CommandInfo,
        args: &[Vec<u8>],
        now_ms: u64,
    ) -> Option<Option<Action>> {
        let reply = match cmd.name {
            "multi" if self.multi.is_some() => Reply::error("ERR MULTI calls can not be nested"),
            "multi" => {
                self.multi = Some(Multi::default());
                Reply::ok()
            }
            "exec" => return Some(self.exec(now_ms)),
            "discard" => match self.multi.take() {
                None => Reply::error("ERR DISCARD without MULTI"),
                Some(_) => {
                    self.watched.clear();
                    Reply::ok()
                }
            },
            "watch" if self.multi.is_some() => {
                Reply::error("ERR WATCH inside MULTI is not allowed")
            }
            "watch" => {
                let keys = args[1..].to_vec();
                self.watched.extend(keys.iter().map(|k| (k.clone(), None)));
                let ticket = self.push_pending(ScanKind::Watch);
                // Parse nothing more until the versions are in: an EXEC right behind
                // must see them.
                self.budget = 0;
                return Some(Some(Action::Read {
                    ticket,
                    op: ReadOp::Versions(keys),
                }));
            }
            "unwatch" if self.multi.is_none() => {
                self.watched.clear();
                Reply::ok()
            }
            _ => return None,
        };
        self.push_local(reply);
        Some(None)
    }

    /// Records the versions WATCH read and answers `+OK` (or WATCH's error: the keys then
    /// count as changed).
    fn watched_versions(&mut self, reply: Reply) -> Reply {
        let mut versions = match &reply {
            Reply::Array(items) => items
                .iter()
                .map(|r| match r {
                    Reply::Int(v) => *v as u64,
                    _ => u64::MAX,
                })
                .collect(),
            _ => Vec::new(),
        }
        .into_iter();
        for (_, v) in self.watched.iter_mut().filter(|(_, v)| v.is_none()) {
            *v = Some(versions.next().unwrap_or(u64::MAX));
        }
        if reply.is_error() {
            reply
        } else {
            Reply::ok()
        }
    }

    /// Queues a command of a MULTI block (`+QUEUED`).
    fn queue(&mut self, cmd: &'static CommandInfo, args: Vec<Vec<u8>>, now_ms: u64) {
        if NOT_IN_MULTI.contains(&cmd.name) {
            self.reject(Reply::error(NOT_ALLOWED_IN_MULTI));
            return;
        }
        let bytes: usize = args.iter().map(|a| a.len() + 16).sum();
        let item = match self.connection_command(cmd, &args, now_ms) {
            Some(reply) => ExecItem::Reply(reply),
            None => match exec::prepare(cmd, args, now_ms) {
                Prepared::Reply(r) => ExecItem::Reply(r),
                Prepared::Read(op) => ExecItem::Read(op),
                Prepared::Write(c) => ExecItem::Write(c.op),
            },
        };
        if let Some(m) = &mut self.multi {
            m.items.push(item);
            m.bytes += bytes;
        }
        self.push_local(Reply::Simple("QUEUED".to_string()));
    }

    /// EXEC: the queued block as one write (with the watched versions), or its refusal.
    fn exec(&mut self, now_ms: u64) -> Option<Action> {
        let Some(multi) = self.multi.take() else {
            self.push_local(Reply::error("ERR EXEC without MULTI"));
            return None;
        };
        let watched: Vec<(Vec<u8>, u64)> = std::mem::take(&mut self.watched)
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or(u64::MAX)))
            .collect();
        if multi.dirty {
            self.push_local(Reply::error(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
            return None;
        }
        if multi.items.is_empty() && watched.is_empty() {
            self.push_local(Reply::Array(Vec::new()));
            return None;
        }
        let ticket = self.push_pending(ScanKind::None);
        Some(Action::Write {
            ticket,
            cmd: WriteCommand {
                now_ms,
                op: WriteOp::Exec {
                    watched,
                    items: multi.items,
                },
            },
        })
    }

    /// Logs the connection in as `user` if `pass` is its password.
    fn authenticate(&mut self, user: &[u8], pass: &[u8]) -> bool {
        let config = &self.shared.config;
        let found = if user.eq_ignore_ascii_case(b"default") {
            match &config.requirepass {
                None => config.users.is_empty().then_some(None),
                Some(p) => constant_time_eq(p, pass).then_some(None),
            }
        } else {
            config
                .users
                .iter()
                .position(|u| u.name == user)
                .filter(|&i| constant_time_eq(&config.users[i].password, pass))
                .map(Some)
        };
        match found {
            Some(u) => {
                self.user = u;
                self.authenticated = true;
                true
            }
            None => false,
        }
    }

    /// `-NOPERM` for `command` when the connection's user may not run it.
    fn refused(&self, command: &str, write: bool) -> Option<Reply> {
        let user = &self.shared.config.users[self.user?];
        (user.read_only && write).then(|| {
            Reply::Error(format!(
                "NOPERM User {} has no permissions to run the '{command}' command",
                String::from_utf8_lossy(&user.name)
            ))
        })
    }

    /// Commands answered by the session itself; None for key commands and INFO.
    fn connection_command(
        &mut self,
        cmd: &CommandInfo,
        args: &[Vec<u8>],
        now_ms: u64,
    ) -> Option<Reply> {
        Some(match cmd.name {
            "ping" => match args.len() {
                1 => Reply::Simple("PONG".to_string()),
                2 => Reply::Bulk(args[1].clone()),
                _ => Reply::error("ERR wrong number of arguments for 'ping' command"),
            },
            "echo" => Reply::Bulk(args[1].clone()),
            "quit" => {
                self.state = State::CloseAfterFlush;
                Reply::ok()
            }
            "select" => match crate::numeric::string2ll(&args[1]) {
                Some(n) if i32::try_from(n).is_ok() => {
                    if n == 0 {
                        Reply::ok()
                    } else {
                        Reply::error("ERR DB index is out of range")
                    }
                }
                _ => Reply::error(exec::NOT_INTEGER),
            },
            "auth" => {
                if args.len() > 3 {
                    Reply::error(exec::SYNTAX)
                } else if args.len() == 2
                    && self.shared.config.requirepass.is_none()
                    && self.shared.config.users.is_empty()
                {
                    Reply::error(
                        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                    )
                } else {
                    let (user, pass) = if args.len() == 2 {
                        (&b"default"[..], &args[1][..])
                    } else {
                        (&args[1][..], &args[2][..])
                    };
                    if self.authenticate(user, pass) {
                        Reply::ok()
                    } else {
                        Reply::error(WRONGPASS)
                    }
                }
            }
            "hello" => self.hello(args),
            "client" | "config" | "command" => {
                // Containers reach here only with too few arguments (arity already failed)
                // or as COMMAND with no subcommand.
                if cmd.name == "command" {
                    Reply::Array(
                        command::table::COMMANDS
                            .iter()
                            .map(|c| c.info_reply())
                            .collect(),
                    )
                } else {
                    Reply::error(format!(
                        "ERR wrong number of arguments for '{}' command",
                        cmd.name
                    ))
                }
            }
            "client|id" => Reply::Int(self.id as i64),
            "client|getname" => {
                if self.name.is_empty() {
                    Reply::Null
                } else {
                    Reply::Bulk(self.name.clone())
                }
            }
            "client|setname" => match validate_client_name(&args[2]) {
                Err(e) => Reply::error(e),
                Ok(()) => {
                    self.name = args[2].clone();
                    let name = self.name.clone();
                    self.shared.update(self.id, |e| e.name = name);
                    Reply::ok()
                }
            },
            "client|list" => self.client_list(args, now_ms),
            "client|help" => help(&[
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GETNAME",
                "    Return the name of the current connection.",
                "ID",
                "    Return the ID of the current connection.",
                "LIST [TYPE <normal|master|replica|pubsub>] [ID <id> [<id> ...]]",
                "    Return information about client connections.",
                "SETNAME <name>",
                "    Assign the name <name> to the current connection.",
                "HELP",
                "    Print this help.",
            ]),
            "config|get" => self.config_get(&args[2..]),
            "config|help" => help(&[
                "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "GET <pattern>",
                "    Return parameters matching the glob-like <pattern> and their values.",
                "HELP",
                "    Print this help.",
            ]),
            "command|count" => Reply::Int(command::table::COMMANDS.len() as i64),
            "command|list" => {
                if args.len() > 2 {
                    Reply::error(exec::SYNTAX)
                } else {
                    Reply::Array(command::all_names().into_iter().map(Reply::bulk).collect())
                }
            }
            "command|info" => {
                if args.len() == 2 {
                    Reply::Array(
                        command::table::COMMANDS
                            .iter()
                            .map(|c| c.info_reply())
                            .collect(),
                    )
                } else {
                    Reply::Array(
                        args[2..]
                            .iter()
                            .map(|n| command::find_full(n).map_or(Reply::Null, |c| c.info_reply()))
                            .collect(),
                    )
                }
            }
            "command|docs" => {
                let mut pairs = Vec::new();
                if args.len() == 2 {
                    for (name, doc) in command::table::DOCS {
                        pairs.push((Reply::bulk(*name), doc.to_reply()));
                    }
                } else {
                    for n in &args[2..] {
                        if let Some((name, doc)) = command::docs(n) {
                            pairs.push((Reply::bulk(name), doc.to_reply()));
                        }
                    }
                }
                Reply::Map(pairs)
            }
            "command|help" => help(&[
                "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "(no subcommand)",
                "    Return details about all commands.",
                "COUNT",
                "    Return the total number of commands in this server.",
                "LIST",
                "    Return a list of all commands in this server.",
                "INFO [<command-name> ...]",
                "    Return details about multiple commands.",
                "DOCS [<command-name> ...]",
                "    Return documentation details about multiple commands.",
                "HELP",
                "    Print this help.",
            ]),
            _ => return None,
        })
    }

    fn hello(&mut self, args: &[Vec<u8>]) -> Reply {
        let mut version = None;
        if args.len() >= 2 {
            match crate::numeric::string2ll(&args[1]) {
                None => {
                    return Reply::error("ERR Protocol version is not an integer or out of range")
                }
                Some(v) if !(2..=3).contains(&v) => {
                    return Reply::error("NOPROTO unsupported protocol version")
                }
                Some(v) => version = Some(v),
            }
        }
        let mut auth = None;
        let mut setname = None;
        let mut j = 2;
        while j < args.len() {
            let more = args.len() - 1 - j;
            if args[j].eq_ignore_ascii_case(b"auth") && more >= 2 {
                auth = Some((args[j + 1].clone(), args[j + 2].clone()));
                j += 3;
            } else if args[j].eq_ignore_ascii_case(b"setname") && more >= 1 {
                if let Err(e) = validate_client_name(&args[j + 1]) {
                    return Reply::error(e);
                }
                setname = Some(args[j + 1].clone());
                j += 2;
            } else {
                return Reply::Error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&args[j])
                ));
            }
        }
        if let Some((user, pass)) = auth {
            if !self.authenticate(&user, &pass) {
                return Reply::error(WRONGPASS);
            }
        }
        if !self.authenticated {
            return Reply::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = setname {
            self.name = name;
        }
        if let Some(v) = version {
            self.proto = if v == 3 {
                Protocol::Resp3
            } else {
                Protocol::Resp2
            };
        }
        let (name, resp) = (
            self.name.clone(),
            if self.proto == Protocol::Resp3 { 3 } else { 2 },
        );
        self.shared.update(self.id, |e| {
            e.name = name;
            e.resp = resp;
        });
        let b = |s: &str| Reply::bulk(s);
        Reply::Map(vec![
            (b("server"), b("redis")),
            (
                b("version"),
                Reply::bulk(self.shared.config.redis_version.as_str()),
            ),
            (b("proto"), Reply::Int(resp as i64)),
            (b("id"), Reply::Int(self.id as i64)),
            (b("mode"), b("standalone")),
            (b("role"), b("master")),
            (b("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn client_list(&mut self, args: &[Vec<u8>], now_ms: u64) -> Reply {
        let mut ids: Option<Vec<u64>> = None;
        let mut only_normal = true;
        let mut i = 2;
        while i < args.len() {
            if args[i].eq_ignore_ascii_case(b"type") && i + 1 < args.len() {
                let t = args[i + 1].to_ascii_lowercase();
                match t.as_slice() {
                    b"normal" => only_normal = true,
                    b"master" | b"replica" | b"slave" | b"pubsub" => only_normal = false,
                    _ => {
                        return Reply::Error(format!(
                            "ERR Unknown client type '{}'",
                            String::from_utf8_lossy(&args[i + 1])
                        ))
                    }
                }
                i += 2;
            } else if args[i].eq_ignore_ascii_case(b"id") && i + 1 < args.len() {
                let mut list = Vec::new();
                for a in &args[i + 1..] {
                    match crate::numeric::string2ll(a) {
                        Some(n) => list.push(n as u64),
                        _ => return Reply::error("ERR Invalid client ID"),
                    }
                }
                ids = Some(list);
                i = args.len();
            } else {
                return Reply::error(exec::SYNTAX);
            }
        }
        let resp = if self.proto == Protocol::Resp3 { 3 } else { 2 };
        self.shared.update(self.id, |e| {
            e.last_cmd = "client|list".to_string();
            e.last_ms = now_ms;
            e.resp = resp;
        });
        let mut text = String::new();
        if only_normal {
            let registry = self.shared.registry();
            for e in registry.values() {
                if ids.as_ref().is_some_and(|l| !l.contains(&e.id)) {
                    continue;
                }
                text.push_str(&format!(
                    "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={}\n",
                    e.id,
                    e.addr,
                    e.laddr,
                    String::from_utf8_lossy(&e.name),
                    now_ms.saturating_sub(e.created_ms) / 1000,
                    now_ms.saturating_sub(e.last_ms) / 1000,
                    e.last_cmd,
                    e.resp
                ));
            }
        }
        Reply::Verbatim(text.into_bytes())
    }

    fn config_get(&self, names: &[Vec<u8>]) -> Reply {
        let cfg = &self.shared.config;
        let params: Vec<(&str, String)> = vec![
            ("appendonly", "no".to_string()),
            ("bind", "127.0.0.1".to_string()),
            (
                "client-query-buffer-limit",
                cfg.max_query_buffer_bytes.to_string(),
            ),
            ("databases", "1".to_string()),
            ("maxclients", cfg.max_clients.to_string()),
            ("maxmemory", cfg.maxmemory.to_string()),
            ("port", cfg.port.to_string()),
            ("proto-max-bulk-len", cfg.limits.max_bulk_bytes.to_string()),
            (
                "requirepass",
                cfg.requirepass
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_default(),
            ),
            ("save", String::new()),
            ("timeout", "0".to_string()),
        ];
        let mut out: Vec<(Reply, Reply)> = Vec::new();
        let mut seen = Vec::new();
        for n in names {
            let lower = n.to_ascii_lowercase();
            let is_pattern = lower.iter().any(|b| matches!(b, b'[' | b'*' | b'?'));
            for (name, value) in &params {
                let hit = if is_pattern {
                    crate::glob::matches(&lower, name.as_bytes())
                } else {
                    lower == name.as_bytes()
                };
                if hit && !seen.contains(name) {
                    seen.push(*name);
                    out.push((Reply::bulk(*name), Reply::bulk(value.as_str())));
                }
            }
        }
        Reply::Map(out)
    }

    fn info(&mut self, args: &[Vec<u8>], now_ms: u64) -> Option<Action> {
        const ALL: [&str; 7] = [
            "server",
            "clients",
            "memory",
            "persistence",
            "stats",
            "replication",
            "keyspace",
        ];
        let mut wanted: Vec<&str> = Vec::new();
        if args.len() == 1 {
            wanted.extend(ALL);
        }
        for a in &args[1..] {
            let lower = String::from_utf8_lossy(a).to_ascii_lowercase();
            match lower.as_str() {
                "all" | "everything" | "default" => wanted.extend(ALL),
                s => {
                    if let Some(found) = ALL.iter().find(|x| **x == s) {
                        wanted.push(found);
                    }
                }
            }
        }
        let mut text = String::new();
        for section in ALL.iter().filter(|s| wanted.contains(s)) {
            if *section == "keyspace" {
                continue;
            }
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            text.push_str(&self.info_section(section, now_ms));
        }
        let op = ReadOp::Info {
            text,
            keyspace: wanted.contains(&"keyspace"),
        };
        if let ReadOp::Info {
            text,
            keyspace: false,
        } = op
        {
            self.push_local(Reply::Verbatim(text.into_bytes()));
            return None;
        }
        let ticket = self.push_pending(ScanKind::None);
        Some(Action::Read { ticket, op })
    }

    fn info_section(&self, section: &str, now_ms: u64) -> String {
        let s = &self.shared;
        let uptime = now_ms.saturating_sub(s.started_ms) / 1000;
        let lines: Vec<String> = match section {
            "server" => vec![
                "# Server".to_string(),
                format!("redis_version:{}", s.config.redis_version),
                format!("nokv_version:{}", env!("CARGO_PKG_VERSION")),
                "redis_mode:standalone".to_string(),
                "arch_bits:64".to_string(),
                "multiplexing_api:nokv".to_string(),
                format!("process_id:{}", std::process::id()),
                format!("tcp_port:{}", s.config.port),
                format!("uptime_in_seconds:{uptime}"),
                format!("uptime_in_days:{}", uptime / 86_400),
            ],
            "clients" => vec![
                "# Clients".to_string(),
                format!("connected_clients:{}", s.connected_clients()),
                format!("maxclients:{}", s.config.max_clients),
                "blocked_clients:0".to_string(),
            ],
            "memory" => vec![
                "# Memory".to_string(),
                format!("maxmemory:{}", s.config.maxmemory),
                "maxmemory_policy:noeviction".to_string(),
            ],
            "persistence" => vec![
                "# Persistence".to_string(),
                "loading:0".to_string(),
                "rdb_changes_since_last_save:0".to_string(),
                "aof_enabled:0".to_string(),
            ],
            "stats" => vec![
                "# Stats".to_string(),
                format!(
                    "total_connections_received:{}",
                    s.connections_received.load(Ordering::Relaxed)
                ),
                format!(
                    "total_commands_processed:{}",
                    s.commands_processed.load(Ordering::Relaxed)
                ),
                format!(
                    "rejected_connections:{}",
                    s.rejected_connections.load(Ordering::Relaxed)
                ),
                format!(
                    "evicted_clients:{}",
                    s.evicted_clients.load(Ordering::Relaxed)
                ),
                format!(
                    "client_query_buffer_limit_disconnections:{}",
                    s.query_buffer_disconnections.load(Ordering::Relaxed)
                ),
                format!(
                    "client_output_buffer_limit_disconnections:{}",
                    s.output_buffer_disconnections.load(Ordering::Relaxed)
                ),
            ],
            "replication" => vec![
                "# Replication".to_string(),
                "role:master".to_string(),
                "connected_slaves:0".to_string(),
            ],
            _ => Vec::new(),
        };
        let mut lines = lines;
        if let Some(hook) = s.info_hook.get() {
            lines.extend(hook(section));
        }
        let mut out = lines.join("\r\n");
        out.push_str("\r\n");
        out
    }
}

fn help(lines: &[&str]) -> Reply {
    Reply::Array(lines.iter().map(|l| Reply::Simple(l.to_string())).collect())
}

/// Redis's `validateClientName`: printable ASCII without spaces.
fn validate_client_name(name: &[u8]) -> std::result::Result<(), &'static str> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        Err("ERR Client names cannot contain spaces, newlines or special characters.")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemView;

    #[test]
    fn named_users_log_in_and_read_only_ones_may_not_write() {
        let config = Config {
            users: vec![
                User::parse("alice:a-pw").unwrap(),
                User::parse("bob:b:pw:readonly").unwrap(),
            ],
            ..Config::default()
        };
        let mut s = session(config.clone());
        // With users and no requirepass the default user is off (disabled: WRONGPASS).
        let lines = [
            "ping",
            "auth x",
            "auth default x",
            "auth alice b:pw",
            "auth Alice a-pw",
            "auth alice a-pw",
            "ping",
        ];
        s.feed(&lines.map(req).concat()).unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(
            out(&mut s),
            "-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n+PONG\r\n"
        );
        let mut s = session(config);
        s.feed(&req("hello 2 auth bob b:pw")).unwrap();
        assert!(s.next_action(0).is_none());
        let _ = out(&mut s);
        s.feed(
            &["set k v", "del k", "nokv.region list", "ping"]
                .map(req)
                .concat(),
        )
        .unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(
            out(&mut s),
            "-NOPERM User bob has no permissions to run the 'set' command\r\n-NOPERM User bob has no permissions to run the 'del' command\r\n-NOPERM User bob has no permissions to run the 'nokv.region' command\r\n+PONG\r\n"
        );
        assert_eq!(s.user, Some(1));
    }

    #[test]
    fn user_specs_parse() {
        assert_eq!(
            User::parse("a:b:c").unwrap(),
            User {
                name: b"a".to_vec(),
                password: b"b:c".to_vec(),
                read_only: false
            }
        );
        for bad in [
            "a",
            ":x",
            "default:x",
            "DEFAULT:x",
            "a:",
            "a::readonly",
            "a b:x",
        ] {
            assert!(User::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protected_mode_refuses_only_other_hosts_without_a_password() {
        let on = Config::default();
        for ip in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(!on.refuses_peer(Some(ip.parse().unwrap())), "{ip}");
        }
        for ip in [
            "192.0.2.2",
            "10.0.0.1",
            "::ffff:192.0.2.2",
            "fd00::2",
            "0.0.0.0",
        ] {
            assert!(on.refuses_peer(Some(ip.parse().unwrap())), "{ip}");
        }
        assert!(on.refuses_peer(None));
        let with_password = Config {
            requirepass: Some(b"p".to_vec()),
            ..Config::default()
        };
        let off = Config {
            protected_mode: false,
            ..Config::default()
        };
        let with_users = Config {
            users: vec![User::parse("a:b").unwrap()],
            ..Config::default()
        };
        for c in [with_password, off, with_users] {
            assert!(!c.refuses_peer(Some("192.0.2.2".parse().unwrap())));
        }
    }

    fn session(config: Config) -> Session {
        Session::new(
            Shared::new(config, 0),
            "127.0.0.1:1".into(),
            "127.0.0.1:2".into(),
            0,
        )
    }

    fn req(line: &str) -> Vec<u8> {
        resp::encode_request(&resp::split_args(line.as_bytes()).unwrap_or_default())
    }

    fn out(s: &mut Session) -> String {
        String::from_utf8_lossy(&s.take_output()).into_owned()
    }

    /// Evaluates an action against an in-memory view.
    fn eval(view: &mut MemView, a: &Action, version: u64) -> (Ticket, Reply) {
        match a {
            Action::Read { ticket, op } => (*ticket, exec::read(op, view, 0)),
            Action::Write { ticket, cmd } => (*ticket, exec::apply(cmd, view, version)),
            Action::Admin { ticket, .. } => (*ticket, Reply::error("ERR no server here")),
        }
    }

    #[test]
    fn nokv_commands_go_to_the_server_after_auth() {
        let mut s = session(Config {
            requirepass: Some(b"pw".to_vec()),
            ..Config::default()
        });
        s.feed(&req("nokv.region list")).unwrap();
        assert!(s.next_action(0).is_none());
        assert!(out(&mut s).starts_with("-NOAUTH"));
        s.feed(&[req("auth pw"), req("nokv.region list")].concat())
            .unwrap();
        match s.next_action(0) {
            Some(Action::Admin { ticket, args }) => {
                assert_eq!(args, vec![b"nokv.region".to_vec(), b"list".to_vec()]);
                s.complete(ticket, Reply::Array(Vec::new()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(out(&mut s), "+OK\r\n*0\r\n");
    }

    #[test]
    fn a_queued_multi_block_and_watched_keys_count_as_held_input() {
        let mut s = session(Config::default());
        let base = s.held_input_bytes();
        s.feed(&req("MULTI")).unwrap_or_else(|e| panic!("{e}"));
        s.feed(&req(&format!("SET k {}", "v".repeat(10_000))))
            .unwrap_or_else(|e| panic!("{e}"));
        while s.next_action(0).is_some() {}
        let queued = s.held_input_bytes();
        assert!(queued >= base + 10_000, "{queued}");
        s.feed(&req("DISCARD")).unwrap_or_else(|e| panic!("{e}"));
        while s.next_action(0).is_some() {}
        // The query buffer may keep its capacity; the queued block is gone.
        assert!(
            s.held_input_bytes() + 10_000 <= queued,
            "{}",
            s.held_input_bytes()
        );
    }

    #[test]
    fn replies_keep_request_order_when_completed_out_of_order() {
        let mut s = session(Config::default());
        let mut v = MemView::default();
        s.feed(&[req("set a 1"), req("ping"), req("get a"), req("echo x")].concat())
            .unwrap();
        let first = s.next_action(0).unwrap();
        let second = s.next_action(0).unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(s.outstanding(), 2);
        // Completing the read before the write: nothing can be sent yet.
        let (t1, r1) = eval(&mut v, &first, 1);
        let (t2, _) = eval(&mut v, &second, 2);
        let (_, r2) = eval(&mut v, &second, 2);
        s.complete(t2, r2);
        assert_eq!(out(&mut s), "");
        s.complete(t1, r1);
        assert_eq!(out(&mut s), "+OK\r\n+PONG\r\n$1\r\n1\r\n$1\r\nx\r\n");
    }

    #[test]
    fn pending_replies_keep_the_protocol_of_their_request() {
        let mut s = session(Config::default());
        let mut v = MemView::default();
        s.feed(&[req("get nokey"), req("hello 3"), req("get nokey")].concat())
            .unwrap();
        let a = s.next_action(0).unwrap();
        let b = s.next_action(0).unwrap();
        let (ta, ra) = eval(&mut v, &a, 1);
        let (tb, rb) = eval(&mut v, &b, 2);
        s.complete(tb, rb);
        s.complete(ta, ra);
        let text = out(&mut s);
        assert!(text.starts_with("$-1\r\n%7\r\n"), "{text}");
        assert!(text.ends_with("*0\r\n_\r\n"), "{text}");
    }

    #[test]
    fn protocol_errors_reply_then_close() {
        let mut s = session(Config::default());
        s.feed(b"*1\r\n$4\r\nPING\r\n*1\r\n!x\r\n").unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(
            out(&mut s),
            "+PONG\r\n-ERR Protocol error: expected '$', got '!'\r\n"
        );
        assert_eq!(s.state(), State::CloseAfterFlush);
        s.feed(&req("ping")).unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(out(&mut s), "");
    }

    #[test]
    fn quit_closes_after_its_reply() {
        let mut s = session(Config::default());
        s.feed(&[req("quit"), req("ping")].concat()).unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(out(&mut s), "+OK\r\n");
        assert_eq!(s.state(), State::CloseAfterFlush);
    }

    #[test]
    fn query_buffer_limit_closes() {
        let mut s = session(Config {
            max_query_buffer_bytes: 10,
            ..Config::default()
        });
        s.feed(b"*1\r\n$100\r\n").unwrap();
        assert!(matches!(
            s.feed(b"xxxxxxxxxxxxxxxxxxxxx"),
            Err(Error::QueryBufferFull { .. })
        ));
        assert_eq!(s.state(), State::CloseNow);
    }

    #[test]
    fn output_limit_closes() {
        let mut s = session(Config {
            max_output_bytes: 16,
            ..Config::default()
        });
        s.feed(&[req("echo 0123456789"), req("echo 0123456789")].concat())
            .unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(s.state(), State::CloseNow);
        assert!(matches!(
            s.limit_error(),
            Some(Error::OutputBufferFull { .. })
        ));
    }

    #[test]
    fn evictions_show_in_info_stats() {
        let mut s = session(Config {
            max_output_bytes: 16,
            ..Config::default()
        });
        s.feed(&req("echo 0123456789abcdefgh")).unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(s.state(), State::CloseNow);
        let mut other = Session::new(s.shared.clone(), "a".into(), "b".into(), 0);
        other.evict(Eviction::MemoryShare);
        other.evict(Eviction::MemoryShare);
        assert_eq!(other.state(), State::CloseNow);
        let text = s.info_section("stats", 0);
        assert!(
            text.contains("client_output_buffer_limit_disconnections:1\r\n"),
            "{text}"
        );
        assert!(text.contains("evicted_clients:1\r\n"), "{text}");
        assert!(
            text.contains("client_query_buffer_limit_disconnections:0\r\n"),
            "{text}"
        );
    }

    #[test]
    fn held_bytes_count_buffers_and_big_input_is_released() {
        let mut s = session(Config::default());
        assert_eq!(s.held_bytes(), 0);
        let big = vec![b'v'; 3 << 20];
        let set = resp::encode_request(&[&b"SET"[..], b"k", &big]);
        s.feed(&set[..set.len() / 2]).unwrap();
        assert!(s.next_action(0).is_none());
        assert!(s.held_input_bytes() >= set.len() / 2);
        assert_eq!(s.held_output_bytes(), 0);
        s.feed(&set[set.len() / 2..]).unwrap();
        assert!(matches!(s.next_action(0), Some(Action::Write { .. })));
        // The request is parsed: its buffer goes, only its reply slot is left.
        assert!(s.held_bytes() < 1 << 20, "{}", s.held_bytes());
    }

    #[test]
    fn info_hook_adds_lines() {
        let mut s = session(Config {
            maxmemory: 1234,
            ..Config::default()
        });
        s.shared.set_info_hook(Box::new(|section| {
            if section == "memory" {
                vec!["nokv_extra:1".to_string()]
            } else {
                Vec::new()
            }
        }));
        let text = s.info_section("memory", 0);
        assert!(text.contains("maxmemory:1234\r\n"), "{text}");
        assert!(text.contains("nokv_extra:1\r\n"), "{text}");
        s.feed(&req("config get maxmemory")).unwrap();
        assert!(s.next_action(0).is_none());
        assert!(out(&mut s).contains("1234"));
    }

    #[test]
    fn pipeline_budget_per_read() {
        let mut s = session(Config {
            max_pipeline_depth: 2,
            ..Config::default()
        });
        s.feed(&[req("ping"), req("ping"), req("ping")].concat())
            .unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(out(&mut s), "+PONG\r\n+PONG\r\n");
        assert!(s.budget_exhausted());
        s.resume();
        assert!(s.next_action(0).is_none());
        assert_eq!(out(&mut s), "+PONG\r\n");
        assert!(!s.budget_exhausted());
    }

    #[test]
    fn pipeline_depth_bounds_outstanding_work() {
        let mut s = session(Config {
            max_pipeline_depth: 2,
            ..Config::default()
        });
        s.feed(&[req("get a"), req("get b"), req("get c")].concat())
            .unwrap();
        assert!(s.next_action(0).is_some());
        assert!(s.next_action(0).is_some());
        assert!(
            s.next_action(0).is_none(),
            "two reads in flight is the limit"
        );
    }

    #[test]
    fn requirepass_gates_commands() {
        let mut s = session(Config {
            requirepass: Some(b"pw".to_vec()),
            ..Config::default()
        });
        s.feed(&[req("get k"), req("auth nope"), req("auth pw"), req("ping")].concat())
            .unwrap();
        assert!(s.next_action(0).is_none());
        assert_eq!(
            out(&mut s),
            "-NOAUTH Authentication required.\r\n-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n+PONG\r\n"
        );
    }

    #[test]
    fn unknown_command_text_matches_redis() {
        let long = "x".repeat(200);
        let args = vec![b"foo".to_vec(), long.as_bytes().to_vec(), b"y".to_vec()];
        let text = unknown_command(&args);
        assert_eq!(
            text,
            format!(
                "ERR unknown command 'foo', with args beginning with: '{}' ",
                &long[..128]
            )
        );
        let args = vec![b"f\r\no".to_vec()];
        assert_eq!(
            unknown_command(&args),
            "ERR unknown command 'f  o', with args beginning with: "
        );
    }

    #[test]
    fn scan_cursors_resume_where_they_stopped() {
        let mut s = session(Config::default());
        let mut v = MemView::default();
        let keys: Vec<String> = (0..25).map(|i| format!("key{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            let cmd = exec::WriteCommand {
                now_ms: 0,
                op: exec::WriteOp::Set {
                    key: k.as_bytes().to_vec(),
                    value: b"v".to_vec(),
                    condition: exec::SetCondition::Always,
                    expiry: exec::ExpiryUpdate::Clear,
                    reply: exec::SetReply::Ok,
                },
            };
            exec::apply(&cmd, &mut v, i as u64 + 1);
        }
        let mut cursor = "0".to_string();
        let mut seen = Vec::new();
        for _ in 0..10 {
            s.feed(&req(&format!("scan {cursor} count 7"))).unwrap();
            let a = s.next_action(0).unwrap();
            let (t, r) = eval(&mut v, &a, 0);
            s.complete(t, r);
            let Reply::Array(parts) = parse_scan(&s.take_output()) else {
                panic!()
            };
            let Reply::Bulk(c) = &parts[0] else { panic!() };
            cursor = String::from_utf8_lossy(c).into_owned();
            if let Reply::Array(items) = &parts[1] {
                for i in items {
                    if let Reply::Bulk(k) = i {
                        seen.push(String::from_utf8_lossy(k).into_owned());
                    }
                }
            }
            if cursor == "0" {
                break;
            }
        }
        assert_eq!(cursor, "0");
        seen.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(seen, want, "every key exactly once");
    }

    /// Decodes a `[cursor, [items]]` RESP2 reply.
    fn parse_scan(bytes: &[u8]) -> Reply {
        use redis_protocol::resp2::types::OwnedFrame;
        fn conv(f: OwnedFrame) -> Reply {
            match f {
                OwnedFrame::BulkString(b) => Reply::Bulk(b),
                OwnedFrame::Array(items) => Reply::Array(items.into_iter().map(conv).collect()),
                _ => Reply::Null,
            }
        }
        match redis_protocol::resp2::decode::decode(bytes) {
            Ok(Some((f, _))) => conv(f),
            _ => Reply::Null,
        }
    }
}
