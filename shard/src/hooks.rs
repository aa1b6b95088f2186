//! What an embedder (tests) injects into a node started with [`crate::run_with`].
//! `NodeHooks::default()` is exactly what the `nokv-server` binary runs with.

use crate::error::{Error, Result};
use nokv::fs::FileSystem;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

/// Last say over one core's engine options: (core number, the options the node chose).
pub type EngineTuning = Arc<dyn Fn(usize, &mut nokv::Options) + Send + Sync>;

/// Pieces a node can be given instead of its defaults.
#[derive(Clone, Default)]
pub struct NodeHooks {
    /// Filesystem of every core's engine (`None`: the OS's). The workdir's `LOCK` and
    /// `STORE` files stay on the OS filesystem.
    pub fs: Option<Arc<dyn FileSystem>>,
    /// Setting this flag stops the node like SIGTERM (the node sets it too when it stops
    /// itself on an error). When given, no signal handlers are installed: the embedder
    /// owns the process's signals. `None`: SIGTERM/SIGINT stop the node.
    pub stop: Option<Arc<AtomicBool>>,
    /// Receives the Redis address once every core listens.
    pub listening: Option<mpsc::Sender<SocketAddr>>,
    /// TEST ONLY: adjusts each core's engine options after the node set them (small
    /// buffers, a wrapped replay hook, negative controls such as
    /// `nokv::Options::unsafe_ack_before_sync`). Never set this in production.
    #[doc(hidden)]
    pub engine_tuning: Option<EngineTuning>,
}

impl NodeHooks {
    /// The flag that stops the node: `stop`, or a new one SIGTERM/SIGINT set.
    pub(crate) fn stop_flag(&self) -> Result<Arc<AtomicBool>> {
        if let Some(stop) = &self.stop {
            return Ok(stop.clone());
        }
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, flag.clone())
                .map_err(|e| Error::Config(format!("install signal handler: {e}")))?;
        }
        Ok(flag)
    }

    /// Applies `fs` and `engine_tuning` to core `core`'s engine options.
    pub(crate) fn adjust_engine(&self, core: usize, opts: &mut nokv::Options) {
        if let Some(fs) = &self.fs {
            opts.fs = Some(fs.clone());
        }
        if let Some(tune) = &self.engine_tuning {
            tune(core, opts);
        }
    }
}

impl std::fmt::Debug for NodeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHooks")
            .field("fs", &self.fs.is_some())
            .field("stop", &self.stop)
            .field("listening", &self.listening.is_some())
            .field("engine_tuning", &self.engine_tuning.is_some())
            .finish()
    }
}
