//! Replicated mode: coordinator replicas run every [`Command`] through a raft-rs log and
//! apply it once committed, so each replica holds the same state; only the leader serves.
//!
//! - Membership is static: replicas `1..=n` are the `--peers` addresses in order; the raft
//!   traffic travels on the same port as requests, in `RAFT_BATCH` frames (one-way).
//! - The raft log and hard state live in the replica's own engine (`raft/...` keys); the
//!   applied index is written in the same batch as each applied command, so a restart
//!   re-applies exactly the commands after it. The log is not compacted yet.
//! - The leader serves once it has applied every entry up to the start of its term; it then
//!   restarts the TSO above the replicated bound and ids at the replicated fence, so a new
//!   leader never hands out a timestamp or id at or below one of an old leader.
//! - `check_quorum` makes a leader cut off from a majority step down after an election
//!   timeout, and followers refuse to elect another leader while they hear from the current
//!   one: the window in which a deposed leader may still answer is one election timeout.

use crate::error::{Error, Result};
use crate::proto::Command;
use crate::service::Core;
use nokv::{ReadOptions, WriteBatch, WriteOptions};
use nokv_raft::wire::{self};
use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, EntryType, HardState, Message};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole, Storage};
use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KEY_HARD_STATE: &[u8] = b"raft/hs";
const KEY_APPLIED: &[u8] = b"raft/applied";
const PREFIX_ENTRY: &[u8] = b"raft/e/";
/// Messages waiting for the driver; more are dropped (raft retransmits) or refused (busy).
pub const INBOX_CAPACITY: usize = 4096;
/// Frames waiting for one peer's sender thread; more are dropped (raft retransmits).
pub const OUTBOX_CAPACITY: usize = 1024;
/// Longest a proposal waits to be committed and applied.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a replica is set up.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's id, `1..=peers.len()`.
    pub id: u64,
    /// Every replica's address (requests and raft traffic), replica `i + 1` at index `i`.
    pub peers: Vec<String>,
    /// Raft tick.
    pub tick: Duration,
    /// Ticks without a leader's heartbeat before an election.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
}

impl ReplicaConfig {
    /// Replica `id` of `peers` with a 100 ms tick, elections after 10 ticks.
    pub fn new(id: u64, peers: Vec<String>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            peers,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

/// Whether this replica may serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderStatus {
    /// Leader with its term's state applied: serve.
    Ready {
        /// The raft term.
        term: u64,
    },
    /// Not (yet) a serving leader; `leader_addr` is the known leader's address, or empty.
    NotLeader {
        /// The leader's address if known.
        leader_addr: String,
    },
}

/// Raft messages in one frame.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    /// Encoded raft-rs messages.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub msgs: Vec<Vec<u8>>,
}

enum Input {
    Raft(Message),
    Propose {
        data: Vec<u8>,
        term: u64,
        done: SyncSender<Result<()>>,
    },
}

/// A running replica: its raft driver and senders.
pub struct Replica {
    cfg: ReplicaConfig,
    inbox: SyncSender<Input>,
    status: Arc<Mutex<LeaderStatus>>,
    stop: Arc<AtomicBool>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

impl Replica {
    /// Restores the raft state from `core`'s engine and starts the driver.
    pub(crate) fn start(
        cfg: ReplicaConfig,
        core: Arc<Mutex<Core>>,
        cluster_id: u64,
    ) -> Result<Arc<Replica>> {
        let n = cfg.peers.len() as u64;
        if cfg.id == 0 || cfg.id > n {
            return Err(Error::InvalidArgument(format!(
                "replica id {} not in 1..={n}",
                cfg.id
            )));
        }
        let voters: Vec<u64> = (1..=n).collect();
        let storage = MemStorage::new_with_conf_state(ConfState::from((voters, vec![])));
        let applied = {
            let c = core.lock();
            let get = |k: &[u8]| c.db.get(k).map_err(|e| Error::engine("read raft state", e));
            if let Some(v) = get(KEY_HARD_STATE)? {
                let hs = HardState::parse_from_bytes(&v)
                    .map_err(|e| Error::corrupt("raft hard state", e))?;
                storage.wl().set_hardstate(hs);
            }
            let entries = load_entries(&c.db)?;
            if !entries.is_empty() {
                storage
                    .wl()
                    .append(&entries)
                    .map_err(|e| Error::corrupt("raft log", e))?;
            }
            match get(KEY_APPLIED)? {
                Some(v) => u64_of(&v)?,
                None => 0,
            }
        };
        let config = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = nokv_raft::logger::logger();
        let node = RawNode::new(&config, storage, &logger)
            .map_err(|e| Error::InvalidArgument(format!("raft config: {e}")))?;
        let (tx, rx) = mpsc::sync_channel(INBOX_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(LeaderStatus::NotLeader {
            leader_addr: String::new(),
        }));
        let mut outboxes = HashMap::new();
        for (i, addr) in cfg.peers.iter().enumerate() {
            let id = i as u64 + 1;
            if id != cfg.id {
                outboxes.insert(id, spawn_sender(addr.clone(), cluster_id, stop.clone())?);
            }
        }
        let mut driver = Driver {
            node,
            core,
            rx,
            outboxes,
            proposals: HashMap::new(),
            next_proposal: 1,
            status: status.clone(),
            stop: stop.clone(),
            peers: cfg.peers.clone(),
            term_start: None,
        };
        let tick = cfg.tick;
        let handle = std::thread::Builder::new()
            .name("nokv-coord-raft".into())
            .spawn(move || driver.run(tick))
            .map_err(|e| Error::io("spawn the raft driver", e))?;
        Ok(Arc::new(Replica {
            cfg,
            inbox: tx,
            status,
            stop,
            driver: Mutex::new(Some(handle)),
        }))
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    /// Whether this replica may serve, and the leader's address if not.
    pub fn status(&self) -> LeaderStatus {
        self.status.lock().clone()
    }

    /// Appends `cmd` to the log if this replica still leads in `term`, and waits until it
    /// is committed and applied here.
    pub(crate) fn propose(&self, cmd: &Command, term: u64) -> Result<()> {
        let (done, wait) = mpsc::sync_channel(1);
        match self.inbox.try_send(Input::Propose {
            data: cmd.encode_to_vec(),
            term,
            done,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Error::Busy("raft inbox full".into())),
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Busy("raft driver stopped".into()))
            }
        }
        match wait.recv_timeout(PROPOSE_TIMEOUT) {
            Ok(r) => r,
            Err(_) => Err(Error::Busy(
                "proposal not committed in time (leader change or no quorum)".into(),
            )),
        }
    }

    /// Hands raft messages from a `RAFT_BATCH` frame to the driver; `Err` if undecodable.
    pub(crate) fn deliver(&self, payload: &[u8]) -> Result<()> {
        let batch = RaftBatch::decode(payload)
            .map_err(|e| Error::InvalidArgument(format!("raft batch: {e}")))?;
        for m in batch.msgs {
            let msg = Message::parse_from_bytes(&m)
                .map_err(|e| Error::InvalidArgument(format!("raft message: {e}")))?;
            if msg.to != self.cfg.id {
                return Err(Error::InvalidArgument(format!(
                    "raft message for replica {}, this is {}",
                    msg.to, self.cfg.id
                )));
            }
            // A full inbox drops the message: raft retransmits.
            let _ = self.inbox.try_send(Input::Raft(msg));
        }
        Ok(())
    }

    /// Stops the driver and the senders.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.driver.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

fn u64_of(v: &[u8]) -> Result<u64> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| Error::corrupt("raft applied index", format!("{} bytes", v.len())))?;
    Ok(u64::from_be_bytes(b))
}

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = PREFIX_ENTRY.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn load_entries(db: &nokv::Db) -> Result<Vec<Entry>> {
    let ro = ReadOptions {
        prefix: Some(PREFIX_ENTRY.to_vec()),
        ..Default::default()
    };
    let mut it = db.iter(ro).map_err(|e| Error::engine("read raft log", e))?;
    it.seek_to_first();
    let mut out: Vec<Entry> = Vec::new();
    // Bounded by the persisted log.
    while it.valid() {
        let e = Entry::parse_from_bytes(it.value()).map_err(|e| Error::corrupt("raft entry", e))?;
        if let Some(last) = out.last() {
            if e.index != last.index + 1 {
                return Err(Error::corrupt(
                    "raft log",
                    format!("entry {} follows {}", e.index, last.index),
                ));
            }
        }
        out.push(e);
        it.next();
    }
    it.status().map_err(|e| Error::engine("read raft log", e))?;
    Ok(out)
}

/// One peer's sender: a thread writing frames to the peer, reconnecting as needed.
fn spawn_sender(
    addr: String,
    cluster_id: u64,
    stop: Arc<AtomicBool>,
) -> Result<SyncSender<Vec<u8>>> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(OUTBOX_CAPACITY);
    std::thread::Builder::new()
        .name("nokv-coord-send".into())
        .spawn(move || send_loop(&addr, cluster_id, &rx, &stop))
        .map_err(|e| Error::io("spawn a raft sender", e))?;
    Ok(tx)
}

fn send_loop(addr: &str, cluster_id: u64, rx: &Receiver<Vec<u8>>, stop: &AtomicBool) {
    let mut conn: Option<TcpStream> = None;
    let mut next_connect = Instant::now();
    // Ends when the replica stops or the driver is gone.
    while !stop.load(Ordering::SeqCst) {
        let payload = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if conn.is_none() {
            if Instant::now() < next_connect {
                continue; // dropped: raft retransmits
            }
            conn = addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .and_then(|a| {
                    nokv_raft::transport::connect_std(&a, Duration::from_millis(200)).ok()
                });
            match &conn {
                Some(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                }
                None => {
                    next_connect = Instant::now() + Duration::from_millis(100);
                    continue;
                }
            }
        }
        let mut frame = Vec::with_capacity(payload.len() + wire::HEADER_LEN);
        wire::encode_raw(&mut frame, wire::kind::RAFT_BATCH, cluster_id, 0, &payload);
        if let Some(s) = conn.as_mut() {
            if s.write_all(&frame).is_err() {
                conn = None;
                next_connect = Instant::now() + Duration::from_millis(100);
            }
        }
    }
}

struct Driver {
    node: RawNode<MemStorage>,
    core: Arc<Mutex<Core>>,
    rx: Receiver<Input>,
    outboxes: HashMap<u64, SyncSender<Vec<u8>>>,
    proposals: HashMap<u64, SyncSender<Result<()>>>,
    next_proposal: u64,
    status: Arc<Mutex<LeaderStatus>>,
    stop: Arc<AtomicBool>,
    peers: Vec<String>,
    /// (term, index) of the first entry of this replica's leadership.
    term_start: Option<(u64, u64)>,
}

impl Driver {
    fn run(&mut self, tick: Duration) {
        let mut last_tick = Instant::now();
        // Ends when the replica stops; every turn waits at most one tick.
        while !self.stop.load(Ordering::SeqCst) {
            let wait = tick.saturating_sub(last_tick.elapsed());
            match self.rx.recv_timeout(wait) {
                Ok(input) => self.input(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Bounded by the inbox capacity.
            while let Ok(input) = self.rx.try_recv() {
                self.input(input);
            }
            if last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                self.node.tick();
            }
            if self.node.has_ready() {
                if let Err(e) = self.on_ready() {
                    tracing::error!(error = %e, "coordinator raft round failed; replica stops");
                    self.fail_all(&e);
                    *self.status.lock() = LeaderStatus::NotLeader {
                        leader_addr: String::new(),
                    };
                    return;
                }
            }
            self.update_status();
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Raft(m) => {
                if let Err(e) = self.node.step(m) {
                    tracing::debug!(error = %e, "raft message ignored");
                }
            }
            Input::Propose { data, term, done } => {
                if self.node.raft.state != StateRole::Leader || self.node.raft.term != term {
                    let _ = done.try_send(Err(Error::NotLeader {
                        leader_addr: self.leader_addr(),
                    }));
                    return;
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                match self.node.propose(id.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.proposals.insert(id, done);
                    }
                    Err(e) => {
                        let _ = done.try_send(Err(Error::Busy(format!("raft propose: {e}"))));
                    }
                }
            }
        }
    }

    fn leader_addr(&self) -> String {
        let l = self.node.raft.leader_id;
        if l == 0 {
            return String::new();
        }
        self.peers.get(l as usize - 1).cloned().unwrap_or_default()
    }

    fn update_status(&mut self) {
        let raft = &self.node.raft;
        let status = if raft.state == StateRole::Leader {
            let term = raft.term;
            let start = match self.term_start {
                Some((t, i)) if t == term => i,
                _ => {
                    // A fresh leadership: its empty entry is the last one in the log.
                    let i = raft.raft_log.last_index();
                    self.term_start = Some((term, i));
                    i
                }
            };
            if raft.raft_log.applied >= start {
                LeaderStatus::Ready { term }
            } else {
                LeaderStatus::NotLeader {
                    leader_addr: String::new(),
                }
            }
        } else {
            if !self.proposals.is_empty() {
                let e = Error::NotLeader {
                    leader_addr: self.leader_addr(),
                };
                self.fail_all(&e);
            }
            LeaderStatus::NotLeader {
                leader_addr: self.leader_addr(),
            }
        };
        let mut s = self.status.lock();
        if *s != status {
            tracing::info!(replica = self.node.raft.id, status = ?status, "coordinator replica status");
            *s = status;
        }
    }

    fn fail_all(&mut self, e: &Error) {
        for (_, done) in self.proposals.drain() {
            let err = match e {
                Error::NotLeader { leader_addr } => Error::NotLeader {
                    leader_addr: leader_addr.clone(),
                },
                other => Error::Busy(other.to_string()),
            };
            let _ = done.try_send(Err(err));
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let mut by_peer: HashMap<u64, RaftBatch> = HashMap::new();
        for m in msgs {
            match m.write_to_bytes() {
                Ok(b) => by_peer.entry(m.to).or_default().msgs.push(b),
                Err(e) => tracing::warn!(error = %e, "raft message not encodable"),
            }
        }
        for (to, batch) in by_peer {
            if let Some(tx) = self.outboxes.get(&to) {
                // A full outbox drops the batch: raft retransmits.
                let _ = tx.try_send(batch.encode_to_vec());
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        for e in entries {
            let mut core = self.core.lock();
            let mut batch = WriteBatch::new();
            let mut cmd = None;
            if e.entry_type == EntryType::EntryNormal && !e.data.is_empty() {
                let c = Command::decode(&e.data[..])
                    .map_err(|err| Error::corrupt(format!("raft entry {}", e.index), err))?;
                batch = core.state.batch_for(&c);
                cmd = Some(c);
            }
            batch.put(KEY_APPLIED, &e.index.to_be_bytes());
            core.db
                .write(&batch, &WriteOptions::default())
                .map_err(|err| Error::engine("apply a coordinator command", err))?;
            if let Some(c) = &cmd {
                core.state.apply(c);
            }
            drop(core);
            if e.context.len() == 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e.context[..]);
                if let Some(done) = self.proposals.remove(&u64::from_be_bytes(b)) {
                    let _ = done.try_send(Ok(()));
                }
            }
        }
        Ok(())
    }

    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        if let Some(first) = entries.first() {
            // Entries from `first.index` on replace whatever the log held there.
            let last = self.node.store().last_index().unwrap_or(0);
            for i in first.index..=last {
                batch.delete(&entry_key(i));
            }
        }
        for e in entries {
            let b = e
                .write_to_bytes()
                .map_err(|err| Error::corrupt("raft entry encode", err))?;
            batch.put(&entry_key(e.index), &b);
        }
        if let Some(hs) = hs {
            let b = hs
                .write_to_bytes()
                .map_err(|err| Error::corrupt("raft hard state encode", err))?;
            batch.put(KEY_HARD_STATE, &b);
        }
        self.core
            .lock()
            .db
            .write(&batch, &WriteOptions::default())
            .map_err(|err| Error::engine("persist the coordinator raft log", err))?;
        let store = self.node.store().clone();
        let mut w = store.wl();
        if !entries.is_empty() {
            w.append(entries)
                .map_err(|err| Error::corrupt("raft log append", err))?;
        }
        if let Some(hs) = hs {
            w.set_hardstate(hs.clone());
        }
        Ok(())
    }

    fn on_ready(&mut self) -> Result<()> {
        let mut rd = self.node.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            return Err(Error::corrupt(
                "raft",
                "snapshots are not supported by the coordinator log",
            ));
        }
        self.apply(rd.take_committed_entries())?;
        let entries = rd.entries().to_vec();
        let hs = rd.hs().cloned();
        self.persist(&entries, hs.as_ref())?;
        self.send(rd.take_persisted_messages());
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.node.store().rl().hard_state().clone();
            hs.commit = commit;
            self.persist(&[], Some(&hs))?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        Ok(())
    }
}
