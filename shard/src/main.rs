//! `nokv-server`: a NoKV node speaking the Redis protocol.

use clap::Parser;
use nokv_shard::{Flags, Settings};

/// mimalloc (glibc's malloc/free was ~20% of a request's CPU), except glommio's io_uring buffers.
#[global_allocator]
static GLOBAL: nokv_shard::alloc::NodeAllocator = nokv_shard::alloc::NodeAllocator;

fn main() {
    let flags = Flags::parse();
    nokv_shard::logging::init();
    // FAILPOINTS="<name>=<action>;..." (docs/testing.md, "Failpoints"); test builds only.
    #[cfg(feature = "failpoints")]
    let _failpoints = nokv::__fail::FailScenario::setup();
    let result = Settings::resolve(flags).and_then(nokv_shard::run);
    if let Err(e) = result {
        tracing::error!(error = %e, "nokv-server failed");
        nokv_shard::logging::flush();
        eprintln!("nokv-server: error: {e}");
        exit_now(1);
    }
    nokv_shard::logging::flush();
    exit_now(0);
}

/// Ends the process without running at-exit handlers, once the node has stopped (cleanly:
/// engines flushed and closed; or with an error) and its logs are flushed. mimalloc's at-exit collection of the main
/// thread's heap crashed now and then (SIGSEGV walking a page's cross-thread free list,
/// about one stop in four with the store transport running; seen with mimalloc 3.3 and
/// 2.3 alike; docs/architecture.md, "Known issues"): nothing is left to do at that point.
fn exit_now(code: i32) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process; no Rust state is used afterwards.
    unsafe { libc::_exit(code) }
}
