//! The receiving end of snapshot shipping: snapshot frames from another store
//! (`SnapFrame::decode`) driving a `Staging` directory (chunks appended at their offsets,
//! then `finish` checking every announced file and moving the directory into place), on
//! real files under a temporary directory.
//!
//! Input: snapshot frame payloads separated by `SEP` (at most 16). Chunks get a valid crc
//! when the frame's crc is 0, so the file handling behind the check is reached.
//!
//! Checks: no panic; a frame that decodes re-encodes to one that decodes the same; no file
//! is ever written outside the snapshot directory, whatever names the sender uses; a
//! transfer that finishes holds exactly the announced files with their sizes and crcs.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use nokv_raft::snapshot_stream::{list_files, SnapFrame, Staging};
use nokv_raft_fuzz::split_parts;

static RUN: AtomicU64 = AtomicU64::new(0);

/// Every file under `dir`, as paths relative to it.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.push(rel.to_path_buf());
            }
        }
    }
    out
}

fn drive(root: &Path, frames: &[SnapFrame]) {
    let snap_dir = root.join("snap");
    let mut staging: Option<Staging> = None;
    for f in frames {
        let (key, to_core) = f.key();
        if staging.as_ref().is_none_or(|s| s.key != key) {
            match Staging::start(&snap_dir, key, to_core) {
                Ok(s) => staging = Some(s),
                Err(_) => return,
            }
        }
        let Some(s) = staging.as_mut() else { return };
        match f {
            SnapFrame::Chunk {
                file,
                offset,
                data,
                crc,
                ..
            } => {
                let crc = if *crc == 0 {
                    crc32fast::hash(data)
                } else {
                    *crc
                };
                if s.write_chunk(file, *offset, data, crc).is_err() {
                    s.discard();
                    staging = None;
                }
            }
            SnapFrame::Done { files, .. } => {
                if let Ok(dest) = s.finish(&snap_dir, files) {
                    let got = list_files(&dest, &key).expect("a finished snapshot lists");
                    assert_eq!(got.len(), files.len(), "files other than those announced");
                    for m in files {
                        let bytes = std::fs::read(dest.join(&m.name)).expect("announced file");
                        assert_eq!(bytes.len() as u64, m.size);
                        assert_eq!(crc32fast::hash(&bytes), m.crc);
                    }
                } else {
                    s.discard();
                }
                staging = None;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    for p in split_parts(data, 16) {
        if let Ok(f) = SnapFrame::decode(p) {
            let again = SnapFrame::decode(&f.encode()).ok();
            assert_eq!(again.as_ref(), Some(&f), "snapshot frame round trip");
            frames.push(f);
        }
    }
    if frames.is_empty() {
        return;
    }
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!(
        "nokv-fuzz-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(root.join("snap")).expect("create the fuzz temp dir");
    drive(&root, &frames);
    let outside: Vec<PathBuf> = all_files(&root)
        .into_iter()
        .filter(|p| !p.starts_with("snap"))
        .collect();
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        outside.is_empty(),
        "files written outside the snapshot dir: {outside:?}"
    );
});
