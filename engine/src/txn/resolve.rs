//! Resolving the secondary locks of a transaction whose fate is known.

use super::commit::commit_key;
use super::error::TxnResult;
use super::mvcc::{check_args, check_commit_ts, TxnBatch};
use super::reader::MvccRead;
use super::rollback::rollback_key;
use crate::WriteBatch;

/// Settles `keys` of the transaction `start_ts` after its primary decided: commits them at
/// `commit_ts` (`Some`) or rolls them back (`None`). A key whose lock is already gone is
/// skipped when committing (it was committed earlier) and gets a rollback record when
/// rolling back (as [`super::rollback()`]).
pub fn resolve_lock<R: MvccRead + ?Sized>(
    r: &R,
    start_ts: u64,
    commit_ts: Option<u64>,
    keys: &[Vec<u8>],
) -> TxnResult<WriteBatch> {
    check_args(start_ts, keys.iter().map(Vec::as_slice))?;
    let mut out = TxnBatch::new(r.ns());
    match commit_ts {
        Some(commit_ts) => {
            check_commit_ts(start_ts, commit_ts)?;
            for key in keys {
                commit_key(r, &mut out, key, start_ts, commit_ts, false)?;
            }
        }
        None => {
            for key in keys {
                rollback_key(r, &mut out, key, start_ts)?;
            }
        }
    }
    Ok(out.into_batch())
}
