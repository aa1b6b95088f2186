//! Scenario: `Db::approximate_size` estimates a key range's bytes in SST files from the
//! tables' indexes (what region splits measure), without reading data blocks.

use nokv::{Db, KeySpace, Options};

#[test]
fn approximate_sizes_follow_the_data_of_each_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(
        dir.path(),
        Options {
            write_buffer_bytes: 256 << 10,
            ..Options::default()
        },
    )
    .expect("open");
    let space = KeySpace::KV;
    let value = vec![7u8; 300];
    for i in 0..3000u32 {
        db.put(format!("a{i:06}").as_bytes(), &value).expect("put");
    }
    for i in 0..1000u32 {
        db.put(format!("b{i:06}").as_bytes(), &value).expect("put");
    }
    db.flush().expect("flush");
    db.wait_for_compaction().expect("compaction");
    let a = db.approximate_size(space, b"a", Some(b"b"));
    let b = db.approximate_size(space, b"b", Some(b"c"));
    let all = db.approximate_size(space, b"", None);
    let raw_a = 3000 * 307;
    assert!(
        a > raw_a / 4 && a < raw_a * 2,
        "a: {a} for {raw_a} raw bytes"
    );
    assert!(
        b * 2 < a && b * 5 > a,
        "b ({b}) is about a third of a ({a})"
    );
    assert!(
        all >= a + b - 8192 && all <= a + b + 8192,
        "all {all} vs {a} + {b}"
    );
    // Half of the a-keys hold about half of a's bytes.
    let half = db.approximate_size(space, b"a", Some(b"a001500"));
    assert!(half * 3 > a && half * 3 < 2 * a, "half {half} of {a}");
    assert_eq!(db.approximate_size(space, b"c", None), 0);
    assert_eq!(
        db.approximate_size(space, b"b", Some(b"a")),
        0,
        "an empty range"
    );
    assert_eq!(
        db.approximate_size(KeySpace::new(nokv::NS_KV, 1), b"", None),
        0,
        "another column family"
    );
    for i in 0..100u32 {
        db.put(format!("z{i:06}").as_bytes(), &value).expect("put");
    }
    assert_eq!(
        db.approximate_size(space, b"z", None),
        0,
        "memtables are not counted"
    );
}
