//! Writes the seed corpus of the engine's fuzz targets (`corpus/<target>/`) from the real
//! encoders: a database on an in-memory filesystem, its WAL segments, tables, manifest and
//! a region snapshot. Run from `engine/fuzz/`: `cargo run --example seeds`.

use std::path::Path;
use std::sync::Arc;

use nokv::clock::ManualClock;
use nokv::fs::{FileSystem, OpenMode};
use nokv::record;
use nokv::sst::{TableBuilder, TableBuilderOptions};
use nokv::{Db, ExportOptions, KeySpace, Options, RegionRange, WriteBatch, WriteOptions};
use nokv_fuzz::{join_parts, mem_fs, read_file};

fn save(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn trim_zeros(mut b: Vec<u8>) -> Vec<u8> {
    while b.last() == Some(&0) {
        b.pop();
    }
    b
}

/// Entry records as `nokv_fuzz::entries_from` reads them.
fn entry_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for (i, key) in ["apple", "banana", "cherry", "date", "elder", "fig"]
        .iter()
        .enumerate()
    {
        out.push(key.len() as u8);
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&[i as u8 * 3, i as u8, 5]);
        out.extend_from_slice(b"value");
    }
    out
}

fn options(fs: Arc<dyn FileSystem>) -> Options {
    Options {
        fs: Some(fs),
        wal_segment_bytes: 64 << 10,
        max_batch_bytes: 32 << 10,
        write_buffer_bytes: 1 << 20,
        vlog_on_write: false,
        clock: Arc::new(ManualClock::new(1_000_000)),
        ..Options::default()
    }
}

fn write_some(db: &Db, round: u8) {
    let wo = WriteOptions::default();
    let kv = KeySpace::KV;
    let mut b = WriteBatch::new();
    b.put(b"alpha", b"one").put(b"beta", &[round; 40]);
    b.put_in(KeySpace::new(nokv::NS_REDIS, nokv::CF_DEFAULT), b"h", b"v");
    db.write(&b, &wo).expect("write");
    let mut b = WriteBatch::new();
    b.put_at(kv, b"gamma", 7, b"versioned")
        .delete_at(kv, b"alpha", 9)
        .put_in_with_expiry(kv, b"ttl", None, b"soon", 2_000_000);
    db.write(&b, &wo).expect("write");
    let mut b = WriteBatch::new();
    b.delete_range_in(kv, b"b", Some(b"c")).delete(b"zeta");
    db.write(&b, &wo).expect("write");
    db.append_opaque(&[(1, b"raft entry"), (2, b"hard state")], &wo)
        .expect("opaque");
}

fn main() {
    let dir = Path::new("/db");
    let fs = mem_fs(dir);
    let dynfs: Arc<dyn FileSystem> = fs.clone();
    let db = Db::open(dir, options(dynfs.clone())).expect("open");
    write_some(&db, 1);
    let wal = trim_zeros(read_file(&*fs, &nokv::filename::wal(dir, 2)).expect("wal"));
    // Raw segments: one, and two (the first sealed by a rotation in a second database).
    save(
        "wal_replay",
        "one-segment",
        &[[0u8].as_slice(), &wal].concat(),
    );
    let scan = record::scan(&wal, 2);
    let mut chunks = Vec::new();
    for (rtype, range) in &scan.records {
        let p = &wal[range.clone()];
        if p.len() <= 255 {
            chunks.push(*rtype);
            chunks.push(p.len() as u8);
            chunks.extend_from_slice(p);
        }
        if *rtype == nokv::wal::REC_BATCH {
            save(
                "sst_block",
                &format!("batch-{}", range.start),
                &[[7u8].as_slice(), p].concat(),
            );
        }
    }
    save(
        "wal_replay",
        "framed-records",
        &[[1u8].as_slice(), &chunks].concat(),
    );

    db.flush().expect("flush");
    write_some(&db, 2);
    let names = fs.list_dir(dir).expect("list");
    let mut segs: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with("wal-"))
        .cloned()
        .collect();
    segs.sort();
    let segs: Vec<Vec<u8>> = segs
        .iter()
        .map(|n| trim_zeros(read_file(&*fs, &dir.join(n)).expect("wal")))
        .collect();
    let mut input = vec![0u8];
    input.extend_from_slice(&join_parts(&segs));
    save("wal_replay", "segments", &input);

    // Manifest: the file as is, and its edits as payloads.
    let current = read_file(&*fs, &dir.join("CURRENT")).expect("current");
    let name = String::from_utf8(current).expect("utf8");
    let mf = read_file(&*fs, &dir.join(name.trim_end())).expect("manifest");
    let scan = record::scan(&mf, 0);
    let mut whole = mf.clone();
    // The harness names it MANIFEST-000001.
    whole.insert(0, 0);
    save("manifest", "manifest-file", &whole);
    let edits: Vec<Vec<u8>> = scan
        .records
        .iter()
        .map(|(_, r)| mf[r.clone()].to_vec())
        .collect();
    save(
        "manifest",
        "edits",
        &[[1u8].as_slice(), &join_parts(&edits)].concat(),
    );

    // Tables: the flushed one, as is and damaged, and entries to build.
    let sst = names
        .iter()
        .find(|n| n.ends_with(".sst"))
        .expect("a flushed table");
    let table = read_file(&*fs, &dir.join(sst)).expect("table");
    save("sst_table", "flushed", &[[0u8].as_slice(), &table].concat());
    save(
        "sst_table",
        "built",
        &[[0x21u8].as_slice(), &entry_bytes()].concat(),
    );
    save(
        "sst_table",
        "built-lz4-small-blocks",
        &[[0x43u8].as_slice(), &entry_bytes().repeat(3)].concat(),
    );
    let mut damaged = vec![0xa1u8];
    damaged.extend_from_slice(&entry_bytes());
    damaged.extend_from_slice(&[40, 0, 0x10]);
    save("sst_table", "built-damaged", &damaged);

    // Blocks: entries to build, a built block, a properties block, a range-deletion body.
    let entries = nokv_fuzz::entries_from(&entry_bytes());
    save(
        "sst_block",
        "model",
        &[[2u8, 3].as_slice(), &entry_bytes()].concat(),
    );
    let block = nokv::fuzzing::build_block(&entries, 2);
    save(
        "sst_block",
        "data-block",
        &[[0u8].as_slice(), &block].concat(),
    );
    save(
        "sst_block",
        "index-block",
        &[[1u8].as_slice(), &nokv::fuzzing::build_block(&entries, 1)].concat(),
    );
    save(
        "sst_block",
        "contents",
        &[[3u8, 0].as_slice(), &block].concat(),
    );
    let tdir = Path::new("/t");
    let tfs = mem_fs(tdir);
    let tpath = tdir.join("000001.sst");
    let file = tfs.open(&tpath, OpenMode::CreateNew).expect("create");
    let mut tb = TableBuilder::new(file, tpath.clone(), TableBuilderOptions::default());
    for (k, v) in &entries {
        tb.add(k, v).expect("add");
    }
    let t = nokv::range_del::RangeTombstone::new(b"k\0b".to_vec(), b"k\0c".to_vec(), 0, 0)
        .expect("tombstone");
    tb.add_range_tombstones([t.clone()]);
    let props = tb.finish().expect("finish");
    save(
        "sst_block",
        "properties",
        &[
            [5u8].as_slice(),
            &nokv::fuzzing::encode_table_properties(&props),
        ]
        .concat(),
    );
    let rd = nokv::range_del::encode_block(&[t]);
    save(
        "sst_block",
        "range-dels",
        &[[6u8].as_slice(), &rd[..rd.len() - 4]].concat(),
    );
    let built = read_file(&*tfs, &tpath).expect("table");
    save(
        "sst_table",
        "with-range-delete",
        &[[0u8].as_slice(), &built].concat(),
    );

    // A region snapshot: manifest text and its tables.
    let snap = Path::new("/db/snap");
    let m = db
        .export_range(
            &RegionRange::namespace(nokv::NS_KV),
            snap,
            &ExportOptions::default(),
        )
        .expect("export");
    let mut parts = vec![m.encode().into_bytes()];
    for f in &m.files {
        parts.push(read_file(&*fs, &snap.join(&f.name)).expect("snapshot table"));
    }
    save("region_snapshot", "export", &join_parts(&parts));
    save("region_snapshot", "manifest-only", &parts[0]);
    db.close().expect("close");
    println!("seeds written under corpus/");
}
