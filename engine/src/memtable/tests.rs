use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::key::{compare_internal, lookup_key, make_internal_key, NS_KV};

fn lk(user: &str) -> Vec<u8> {
    let mut v = vec![NS_KV];
    v.extend_from_slice(user.as_bytes());
    v
}

/// What a reader at sequence `seq` (any version) finds for `logical`.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Deleted,
    Value(Vec<u8>),
}

fn get(m: &Memtable, logical: &[u8], seq: u64) -> Option<Lookup> {
    m.get(logical, crate::key::MAX_VERSION, seq).map(|f| {
        if f.kind == Kind::Delete as u8 {
            Lookup::Deleted
        } else {
            Lookup::Value(f.value)
        }
    })
}

fn collect_forward(it: &mut MemtableIterator) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    it.seek_to_first();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.next();
    }
    out
}

fn collect_backward(it: &mut MemtableIterator) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    it.seek_to_last();
    while it.valid() {
        out.push((it.key().to_vec(), it.value().to_vec()));
        it.prev();
    }
    out
}

#[test]
fn is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Memtable>();
    check::<MemtableIterator>();
}

#[test]
fn empty_memtable() {
    let m = Arc::new(Memtable::new(1 << 20));
    assert!(m.is_empty());
    assert_eq!(m.len(), 0);
    assert_eq!(get(&m, &lk("a"), MAX_SEQ), None);
    let mut it = m.iter();
    assert!(!it.valid());
    it.seek_to_first();
    assert!(!it.valid());
    it.seek_to_last();
    assert!(!it.valid());
    it.seek(&lookup_key(&lk("a"), 5, 5));
    assert!(!it.valid());
    it.seek_for_prev(&lookup_key(&lk("a"), 5, 5));
    assert!(!it.valid());
    assert!(it.status().is_ok());
}

#[test]
fn get_versions_tombstones_and_visibility() {
    let m = Memtable::new(0);
    m.add(1, 1, Kind::Put, &lk("a"), b"a1");
    m.add(3, 3, Kind::Put, &lk("a"), b"a3");
    m.add(5, 5, Kind::Delete, &lk("a"), b"");
    m.add(7, 7, Kind::Put, &lk("a"), b"a7");
    m.add(2, 2, Kind::Put, &lk("ab"), b"ab2");
    m.add(4, 4, Kind::Put, &lk(""), b"empty4");
    assert_eq!(m.len(), 6);
    assert!(!m.is_empty());

    let v = |s: &[u8]| Some(Lookup::Value(s.to_vec()));
    assert_eq!(get(&m, &lk("a"), 0), None);
    assert_eq!(get(&m, &lk("a"), 1), v(b"a1"));
    assert_eq!(get(&m, &lk("a"), 2), v(b"a1"));
    assert_eq!(get(&m, &lk("a"), 3), v(b"a3"));
    assert_eq!(get(&m, &lk("a"), 4), v(b"a3"));
    assert_eq!(get(&m, &lk("a"), 5), Some(Lookup::Deleted));
    assert_eq!(get(&m, &lk("a"), 6), Some(Lookup::Deleted));
    assert_eq!(get(&m, &lk("a"), 7), v(b"a7"));
    assert_eq!(get(&m, &lk("a"), MAX_SEQ), v(b"a7"));
    assert_eq!(get(&m, &lk("a"), u64::MAX), v(b"a7"));
    // Prefix / extension keys are distinct.
    assert_eq!(get(&m, &lk("ab"), 1), None);
    assert_eq!(get(&m, &lk("ab"), 2), v(b"ab2"));
    assert_eq!(get(&m, &lk("abc"), 100), None);
    assert_eq!(get(&m, &lk(""), 100), v(b"empty4"));
    assert_eq!(get(&m, &lk(""), 3), None);
    assert_eq!(get(&m, &[], 100), None);
    assert_eq!(get(&m, &lk("b"), 100), None);
    assert_eq!(get(&m, b"ra", 100), None);
}

#[test]
fn iterator_both_directions_and_seeks() {
    let m = Arc::new(Memtable::new(0));
    // Insert out of order.
    m.add(2, 2, Kind::Put, &lk("b"), b"b2");
    m.add(1, 1, Kind::Put, &lk("a"), b"a1");
    m.add(4, 4, Kind::Delete, &lk("b"), b"");
    m.add(3, 3, Kind::Put, &lk("c"), b"c3");
    m.add(5, 5, Kind::Put, &lk("a"), b"a5");
    let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (make_internal_key(&lk("a"), 5, 5, 1), b"a5".to_vec()),
        (make_internal_key(&lk("a"), 1, 1, 1), b"a1".to_vec()),
        (make_internal_key(&lk("b"), 4, 4, 0), b"".to_vec()),
        (make_internal_key(&lk("b"), 2, 2, 1), b"b2".to_vec()),
        (make_internal_key(&lk("c"), 3, 3, 1), b"c3".to_vec()),
    ];
    let mut it = m.iter();
    assert_eq!(collect_forward(&mut it), expected);
    let mut rev = expected.clone();
    rev.reverse();
    assert_eq!(collect_backward(&mut it), rev);

    // seek: first entry >= target.
    it.seek(&lookup_key(&lk("b"), 3, 3));
    assert!(it.valid());
    assert_eq!(it.key(), make_internal_key(&lk("b"), 2, 2, 1).as_slice());
    it.prev();
    assert_eq!(it.key(), make_internal_key(&lk("b"), 4, 4, 0).as_slice());
    it.prev();
    assert_eq!(it.key(), make_internal_key(&lk("a"), 1, 1, 1).as_slice());
    it.next();
    it.next();
    assert_eq!(it.value(), b"b2");
    it.seek(&lookup_key(&lk("bb"), MAX_SEQ, MAX_SEQ));
    assert_eq!(it.key(), make_internal_key(&lk("c"), 3, 3, 1).as_slice());
    it.seek(&lookup_key(&lk("d"), MAX_SEQ, MAX_SEQ));
    assert!(!it.valid());
    it.seek(&lookup_key(&lk(""), MAX_SEQ, MAX_SEQ));
    assert_eq!(it.key(), expected[0].0.as_slice());
    // Exact hit.
    it.seek(&make_internal_key(&lk("b"), 4, 4, 0));
    assert_eq!(it.key(), expected[2].0.as_slice());

    // seek_for_prev: last entry <= target.
    it.seek_for_prev(&make_internal_key(&lk("b"), 4, 4, 0));
    assert_eq!(it.key(), expected[2].0.as_slice());
    it.seek_for_prev(&lookup_key(&lk("b"), 3, 3));
    assert_eq!(it.key(), expected[2].0.as_slice());
    it.seek_for_prev(&lookup_key(&lk("b"), MAX_SEQ, MAX_SEQ));
    assert_eq!(it.key(), expected[1].0.as_slice());
    it.next();
    assert_eq!(it.key(), expected[2].0.as_slice());
    it.seek_for_prev(&lookup_key(&lk("a"), MAX_SEQ, MAX_SEQ));
    assert!(!it.valid());
    it.seek_for_prev(&lookup_key(&lk("zzz"), 0, 0));
    assert_eq!(it.key(), expected[4].0.as_slice());
    it.next();
    assert!(!it.valid());
    // Short targets (no trailer) do not panic and sort before the whole logical key.
    it.seek(b"kb");
    assert_eq!(it.key(), expected[2].0.as_slice());
    it.seek_for_prev(b"kb");
    assert_eq!(it.key(), expected[1].0.as_slice());
    it.seek(b"");
    assert_eq!(it.key(), expected[0].0.as_slice());
    assert!(it.status().is_ok());
    assert!(Arc::ptr_eq(it.memtable(), &m));
}

#[test]
fn iterator_outlives_other_handles() {
    let m = Arc::new(Memtable::new(0));
    for i in 0..100u32 {
        m.add(
            i as u64 + 1,
            i as u64 + 1,
            Kind::Put,
            &i.to_be_bytes(),
            &[i as u8; 3],
        );
    }
    let mut it = m.iter();
    drop(m);
    it.seek_to_first();
    let mut n = 0;
    while it.valid() {
        assert_eq!(it.value(), &[n as u8; 3]);
        n += 1;
        it.next();
    }
    assert_eq!(n, 100);
}

#[test]
fn large_values_sizes_and_orders() {
    let m = Arc::new(Memtable::new(1 << 20));
    let before = m.approximate_bytes();
    let big = vec![7u8; 300 << 10];
    m.add(1, 1, Kind::Put, &lk("big"), &big);
    assert!(m.approximate_bytes() >= before + big.len());
    assert_eq!(get(&m, &lk("big"), 1), Some(Lookup::Value(big.clone())));
    // Sequential, reverse and interleaved inserts all end up sorted.
    const R: u32 = if cfg!(miri) { 100 } else { 2000 };
    let mut seq = 2;
    for i in 0..R {
        m.add(seq, seq, Kind::Put, &lk(&format!("s{i:06}")), b"x");
        seq += 1;
    }
    for i in (0..R).rev() {
        m.add(seq, seq, Kind::Put, &lk(&format!("r{i:06}")), b"y");
        seq += 1;
    }
    for i in 0..R {
        let j = (i * 7919) % R;
        m.add(seq, seq, Kind::Delete, &lk(&format!("s{j:06}")), b"");
        seq += 1;
    }
    let total = 3 * R as usize + 1;
    assert_eq!(m.len(), total);
    let all = collect_forward(&mut m.iter());
    assert_eq!(all.len(), total);
    for w in all.windows(2) {
        assert_eq!(compare_internal(&w[0].0, &w[1].0), Ordering::Less);
    }
    assert_eq!(
        get(&m, &lk("s000005"), 7),
        Some(Lookup::Value(b"x".to_vec()))
    );
    assert_eq!(get(&m, &lk("s000005"), seq), Some(Lookup::Deleted));
    assert_eq!(
        get(&m, &lk("r000005"), seq),
        Some(Lookup::Value(b"y".to_vec()))
    );
    assert!(m.approximate_bytes() <= m.list.reserved());
    assert!(format!("{:?}", m).contains(&format!("len: {total}")));
}

#[test]
fn duplicate_internal_key_is_shadowed() {
    let m = Memtable::new(0);
    m.add(3, 3, Kind::Put, &lk("a"), b"old");
    m.add(3, 3, Kind::Put, &lk("a"), b"new");
    assert_eq!(get(&m, &lk("a"), 3), Some(Lookup::Value(b"new".to_vec())));
    assert_eq!(m.len(), 2);
}

/// An internal key ordered by `compare_internal`, for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IKey(Vec<u8>);

impl Ord for IKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_internal(&self.0, &other.0)
    }
}

impl PartialOrd for IKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn logical_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(NS_KV), Just(b'r')],
        prop::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(0u8), Just(0xffu8)],
            0..4,
        ),
    )
        .prop_map(|(ns, user)| {
            let mut v = vec![ns];
            v.extend(user);
            v
        })
}

fn entry_strategy() -> impl Strategy<Value = (Vec<u8>, u64, bool, Vec<u8>)> {
    (
        logical_strategy(),
        0u64..64,
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..20),
    )
}

fn target_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        logical_strategy(),
        prop_oneof![0u64..70, Just(MAX_SEQ)],
        prop_oneof![Just(0u8), Just(1u8), Just(KIND_SEEK)],
    )
        .prop_map(|(l, s, k)| make_internal_key(&l, s, s, k))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 3 } else { 256 }))]

    #[test]
    fn matches_btreemap_model(
        entries in prop::collection::vec(entry_strategy(), 0..300),
        targets in prop::collection::vec(target_strategy(), 1..40),
        sorted_prefix in any::<bool>(),
    ) {
        let mut entries = entries;
        if sorted_prefix {
            // Exercise the append fast path with a sorted run first.
            let half = entries.len() / 2;
            entries[..half].sort_by(|a, b| {
                let ka = make_internal_key(&a.0, a.1, a.1, a.2 as u8);
                let kb = make_internal_key(&b.0, b.1, b.1, b.2 as u8);
                compare_internal(&ka, &kb)
            });
        }
        let m = Arc::new(Memtable::new(0));
        let mut model: BTreeMap<IKey, Vec<u8>> = BTreeMap::new();
        for (logical, seq, put, value) in &entries {
            let kind = if *put { Kind::Put } else { Kind::Delete };
            let ik = IKey(make_internal_key(logical, *seq, *seq, kind as u8));
            if model.contains_key(&ik) {
                continue; // the engine never re-inserts an internal key
            }
            m.add(*seq, *seq, kind, logical, value);
            model.insert(ik, value.clone());
        }
        prop_assert_eq!(m.len(), model.len());

        let fwd: Vec<(Vec<u8>, Vec<u8>)> =
            model.iter().map(|(k, v)| (k.0.clone(), v.clone())).collect();
        let mut it = m.iter();
        prop_assert_eq!(&collect_forward(&mut it), &fwd);
        let mut bwd = fwd.clone();
        bwd.reverse();
        prop_assert_eq!(&collect_backward(&mut it), &bwd);

        for t in &targets {
            let tk = IKey(t.clone());
            // seek + a few steps both ways
            it.seek(t);
            let ge: Vec<&IKey> = model.range(tk.clone()..).map(|(k, _)| k).take(3).collect();
            match ge.first() {
                None => prop_assert!(!it.valid()),
                Some(k) => {
                    prop_assert!(it.valid());
                    prop_assert_eq!(it.key(), k.0.as_slice());
                    prop_assert_eq!(it.value(), model[*k].as_slice());
                    for k in &ge[1..] {
                        it.next();
                        prop_assert!(it.valid());
                        prop_assert_eq!(it.key(), k.0.as_slice());
                    }
                }
            }
            it.seek(t);
            let lt: Vec<&IKey> = model.range(..tk.clone()).rev().map(|(k, _)| k).take(3).collect();
            if it.valid() {
                for k in &lt {
                    it.prev();
                    prop_assert!(it.valid());
                    prop_assert_eq!(it.key(), k.0.as_slice());
                }
                if lt.len() < 3 {
                    it.prev();
                    prop_assert!(!it.valid());
                }
            }
            // seek_for_prev + steps
            it.seek_for_prev(t);
            let le: Vec<&IKey> = model.range(..=tk.clone()).rev().map(|(k, _)| k).take(3).collect();
            match le.first() {
                None => prop_assert!(!it.valid()),
                Some(k) => {
                    prop_assert!(it.valid());
                    prop_assert_eq!(it.key(), k.0.as_slice());
                    for k in &le[1..] {
                        it.prev();
                        prop_assert!(it.valid());
                        prop_assert_eq!(it.key(), k.0.as_slice());
                    }
                    it.seek_for_prev(t);
                    let gt: Vec<&IKey> = model
                        .range((std::ops::Bound::Excluded((*k).clone()), std::ops::Bound::Unbounded))
                        .map(|(k, _)| k)
                        .take(2)
                        .collect();
                    for k in &gt {
                        it.next();
                        prop_assert!(it.valid());
                        prop_assert_eq!(it.key(), k.0.as_slice());
                    }
                }
            }
            // get against the model
            let logical = crate::key::logical_key(t);
            let (seq, _) = crate::key::parse_trailer(t);
            let expect = model
                .range(IKey(lookup_key(logical, seq, seq))..)
                .next()
                .filter(|(k, _)| crate::key::logical_key(&k.0) == logical)
                .map(|(k, v)| match crate::key::parse_trailer(&k.0).1 {
                    0 => Lookup::Deleted,
                    _ => Lookup::Value(v.clone()),
                });
            prop_assert_eq!(get(&m, logical, seq), expect);
        }
    }
}

#[test]
fn concurrent_readers_see_sorted_prefixes() {
    const N: usize = if cfg!(miri) { 300 } else { 20_000 };
    const READERS: usize = 3;
    let key_of = |i: usize| -> Vec<u8> {
        // A scrambled but deterministic key order.
        let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut v = vec![NS_KV];
        v.extend_from_slice(&x.to_be_bytes());
        v
    };
    let m = Arc::new(Memtable::new(1 << 20));
    let published = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::new();
    for r in 0..READERS {
        let m = Arc::clone(&m);
        let published = Arc::clone(&published);
        let done = Arc::clone(&done);
        readers.push(std::thread::spawn(move || {
            let mut passes = 0usize;
            loop {
                let finished = done.load(AtomicOrdering::Acquire);
                let lower = published.load(AtomicOrdering::Acquire);
                let mut it = m.iter();
                let mut count = 0usize;
                let mut last: Option<Vec<u8>> = None;
                if (passes + r).is_multiple_of(2) {
                    it.seek_to_first();
                    while it.valid() {
                        let k = it.key().to_vec();
                        if let Some(prev) = &last {
                            assert_eq!(compare_internal(prev, &k), Ordering::Less);
                        }
                        assert_eq!(it.value().len(), 8);
                        last = Some(k);
                        count += 1;
                        it.next();
                    }
                } else {
                    it.seek_to_last();
                    while it.valid() {
                        let k = it.key().to_vec();
                        if let Some(next) = &last {
                            assert_eq!(compare_internal(&k, next), Ordering::Less);
                        }
                        last = Some(k);
                        count += 1;
                        it.prev();
                    }
                }
                assert!(count >= lower && count <= N, "count {count} lower {lower}");
                // Everything published before the pass is visible to point lookups.
                if lower > 0 {
                    let i = (passes * 7919) % lower;
                    let got = get(&m, &key_of(i), MAX_SEQ);
                    assert_eq!(got, Some(Lookup::Value((i as u64).to_le_bytes().to_vec())));
                }
                passes += 1;
                if finished {
                    assert_eq!(count, N);
                    return passes;
                }
            }
        }));
    }

    for i in 0..N {
        m.add(
            i as u64 + 1,
            i as u64 + 1,
            Kind::Put,
            &key_of(i),
            &(i as u64).to_le_bytes(),
        );
        published.store(i + 1, AtomicOrdering::Release);
    }
    done.store(true, AtomicOrdering::Release);
    for r in readers {
        let passes = r.join().expect("reader thread panicked");
        assert!(passes >= 1);
    }
    assert_eq!(m.len(), N);
}

#[test]
fn concurrent_writers_are_serialized() {
    let m = Arc::new(Memtable::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for i in 0..if cfg!(miri) { 50 } else { 2000u64 } {
                    let seq = t * 10_000 + i + 1;
                    m.add(seq, seq, Kind::Put, &seq.to_be_bytes(), b"v");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread panicked");
    }
    let total = if cfg!(miri) { 200 } else { 8000 };
    assert_eq!(m.len(), total);
    let all = collect_forward(&mut m.iter());
    assert_eq!(all.len(), total);
    for w in all.windows(2) {
        assert_eq!(compare_internal(&w[0].0, &w[1].0), Ordering::Less);
    }
}

/// Throughput probe: `cargo test --release -- --ignored --nocapture insert_throughput`.
#[test]
#[ignore = "timing probe: prints ns/insert; run by hand with --release -- --ignored"]
fn insert_throughput() {
    const N: usize = 1_000_000;
    let value = vec![0x5au8; 1000];
    for (name, scramble) in [("sequential", false), ("random", true)] {
        let keys: Vec<Vec<u8>> = (0..N as u64)
            .map(|i| {
                let x = if scramble {
                    i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                } else {
                    i
                };
                let mut k = vec![NS_KV];
                k.extend_from_slice(&x.to_be_bytes());
                k.extend_from_slice(&x.to_le_bytes());
                k
            })
            .collect();
        // Like the engine: rotate at 64 MiB (arena memory gets reused across
        // memtables). The second round is the warm, steady-state number.
        let mut rotated = std::time::Duration::ZERO;
        for _ in 0..2 {
            let start = std::time::Instant::now();
            let mut m = Memtable::new(64 << 20);
            for (i, k) in keys.iter().enumerate() {
                if m.approximate_bytes() >= 64 << 20 {
                    m = Memtable::new(64 << 20);
                }
                m.add(i as u64 + 1, i as u64 + 1, Kind::Put, k, &value);
            }
            rotated = start.elapsed();
        }
        // One big memtable: dominated by first-touch page faults on fresh memory.
        let m = Memtable::new(N * 1100);
        let start = std::time::Instant::now();
        for (i, k) in keys.iter().enumerate() {
            m.add(i as u64 + 1, i as u64 + 1, Kind::Put, k, &value);
        }
        let el = start.elapsed();
        let start = std::time::Instant::now();
        for k in keys.iter().take(100_000) {
            assert!(get(&m, k, MAX_SEQ).is_some());
        }
        let gel = start.elapsed();
        println!(
            "{name}: {N} inserts (16B keys, 1000B values): rotating 64 MiB memtables (warm) {:?} = {:.0} ns/insert; \
             one memtable {:?} = {:.0} ns/insert; get {:.0} ns/op; {} MiB",
            rotated,
            rotated.as_nanos() as f64 / N as f64,
            el,
            el.as_nanos() as f64 / N as f64,
            gel.as_nanos() as f64 / 100_000.0,
            m.approximate_bytes() >> 20
        );
    }
}

#[test]
fn range_tombstones_sit_beside_the_entries() {
    use crate::range_del::RangeTombstone;
    let m = Memtable::with_range_tombstone_limit(1 << 16, 2);
    assert!(m.is_empty());
    assert!(m.range_tombstones().is_none(), "no tombstones: no index");
    let before = m.approximate_bytes();
    let t = RangeTombstone::new(lk("b"), lk("d"), 0, 7).unwrap();
    m.add_range_tombstones(vec![t.clone()]).unwrap();
    assert!(
        !m.is_empty(),
        "a memtable holding only a range tombstone must be flushed"
    );
    assert_eq!(m.len(), 0);
    assert_eq!(m.num_range_tombstones(), 1);
    assert_eq!(m.approximate_bytes(), before + t.approximate_bytes());
    assert_eq!(m.range_tombstone_room(), 1);
    let idx = m.range_tombstones().expect("index");
    assert_eq!(idx.covering(&lk("c"), u64::MAX, 7), Some((0, 7)));
    assert_eq!(idx.covering(&lk("c"), u64::MAX, 6), None);
    // All or nothing past the limit.
    let two = vec![
        RangeTombstone::new(lk("x"), lk("y"), 0, 8).unwrap(),
        RangeTombstone::new(lk("y"), lk("z"), 0, 9).unwrap(),
    ];
    assert!(m.add_range_tombstones(two).is_err());
    assert_eq!(m.num_range_tombstones(), 1);
}

#[test]
fn get_from_skips_entries_below_the_floor() {
    let m = Memtable::new(1 << 16);
    // Explicit versions out of write order: version 9 at seq 1, version 5 at seq 3.
    m.add(9, 1, Kind::Put, &lk("k"), b"v9");
    m.add(5, 3, Kind::Put, &lk("k"), b"v5");
    m.add(7, 2, Kind::Delete, &lk("j"), b"");
    let at = |min_seq| {
        m.get_from(&lk("k"), u64::MAX, MAX_SEQ, min_seq)
            .map(|f| f.value)
    };
    assert_eq!(at(0), Some(b"v9".to_vec()));
    assert_eq!(
        at(2),
        Some(b"v5".to_vec()),
        "the newer version is hidden; the older one written later is not"
    );
    assert_eq!(at(4), None);
    assert_eq!(m.get_from(&lk("k"), 6, 2, 2), None, "v5 is past the reader");
    assert!(m.get_from(&lk("j"), u64::MAX, MAX_SEQ, 2).is_some());
    assert!(m.get_from(&lk("j"), u64::MAX, MAX_SEQ, 3).is_none());
}

#[test]
fn point_lookups_through_the_hash_index_see_every_key_and_version() {
    // A small hint: 64 buckets for 2000 keys, so chains are long and shared.
    let m = Memtable::new(1 << 10);
    let mut seq = 0;
    for i in 0..2000u32 {
        seq += 1;
        m.add(
            10,
            seq,
            Kind::Put,
            &lk(&format!("k{i}")),
            format!("v10-{i}").as_bytes(),
        );
    }
    // A higher version becomes the key's first entry; a lower one written later does not.
    for i in (0..2000u32).step_by(3) {
        seq += 1;
        m.add(
            20,
            seq,
            Kind::Put,
            &lk(&format!("k{i}")),
            format!("v20-{i}").as_bytes(),
        );
        seq += 1;
        m.add(
            5,
            seq,
            Kind::Put,
            &lk(&format!("k{i}")),
            format!("v5-{i}").as_bytes(),
        );
    }
    for i in 0..2000u32 {
        let k = lk(&format!("k{i}"));
        let newest = m.get(&k, u64::MAX, MAX_SEQ).map(|f| f.value);
        let want = if i % 3 == 0 {
            format!("v20-{i}")
        } else {
            format!("v10-{i}")
        };
        assert_eq!(newest, Some(want.into_bytes()), "k{i}");
        let at15 = m.get(&k, 15, MAX_SEQ).map(|f| f.value);
        assert_eq!(at15, Some(format!("v10-{i}").into_bytes()), "k{i} at 15");
        let at7 = m.get(&k, 7, MAX_SEQ).map(|f| f.value);
        let want7 = (i % 3 == 0).then(|| format!("v5-{i}").into_bytes());
        assert_eq!(at7, want7, "k{i} at 7");
        assert_eq!(m.get(&lk(&format!("absent{i}")), u64::MAX, MAX_SEQ), None);
    }
}

/// An owned `(version, seq, kind, logical key, value)` for `Memtable::add_many` tests.
type Owned = (u64, u64, Kind, Vec<u8>, Vec<u8>);

#[test]
fn add_many_equals_adding_one_by_one() {
    // Scattered keys (not appends), repeated keys with several versions, deletes, and a
    // batch that does append; both memtables must hold the same entries and answer alike.
    let one = Memtable::new(1 << 20);
    let many = Memtable::new(1 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut seq = 0u64;
    for round in 0..40 {
        let mut batch: Vec<Owned> = Vec::new();
        for _ in 0..(1 + round * 7 % 50) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seq += 1;
            let key = if round == 39 {
                lk(&format!("zz{seq:08}")) // sorts after everything: the append path
            } else {
                lk(&format!("k{:04}", x % 500))
            };
            let kind = if x.is_multiple_of(7) {
                Kind::Delete
            } else {
                Kind::Put
            };
            let value = if kind == Kind::Put {
                format!("v{seq}").into_bytes()
            } else {
                Vec::new()
            };
            batch.push((seq, seq, kind, key, value));
        }
        for (v, s, k, key, value) in &batch {
            one.add(*v, *s, *k, key, value);
        }
        many.add_many(
            batch
                .iter()
                .map(|(v, s, k, key, value)| (*v, *s, *k, key.as_slice(), value.as_slice())),
        );
    }
    assert_eq!(one.len(), many.len());
    assert_eq!(
        collect_forward(&mut Arc::new(one).iter()),
        collect_forward(&mut Arc::new(many).iter())
    );
}

#[test]
fn add_many_point_reads_match() {
    let one = Memtable::new(1 << 20);
    let many = Memtable::new(1 << 20);
    let mut seq = 0u64;
    for round in 0..20u64 {
        let batch: Vec<Owned> = (0..64u64)
            .map(|i| {
                seq += 1;
                let key = lk(&format!("k{:03}", (i * 37 + round * 11) % 300));
                (seq, seq, Kind::Put, key, format!("{seq}").into_bytes())
            })
            .collect();
        for (v, s, k, key, value) in &batch {
            one.add(*v, *s, *k, key, value);
        }
        many.add_many(
            batch
                .iter()
                .map(|(v, s, k, key, value)| (*v, *s, *k, key.as_slice(), value.as_slice())),
        );
    }
    for i in 0..300u64 {
        let key = lk(&format!("k{i:03}"));
        for at in [seq / 3, seq / 2, seq] {
            assert_eq!(get(&one, &key, at), get(&many, &key, at), "key {i} at {at}");
        }
    }
}
