//! A node run in-process through `nokv_shard::run_with`: its engines on an injected
//! filesystem, a stop flag instead of signals, and the raft records each core's engine
//! replayed on open (hard states, to check they survive restarts).

use super::LIMIT;
use clap::Parser;
use nokv::fs::FileSystem;
use nokv_raft::{LogReplay, ReplayedRegion};
use nokv_shard::hooks::EngineTuning;
use nokv_shard::{Flags, NodeHooks, Settings};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Small engine buffers and files, so that flushes, WAL rotations, compactions and
/// value-log segments happen within a short test.
pub fn small_engine(o: &mut nokv::Options) {
    o.write_buffer_bytes = 64 << 10;
    o.wal_segment_bytes = 1 << 20;
    o.max_batch_bytes = 512 << 10;
    o.target_file_bytes = 64 << 10;
    o.level_base_bytes = 256 << 10;
    o.l0_compaction_trigger = 2;
    o.block_cache_bytes = 1 << 20;
    o.vlog_segment_bytes = 256 << 10;
}

/// A running in-process node.
pub struct InProcNode {
    /// The Redis address it listens on.
    pub addr: String,
    /// What the cores' engines replayed on open, per region.
    pub replayed: BTreeMap<u64, ReplayedRegion>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<nokv_shard::Result<()>>>,
}

impl InProcNode {
    /// Starts a node on `workdir` (its engines on `fs`) with extra flags; `tune` has the
    /// last say over every core's engine options. Waits (bounded) until it listens; `Err`
    /// says why it did not start.
    pub fn start(
        workdir: &Path,
        args: &[&str],
        fs: Arc<dyn FileSystem>,
        tune: impl Fn(&mut nokv::Options) + Send + Sync + 'static,
    ) -> Result<InProcNode, String> {
        let workdir = workdir.to_str().expect("utf-8 workdir").to_string();
        let argv = [
            "nokv-server",
            "--workdir",
            &workdir,
            "--redis-addr",
            "127.0.0.1:0",
        ]
        .into_iter()
        .chain(args.iter().copied());
        let settings = Settings::resolve(Flags::try_parse_from(argv).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        // One collector for every core: their regions are distinct.
        let collector = LogReplay::new();
        let mine = collector.hook();
        let tuning: EngineTuning = Arc::new(move |_core, opts: &mut nokv::Options| {
            let theirs = opts.opaque_replay.take();
            let mine = mine.clone();
            opts.opaque_replay = Some(Arc::new(move |tag, payload| {
                if let Some(theirs) = &theirs {
                    theirs(tag, payload);
                }
                mine(tag, payload);
            }));
            tune(opts);
        });
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let hooks = NodeHooks {
            fs: Some(fs),
            stop: Some(stop.clone()),
            listening: Some(tx),
            engine_tuning: Some(tuning),
        };
        let thread = std::thread::Builder::new()
            .name("inproc-node".into())
            .spawn(move || nokv_shard::run_with(settings, hooks))
            .expect("spawn the node thread");
        let addr = match rx.recv_timeout(LIMIT) {
            Ok(addr) => addr.to_string(),
            Err(_) => {
                // The sender is gone (the node returned) or the bound ran out.
                stop.store(true, Ordering::SeqCst);
                let why = join_bounded(thread)
                    .err()
                    .unwrap_or_else(|| "it stopped before it listened".into());
                return Err(format!("the node did not start: {why}"));
            }
        };
        let replayed = collector
            .take()
            .map_err(|e| format!("replayed raft records: {e}"))?;
        Ok(InProcNode {
            addr,
            replayed,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the node like SIGTERM and returns its result (bounded wait).
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("node thread");
        join_bounded(thread)
    }
}

impl Drop for InProcNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = join_bounded(t);
        }
    }
}

/// Joins the node thread within [`LIMIT`] (if it runs longer it is left detached);
/// `Err` says how it ended otherwise than cleanly.
fn join_bounded(t: JoinHandle<nokv_shard::Result<()>>) -> Result<(), String> {
    let deadline = Instant::now() + LIMIT;
    while !t.is_finished() {
        if Instant::now() > deadline {
            return Err(format!("the node did not stop within {LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match t.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the node stopped with an error: {e}")),
        Err(_) => Err("the node thread panicked".into()),
    }
}
