//! Shipping a region snapshot's files between stores ([`crate::wire::kind::SNAPSHOT_CHUNK`]
//! frames on the store RPC port).
//!
//! The sender ([`send_snapshot`], blocking IO: run it on a blocking pool or a thread)
//! walks the export directory ([`crate::snapshot::SnapshotTask::run`]) and writes, over
//! its own connection, one [`SnapFrame::Chunk`] per at most [`CHUNK_BYTES`] of a file
//! (region, snapshot term/index, file name, offset, bytes, crc32 of the bytes), then one
//! [`SnapFrame::Done`] with every file's name, size and crc32 and the raft message
//! (a `RaftEnvelope` holding MsgSnapshot). Flow control is TCP's: one chunk is in memory
//! at a time and a write waits while the receiver has not read the previous ones.
//!
//! The receiver ([`Staging`], blocking IO too) appends each chunk at its offset in a
//! staging directory, checking its crc, then on `Done` checks every file's size and crc
//! and that no other file arrived, and renames the staging directory to the snapshot's
//! directory ([`crate::snapshot::SnapshotKey::dir_name`]); only then is the raft message
//! stepped (the crash-safe [`crate::snapshot::ApplySnapshot`] ingests it). A transfer
//! that fails any check is discarded.

use crate::codec::{put_bytes, put_u64, Reader};
use crate::snapshot::SnapshotKey;
use crate::wire::{encode_raw, kind};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Largest file slice in one chunk frame (1 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Why shipping or receiving a snapshot failed.
#[derive(Debug, Error)]
pub enum StreamError {
    /// Reading or writing a snapshot file or directory failed.
    #[error("snapshot {key}: {op} {path}: {source}")]
    File {
        /// The snapshot (`dir_name`).
        key: String,
        /// What was done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The connection to the receiving store failed.
    #[error("snapshot {key}: {op} {addr}: {source}")]
    Net {
        /// The snapshot (`dir_name`).
        key: String,
        /// What was done.
        op: &'static str,
        /// The receiving store's address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// A frame's payload is not a snapshot frame.
    #[error("undecodable snapshot frame: {0}")]
    Decode(String),
    /// The received data does not match what the sender announced.
    #[error("snapshot {key}: {detail}")]
    Mismatch {
        /// The snapshot (`dir_name`).
        key: String,
        /// What differs.
        detail: String,
    },
}

/// One file of a snapshot: path relative to the snapshot directory, size, crc32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Relative path (`part-0/000001.sst`), `/`-separated.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// crc32 (crc32fast) of the whole file.
    pub crc: u32,
}

/// The payload of a snapshot frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapFrame {
    /// A slice of one file.
    Chunk {
        /// Which snapshot.
        key: SnapshotKey,
        /// The receiving store's core that owns the region.
        to_core: u32,
        /// Relative file name.
        file: String,
        /// Where `data` starts in the file.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
        /// crc32 of `data`.
        crc: u32,
    },
    /// The end of a transfer: every file, and the raft message to step once they check out.
    Done {
        /// Which snapshot.
        key: SnapshotKey,
        /// The receiving store's core that owns the region.
        to_core: u32,
        /// Every file of the snapshot.
        files: Vec<FileMeta>,
        /// The encoded `RaftEnvelope` (prost) holding the MsgSnapshot.
        envelope: Vec<u8>,
    },
}

const TAG_CHUNK: u8 = 1;
const TAG_DONE: u8 = 2;

fn put_key(out: &mut Vec<u8>, key: &SnapshotKey, to_core: u32) {
    put_u64(out, key.region);
    put_u64(out, key.term);
    put_u64(out, key.index);
    put_u64(out, u64::from(to_core));
}

impl SnapFrame {
    /// The snapshot this frame belongs to and the core it is for.
    pub fn key(&self) -> (SnapshotKey, u32) {
        match self {
            SnapFrame::Chunk { key, to_core, .. } | SnapFrame::Done { key, to_core, .. } => {
                (*key, *to_core)
            }
        }
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            SnapFrame::Chunk {
                key,
                to_core,
                file,
                offset,
                data,
                crc,
            } => {
                out.reserve(data.len() + 128);
                out.push(TAG_CHUNK);
                put_key(&mut out, key, *to_core);
                put_bytes(&mut out, file.as_bytes());
                put_u64(&mut out, *offset);
                put_u64(&mut out, u64::from(*crc));
                put_bytes(&mut out, data);
            }
            SnapFrame::Done {
                key,
                to_core,
                files,
                envelope,
            } => {
                out.push(TAG_DONE);
                put_key(&mut out, key, *to_core);
                put_u64(&mut out, files.len() as u64);
                for f in files {
                    put_bytes(&mut out, f.name.as_bytes());
                    put_u64(&mut out, f.size);
                    put_u64(&mut out, u64::from(f.crc));
                }
                put_bytes(&mut out, envelope);
            }
        }
        out
    }

    /// Decodes [`SnapFrame::encode`]'s output.
    pub fn decode(buf: &[u8]) -> Result<SnapFrame, StreamError> {
        Self::decode_inner(buf).map_err(|e| StreamError::Decode(e.to_string()))
    }

    fn decode_inner(buf: &[u8]) -> crate::Result<SnapFrame> {
        let mut r = Reader::new(buf, "snapshot frame");
        let tag = r.u8()?;
        let key = SnapshotKey {
            region: r.u64()?,
            term: r.u64()?,
            index: r.u64()?,
        };
        let to_core = u32::try_from(r.u64()?).unwrap_or(u32::MAX);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let frame = match tag {
            TAG_CHUNK => {
                let file = text(r.bytes()?);
                let offset = r.u64()?;
                let crc = r.u64()? as u32;
                let data = r.bytes()?.to_vec();
                SnapFrame::Chunk {
                    key,
                    to_core,
                    file,
                    offset,
                    data,
                    crc,
                }
            }
            TAG_DONE => {
                let n = r.u64()?;
                let mut files = Vec::new();
                for _ in 0..n.min(1 << 16) {
                    files.push(FileMeta {
                        name: text(r.bytes()?),
                        size: r.u64()?,
                        crc: r.u64()? as u32,
                    });
                }
                let envelope = r.bytes()?.to_vec();
                SnapFrame::Done {
                    key,
                    to_core,
                    files,
                    envelope,
                }
            }
            t => {
                return Err(crate::Error::Corrupt {
                    what: "snapshot frame",
                    detail: format!("unknown tag {t}"),
                })
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

/// Whether `name` is a plain relative path (no `..`, not absolute): a sender cannot make
/// the receiver write outside the staging directory.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Every file under `dir` (relative names, sorted).
pub fn list_files(dir: &Path, key: &SnapshotKey) -> Result<Vec<PathBuf>, StreamError> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = dir.join(&rel);
        let entries = std::fs::read_dir(&path).map_err(|source| StreamError::File {
            key: key.dir_name(),
            op: "list",
            path: path.clone(),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| StreamError::File {
                key: key.dir_name(),
                op: "list",
                path: path.clone(),
                source,
            })?;
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let child = rel.join(e.file_name());
            if is_dir {
                todo.push(child);
            } else {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The connection a snapshot travels on: the plain socket, or a session over it (TLS,
/// made by a [`Connector`]).
pub trait SnapConn: Read + Write {
    /// Says that nothing more follows (TLS: close_notify); the socket's half-close follows.
    fn end_writes(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SnapConn for TcpStream {}

/// Turns the connected socket (timeouts set) into the connection the snapshot goes over,
/// e.g. a TLS handshake (this crate knows nothing of TLS; the node brings it).
pub type Connector = dyn Fn(TcpStream) -> std::io::Result<Box<dyn SnapConn>> + Send + Sync;

/// What a finished send moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Files sent.
    pub files: usize,
    /// File bytes sent.
    pub bytes: u64,
    /// Time spent waiting for the rate limit.
    pub throttled: Duration,
}

/// Streams the snapshot in `dir` to the store at `addr` (cluster `cluster_id`), then the
/// raft `envelope` (blocking IO), over the socket or what `connector` makes of it (TLS).
/// `timeout` bounds the connect, a handshake's reads and each write. With a `limiter`
/// every chunk first takes its bytes from it (the store's snapshot rate limit).
#[allow(clippy::too_many_arguments)]
pub fn send_snapshot(
    addr: SocketAddr,
    cluster_id: u64,
    dir: &Path,
    key: SnapshotKey,
    to_core: u32,
    envelope: Vec<u8>,
    timeout: Duration,
    connector: Option<&Connector>,
    limiter: Option<&crate::RateLimiter>,
) -> Result<Sent, StreamError> {
    let name = key.dir_name();
    let net = |op: &'static str| {
        let name = name.clone();
        move |source| StreamError::Net {
            key: name,
            op,
            addr,
            source,
        }
    };
    let file_err = |op: &'static str, path: &Path| {
        let name = name.clone();
        let path = path.to_path_buf();
        move |source| StreamError::File {
            key: name,
            op,
            path,
            source,
        }
    };
    let files = list_files(dir, &key)?;
    let tcp = crate::transport::connect_std(&addr, timeout).map_err(net("connect"))?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(net("set the write timeout"))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(net("set the read timeout"))?;
    let _ = tcp.set_nodelay(true);
    // Kept for the half-close and the wait at the end, under whatever wraps the socket.
    let raw = tcp.try_clone().map_err(net("clone the socket of"))?;
    let mut stream: Box<dyn SnapConn> = match connector {
        Some(c) => c(tcp).map_err(net("handshake with"))?,
        None => Box::new(tcp),
    };
    let mut metas = Vec::with_capacity(files.len());
    let mut sent = Sent::default();
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut frame = Vec::with_capacity(CHUNK_BYTES + 256);
    for rel in &files {
        let rel_name = rel.to_string_lossy().replace('\\', "/");
        let path = dir.join(rel);
        let mut f = std::fs::File::open(&path).map_err(file_err("open", &path))?;
        let mut whole = crc32fast::Hasher::new();
        let mut offset = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf).map_err(file_err("read", &path))?;
            if n == 0 && offset > 0 {
                break;
            }
            whole.update(&buf[..n]);
            let chunk = SnapFrame::Chunk {
                key,
                to_core,
                file: rel_name.clone(),
                offset,
                data: buf[..n].to_vec(),
                crc: crc32fast::hash(&buf[..n]),
            };
            frame.clear();
            encode_raw(
                &mut frame,
                kind::SNAPSHOT_CHUNK,
                cluster_id,
                0,
                &chunk.encode(),
            );
            if let Some(l) = limiter {
                sent.throttled += l.throttle(n as u64);
            }
            stream.write_all(&frame).map_err(net("write a chunk to"))?;
            offset += n as u64;
            if n < buf.len() {
                break;
            }
        }
        sent.files += 1;
        sent.bytes += offset;
        metas.push(FileMeta {
            name: rel_name,
            size: offset,
            crc: whole.finalize(),
        });
    }
    let done = SnapFrame::Done {
        key,
        to_core,
        files: metas,
        envelope,
    };
    frame.clear();
    encode_raw(
        &mut frame,
        kind::SNAPSHOT_CHUNK,
        cluster_id,
        0,
        &done.encode(),
    );
    stream.write_all(&frame).map_err(net("write the end to"))?;
    stream.flush().map_err(net("flush"))?;
    stream.end_writes().map_err(net("end the transfer to"))?;
    let _ = raw.shutdown(std::net::Shutdown::Write);
    // Wait (bounded) for the receiver to close: it read everything by then. Whatever it
    // sends before (TLS session tickets) is skipped.
    let deadline = std::time::Instant::now() + timeout;
    let mut sink = [0u8; 4096];
    let mut raw = raw;
    while std::time::Instant::now() < deadline {
        match raw.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(sent)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

/// A transfer being received: its staging directory (blocking IO in every method).
#[derive(Debug)]
pub struct Staging {
    /// Which snapshot.
    pub key: SnapshotKey,
    /// The receiving core.
    pub to_core: u32,
    /// Where the chunks go until the transfer checks out.
    pub dir: PathBuf,
    /// File bytes received so far.
    pub bytes: u64,
}

impl Staging {
    /// Starts receiving `key` under `snap_dir` (a leftover of an earlier attempt is removed).
    pub fn start(snap_dir: &Path, key: SnapshotKey, to_core: u32) -> Result<Staging, StreamError> {
        let dir = snap_dir.join(format!(".recv-{}", key.dir_name()));
        let err = |op: &'static str| {
            let dir = dir.clone();
            move |source| StreamError::File {
                key: key.dir_name(),
                op,
                path: dir,
                source,
            }
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(err("remove a stale staging dir"))?;
        }
        std::fs::create_dir_all(&dir).map_err(err("create the staging dir"))?;
        Ok(Staging {
            key,
            to_core,
            dir,
            bytes: 0,
        })
    }

    fn mismatch(&self, detail: String) -> StreamError {
        StreamError::Mismatch {
            key: self.key.dir_name(),
            detail,
        }
    }

    /// Appends one chunk (checks its crc, name and offset).
    pub fn write_chunk(
        &mut self,
        file: &str,
        offset: u64,
        data: &[u8],
        crc: u32,
    ) -> Result<(), StreamError> {
        if !safe_name(file) {
            return Err(self.mismatch(format!("unsafe file name {file:?}")));
        }
        if crc32fast::hash(data) != crc {
            return Err(self.mismatch(format!("chunk of {file} at {offset} fails its crc")));
        }
        let path = self.dir.join(file);
        let err = |op: &'static str| {
            let path = path.clone();
            let key = self.key.dir_name();
            move |source| StreamError::File {
                key,
                op,
                path,
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err("create the dir of"))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err("open"))?;
        let len = f.metadata().map_err(err("stat"))?.len();
        if len != offset {
            return Err(self.mismatch(format!(
                "chunk of {file} at offset {offset}, the file has {len} bytes"
            )));
        }
        f.write_all(data).map_err(err("write"))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// Checks every file against `files` (sizes, crc32, nothing else received), syncs them
    /// and moves the directory to `snap_dir/<dir_name>`; returns that directory.
    pub fn finish(&self, snap_dir: &Path, files: &[FileMeta]) -> Result<PathBuf, StreamError> {
        let got = list_files(&self.dir, &self.key)?;
        let mut want: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        want.sort_unstable();
        let got_names: Vec<String> = got
            .iter()
            .map(|p| p.to_string_lossy().replace('\\', "/"))
            .collect();
        if got_names
            .iter()
            .map(String::as_str)
            .ne(want.iter().copied())
        {
            return Err(self.mismatch(format!("files received {got_names:?}, announced {want:?}")));
        }
        for f in files {
            let path = self.dir.join(&f.name);
            let err = |op: &'static str| {
                let path = path.clone();
                let key = self.key.dir_name();
                move |source| StreamError::File {
                    key,
                    op,
                    path,
                    source,
                }
            };
            let mut file = std::fs::File::open(&path).map_err(err("open"))?;
            let mut crc = crc32fast::Hasher::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = file.read(&mut buf).map_err(err("read"))?;
                if n == 0 {
                    break;
                }
                crc.update(&buf[..n]);
                size += n as u64;
            }
            let crc = crc.finalize();
            if size != f.size || crc != f.crc {
                return Err(self.mismatch(format!(
                    "{}: {size} bytes crc {crc:08x}, announced {} bytes crc {:08x}",
                    f.name, f.size, f.crc
                )));
            }
            file.sync_all().map_err(err("sync"))?;
        }
        let dest = snap_dir.join(self.key.dir_name());
        let err = |op: &'static str| {
            let dest = dest.clone();
            let key = self.key.dir_name();
            move |source| StreamError::File {
                key,
                op,
                path: dest,
                source,
            }
        };
        if dest.exists() {
            std::fs::remove_dir_all(&dest).map_err(err("remove an older copy of"))?;
        }
        std::fs::rename(&self.dir, &dest).map_err(err("rename the staging dir to"))?;
        Ok(dest)
    }

    /// Removes the staging directory (a failed transfer).
    pub fn discard(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::debug!(dir = %self.dir.display(), error = %e, "could not remove a failed snapshot transfer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FrameDecoder, FrameLimits};

    const KEY: SnapshotKey = SnapshotKey {
        region: 3,
        term: 2,
        index: 99,
    };

    fn export(dir: &Path) {
        std::fs::create_dir_all(dir.join("part-0")).expect("mkdir");
        std::fs::write(dir.join("part-0/a.sst"), vec![7u8; CHUNK_BYTES * 2 + 5]).expect("w");
        std::fs::write(dir.join("part-0/SNAPSHOT"), b"manifest").expect("w");
        std::fs::write(dir.join("part-0/empty"), b"").expect("w");
    }

    /// Receives every frame of one connection into `snap_dir`; returns the envelope.
    fn receive(bytes: &[u8], snap_dir: &Path, corrupt: bool) -> Result<Vec<u8>, StreamError> {
        let mut dec = FrameDecoder::new(FrameLimits::new(7));
        dec.feed(bytes);
        let mut staging: Option<Staging> = None;
        let mut first = true;
        while let Some(frame) = dec.next_frame().expect("frame") {
            match SnapFrame::decode(&frame.payload)? {
                SnapFrame::Chunk {
                    key,
                    to_core,
                    file,
                    offset,
                    mut data,
                    crc,
                } => {
                    if staging.is_none() {
                        staging = Some(Staging::start(snap_dir, key, to_core)?);
                    }
                    if corrupt && first && !data.is_empty() {
                        data[0] ^= 1;
                    }
                    first = false;
                    let s = staging.as_mut().expect("staging");
                    if let Err(e) = s.write_chunk(&file, offset, &data, crc) {
                        s.discard();
                        return Err(e);
                    }
                }
                SnapFrame::Done {
                    files, envelope, ..
                } => {
                    let s = staging.take().expect("staging");
                    s.finish(snap_dir, &files)?;
                    return Ok(envelope);
                }
            }
        }
        panic!("no end frame");
    }

    #[test]
    fn a_rate_limited_snapshot_waits_for_its_bytes_and_arrives_whole() {
        let src = tempfile::tempdir().expect("tempdir");
        export(src.path());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).expect("read");
            all
        });
        // 8 chunks per second, its saved-up second spent: the 3 chunks wait their turn.
        let limiter = crate::RateLimiter::new(8 * CHUNK_BYTES as u64);
        let _ = limiter.reserve(8 * CHUNK_BYTES as u64);
        let sent = send_snapshot(
            addr,
            7,
            src.path(),
            KEY,
            1,
            b"env".to_vec(),
            Duration::from_secs(5),
            None,
            Some(&limiter),
        )
        .expect("send");
        assert!(sent.throttled > Duration::ZERO, "{sent:?}");
        assert_eq!(sent.bytes, (CHUNK_BYTES * 2 + 5 + 8) as u64);
        let bytes = reader.join().expect("reader");
        let dst = tempfile::tempdir().expect("tempdir");
        assert_eq!(receive(&bytes, dst.path(), false).expect("receive"), b"env");
        assert_eq!(
            std::fs::read(dst.path().join(KEY.dir_name()).join("part-0/a.sst"))
                .expect("read")
                .len(),
            CHUNK_BYTES * 2 + 5
        );
    }

    #[test]
    fn a_snapshot_streams_in_checked_chunks_and_a_corrupt_one_is_discarded() {
        let src = tempfile::tempdir().expect("tempdir");
        export(src.path());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut all = Vec::new();
            s.read_to_end(&mut all).expect("read");
            all
        });
        let sent = send_snapshot(
            addr,
            7,
            src.path(),
            KEY,
            1,
            b"env".to_vec(),
            Duration::from_secs(5),
            None,
            None,
        )
        .expect("send");
        assert_eq!(sent.throttled, Duration::ZERO);
        assert_eq!(sent.files, 3);
        assert_eq!(sent.bytes, (CHUNK_BYTES * 2 + 5 + 8) as u64);
        let bytes = reader.join().expect("reader");

        let dst = tempfile::tempdir().expect("tempdir");
        assert_eq!(receive(&bytes, dst.path(), false).expect("receive"), b"env");
        let dir = dst.path().join(KEY.dir_name());
        assert_eq!(
            std::fs::read(dir.join("part-0/a.sst")).expect("read").len(),
            CHUNK_BYTES * 2 + 5
        );
        assert_eq!(
            std::fs::read(dir.join("part-0/SNAPSHOT")).expect("read"),
            b"manifest"
        );

        let bad = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            receive(&bytes, bad.path(), true),
            Err(StreamError::Mismatch { .. })
        ));
        assert!(!bad.path().join(KEY.dir_name()).exists());
        assert!(!bad
            .path()
            .join(format!(".recv-{}", KEY.dir_name()))
            .exists());
    }

    #[test]
    fn a_missing_file_or_an_unsafe_name_fails_the_transfer() {
        let dst = tempfile::tempdir().expect("tempdir");
        let mut s = Staging::start(dst.path(), KEY, 0).expect("start");
        assert!(s
            .write_chunk("../evil", 0, b"x", crc32fast::hash(b"x"))
            .is_err());
        s.write_chunk("part-0/a", 0, b"abc", crc32fast::hash(b"abc"))
            .expect("chunk");
        assert!(s
            .write_chunk("part-0/a", 1, b"x", crc32fast::hash(b"x"))
            .is_err());
        let files = vec![
            FileMeta {
                name: "part-0/a".into(),
                size: 3,
                crc: crc32fast::hash(b"abc"),
            },
            FileMeta {
                name: "part-0/b".into(),
                size: 1,
                crc: 0,
            },
        ];
        assert!(s.finish(dst.path(), &files).is_err());
        assert!(s.finish(dst.path(), &files[..1]).is_ok());
        assert!(dst.path().join(KEY.dir_name()).join("part-0/a").exists());
    }
}
