//! Scenario: a region replicated on three (then four) stores, each with its own engine,
//! with raft messages carried by an in-memory network the test controls: election,
//! replication of every write to every replica, losing the leader, a restarted replica
//! catching up from the log or, once the leader no longer holds the entries it missed,
//! from a snapshot (files copied beside the message, as the transport does), and
//! membership changes (learner added, promoted, a voter removed) that every replica
//! applies and persists.

use nokv::{Db, KeySpace, Options, ReadOptions, WriteBatch};
use nokv_raft::raftpb::{Message, MessageType};
use nokv_raft::{
    Apply, CoreConfig, Epoch, Error, LogReplay, Outbox, PeerChange, PeerMeta, PeerRole, RaftCore,
    ReadPath, RegionDescriptor, SnapshotKey,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const REGION: u64 = 1;
/// One raft tick of simulated time (election timeout: 10 to 20 ticks).
const TICK: Duration = Duration::from_millis(100);

/// Messages in flight: (region, message); the destination store is `peer_store[msg.to]`.
type Wire = Rc<RefCell<Vec<(u64, Message)>>>;

/// Writes each entry's data as a key whose value is the entry's index.
struct Recorder {
    db: Db,
    wire: Wire,
    applied: Vec<(u64, Option<u32>)>,
    abandoned: Vec<(u32, String)>,
    splits: Vec<(u32, Result<RegionDescriptor, String>)>,
    merges: Vec<(u32, Result<RegionDescriptor, String>)>,
    merged: Vec<(RegionDescriptor, u64)>,
    born: Vec<(RegionDescriptor, RegionDescriptor)>,
    conf_changes: Vec<(u32, Result<RegionDescriptor, String>)>,
    reads: Vec<(u32, Result<(), String>)>,
}

impl Apply<u32> for Recorder {
    fn apply(&mut self, region: &RegionDescriptor, index: u64, data: &[u8], token: Option<u32>) {
        let mut b = WriteBatch::new();
        match data.strip_prefix(b"-") {
            Some(key) => b.delete_in(KeySpace::KV, key),
            None => b.put_in(KeySpace::KV, data, &index.to_be_bytes()),
        };
        self.db
            .apply_unlogged(&b, Some((region.id, index)))
            .expect("apply");
        self.applied.push((index, token));
    }
}

impl Outbox<u32> for Recorder {
    fn abandon(&mut self, token: u32, error: Error) {
        self.abandoned.push((token, error.to_string()));
    }
    fn split_done(&mut self, token: u32, result: nokv_raft::Result<RegionDescriptor>) {
        self.splits.push((token, result.map_err(|e| e.to_string())));
    }
    fn region_split(&mut self, parent: &RegionDescriptor, child: &RegionDescriptor) {
        self.born.push((parent.clone(), child.clone()));
    }
    fn merge_done(&mut self, token: u32, result: nokv_raft::Result<RegionDescriptor>) {
        self.merges.push((token, result.map_err(|e| e.to_string())));
    }
    fn region_merged(&mut self, target: &RegionDescriptor, source: u64) {
        self.merged.push((target.clone(), source));
    }
    fn send(&mut self, region: u64, msg: Message) {
        self.wire.borrow_mut().push((region, msg));
    }
    fn conf_changed(&mut self, token: u32, result: nokv_raft::Result<RegionDescriptor>) {
        self.conf_changes
            .push((token, result.map_err(|e| e.to_string())));
    }
    fn read_ready(&mut self, token: u32, result: nokv_raft::Result<()>) {
        self.reads.push((token, result.map_err(|e| e.to_string())));
    }
}

struct Store {
    id: u64,
    dir: TempDir,
    node: Option<(RaftCore<u32>, Recorder)>,
}

struct Cluster {
    stores: BTreeMap<u64, Store>,
    /// Entries each peer keeps cached (a replica lagging further needs a snapshot).
    cached_entries: usize,
    /// Snapshots delivered, by destination store.
    snapshots: BTreeMap<u64, usize>,
    /// Stores whose messages are dropped (in both directions) and which do not tick.
    down: BTreeSet<u64>,
    /// Stores whose messages are dropped (in both directions); still running.
    partitioned: BTreeSet<u64>,
    /// Stores whose raft clock stands still (a paused process): no ticks.
    paused: BTreeSet<u64>,
    /// Simulated time: one step is one 100 ms raft tick.
    now: Instant,
    /// Leader lease given to every core.
    lease: Option<Duration>,
    peer_store: BTreeMap<u64, u64>,
    wire: Wire,
}

fn options(replay: &LogReplay) -> Options {
    Options {
        opaque_replay: Some(replay.hook()),
        write_buffer_bytes: 256 << 10,
        wal_segment_bytes: 256 << 10,
        max_batch_bytes: 64 << 10,
        ..Options::default()
    }
}

fn descriptor(peers: &[(u64, u64)]) -> RegionDescriptor {
    RegionDescriptor {
        id: REGION,
        start_key: Vec::new(),
        end_key: Vec::new(),
        epoch: Epoch {
            version: 1,
            conf_version: 1,
        },
        peers: peers.iter().map(|&(s, p)| PeerMeta::voter(s, p)).collect(),
    }
}

impl Cluster {
    /// Stores 1..=n, each hosting a replica (peer 100 + store) of one region.
    fn new(n: u64) -> Cluster {
        Cluster::with_cache(n, 1024)
    }

    /// Like [`Cluster::new`] with peers that cache at most `cached_entries` entries.
    fn with_cache(n: u64, cached_entries: usize) -> Cluster {
        let peers: Vec<(u64, u64)> = (1..=n).map(|s| (s, 100 + s)).collect();
        let desc = descriptor(&peers);
        let mut c = Cluster {
            stores: BTreeMap::new(),
            cached_entries,
            snapshots: BTreeMap::new(),
            down: BTreeSet::new(),
            partitioned: BTreeSet::new(),
            paused: BTreeSet::new(),
            now: Instant::now(),
            lease: None,
            peer_store: peers.iter().map(|&(s, p)| (p, s)).collect(),
            wire: Rc::new(RefCell::new(Vec::new())),
        };
        for s in 1..=n {
            c.add_store(s);
            c.core(s).create_region(desc.clone()).expect("create");
        }
        c
    }

    fn add_store(&mut self, id: u64) {
        let dir = tempfile::tempdir().expect("tempdir");
        self.stores.insert(
            id,
            Store {
                id,
                dir,
                node: None,
            },
        );
        self.start(id);
    }

    /// Opens (or reopens) store `id`'s engine and core from its directory.
    fn start(&mut self, id: u64) {
        let wire = self.wire.clone();
        let store = self.stores.get_mut(&id).expect("store");
        let replay = LogReplay::new();
        let db = Db::open(store.dir.path(), options(&replay)).expect("open");
        nokv_raft::snapshot::recover_pending(&db, nokv_raft::snapshot::kv_ranges)
            .expect("pending snapshots");
        let regions = nokv_raft::region::load_regions(&db).expect("regions");
        let replayed = replay.take().expect("replay");
        let cfg = CoreConfig {
            store_id: store.id,
            max_cached_entries: self.cached_entries,
            snap_dir: Some(store.dir.path().join("snap")),
            lease: self.lease,
            ..CoreConfig::default()
        };
        let core = RaftCore::open(db.clone(), cfg, regions, replayed).expect("core");
        let rec = Recorder {
            db,
            wire,
            applied: Vec::new(),
            abandoned: Vec::new(),
            splits: Vec::new(),
            merges: Vec::new(),
            merged: Vec::new(),
            born: Vec::new(),
            conf_changes: Vec::new(),
            reads: Vec::new(),
        };
        store.node = Some((core, rec));
        self.down.remove(&id);
    }

    /// Stops store `id` (its engine is closed, as after a crash its directory stays).
    fn stop(&mut self, id: u64) {
        if let Some(store) = self.stores.get_mut(&id) {
            store.node = None;
        }
        self.down.insert(id);
    }

    fn core(&mut self, id: u64) -> &mut RaftCore<u32> {
        &mut self
            .stores
            .get_mut(&id)
            .expect("store")
            .node
            .as_mut()
            .expect("up")
            .0
    }

    fn rec(&self, id: u64) -> &Recorder {
        &self.stores[&id].node.as_ref().expect("up").1
    }

    /// One tick on every live store, poll rounds until quiet, then delivery of the messages.
    fn step(&mut self) {
        self.now += TICK;
        for (id, store) in self.stores.iter_mut() {
            if self.down.contains(id) {
                continue;
            }
            let Some((core, rec)) = store.node.as_mut() else {
                continue;
            };
            if !self.paused.contains(id) {
                core.tick();
            }
            for _ in 0..10 {
                if !core.has_ready() {
                    break;
                }
                core.poll_round(rec).expect("round");
            }
            // Exports run inline here; a node runs them off the core's thread.
            for task in core.take_snapshot_tasks() {
                let result = task.run(&rec.db);
                core.snapshot_exported(task, result);
            }
        }
        let msgs = std::mem::take(&mut *self.wire.borrow_mut());
        for (region, msg) in msgs {
            let from = self.peer_store.get(&msg.from).copied().unwrap_or(0);
            let Some(&to) = self.peer_store.get(&msg.to) else {
                continue;
            };
            let cut = |s: &u64| self.down.contains(s) || self.partitioned.contains(s);
            if cut(&to) || cut(&from) {
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                // The transport's part: the files go with the message.
                let meta = msg.get_snapshot().get_metadata();
                let key = SnapshotKey {
                    region,
                    term: meta.term,
                    index: meta.index,
                };
                let src = self.stores[&from]
                    .dir
                    .path()
                    .join("snap")
                    .join(key.dir_name());
                let dst = self.stores[&to]
                    .dir
                    .path()
                    .join("snap")
                    .join(key.dir_name());
                copy_dir(&src, &dst);
                *self.snapshots.entry(to).or_default() += 1;
            }
            if let Some((core, _)) = self.stores.get_mut(&to).and_then(|s| s.node.as_mut()) {
                // A message for a peer that is gone or not created yet is dropped, as
                // a transport would.
                let _ = core.step(region, msg);
            }
        }
    }

    /// Steps until `done` holds (bounded: 2000 steps, about 200 election timeouts).
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Cluster) -> bool) {
        for _ in 0..2000 {
            if done(self) {
                return;
            }
            self.step();
        }
        panic!("not reached after 2000 steps: {what}");
    }

    fn leader_of(&mut self, region: u64) -> Option<u64> {
        let ids: Vec<u64> = self.stores.keys().copied().collect();
        ids.into_iter()
            .find(|id| !self.down.contains(id) && self.core(*id).is_leader(region))
    }

    fn wait_leader(&mut self) -> u64 {
        self.wait_leader_of(REGION)
    }

    fn wait_leader_of(&mut self, region: u64) -> u64 {
        let mut found = None;
        self.run_until("a leader", |c| {
            found = c.leader_of(region);
            found.is_some()
        });
        found.expect("leader")
    }

    /// Proposes `key` (`-key`: a delete) on the leader (retrying across elections) and waits
    /// until it is applied on every live store; returns its index.
    fn write(&mut self, key: &str, token: u32) -> u64 {
        self.write_to(REGION, key, token)
    }

    /// [`Cluster::write`] to `region`.
    fn write_to(&mut self, region: u64, key: &str, token: u32) -> u64 {
        let mut index = None;
        for _ in 0..20 {
            let leader = self.wait_leader_of(region);
            match self
                .core(leader)
                .propose(region, key.as_bytes().to_vec(), token)
            {
                Ok(i) => {
                    index = Some(i);
                    break;
                }
                Err((Error::NotLeader { .. }, _)) => self.step(),
                Err((e, _)) => panic!("propose {key}: {e}"),
            }
        }
        let index = index.expect("proposed");
        self.run_until("applied everywhere", |c| {
            let live: Vec<u64> = c
                .stores
                .keys()
                .copied()
                .filter(|s| !c.down.contains(s))
                .collect();
            live.into_iter().all(|s| match key.strip_prefix('-') {
                Some(deleted) => value(&c.rec(s).db, deleted).is_none(),
                None => value(&c.rec(s).db, key).is_some(),
            })
        });
        index
    }
}

/// Copies a snapshot directory (files and sub-directories), replacing what is there.
fn copy_dir(src: &Path, dst: &Path) {
    if dst.exists() {
        std::fs::remove_dir_all(dst).expect("clear");
    }
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read snapshot dir") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

fn value(db: &Db, key: &str) -> Option<u64> {
    db.get_in(KeySpace::KV, key.as_bytes(), &ReadOptions::default())
        .expect("get")
        .map(|v| u64::from_be_bytes(v.try_into().expect("8 bytes")))
}

#[test]
fn three_replicas_elect_one_leader_and_every_replica_applies_every_write() {
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    let leaders: Vec<u64> = (1..=3).filter(|&s| c.core(s).is_leader(REGION)).collect();
    assert_eq!(leaders, vec![leader], "exactly one leader");
    // Followers learn the leader from its first append or heartbeat.
    c.run_until("every replica knows the leader", |c| {
        (1..=3).all(|s| c.core(s).leader(REGION).is_some())
    });
    for s in 1..=3 {
        assert_eq!(
            c.core(s).leader(REGION).map(|p| p.store_id),
            Some(leader),
            "store {s} knows the leader's store (the NotLeader hint)"
        );
    }
    let mut indexes = BTreeMap::new();
    for i in 0..20u32 {
        let k = format!("k{i:02}");
        indexes.insert(k.clone(), c.write(&k, i));
    }
    for s in 1..=3 {
        for (k, i) in &indexes {
            assert_eq!(value(&c.rec(s).db, k), Some(*i), "store {s} key {k}");
        }
    }
    // Only the leader's proposals carry tokens back.
    let tokens: Vec<u32> = c
        .rec(leader)
        .applied
        .iter()
        .filter_map(|(_, t)| *t)
        .collect();
    assert_eq!(tokens, (0..20).collect::<Vec<_>>());
    let follower = (1..=3).find(|&s| s != leader).expect("follower");
    assert!(matches!(
        c.core(follower).propose(REGION, b"x".to_vec(), 99),
        Err((
            Error::NotLeader {
                leader: Some(_),
                ..
            },
            99
        ))
    ));
}

#[test]
fn losing_the_leader_elects_another_and_a_restarted_replica_catches_up() {
    let mut c = Cluster::new(3);
    let mut acked = Vec::new();
    for i in 0..10u32 {
        let k = format!("a{i}");
        c.write(&k, i);
        acked.push(k);
    }
    let old = c.wait_leader();
    c.stop(old);
    let new = c.wait_leader();
    assert_ne!(new, old);
    for i in 10..20u32 {
        let k = format!("b{i}");
        c.write(&k, i);
        acked.push(k);
    }
    // The old leader restarts from its directory and catches up from the log.
    c.start(old);
    c.run_until("the restarted replica caught up", |c| {
        acked.iter().all(|k| value(&c.rec(old).db, k).is_some())
    });
    for s in 1..=3 {
        for k in &acked {
            assert!(value(&c.rec(s).db, k).is_some(), "store {s} lost {k}");
        }
    }
}

#[test]
fn a_learner_is_added_promoted_and_a_voter_removed_on_every_replica() {
    let mut c = Cluster::new(3);
    for i in 0..5u32 {
        c.write(&format!("before{i}"), i);
    }
    let leader = c.wait_leader();
    // The new replica's store starts with the region as it will be: itself a learner.
    let mut desc = c.core(leader).region(REGION).expect("region").clone();
    let learner = PeerMeta::learner(4, 104);
    desc.peers.push(learner);
    c.peer_store.insert(104, 4);
    c.add_store(4);
    c.core(4).create_region(desc).expect("create learner");

    let changes: [(PeerChange, u32); 3] = [
        (PeerChange::AddLearner(learner), 1000),
        (PeerChange::AddVoter(PeerMeta::voter(4, 104)), 1001),
        (
            PeerChange::Remove(PeerMeta::voter(
                // A voter that is not the leader.
                (1..=3).find(|&s| s != leader).expect("other"),
                100 + (1..=3).find(|&s| s != leader).expect("other"),
            )),
            1002,
        ),
    ];
    for (change, token) in changes {
        let leader = c.wait_leader();
        c.core(leader)
            .propose_conf_change(REGION, &[change], token)
            .map_err(|(e, _)| e)
            .expect("propose conf change");
        // Until it is applied, a further change would be dropped by raft: the store's
        // operator commands wait while this says so.
        assert!(
            c.core(leader).conf_change_pending(REGION),
            "{change:?} pending"
        );
        c.run_until("conf change applied", |c| {
            c.rec(leader).conf_changes.iter().any(|(t, _)| *t == token)
        });
        c.run_until("no change pending", |c| {
            !c.core(leader).conf_change_pending(REGION)
        });
        let (_, result) = c
            .rec(leader)
            .conf_changes
            .iter()
            .find(|(t, _)| *t == token)
            .expect("reported")
            .clone();
        result.expect("conf change applied");
    }
    let removed = (1..=3).find(|&s| s != leader).expect("other");
    c.stop(removed);
    c.write("after", 7);
    let leader = c.wait_leader();
    let desc = c.core(leader).region(REGION).expect("region").clone();
    assert_eq!(desc.epoch.conf_version, 4, "three changes: {desc:?}");
    assert!(desc.peer(100 + removed).is_none(), "removed: {desc:?}");
    assert_eq!(desc.peer(104).map(|p| p.role), Some(PeerRole::Voter));
    for s in (1..=4).filter(|&s| s != removed) {
        assert_eq!(
            c.core(s).region(REGION),
            Some(&desc),
            "store {s} reached the same membership"
        );
        for i in 0..5 {
            assert!(value(&c.rec(s).db, &format!("before{i}")).is_some());
        }
        assert!(value(&c.rec(s).db, "after").is_some());
    }
    // The new membership survives a restart (the conf changes replay from the log).
    c.stop(4);
    c.start(4);
    c.run_until("replayed", |c| {
        c.core(4).region(REGION).map(|d| d.epoch.conf_version) == Some(4)
    });
    assert_eq!(c.core(4).region(REGION), Some(&desc));
}

#[test]
fn a_replica_that_missed_more_than_the_leader_keeps_catches_up_from_a_snapshot() {
    // Peers cache 8 entries: a replica more than 32 entries behind needs a snapshot.
    let mut c = Cluster::with_cache(3, 8);
    for i in 0..5u32 {
        c.write(&format!("old{i}"), i);
    }
    let leader = c.wait_leader();
    let lagging = (1..=3).find(|&s| s != leader).expect("follower");
    c.stop(lagging);
    let mut acked: Vec<String> = (0..5).map(|i| format!("old{i}")).collect();
    for i in 0..100u32 {
        let k = format!("new{i:03}");
        c.write(&k, i);
        acked.push(k);
    }
    // A key the lagging replica holds is deleted while it is away.
    c.write("-old0", 500);
    acked.retain(|k| k != "old0");
    c.start(lagging);
    // Data in the region's range that the leader never had: only the snapshot's
    // replacement of the whole range removes it.
    let mut stale = WriteBatch::new();
    stale.put_in(KeySpace::KV, b"stale", &0u64.to_be_bytes());
    c.rec(lagging)
        .db
        .apply_unlogged(&stale, None)
        .expect("stale write");
    c.run_until("caught up from a snapshot", |c| {
        acked.iter().all(|k| value(&c.rec(lagging).db, k).is_some())
    });
    assert!(
        c.snapshots.get(&lagging).copied().unwrap_or(0) >= 1,
        "the replica caught up through a snapshot"
    );
    assert_eq!(
        value(&c.rec(lagging).db, "old0"),
        None,
        "a key deleted meanwhile is gone"
    );
    assert_eq!(
        value(&c.rec(lagging).db, "stale"),
        None,
        "the snapshot replaced the replica's data in the region's range"
    );
    // The log continues after the snapshot, and a restart starts from it.
    c.write("after-snapshot", 900);
    c.stop(lagging);
    c.start(lagging);
    c.run_until("caught up after the restart", |c| {
        value(&c.rec(lagging).db, "after-snapshot").is_some()
    });
    for k in &acked {
        assert!(value(&c.rec(lagging).db, k).is_some(), "lost {k}");
    }
    assert_eq!(value(&c.rec(lagging).db, "old0"), None);
}

impl Cluster {
    /// A read of `key` on store `s` through [`RaftCore::read`]: `Some(value)` once it may
    /// run (at once under the lease, or after its ReadIndex round), `None` if it failed or
    /// did not complete within 50 steps.
    fn read(&mut self, s: u64, key: &str, token: u32) -> Option<Option<u64>> {
        let now = self.now;
        match self.core(s).read(REGION, now, token) {
            Ok(ReadPath::Now(_)) => return Some(value(&self.rec(s).db, key)),
            Ok(ReadPath::Waiting) => {}
            Err(_) => return None,
        }
        for _ in 0..50 {
            self.step();
            let done = self.rec(s).reads.iter().find(|(t, _)| *t == token).cloned();
            match done {
                Some((_, Ok(()))) => return Some(value(&self.rec(s).db, key)),
                Some((_, Err(_))) => return None,
                None => {}
            }
        }
        None
    }
}

/// Runs the stale-read scenario with `lease`: the leader is cut off and paused (its raft
/// clock stands still, so it does not step down; wall-clock time goes on), the others
/// elect a new leader that writes `k`; returns whether the old leader then served a read
/// of `k` that missed the write.
fn old_leader_serves_a_stale_read(lease: Duration) -> bool {
    let mut c = Cluster::new(3);
    c.lease = Some(lease);
    for s in 1..=3 {
        c.stop(s);
        c.start(s);
    }
    c.write("k", 1);
    let old = c.wait_leader();
    // A confirmed read starts the old leader's lease.
    assert!(c.read(old, "k", 1).is_some(), "the leader serves reads");
    let now = c.now;
    assert!(
        matches!(c.core(old).read(REGION, now, 2), Ok(ReadPath::Now(_))),
        "a second read runs under the lease"
    );
    c.partitioned.insert(old);
    c.paused.insert(old);
    c.run_until("a new leader", |c| {
        (1..=3).any(|s| s != old && c.core(s).is_leader(REGION))
    });
    let new = (1..=3)
        .find(|&s| s != old && c.core(s).is_leader(REGION))
        .expect("new leader");
    let index = c
        .core(new)
        .propose(REGION, b"k".to_vec(), 3)
        .map_err(|(e, _)| e)
        .expect("propose on the new leader");
    c.run_until("applied on the new leader", |c| {
        c.core(new).applied(REGION) >= Some(index)
    });
    assert!(
        c.core(old).is_leader(REGION),
        "the paused leader still believes it leads"
    );
    let now = c.now;
    match c.core(old).read(REGION, now, 4) {
        Ok(ReadPath::Now(_)) => value(&c.rec(old).db, "k") != Some(index),
        _ => false,
    }
}

#[test]
fn a_leader_cut_off_from_the_others_serves_no_stale_read() {
    // The lease (0.5 s of wall-clock time from the confirmed read) ends before any
    // follower's election timeout (1 to 2 s) can elect a new leader.
    assert!(!old_leader_serves_a_stale_read(Duration::from_millis(500)));
    // Negative control: a lease longer than the election timeout lets the old leader
    // answer from its own data after the new leader wrote; the check sees it.
    assert!(old_leader_serves_a_stale_read(Duration::from_secs(3600)));
}

#[test]
fn a_read_asked_of_a_leader_before_it_committed_in_its_term_completes() {
    // raft drops a ReadIndex request silently while the leader has not committed an entry
    // of its term (its first moments); the read must not wait for a round never sent, nor
    // hold the reads behind it.
    let mut c = Cluster::new(3);
    let leader = c.wait_leader();
    assert!(
        c.core(leader).applied(REGION) < Some(2),
        "asked before the new leader's first entry applied"
    );
    let now = c.now;
    assert!(matches!(
        c.core(leader).read(REGION, now, 1),
        Ok(ReadPath::Waiting)
    ));
    assert_eq!(c.read(leader, "k", 2), Some(None), "a later read completes");
    assert!(
        c.rec(leader)
            .reads
            .iter()
            .any(|(t, r)| *t == 1 && r.is_ok()),
        "the first read completed"
    );
}

#[test]
fn a_leader_transfer_hands_over_leadership_and_suspends_the_lease() {
    let mut c = Cluster::new(3);
    c.lease = Some(Duration::from_millis(500));
    for s in 1..=3 {
        c.stop(s);
        c.start(s);
    }
    c.write("k", 1);
    let old = c.wait_leader();
    assert!(c.read(old, "k", 1).is_some());
    // The candidate is the live voter: a stopped one stops counting as recently active
    // after an election timeout.
    let down = (1..=3).find(|&s| s != old).expect("follower");
    let target = (1..=3).find(|&s| s != old && s != down).expect("follower");
    c.stop(down);
    for _ in 0..30 {
        c.step();
    }
    assert_eq!(c.core(old).transfer_candidate(REGION), Some(100 + target));
    assert_eq!(
        c.core(target).transfer_candidate(REGION),
        None,
        "not the leader"
    );
    c.core(old)
        .transfer_leader(REGION, 100 + target)
        .expect("transfer");
    // While it hands over, the old leader takes no proposal: a retryable refusal, not
    // raft's generic error.
    match c.core(old).propose(REGION, b"during".to_vec(), 3) {
        Err((nokv_raft::Error::NotTaken { region }, 3)) => assert_eq!(region, REGION),
        other => panic!("a proposal during the transfer: {other:?}"),
    }
    let now = c.now;
    assert!(
        !matches!(c.core(old).read(REGION, now, 2), Ok(ReadPath::Now(_))),
        "no lease read while leadership is being handed over"
    );
    c.run_until("the target leads", |c| c.core(target).is_leader(REGION));
    assert!(!c.core(old).is_leader(REGION));
    let i = c.write("k2", 5);
    assert_eq!(c.read(target, "k2", 6), Some(Some(i)));
}

#[test]
fn a_replica_started_empty_after_its_addition_catches_up_and_a_removed_one_is_forgotten() {
    let mut c = Cluster::new(3);
    for i in 0..5u32 {
        c.write(&format!("early{i}"), i);
    }
    let leader = c.wait_leader();
    let learner = PeerMeta::learner(4, 104);
    c.core(leader)
        .propose_conf_change(REGION, &[PeerChange::AddLearner(learner)], 900)
        .map_err(|(e, _)| e)
        .expect("propose");
    c.run_until("learner added", |c| {
        c.rec(leader).conf_changes.iter().any(|(t, _)| *t == 900)
    });
    // Store 4 starts the replica only now (as a node does once the coordinator lists
    // it), from the membership the leader has, at the initial membership version.
    let mut desc = c.core(leader).region(REGION).expect("region").clone();
    assert_eq!(desc.epoch.conf_version, 2);
    desc.epoch.conf_version = 1;
    c.peer_store.insert(104, 4);
    c.add_store(4);
    nokv_raft::region::save_region(&c.rec(4).db, &desc).expect("save");
    c.core(4).start_region(desc).expect("start");
    let again = c.core(leader).region(REGION).cloned().expect("region");
    assert!(
        c.core(4).start_region(again).is_err(),
        "a second peer of one region"
    );
    c.run_until("learner caught up", |c| {
        c.core(leader)
            .progress(REGION, 104)
            .is_some_and(|(matched, last)| matched == last)
    });
    assert_eq!(c.core(4).progress(REGION, 104), None, "not the leader");
    c.write("late", 9);
    for i in 0..5 {
        assert!(value(&c.rec(4).db, &format!("early{i}")).is_some());
    }
    assert!(value(&c.rec(4).db, "late").is_some());
    let leaders = c.core(leader).region(REGION).cloned().expect("region");
    assert_eq!(
        c.core(4).region(REGION),
        Some(&leaders),
        "same membership and version"
    );
    // Forgetting the replica: its descriptor comes back, the core no longer holds it.
    let gone = c.core(4).remove_region(REGION, |_| {}).expect("held");
    assert_eq!(gone.id, REGION);
    assert!(c.core(4).region(REGION).is_none());
    assert!(c.core(4).remove_region(REGION, |_| {}).is_none());
}

/// Splits region 1 at `key` into region 2 (peers 200 + store) through its leader and waits
/// until every live store runs both with the new ranges.
fn split_at(c: &mut Cluster, key: &[u8], token: u32) {
    let stores: Vec<u64> = c.stores.keys().copied().collect();
    for &s in &stores {
        c.peer_store.insert(200 + s, s);
    }
    let leader = c.wait_leader();
    let peers: Vec<(u64, u64)> = c
        .core(leader)
        .region(REGION)
        .expect("region")
        .peers
        .iter()
        .map(|p| (p.store_id, 200 + p.store_id))
        .collect();
    c.core(leader)
        .propose_split(REGION, key.to_vec(), 2, peers, token)
        .map_err(|(e, _)| e)
        .expect("split proposed");
    let key = key.to_vec();
    c.run_until("the split applied everywhere", |c| {
        let live: Vec<u64> = c
            .stores
            .keys()
            .copied()
            .filter(|s| !c.down.contains(s))
            .collect();
        live.into_iter().all(|s| {
            let core = c.core(s);
            core.region(2).is_some_and(|r| r.start_key == key)
                && core.region(REGION).is_some_and(|r| r.end_key == key)
        })
    });
}

#[test]
fn a_split_creates_the_new_region_on_every_replica_and_both_take_writes_across_restarts() {
    let mut c = Cluster::new(3);
    for (i, k) in ["a1", "b1", "m1", "z1"].iter().enumerate() {
        c.write(k, i as u32);
    }
    let leader = c.wait_leader();
    let before = c.core(leader).region(REGION).expect("region").epoch;
    split_at(&mut c, b"m", 77);
    let leader = c.wait_leader();
    assert_eq!(
        c.rec(leader).splits.len(),
        1,
        "the proposer is answered once"
    );
    assert!(c.rec(leader).splits[0].1.is_ok());
    for s in 1..=3 {
        let parent = c.core(s).region(REGION).expect("parent").clone();
        let child = c.core(s).region(2).expect("child").clone();
        assert_eq!(
            (parent.start_key.as_slice(), parent.end_key.as_slice()),
            (&b""[..], &b"m"[..])
        );
        assert_eq!(
            (child.start_key.as_slice(), child.end_key.as_slice()),
            (&b"m"[..], &b""[..])
        );
        assert_eq!(parent.epoch.version, before.version + 1, "store {s}");
        assert_eq!(child.epoch, parent.epoch);
        let mut peers: Vec<u64> = child.peers.iter().map(|p| p.peer_id).collect();
        peers.sort();
        assert_eq!(peers, vec![201, 202, 203]);
        assert_eq!(
            c.rec(s).born.len(),
            1,
            "every replica reports the split once"
        );
    }
    // The child's log starts at the split entry: its first write gets a higher index than
    // every write of the parent before the split (versions keep growing per key).
    let split_index = c.core(leader).applied(2).expect("child applied");
    let i = c.write_to(2, "m2", 10);
    assert!(
        i > split_index,
        "child index {i} after the split at {split_index}"
    );
    c.write_to(REGION, "b2", 11);
    // Every store restarts: both regions come back from their persisted descriptors.
    for s in 1..=3 {
        c.stop(s);
    }
    for s in 1..=3 {
        c.start(s);
    }
    c.write_to(2, "n3", 12);
    c.write_to(REGION, "c3", 13);
    for s in 1..=3 {
        assert_eq!(
            c.core(s).region(2).map(|r| r.start_key.clone()),
            Some(b"m".to_vec())
        );
        for k in ["a1", "b1", "m1", "z1", "m2", "b2", "n3", "c3"] {
            assert!(value(&c.rec(s).db, k).is_some(), "store {s} lost {k}");
        }
    }
}

#[test]
fn a_write_proposed_before_a_split_applied_is_refused_on_every_replica() {
    let mut c = Cluster::new(3);
    c.write("a1", 1);
    for s in 1..=3 {
        c.peer_store.insert(200 + s, s);
    }
    let leader = c.wait_leader();
    let peers: Vec<(u64, u64)> = (1..=3).map(|s| (s, 200 + s)).collect();
    c.core(leader)
        .propose_split(REGION, b"m".to_vec(), 2, peers.clone(), 5)
        .map_err(|(e, _)| e)
        .expect("split");
    // The leader pauses proposals while its split is on its way.
    assert!(matches!(
        c.core(leader).propose(REGION, b"z-paused".to_vec(), 9),
        Err((Error::Paused { .. }, 9))
    ));
    // Without the pause (test switch; after a leader change the new leader has none), a
    // write proposed with the old epoch lands after the split in the log: never applied.
    c.core(leader).test_no_split_pause_for(REGION);
    c.core(leader)
        .propose(REGION, b"z-late".to_vec(), 6)
        .map_err(|(e, _)| e)
        .expect("proposed");
    c.run_until("split applied", |c| {
        (1..=3).all(|s| c.core(s).region(2).is_some())
    });
    for _ in 0..5 {
        c.step();
    }
    for s in 1..=3 {
        assert!(
            value(&c.rec(s).db, "z-late").is_none(),
            "store {s} applied a stale entry"
        );
    }
    let refused = &c.rec(leader).abandoned;
    assert!(
        refused.iter().any(|(t, e)| *t == 6 && e.contains("epoch")),
        "the proposer hears of it: {refused:?}"
    );
    // A second split with the same (now stale) epoch is refused too.
    let peers: Vec<(u64, u64)> = (1..=3).map(|s| (s, 300 + s)).collect();
    assert!(c
        .core(leader)
        .propose_split(REGION, b"m".to_vec(), 3, peers, 7)
        .is_err());
}

#[test]
fn a_split_lost_with_the_memtable_is_applied_again_and_keeps_the_new_regions_writes() {
    // One replica: nobody could send the child's entries again.
    let mut c = Cluster::new(1);
    c.write("a1", 1);
    c.write("q1", 2);
    split_at(&mut c, b"m", 3);
    for i in 0..20u32 {
        c.write_to(2, &format!("r{i:02}"), 10 + i);
        c.write_to(REGION, &format!("b{i:02}"), 40 + i);
    }
    // Nothing was flushed: the split's descriptors and the data live in the WAL only.
    assert_eq!(
        c.rec(1).db.applied_index(2),
        None,
        "the test needs an unflushed split"
    );
    c.stop(1);
    c.start(1);
    c.run_until("both regions back", |c| {
        c.core(1).region(2).is_some() && c.core(1).is_leader(2) && c.core(1).is_leader(REGION)
    });
    for i in 0..20u32 {
        assert!(
            value(&c.rec(1).db, &format!("r{i:02}")).is_some(),
            "r{i:02} lost"
        );
        assert!(
            value(&c.rec(1).db, &format!("b{i:02}")).is_some(),
            "b{i:02} lost"
        );
    }
    assert_eq!(
        c.core(1).region(REGION).map(|r| r.end_key.clone()),
        Some(b"m".to_vec())
    );
    c.write_to(2, "r-after", 99);
    // Flushed, the split is durable: a restart needs no log to find it.
    c.rec(1).db.flush().expect("flush");
    assert!(c.rec(1).db.applied_index(2).is_some());
    c.stop(1);
    c.start(1);
    assert_eq!(
        c.core(1).region(2).map(|r| r.start_key.clone()),
        Some(b"m".to_vec())
    );
    c.write_to(2, "r-last", 100);
}

/// Merges region `source` into `target` (both on every store): the prepare through the
/// source's leader, the commit through the target's, moved to the same store, once every
/// replica of the source holds the prepare. `cut` is partitioned away as soon as it holds
/// the prepare (before it hears that it is committed).
fn merge(c: &mut Cluster, source: u64, target: u64, token: u32, cut: Option<u64>) {
    let leader = c.wait_leader_of(source);
    let prepared = c
        .core(leader)
        .propose_prepare_merge(source, target, token)
        .map_err(|(e, _)| e)
        .expect("prepare proposed");
    let cut_peer = cut.and_then(|s| {
        c.core(leader)
            .region(source)
            .and_then(|r| r.peer_on_store(s))
    });
    let mut proposed = false;
    c.run_until("the merge applied everywhere", |c| {
        if let (Some(s), Some(p)) = (cut, cut_peer) {
            let held = c
                .core(leader)
                .progress(source, p.peer_id)
                .is_some_and(|(matched, _)| matched >= prepared);
            if held {
                c.partitioned.insert(s);
            }
        }
        if !proposed {
            let (Some(ls), Some(lt)) = (c.leader_of(source), c.leader_of(target)) else {
                return false;
            };
            if ls != lt {
                let to = c.core(lt).region(target).and_then(|r| r.peer_on_store(ls));
                if let Some(to) = to {
                    let _ = c.core(lt).transfer_leader(target, to.peer_id);
                }
                return false;
            }
            match c.core(lt).propose_commit_merge(target, source, token + 1) {
                Ok(_) => proposed = true,
                // Not prepared on this store yet, or a replica does not hold the prepare.
                Err(_) => return false,
            }
        }
        let live: Vec<u64> = c
            .stores
            .keys()
            .copied()
            .filter(|s| !c.down.contains(s) && !c.partitioned.contains(s))
            .collect();
        proposed
            && live.into_iter().all(|s| {
                let core = c.core(s);
                core.region(source).is_none()
                    && core
                        .region(target)
                        .is_some_and(|r| r.start_key.is_empty() && r.end_key.is_empty())
            })
    });
}

#[test]
fn a_merge_takes_the_neighbour_over_on_every_replica_and_versions_keep_growing() {
    let mut c = Cluster::new(3);
    split_at(&mut c, b"m", 77);
    for i in 0..5 {
        c.write_to(REGION, &format!("a{i}"), 100 + i);
    }
    // The source's log runs ahead of the target's: the commit pads the target's log.
    for i in 0..40 {
        c.write_to(2, &format!("n{i}"), 200 + i);
    }
    let source_leader = c.wait_leader_of(2);
    let source_index = c.core(source_leader).applied(2).expect("source applied");
    // Once the commit is proposed, one replica is cut off until the others merged: it
    // holds the prepare but may not know it committed (the source's leader is gone with
    // the merge), and its target replica waits for its source replica.
    let cut = (1..=3).find(|&s| s != source_leader).expect("a follower");
    merge(&mut c, 2, REGION, 300, Some(cut));
    let leader = c.wait_leader_of(REGION);
    let i = c.write_to(REGION, "n0", 400);
    assert!(
        i > source_index,
        "a write after the merge at {i}, the source had applied {source_index}: versions must grow"
    );
    let merged_at = c.core(leader).applied(REGION).expect("applied");
    c.partitioned.remove(&cut);
    c.run_until("the cut-off replica applied the merge", |c| {
        c.core(cut).applied(REGION).is_some_and(|a| a >= merged_at)
    });
    assert!(c
        .rec(leader)
        .merges
        .iter()
        .any(|(t, r)| *t == 301 && r.is_ok()));
    for s in 1..=3 {
        assert!(
            c.rec(s)
                .merged
                .iter()
                .any(|(t, src)| t.id == REGION && *src == 2),
            "store {s} reports the merge"
        );
    }
    // Every store restarts: the merged region comes back whole, the source does not.
    for s in 1..=3 {
        c.stop(s);
    }
    for s in 1..=3 {
        c.start(s);
    }
    c.write_to(REGION, "z9", 500);
    for s in 1..=3 {
        assert!(
            c.core(s).region(2).is_none(),
            "store {s} still has the source"
        );
        assert!(c.core(s).merge_state(2).is_none());
        let r = c.core(s).region(REGION).expect("target").clone();
        assert!(
            r.start_key.is_empty() && r.end_key.is_empty(),
            "store {s}: {r:?}"
        );
        for k in ["a0", "a4", "n1", "n39", "z9"] {
            assert!(value(&c.rec(s).db, k).is_some(), "store {s} lost {k}");
        }
        assert_eq!(
            value(&c.rec(s).db, "n0"),
            Some(i),
            "store {s}: n0's last write"
        );
    }
}

/// A replica cut off once it held the merge's prepare misses the commit and goes down;
/// the merged region's log then moves past what its leader keeps, so the restarted
/// replica catches up from a snapshot of the wider target while its source replica still
/// runs: the snapshot retires that source (before, the source stayed, overlapping the
/// target).
#[test]
fn a_replica_that_missed_a_merge_takes_the_target_s_snapshot_and_retires_its_source() {
    let mut c = Cluster::with_cache(3, 8);
    split_at(&mut c, b"m", 77);
    for i in 0..5 {
        c.write_to(REGION, &format!("a{i}"), 100 + i);
        c.write_to(2, &format!("n{i}"), 200 + i);
    }
    let source_leader = c.wait_leader_of(2);
    let cut = (1..=3).find(|&s| s != source_leader).expect("a follower");
    merge(&mut c, 2, REGION, 300, Some(cut));
    // It goes down, comes back after many writes: it still has the source (prepared).
    // (Its split's descriptors made durable first, so that the source is there at once.)
    c.rec(cut).db.flush().expect("flush");
    c.stop(cut);
    c.partitioned.remove(&cut);
    for i in 0..100 {
        c.write_to(REGION, &format!("z{i:03}"), 1000 + i);
    }
    c.start(cut);
    assert!(
        c.core(cut).region(2).is_some(),
        "the cut-off replica still runs the source"
    );
    c.run_until("the cut-off replica caught up", |c| {
        value(&c.rec(cut).db, "z099").is_some()
    });
    assert!(
        c.snapshots.get(&cut).copied().unwrap_or(0) >= 1,
        "it caught up through a snapshot"
    );
    let check = |c: &mut Cluster| {
        assert!(c.core(cut).region(2).is_none(), "the source is retired");
        assert!(c.core(cut).merge_state(2).is_none());
        let r = c.core(cut).region(REGION).expect("target").clone();
        assert!(r.start_key.is_empty() && r.end_key.is_empty(), "{r:?}");
        for k in ["a0", "a4", "n0", "n4", "z000", "z099"] {
            assert!(value(&c.rec(cut).db, k).is_some(), "lost {k}");
        }
    };
    check(&mut c);
    assert!(c
        .rec(cut)
        .merged
        .iter()
        .any(|(t, src)| t.id == REGION && *src == 2));
    // Restarted, it does not bring the source back.
    c.stop(cut);
    c.start(cut);
    check(&mut c);
    c.write_to(REGION, "after", 2000);
    c.run_until("the restarted replica takes writes", |c| {
        value(&c.rec(cut).db, "after").is_some()
    });
}

#[test]
fn a_write_to_a_region_being_merged_is_paused_and_a_rollback_lets_it_write_again() {
    let mut c = Cluster::new(3);
    split_at(&mut c, b"m", 77);
    c.write_to(2, "n1", 1);
    let leader = c.wait_leader_of(2);
    let prepared = c
        .core(leader)
        .propose_prepare_merge(2, REGION, 10)
        .map_err(|(e, _)| e)
        .expect("prepare proposed");
    c.run_until("the prepare applied", |c| {
        (1..=3).all(|s| c.core(s).merge_state(2).is_some())
    });
    let leader = c.wait_leader_of(2);
    assert_eq!(
        c.core(leader).merge_state(2).map(|m| m.prepared_at),
        Some(prepared)
    );
    match c.core(leader).propose(2, b"n2".to_vec(), 11) {
        Err((Error::Paused { .. }, _)) => {}
        other => panic!(
            "a write to a prepared source must pause, got {:?}",
            other.map_err(|(e, _)| e)
        ),
    }
    // The prepared state survives a restart of every store.
    for s in 1..=3 {
        c.stop(s);
    }
    for s in 1..=3 {
        c.start(s);
    }
    let leader = c.wait_leader_of(2);
    assert!(c.core(leader).merge_state(2).is_some());
    c.core(leader)
        .propose_rollback_merge(2, 12)
        .map_err(|(e, _)| e)
        .expect("rollback proposed");
    c.run_until("the rollback applied", |c| {
        (1..=3).all(|s| c.core(s).merge_state(2).is_none())
    });
    c.write_to(2, "n3", 13);
    for s in 1..=3 {
        assert!(value(&c.rec(s).db, "n3").is_some(), "store {s}");
    }
}
