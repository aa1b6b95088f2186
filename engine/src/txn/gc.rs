//! The transaction GC's question about a long value in `CF_DEFAULT`: does a lock or a put
//! record of its transaction still refer to it? (Compaction drops it below the transaction
//! safe point when nothing does; see `compaction::TxnGc` and docs/transactions.md,
//! "Garbage collection".)

use super::lock::Lock;
use super::write::{Write, WriteKind};
use crate::key::{Kind, CF_LOCK, CF_WRITE, MAX_VERSION, PREFIX_LEN};
use crate::memtable::Found;
use crate::Result;

/// Most write records walked for one value before it is kept unasked.
const MAX_WALK: usize = 4096;

/// The newest entry of a logical key visible at a version (the engine's point lookup).
pub(crate) type Find<'a> = &'a dyn Fn(&[u8], u64) -> Result<Option<Found>>;

/// Whether the long value of `key` (a user key of namespace `ns`) written by the
/// transaction `start_ts` is still referred to: by that transaction's lock, or by its put
/// record. Anything unexpected (an undecodable record, an error, a walk longer than
/// `MAX_WALK` records) answers yes: the value is kept.
pub(crate) fn value_referenced(find: Find<'_>, ns: u8, key: &[u8], start_ts: u64) -> bool {
    referenced(find, ns, key, start_ts).unwrap_or(true)
}

fn referenced(find: Find<'_>, ns: u8, key: &[u8], start_ts: u64) -> Result<bool> {
    let logical = |cf: u8| {
        let mut k = Vec::with_capacity(PREFIX_LEN + key.len());
        k.extend_from_slice(&[ns, cf]);
        k.extend_from_slice(key);
        k
    };
    if let Some(f) = find(&logical(CF_LOCK), MAX_VERSION)? {
        if f.kind != Kind::Delete as u8 {
            match Lock::decode(&f.value) {
                Ok(lock) if lock.start_ts != start_ts => {}
                _ => return Ok(true),
            }
        }
    }
    let writes = logical(CF_WRITE);
    let mut ts = MAX_VERSION;
    for _ in 0..MAX_WALK {
        let Some(f) = find(&writes, ts)? else {
            return Ok(false);
        };
        if f.version < start_ts {
            return Ok(false);
        }
        if f.kind != Kind::Put as u8 {
            return Ok(true);
        }
        match Write::decode(&f.value) {
            Ok(w) if w.start_ts == start_ts => return Ok(w.kind == WriteKind::Put),
            Ok(_) => {}
            Err(_) => return Ok(true),
        }
        match f.version.checked_sub(1) {
            Some(next) => ts = next,
            None => return Ok(false),
        }
    }
    Ok(true)
}
