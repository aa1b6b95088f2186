//! Scenario: many single-replica regions on one core (a standalone store, or a migrated
//! directory's regions after many splits) hibernate once idle: they are neither ticked nor
//! polled until a proposal or a read reaches them, and wake up without losing a write.
//! Also reports the memory a region costs (printed, not asserted: this is one process
//! with an allocator and a test harness around it).

use nokv::{Db, KeySpace, Options, WriteBatch};
use nokv_raft::raftpb::Message;
use nokv_raft::{
    Apply, CoreConfig, Epoch, Error, LogReplay, Outbox, PeerMeta, RaftCore, RegionDescriptor,
};

struct Recorder {
    db: Db,
    applied: usize,
}

impl Apply<u32> for Recorder {
    fn apply(&mut self, region: &RegionDescriptor, index: u64, data: &[u8], _token: Option<u32>) {
        let mut b = WriteBatch::new();
        b.put_in(KeySpace::KV, data, &index.to_be_bytes());
        self.db
            .apply_unlogged(&b, Some((region.id, index)))
            .expect("apply");
        self.applied += 1;
    }
}

impl Outbox<u32> for Recorder {
    fn abandon(&mut self, _token: u32, _error: Error) {}
    fn send(&mut self, _region: u64, _msg: Message) {
        panic!("single replicas send no messages");
    }
}

/// Region `id` of `n`, covering its share of a 4-byte key space.
fn region(id: u64, n: u64) -> RegionDescriptor {
    let bound = |i: u64| {
        if i == 0 || i == n {
            Vec::new()
        } else {
            ((i * (u32::MAX as u64 / n)) as u32).to_be_bytes().to_vec()
        }
    };
    RegionDescriptor {
        id,
        start_key: bound(id - 1),
        end_key: bound(id),
        epoch: Epoch {
            version: 1,
            conf_version: 1,
        },
        peers: vec![PeerMeta::voter(1, id)],
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn settle(core: &mut RaftCore<u32>, rec: &mut Recorder) {
    for _ in 0..50 {
        if !core.has_ready() {
            return;
        }
        core.poll_round(rec).expect("round");
    }
}

#[test]
fn idle_single_replica_regions_hibernate_and_wake_for_work() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = LogReplay::new();
    let db = Db::open(
        dir.path(),
        Options {
            opaque_replay: Some(replay.hook()),
            ..Options::default()
        },
    )
    .expect("open");
    let mut core: RaftCore<u32> = RaftCore::open(
        db.clone(),
        CoreConfig::default(),
        Vec::new(),
        replay.take().expect("replay"),
    )
    .expect("core");
    let mut rec = Recorder { db, applied: 0 };
    let before = rss_bytes();
    for id in 1..=N {
        // No IO per region (a node persists descriptors; memory is what is measured here).
        core.start_region(region(id, N)).expect("start");
    }
    settle(&mut core, &mut rec);
    let after = rss_bytes();
    eprintln!(
        "{N} regions: {} bytes of resident memory per region",
        after.saturating_sub(before) / N
    );
    assert_eq!(core.hibernating(), 0, "new regions are awake");
    core.tick();
    assert_eq!(
        core.hibernating(),
        N as usize,
        "idle leaders of one replica stop ticking"
    );
    assert!(!core.has_ready());
    // A proposal wakes its region; it is applied and the region sleeps again.
    let key = 7u32.to_be_bytes();
    let target = (1..=N)
        .find(|&id| region(id, N).contains(&key))
        .expect("region");
    core.propose(target, b"k".to_vec(), 1)
        .map_err(|(e, _)| e)
        .expect("proposed");
    assert_eq!(core.hibernating(), N as usize - 1);
    settle(&mut core, &mut rec);
    assert_eq!(rec.applied, 1, "the write was applied");
    core.tick();
    assert_eq!(core.hibernating(), N as usize);
    // A read wakes it too and is served (single replica: at once, or after its own round).
    let _ = core.read(target + 1, std::time::Instant::now(), 2);
    assert_eq!(core.hibernating(), N as usize - 1);
    settle(&mut core, &mut rec);
    // Many ticks of an idle store: none reaches a hibernating region.
    let start = std::time::Instant::now();
    for _ in 0..100 {
        core.tick();
    }
    eprintln!(
        "100 ticks of {N} hibernating regions took {:?}",
        start.elapsed()
    );
    assert_eq!(core.hibernating(), N as usize);
}
