//! Scenario: a single-replica region on one engine — election, proposals that
//! commit and apply, restart from the WAL-resident log, log truncation.

use nokv::{Db, KeySpace, Options, ReadOptions, WriteBatch};
use nokv_raft::raftpb::Message;
use nokv_raft::{
    Apply, CoreConfig, Epoch, Error, LogReplay, Outbox, PeerMeta, RaftCore, RegionDescriptor,
};
use std::path::Path;

/// Writes each entry's data as a key whose value is the entry's index.
struct Recorder {
    db: Db,
    applied: Vec<(u64, Option<u32>)>,
    abandoned: Vec<u32>,
}

impl Apply<u32> for Recorder {
    fn apply(&mut self, region: &RegionDescriptor, index: u64, data: &[u8], token: Option<u32>) {
        let mut b = WriteBatch::new();
        b.put_in(KeySpace::KV, data, &index.to_be_bytes());
        self.db
            .apply_unlogged(&b, Some((region.id, index)))
            .expect("apply");
        self.applied.push((index, token));
    }
}

impl Outbox<u32> for Recorder {
    fn abandon(&mut self, token: u32, _error: Error) {
        self.abandoned.push(token);
    }
    fn send(&mut self, _region: u64, _msg: Message) {
        panic!("a single replica sends no messages");
    }
}

fn region() -> RegionDescriptor {
    RegionDescriptor {
        id: 7,
        start_key: Vec::new(),
        end_key: Vec::new(),
        epoch: Epoch {
            version: 1,
            conf_version: 1,
        },
        peers: vec![PeerMeta::voter(1, 70)],
    }
}

fn options(replay: &LogReplay) -> Options {
    Options {
        opaque_replay: Some(replay.hook()),
        write_buffer_bytes: 64 << 10,
        wal_segment_bytes: 64 << 10,
        max_batch_bytes: 16 << 10,
        ..Options::default()
    }
}

fn open(dir: &Path) -> (RaftCore<u32>, Recorder, usize) {
    let replay = LogReplay::new();
    let db = Db::open(dir, options(&replay)).expect("open");
    let regions = nokv_raft::region::load_regions(&db).expect("regions");
    let replayed = replay.take().expect("replay");
    let entries = replayed.values().map(|r| r.entries.len()).sum();
    let core = RaftCore::open(db.clone(), CoreConfig::default(), regions, replayed).expect("core");
    let rec = Recorder {
        db,
        applied: Vec::new(),
        abandoned: Vec::new(),
    };
    (core, rec, entries)
}

/// Poll rounds until nothing is ready (bounded).
fn settle(core: &mut RaftCore<u32>, rec: &mut Recorder) {
    for _ in 0..20 {
        if !core.has_ready() {
            return;
        }
        core.poll_round(rec).expect("round");
    }
    panic!("raft did not settle in 20 rounds");
}

fn value(db: &Db, key: &[u8]) -> Option<u64> {
    db.get_in(KeySpace::KV, key, &ReadOptions::default())
        .expect("get")
        .map(|v| u64::from_be_bytes(v.try_into().expect("8 bytes")))
}

#[test]
fn a_single_node_group_elects_itself_and_applies_proposals_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut core, mut rec, _) = open(dir.path());
    core.create_region(region()).expect("create");
    settle(&mut core, &mut rec);
    assert!(core.is_leader(7), "the only voter leads after one round");
    let mut indexes = Vec::new();
    for i in 0..3u32 {
        indexes.push(
            core.propose(7, format!("k{i}").into_bytes(), i)
                .map_err(|(e, _)| e)
                .expect("propose"),
        );
    }
    settle(&mut core, &mut rec);
    let want: Vec<(u64, Option<u32>)> = indexes
        .iter()
        .zip(0..)
        .map(|(i, t)| (*i, Some(t)))
        .collect();
    assert_eq!(
        rec.applied, want,
        "each proposal applied once, in order, with its token"
    );
    assert!(rec.abandoned.is_empty());
    assert_eq!(value(&rec.db, b"k2"), Some(indexes[2]));
    assert_eq!(core.applied(7), Some(indexes[2]));
    // Unknown regions and empty proposals are refused with the token back.
    assert!(matches!(
        core.propose(99, b"x".to_vec(), 9),
        Err((Error::RegionNotFound(99), 9))
    ));
    assert!(matches!(
        core.propose(7, Vec::new(), 8),
        Err((Error::InvalidProposal { .. }, 8))
    ));
}

#[test]
fn restart_replays_the_log_and_resumes_at_the_durable_applied_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut core, mut rec, _) = open(dir.path());
    core.create_region(region()).expect("create");
    settle(&mut core, &mut rec);
    for i in 0..5u32 {
        core.propose(7, format!("a{i}").into_bytes(), i)
            .map_err(|(e, _)| e)
            .expect("propose");
    }
    settle(&mut core, &mut rec);
    rec.db.flush().expect("flush");
    let durable = rec.db.applied_index(7).expect("durable applied index");
    assert_eq!(durable, core.applied(7).expect("applied"));
    let mut later = Vec::new();
    for i in 0..5u32 {
        later.push(
            core.propose(7, format!("b{i}").into_bytes(), i)
                .map_err(|(e, _)| e)
                .expect("propose"),
        );
    }
    settle(&mut core, &mut rec);
    // Stop without flushing: the b* data lives only in the memtable and the raft log.
    drop(core);
    drop(rec);

    let (mut core, mut rec, _) = open(dir.path());
    assert_eq!(rec.db.applied_index(7), Some(durable));
    assert!(
        !core.caught_up(),
        "the b* entries are in the log but not applied yet: reads must wait"
    );
    settle(&mut core, &mut rec);
    assert!(core.caught_up());
    let reapplied: Vec<u64> = rec.applied.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        reapplied, later,
        "exactly the entries after the durable index are applied again"
    );
    assert!(
        rec.applied.iter().all(|(_, t)| t.is_none()),
        "no tokens after a restart"
    );
    for (i, index) in later.iter().enumerate() {
        assert!(value(&rec.db, format!("a{i}").as_bytes()).is_some());
        assert_eq!(value(&rec.db, format!("b{i}").as_bytes()), Some(*index));
    }
    assert!(core.is_leader(7));
    let next = core
        .propose(7, b"c".to_vec(), 1)
        .map_err(|(e, _)| e)
        .expect("propose");
    assert!(
        next > later[4],
        "the log continues after the replayed entries"
    );
    settle(&mut core, &mut rec);
    assert_eq!(value(&rec.db, b"c"), Some(next));
}

#[test]
fn checkpoints_release_old_segments_and_restart_stays_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut core, mut rec, _) = open(dir.path());
    core.create_region(region()).expect("create");
    settle(&mut core, &mut rec);
    let payload = vec![b'x'; 900];
    let mut moved = false;
    let mut last = 0;
    for round in 0..40u32 {
        for i in 0..10u32 {
            let mut data = format!("k{round:03}-{i}-").into_bytes();
            data.extend_from_slice(&payload);
            last = core
                .propose(7, data, i)
                .map_err(|(e, _)| e)
                .expect("propose");
        }
        settle(&mut core, &mut rec);
        if round % 10 == 9 {
            rec.db.flush().expect("flush");
            moved |= core.compact_log().expect("compact");
        }
    }
    assert!(moved, "the opaque floor moved past released segments");
    drop(core);
    drop(rec);
    let (mut core, mut rec, replayed) = open(dir.path());
    assert!(
        replayed < 400,
        "old entries were released ({replayed} replayed)"
    );
    settle(&mut core, &mut rec);
    for round in 0..40u32 {
        let mut key = format!("k{round:03}-9-").into_bytes();
        key.extend_from_slice(&payload);
        assert!(value(&rec.db, &key).is_some(), "round {round} survived");
    }
    let next = core
        .propose(7, b"after".to_vec(), 0)
        .map_err(|(e, _)| e)
        .expect("propose");
    assert!(next > last);
}

/// Runs one split round by hand; returns the durability its append used (None: no append).
fn split_round(core: &mut RaftCore<u32>, rec: &mut Recorder) -> Option<nokv::Durability> {
    let mut round = core.begin_round(rec).expect("begin")?;
    if let Some(batch) = round.take_apply() {
        let applied = batch.run(&rec.db, |_, index, _| Ok(index)).expect("apply");
        core.finish_apply(&mut round, applied, |_, _| {});
    }
    let append = round.take_append();
    let durability = append.as_ref().map(|a| a.durability());
    let segment = append.map(|a| a.write(&rec.db).expect("append"));
    core.finish_append(round, segment, rec);
    durability
}

#[test]
fn relaxed_durability_still_syncs_new_terms_and_votes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replay = LogReplay::new();
    let db = Db::open(dir.path(), options(&replay)).expect("open");
    let cfg = CoreConfig {
        durability: nokv::Durability::Relaxed,
        ..CoreConfig::default()
    };
    let mut core: RaftCore<u32> =
        RaftCore::open(db.clone(), cfg, Vec::new(), Default::default()).expect("core");
    let mut rec = Recorder {
        db,
        applied: Vec::new(),
        abandoned: Vec::new(),
    };
    core.create_region(region()).expect("create");
    // The election: a new term and a vote for itself must be fdatasynced.
    let mut seen = Vec::new();
    for _ in 0..10 {
        if !core.has_ready() {
            break;
        }
        seen.extend(split_round(&mut core, &mut rec));
    }
    assert_eq!(
        seen.first(),
        Some(&nokv::Durability::Sync),
        "the round that records the election"
    );
    // Entries of the same term: relaxed, as configured.
    core.propose(7, b"k".to_vec(), 1)
        .map_err(|(e, _)| e)
        .expect("propose");
    let d = split_round(&mut core, &mut rec);
    assert_eq!(d, Some(nokv::Durability::Relaxed));
}
