//! The store's memory quota (`--memory-limit`): how it is split between the
//! engines' memtables and block caches and the client buffers, and the
//! accounting that keeps client buffers inside their share.
//!
//! Split (see docs/architecture.md, "Memory quota"): a quarter of the limit is
//! the client share (query and output buffers of every connection); the rest is
//! divided evenly between the cores, and each core's part goes half to its
//! memtables (`write_buffer_bytes x (1 + max_immutable_memtables)`, the write
//! buffer clamped to 1..=64 MiB) and the remainder to its block cache.
//!
//! Client buffers: every connection charges what it holds (unparsed input,
//! replies computed but not yet sent) to a store-wide counter. A connection whose
//! charge would pass its own limit (`--client-output-buffer-limit`) or push the
//! store past the client share is evicted: closed, and counted.

use crate::error::{Error, Result};
use nokv_gateway::{Eviction, Reply, Session};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Default memory limit of a store.
pub const DEFAULT_MEMORY_LIMIT: u64 = 1 << 30;
/// The default limit grows to at least this much per core.
pub const DEFAULT_MEMORY_PER_CORE: u64 = 128 << 20;
/// Smallest limit accepted, per core.
pub const MIN_MEMORY_PER_CORE: u64 = 16 << 20;
/// Frozen memtables per core waiting for flush before writes stop.
pub const MAX_IMMUTABLE_MEMTABLES: usize = 2;
/// Largest write buffer (memtable size) the split gives a core.
pub const MAX_WRITE_BUFFER: u64 = 64 << 20;
/// Smallest write buffer the split gives a core.
pub const MIN_WRITE_BUFFER: u64 = 1 << 20;

/// How a store's memory limit is divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The whole limit, bytes.
    pub limit: u64,
    /// Cores sharing it.
    pub cores: usize,
    /// Memtable size of each core's engine.
    pub write_buffer_bytes: u64,
    /// Frozen memtables each core's engine keeps at most.
    pub max_immutable_memtables: usize,
    /// Block cache of each core's engine.
    pub block_cache_bytes: u64,
    /// Client buffers of all connections together.
    pub client_bytes: u64,
}

impl MemoryBudget {
    /// The limit used when none is configured: 1 GiB, or 128 MiB per core if more.
    pub fn default_limit(cores: usize) -> u64 {
        DEFAULT_MEMORY_LIMIT.max(DEFAULT_MEMORY_PER_CORE.saturating_mul(cores as u64))
    }

    /// Splits `limit` for `cores` cores.
    pub fn split(limit: u64, cores: usize) -> Result<MemoryBudget> {
        let cores = cores.max(1);
        let min = MIN_MEMORY_PER_CORE.saturating_mul(cores as u64);
        if limit < min {
            return Err(Error::Config(format!(
                "--memory-limit {limit} is too small for {cores} cores (at least {} MiB)",
                min >> 20
            )));
        }
        let client_bytes = limit / 4;
        let engine_per_core = (limit - client_bytes) / cores as u64;
        let slots = 1 + MAX_IMMUTABLE_MEMTABLES as u64;
        let write_buffer_bytes =
            ((engine_per_core / 2) / slots).clamp(MIN_WRITE_BUFFER, MAX_WRITE_BUFFER) & !0xFFFF;
        let block_cache_bytes = engine_per_core - write_buffer_bytes * slots;
        Ok(MemoryBudget {
            limit,
            cores,
            write_buffer_bytes,
            max_immutable_memtables: MAX_IMMUTABLE_MEMTABLES,
            block_cache_bytes,
            client_bytes,
        })
    }

    /// Most bytes of memtables one core's engine holds (active + frozen).
    pub fn memtable_bytes_per_core(&self) -> u64 {
        self.write_buffer_bytes * (1 + self.max_immutable_memtables as u64)
    }

    /// Applies the engine part of the split to a core's engine options.
    pub fn apply(&self, opts: &mut nokv::Options) {
        opts.write_buffer_bytes = self.write_buffer_bytes as usize;
        opts.max_immutable_memtables = self.max_immutable_memtables;
        opts.block_cache_bytes = self.block_cache_bytes as usize;
    }

    /// `key:value` lines for INFO memory (limit, split, client use).
    pub fn info_lines(&self, clients: &ClientMemory) -> Vec<String> {
        vec![
            format!("nokv_memory_limit:{}", self.limit),
            format!(
                "nokv_memtables_budget:{}",
                self.memtable_bytes_per_core() * self.cores as u64
            ),
            format!("nokv_write_buffer_per_core:{}", self.write_buffer_bytes),
            format!(
                "nokv_block_cache_budget:{}",
                self.block_cache_bytes * self.cores as u64
            ),
            format!("nokv_clients_budget:{}", self.client_bytes),
            format!("nokv_client_output_buffer_limit:{}", clients.per_client()),
            format!("nokv_client_buffers_used:{}", clients.used()),
            format!("nokv_client_buffers_peak:{}", clients.peak()),
        ]
    }
}

/// Bytes every connection is charged from the start: its socket read buffer
/// ([`crate::node::READ_CHUNK`]) plus 4 KiB of slack for small requests and
/// replies, so that ordinary commands never touch the store-wide counter.
pub const CONNECTION_BASE_BYTES: usize = crate::node::READ_CHUNK + (4 << 10);
/// The part of [`CONNECTION_BASE_BYTES`] that buffers may use before they are charged.
const SLACK: usize = CONNECTION_BASE_BYTES - crate::node::READ_CHUNK;

/// The store-wide account of client buffers.
#[derive(Debug)]
pub struct ClientMemory {
    used: AtomicUsize,
    peak: AtomicU64,
    share: usize,
    per_client: usize,
}

impl ClientMemory {
    /// An account with room for `share` bytes over all clients and `per_client`
    /// bytes of pending output per connection (0: only the share applies).
    pub fn new(share: u64, per_client: u64) -> Arc<ClientMemory> {
        let share = usize::try_from(share).unwrap_or(usize::MAX);
        let per_client = match per_client {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        Arc::new(ClientMemory {
            used: AtomicUsize::new(0),
            peak: AtomicU64::new(0),
            share,
            per_client,
        })
    }

    /// Bytes charged for all connections now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes charged at once since start.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The per-client output limit in bytes (0: none).
    pub fn per_client(&self) -> usize {
        if self.per_client == usize::MAX {
            0
        } else {
            self.per_client
        }
    }

    /// A new connection's account, charged [`CONNECTION_BASE_BYTES`]; already
    /// marked evicted if even that does not fit the share.
    pub fn connection(self: &Arc<Self>) -> Rc<ConnMemory> {
        let c = Rc::new(ConnMemory {
            store: self.clone(),
            input: Cell::new(0),
            output: Cell::new(0),
            charged: Cell::new(0),
            evicted: Cell::new(None),
        });
        if !c.reserve() {
            c.evicted.set(Some(Eviction::MemoryShare));
        }
        c
    }
}

/// One connection's share of the client account; gives its bytes back when dropped.
#[derive(Debug)]
pub struct ConnMemory {
    store: Arc<ClientMemory>,
    /// Bytes held for input (query buffer).
    input: Cell<usize>,
    /// Bytes held for output (replies not yet sent).
    output: Cell<usize>,
    /// What this connection has in the store-wide counter.
    charged: Cell<usize>,
    evicted: Cell<Option<Eviction>>,
}

impl ConnMemory {
    /// Bytes this connection's buffers hold (input and output, as last measured or charged).
    pub fn held(&self) -> usize {
        self.input.get() + self.output.get()
    }

    /// Why this connection must be closed, once a charge failed.
    pub fn evicted(&self) -> Option<Eviction> {
        self.evicted.get()
    }

    /// Brings the store-wide charge in line with what the buffers hold (the base
    /// covers small buffers); false, changing nothing, if growing passes the share.
    fn reserve(&self) -> bool {
        let want = crate::node::READ_CHUNK + self.held().max(SLACK);
        let have = self.charged.get();
        if want > have {
            let add = want - have;
            let total = self
                .store
                .used
                .fetch_add(add, Ordering::Relaxed)
                .saturating_add(add);
            if total > self.store.share {
                self.store.used.fetch_sub(add, Ordering::Relaxed);
                return false;
            }
            self.store.peak.fetch_max(total as u64, Ordering::Relaxed);
        } else if want < have {
            self.store.used.fetch_sub(have - want, Ordering::Relaxed);
        }
        self.charged.set(want);
        true
    }

    /// Sets the buffers to `input` and `output` bytes. Fails, marking the
    /// connection evicted, if output passes the per-client limit or growth
    /// passes the store's share.
    fn update(&self, input: usize, output: usize) -> bool {
        if self.evicted.get().is_some() {
            return false;
        }
        if output > self.store.per_client {
            self.evicted.set(Some(Eviction::OutputBuffer));
            return false;
        }
        let (old_in, old_out) = (self.input.get(), self.output.get());
        self.input.set(input);
        self.output.set(output);
        if !self.reserve() {
            self.input.set(old_in);
            self.output.set(old_out);
            self.evicted.set(Some(Eviction::MemoryShare));
            return false;
        }
        true
    }

    /// Charges `n` more bytes of output (a reply that arrived); fails like
    /// [`ConnMemory::sync`].
    pub fn charge(&self, n: usize) -> bool {
        self.update(self.input.get(), self.output.get().saturating_add(n))
    }

    /// Measures `session`'s buffers, plus `sending` bytes taken out of it and
    /// being written; fails (the connection must be evicted) when its output
    /// passes the per-client limit or the store's client share is exceeded.
    pub fn sync(&self, session: &Session, sending: usize) -> bool {
        self.update(
            session.held_input_bytes(),
            session.held_output_bytes().saturating_add(sending),
        )
    }
}

/// The reply a command gets instead of one that does not fit its connection's
/// budget (the connection is closed right after, so a client rarely sees it).
pub const OVER_BUDGET: &str = "ERR client output buffer limit reached";

/// Charges a reply to the connection before it waits in the session; a reply over
/// budget is dropped at once and replaced by an error, and the connection is marked
/// for eviction.
pub fn charge(mem: &ConnMemory, reply: Reply) -> Reply {
    if mem.charge(reply.approx_bytes()) {
        reply
    } else {
        Reply::error(OVER_BUDGET)
    }
}

/// Closes `session` if its connection was marked for eviction; true if it was.
pub fn evict_if_over(session: &mut Session, mem: &ConnMemory) -> bool {
    let Some(why) = mem.evicted() else {
        return false;
    };
    tracing::debug!(client = session.id(), reason = ?why, held = mem.held(), "evicting a client over its memory budget");
    session.evict(why);
    true
}

impl Drop for ConnMemory {
    fn drop(&mut self) {
        self.store
            .used
            .fetch_sub(self.charged.get(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gib_over_two_cores() {
        let b = MemoryBudget::split(1 << 30, 2).unwrap();
        assert_eq!(b.client_bytes, 256 << 20);
        // 384 MiB per core: 192 MiB of memtables (3 x 64 MiB), the rest block cache.
        assert_eq!(b.write_buffer_bytes, 64 << 20);
        assert_eq!(b.memtable_bytes_per_core(), 192 << 20);
        assert_eq!(b.block_cache_bytes, 192 << 20);
        let engine = (b.memtable_bytes_per_core() + b.block_cache_bytes) * 2;
        assert!(engine + b.client_bytes <= b.limit);
    }

    #[test]
    fn every_split_stays_inside_the_limit() {
        for cores in [1usize, 2, 3, 8, 64] {
            for limit in [16u64 << 20, 100 << 20, 1 << 30, 7 << 30, 64 << 30] {
                let Ok(b) =
                    MemoryBudget::split(limit.max(MIN_MEMORY_PER_CORE * cores as u64), cores)
                else {
                    panic!("split {limit} {cores}");
                };
                let engine = (b.memtable_bytes_per_core() + b.block_cache_bytes) * cores as u64;
                assert!(engine + b.client_bytes <= b.limit, "{b:?}");
                assert!(b.write_buffer_bytes >= MIN_WRITE_BUFFER);
                assert!(b.write_buffer_bytes <= MAX_WRITE_BUFFER);
            }
        }
        assert!(MemoryBudget::split(8 << 20, 1).is_err());
        assert!(MemoryBudget::split(100 << 20, 8).is_err());
        assert_eq!(MemoryBudget::default_limit(2), 1 << 30);
        assert_eq!(MemoryBudget::default_limit(16), 2 << 30);
    }

    #[test]
    fn options_follow_the_split() {
        let b = MemoryBudget::split(256 << 20, 2).unwrap();
        let mut o = nokv::Options::default();
        b.apply(&mut o);
        assert_eq!(o.write_buffer_bytes as u64, b.write_buffer_bytes);
        assert_eq!(o.block_cache_bytes as u64, b.block_cache_bytes);
        assert_eq!(o.max_immutable_memtables, MAX_IMMUTABLE_MEMTABLES);
        let store = ClientMemory::new(b.client_bytes, 0);
        let lines = b.info_lines(&store).join("\n");
        assert!(lines.contains("nokv_memory_limit:268435456"), "{lines}");
    }

    const BASE: usize = CONNECTION_BASE_BYTES;

    #[test]
    fn small_buffers_stay_inside_the_base_charge() {
        let store = ClientMemory::new(1 << 20, 0);
        let a = store.connection();
        assert_eq!(store.used(), BASE);
        assert!(a.charge(100));
        assert!(a.update(1000, 2000));
        assert_eq!(store.used(), BASE);
        assert!(a.update(0, SLACK + 1));
        assert_eq!(store.used(), BASE + 1);
        assert!(a.update(10, 0));
        assert_eq!(store.used(), BASE);
        drop(a);
        assert_eq!(store.used(), 0);
        assert_eq!(store.peak(), (BASE + 1) as u64);
    }

    #[test]
    fn a_client_over_its_own_output_limit_is_evicted() {
        let store = ClientMemory::new(1 << 30, 100 << 10);
        let a = store.connection();
        let b = store.connection();
        // Input does not count against the output limit (the query buffer limit bounds it).
        assert!(a.update(1 << 20, 0));
        assert!(a.charge(60 << 10));
        assert!(b.charge(90 << 10));
        assert!(!a.charge(41 << 10));
        assert_eq!(a.evicted(), Some(Eviction::OutputBuffer));
        assert_eq!(a.held(), (1 << 20) + (60 << 10));
        // Once evicted, nothing more is charged.
        assert!(!a.charge(1));
        assert!(b.update(0, 10));
        drop(a);
        assert_eq!(store.used(), BASE);
        assert_eq!(b.evicted(), None);
        assert_eq!(store.per_client(), 100 << 10);
    }

    #[test]
    fn the_connection_that_passes_the_share_is_evicted() {
        let store = ClientMemory::new((3 * BASE + BASE / 2) as u64, 0);
        let conns: Vec<_> = (0..3).map(|_| store.connection()).collect();
        assert_eq!(store.used(), 3 * BASE);
        assert!(conns[0].update(SLACK / 2, 0));
        assert!(!conns[1].update(BASE, 0));
        assert_eq!(conns[1].evicted(), Some(Eviction::MemoryShare));
        assert_eq!(conns[0].evicted(), None);
        assert_eq!(store.used(), 3 * BASE);
        // A fourth connection does not even get its base.
        let d = store.connection();
        assert_eq!(d.evicted(), Some(Eviction::MemoryShare));
        assert_eq!(store.per_client(), 0);
        drop(conns);
        drop(d);
        assert_eq!(store.used(), 0);
    }
}
