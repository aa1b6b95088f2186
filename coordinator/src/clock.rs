//! Clocks: the wall clock the TSO reads and the monotonic clock store liveness is judged by,
//! behind one trait so tests can step them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The coordinator's time sources.
pub trait Clock: Send + Sync {
    /// Wall-clock milliseconds since the Unix epoch (may step back or jump).
    fn wall_ms(&self) -> u64;
    /// Monotonic milliseconds since an arbitrary origin (never goes back).
    fn mono_ms(&self) -> u64;
}

/// The system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> u64 {
        // A clock before 1970 reads as 0; the TSO keeps its last physical time then.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn mono_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicU64,
    mono: AtomicU64,
}

impl ManualClock {
    /// A clock at wall time `wall_ms`, monotonic time 0.
    pub fn new(wall_ms: u64) -> ManualClock {
        ManualClock {
            wall: AtomicU64::new(wall_ms),
            mono: AtomicU64::new(0),
        }
    }

    /// Sets the wall clock (it may go back).
    pub fn set_wall_ms(&self, ms: u64) {
        self.wall.store(ms, Ordering::SeqCst);
    }

    /// Advances both clocks by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.mono.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }

    fn mono_ms(&self) -> u64 {
        self.mono.load(Ordering::SeqCst)
    }
}
