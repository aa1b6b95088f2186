//! The timestamp layout the transaction layer assumes: the coordinator's hybrid TSO.
//!
//! A timestamp is `physical_ms << 18 | logical` (`coordinator/src/tso.rs`, `LOGICAL_BITS`):
//! the high 46 bits are unix milliseconds, the low 18 a counter within the millisecond.
//! The engine cannot depend on the coordinator crate, so the layout is repeated here; lock
//! TTLs are judged on the physical part only.

/// Bits of the logical part of a timestamp (the coordinator's `tso::LOGICAL_BITS`).
pub const LOGICAL_BITS: u32 = 18;

/// The physical milliseconds of a hybrid timestamp.
pub fn physical_ms(ts: u64) -> u64 {
    ts >> LOGICAL_BITS
}

/// A hybrid timestamp from its physical milliseconds and logical counter (for tests and
/// callers without a TSO client).
pub fn compose(physical_ms: u64, logical: u64) -> u64 {
    (physical_ms << LOGICAL_BITS) | (logical & ((1 << LOGICAL_BITS) - 1))
}

/// True when a lock taken at `start_ts` with `ttl_ms` has expired at `current_ts`: the
/// physical time of `current_ts` is at least the lock's physical time plus its TTL.
pub fn lock_expired(start_ts: u64, ttl_ms: u64, current_ts: u64) -> bool {
    physical_ms(current_ts) >= physical_ms(start_ts).saturating_add(ttl_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let ts = compose(1_700_000_000_000, 5);
        assert_eq!(physical_ms(ts), 1_700_000_000_000);
        assert_eq!(ts & ((1 << LOGICAL_BITS) - 1), 5);
    }

    #[test]
    fn ttl_is_judged_on_physical_time() {
        let start = compose(1000, 7);
        assert!(!lock_expired(
            start,
            100,
            compose(1099, (1 << LOGICAL_BITS) - 1)
        ));
        assert!(lock_expired(start, 100, compose(1100, 0)));
        assert!(!lock_expired(start, u64::MAX, u64::MAX));
    }
}
