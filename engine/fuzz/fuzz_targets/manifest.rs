//! Manifest recovery: `CURRENT`, the record framing of a manifest file and each
//! `VersionEdit`, folded into a `ManifestState` by `manifest::load` on an in-memory
//! filesystem.
//!
//! Input: `[mode u8]` then parts separated by `SEP`. Mode bit 0: each part is one edit
//! payload, framed as a record with a valid checksum (so the edit decoder is reached);
//! otherwise the first part is the manifest file as is. Mode bit 1: `CURRENT` is the last
//! part instead of the right name.
//!
//! Checks: no panic; an edit that decodes re-encodes to an edit that decodes the same; a
//! state that loads is recreated exactly by its own snapshot edit (what the next open writes).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nokv::manifest::{self, ManifestState};
use nokv::record;
use nokv::version::VersionEdit;
use nokv_fuzz::{mem_fs, split_parts, write_file};

const LEVELS: usize = 7;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let parts = split_parts(rest, 16);
    for p in &parts {
        if let Ok(e) = VersionEdit::decode(p) {
            assert_eq!(
                VersionEdit::decode(&e.encode()).as_ref(),
                Ok(&e),
                "edit round trip"
            );
        }
    }
    let file = if mode & 1 == 1 {
        let mut out = Vec::new();
        for p in &parts {
            record::encode(&mut out, 0, 1, p);
        }
        out
    } else {
        parts[0].to_vec()
    };
    let dir = Path::new("/db");
    let fs = mem_fs(dir);
    write_file(&*fs, &dir.join("MANIFEST-000001"), &file);
    let current: &[u8] = match parts.last() {
        Some(p) if mode & 2 == 2 => p,
        _ => b"MANIFEST-000001\n",
    };
    write_file(&*fs, &dir.join("CURRENT"), current);
    let Ok(Some((state, _))) = manifest::load(&*fs, dir, LEVELS) else {
        return;
    };
    let snap = state.snapshot_edit();
    let decoded = VersionEdit::decode(&snap.encode()).expect("a snapshot edit decodes");
    assert_eq!(decoded, snap, "snapshot edit round trip");
    let mut again = ManifestState::new(LEVELS);
    again
        .apply(&decoded)
        .expect("a state's own snapshot edit applies");
    assert_eq!(
        again.snapshot_edit(),
        snap,
        "the snapshot edit does not recreate the state"
    );
});
