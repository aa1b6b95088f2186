//! Byte encodings of what this crate persists: raft entries and hard state as
//! opaque WAL records, region descriptors in the meta namespace.
//!
//! Integers are big-endian; byte strings are `u32 length | bytes`. The engine
//! frames and checksums every record, so these carry no checksum of their own.

use crate::error::{Error, Result};
use raft::prelude::{Entry, EntryType, HardState};

/// Opaque WAL record tag: one raft entry of one region.
pub const TAG_ENTRY: u8 = 1;
/// Opaque WAL record tag: a region's hard state (term, vote, commit).
pub const TAG_HARD_STATE: u8 = 2;
/// Opaque WAL record tag: a region's checkpoint (hard state + the index the log is truncated at).
pub const TAG_CHECKPOINT: u8 = 3;

/// Appends `v` big-endian.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends `u32 length | bytes`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// A cursor over an encoded value that reports truncation as [`Error::Corrupt`].
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, naming it `what` in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Corrupt {
                what: self.what,
                detail: format!("truncated: wanted {n} bytes, {} left", self.buf.len()),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads `u32 length | bytes`.
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Fails unless everything was read.
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Corrupt {
                what: self.what,
                detail: format!("{} trailing bytes", self.buf.len()),
            })
        }
    }
}

/// `region u64 | type u8 | term u64 | index u64 | data | context`.
pub fn encode_entry(region: u64, e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 1 + 16 + 8 + e.data.len() + e.context.len());
    put_u64(&mut out, region);
    out.push(e.entry_type as u8);
    put_u64(&mut out, e.term);
    put_u64(&mut out, e.index);
    put_bytes(&mut out, &e.data);
    put_bytes(&mut out, &e.context);
    out
}

/// Decodes [`encode_entry`]'s output: (region, entry).
pub fn decode_entry(buf: &[u8]) -> Result<(u64, Entry)> {
    let mut r = Reader::new(buf, "raft entry record");
    let region = r.u64()?;
    let kind = match r.u8()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => {
            return Err(Error::Corrupt {
                what: "raft entry record",
                detail: format!("unknown entry type {t}"),
            })
        }
    };
    let mut e = Entry {
        entry_type: kind,
        term: r.u64()?,
        index: r.u64()?,
        ..Default::default()
    };
    e.data = r.bytes()?.to_vec().into();
    e.context = r.bytes()?.to_vec().into();
    r.finish()?;
    Ok((region, e))
}

fn put_hard_state(out: &mut Vec<u8>, hs: &HardState) {
    put_u64(out, hs.term);
    put_u64(out, hs.vote);
    put_u64(out, hs.commit);
}

fn read_hard_state(r: &mut Reader) -> Result<HardState> {
    Ok(HardState {
        term: r.u64()?,
        vote: r.u64()?,
        commit: r.u64()?,
        ..Default::default()
    })
}

/// `region u64 | term u64 | vote u64 | commit u64`.
pub fn encode_hard_state(region: u64, hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    put_u64(&mut out, region);
    put_hard_state(&mut out, hs);
    out
}

/// Decodes [`encode_hard_state`]'s output: (region, hard state).
pub fn decode_hard_state(buf: &[u8]) -> Result<(u64, HardState)> {
    let mut r = Reader::new(buf, "raft hard state record");
    let region = r.u64()?;
    let hs = read_hard_state(&mut r)?;
    r.finish()?;
    Ok((region, hs))
}

/// A region's log checkpoint: its hard state and the (index, term) its log is truncated at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// Entries at or below this index are applied and durable in SST files.
    pub truncated_index: u64,
    /// The term of the entry at `truncated_index`.
    pub truncated_term: u64,
}

/// `region u64 | term | vote | commit | truncated_index u64 | truncated_term u64`.
pub fn encode_checkpoint(region: u64, c: &Checkpoint) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    put_u64(&mut out, region);
    put_hard_state(&mut out, &c.hard_state);
    put_u64(&mut out, c.truncated_index);
    put_u64(&mut out, c.truncated_term);
    out
}

/// Decodes [`encode_checkpoint`]'s output: (region, checkpoint).
pub fn decode_checkpoint(buf: &[u8]) -> Result<(u64, Checkpoint)> {
    let mut r = Reader::new(buf, "raft checkpoint record");
    let region = r.u64()?;
    let hard_state = read_hard_state(&mut r)?;
    let c = Checkpoint {
        hard_state,
        truncated_index: r.u64()?,
        truncated_term: r.u64()?,
    };
    r.finish()?;
    Ok((region, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_truncation() {
        let mut e = Entry {
            term: 3,
            index: 42,
            ..Default::default()
        };
        e.data = b"payload".to_vec().into();
        let buf = encode_entry(7, &e);
        let (region, back) = decode_entry(&buf).expect("decode");
        assert_eq!((region, back.term, back.index), (7, 3, 42));
        assert_eq!(&back.data[..], b"payload");
        assert!(decode_entry(&buf[..buf.len() - 1]).is_err());
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode_entry(&longer).is_err());

        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 9,
            ..Default::default()
        };
        assert_eq!(
            decode_hard_state(&encode_hard_state(5, &hs)).expect("hs"),
            (5, hs.clone())
        );
        let c = Checkpoint {
            hard_state: hs,
            truncated_index: 8,
            truncated_term: 2,
        };
        assert_eq!(
            decode_checkpoint(&encode_checkpoint(5, &c)).expect("ckpt"),
            (5, c)
        );
    }
}
