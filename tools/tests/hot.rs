//! `nokv-tool hot` against fake store Redis ports: every store asked `NOKV.REGION HOT`,
//! rows merged busiest first (table and JSON), a refusal reported as one line with exit 1.

mod support;

use support::{tool, Answer, FakeStore};

fn bulk_array(lines: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", lines.len()).into_bytes();
    for l in lines {
        out.extend_from_slice(format!("${}\r\n{l}\r\n", l.len()).as_bytes());
    }
    out
}

#[test]
fn the_busiest_regions_of_every_store_come_first() {
    let a = FakeStore::start(vec![Answer::Owned(bulk_array(&[
        "region=3 core=0 ops_per_sec=50.0 bytes_per_sec=10 top_key=\"k1\" top_share=0.20",
    ]))]);
    let b = FakeStore::start(vec![Answer::Owned(bulk_array(&[
        "region=9 core=1 ops_per_sec=900.5 bytes_per_sec=0 top_key=\"hot\" top_share=0.98",
        "region=4 core=0 ops_per_sec=1.0 bytes_per_sec=0 top_key=\"\" top_share=0.00",
    ]))]);
    let addrs = format!("{},{}", a.addr, b.addr);
    let out = tool(&["hot", "--addr", &addrs, "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let regions: Vec<u64> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["region"].as_u64().expect("region"))
        .collect();
    assert_eq!(regions, vec![9, 3, 4]);
    assert_eq!(v[0]["top_key"], "hot");
    assert_eq!(
        a.commands(),
        vec![vec!["NOKV.REGION".to_string(), "HOT".to_string()]]
    );
    assert_eq!(b.commands().len(), 1);
}

#[test]
fn a_refusal_is_one_line_and_exit_1() {
    let a = FakeStore::start(vec![Answer::Reply(b"-ERR usage: NOKV.REGION LIST\r\n")]);
    let out = tool(&["hot", "--addr", &a.addr]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.one_line_failure().contains("NOKV.REGION HOT"),
        "{out:?}"
    );
}
