//! `nokv-tool region split` against fake store Redis ports (threads speaking RESP2 on
//! 127.0.0.1): the command sent, the reply shapes, one -MOVED redirect followed, AUTH
//! first with --password, errors and silence reported as one line with exit 1, and the
//! leader's store found through a real coordinator.

mod support;

use nokv_coordinator::proto::{RegionHeartbeat, StoreMeta};
use support::{dead_port, slot_key, tool, Answer, FakeStore, TestCoordinator};

fn cmd(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_split_replied_with_new_region_and_slot_is_printed() {
    let store = FakeStore::start(vec![Answer::Reply(b"*2\r\n:17\r\n:4096\r\n")]);
    let out = tool(&[
        "region",
        "split",
        "--addr",
        &store.addr,
        "7",
        "--slot",
        "4096",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "region 7 split at slot 4096: new region 17\n");
    assert_eq!(out.stderr, "");
    assert_eq!(
        store.commands(),
        vec![cmd(&["NOKV.REGION", "SPLIT", "7", "4096"])]
    );
}

#[test]
fn a_split_without_a_slot_prints_the_slot_the_store_chose() {
    let store = FakeStore::start(vec![Answer::Reply(b"*2\r\n:17\r\n:4096\r\n")]);
    let out = tool(&["region", "split", "--addr", &store.addr, "7", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(
        (&v["region"], &v["new_region"], &v["slot"], &v["store"]),
        (
            &7.into(),
            &17.into(),
            &4096.into(),
            &store.addr.as_str().into()
        )
    );
    assert_eq!(store.commands(), vec![cmd(&["NOKV.REGION", "SPLIT", "7"])]);
}

#[test]
fn a_moved_reply_is_followed_once_to_the_leader() {
    let leader = FakeStore::start(vec![Answer::Reply(b"*2\r\n:21\r\n:100\r\n")]);
    let moved = format!("-MOVED 100 {}\r\n", leader.addr).into_bytes();
    let follower = FakeStore::start(vec![Answer::Owned(moved)]);
    let out = tool(&[
        "region",
        "split",
        "--addr",
        &follower.addr,
        "3",
        "--slot",
        "100",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "region 3 split at slot 100: new region 21\n");
    let sent = cmd(&["NOKV.REGION", "SPLIT", "3", "100"]);
    assert_eq!(follower.commands(), vec![sent.clone()]);
    assert_eq!(leader.commands(), vec![sent]);
}

#[test]
fn a_second_moved_is_not_followed() {
    let third = FakeStore::start(vec![Answer::Reply(b":99\r\n")]);
    let second = FakeStore::start(vec![Answer::Owned(
        format!("-MOVED 5 {}\r\n", third.addr).into_bytes(),
    )]);
    let first = FakeStore::start(vec![Answer::Owned(
        format!("-MOVED 5 {}\r\n", second.addr).into_bytes(),
    )]);
    let out = tool(&["region", "split", "--addr", &first.addr, "3"]);
    let line = out.one_line_failure();
    assert_eq!(out.code, Some(1));
    assert!(
        line.contains("MOVED") && line.contains(&third.addr),
        "{line}"
    );
    assert_eq!(first.commands().len(), 1);
    assert_eq!(second.commands().len(), 1);
    assert!(
        third.commands_if_any().is_empty(),
        "a second redirect was followed"
    );
}

#[test]
fn an_error_reply_is_one_line_and_exit_1() {
    let store = FakeStore::start(vec![Answer::Reply(
        b"-ERR region 7 is not led by this store\r\n",
    )]);
    let out = tool(&["region", "split", "--addr", &store.addr, "7"]);
    let line = out.one_line_failure();
    assert_eq!(out.code, Some(1));
    assert!(
        line.contains(&store.addr)
            && line.contains("NOKV.REGION SPLIT 7")
            && line.contains("ERR region 7 is not led by this store"),
        "{line}"
    );
    assert_eq!(store.commands().len(), 1);
}

#[test]
fn password_is_sent_with_auth_first_and_kept_out_of_errors() {
    let store = FakeStore::start(vec![Answer::Reply(b"+OK\r\n"), Answer::Reply(b":17\r\n")]);
    let out = tool(&[
        "region",
        "split",
        "--addr",
        &store.addr,
        "7",
        "--slot",
        "4096",
        "--password",
        "s3cret",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    // An integer reply is the new region; the slot is the one asked for.
    assert_eq!(out.stdout, "region 7 split at slot 4096: new region 17\n");
    assert_eq!(
        store.commands(),
        vec![
            cmd(&["AUTH", "s3cret"]),
            cmd(&["NOKV.REGION", "SPLIT", "7", "4096"])
        ]
    );

    let store = FakeStore::start(vec![Answer::Reply(
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )]);
    let out = tool(&[
        "region",
        "split",
        "--addr",
        &store.addr,
        "7",
        "--password",
        "s3cret",
    ]);
    let line = out.one_line_failure();
    assert!(
        line.contains("WRONGPASS") && line.contains("--password"),
        "{line}"
    );
    assert!(!line.contains("s3cret"), "the password leaked: {line}");
    assert_eq!(store.commands(), vec![cmd(&["AUTH", "s3cret"])]);
}

#[test]
fn a_store_that_never_answers_times_out() {
    let store = FakeStore::start(vec![Answer::Silence]);
    let out = tool(&[
        "region",
        "split",
        "--addr",
        &store.addr,
        "7",
        "--timeout",
        "300ms",
    ]);
    let line = out.one_line_failure();
    assert!(
        line.contains("no reply") && line.contains("--timeout"),
        "{line}"
    );
    assert_eq!(store.commands(), vec![cmd(&["NOKV.REGION", "SPLIT", "7"])]);
}

#[test]
fn a_reply_of_another_shape_is_reported() {
    let store = FakeStore::start(vec![Answer::Reply(b"$5\r\nhello\r\n")]);
    let out = tool(&["region", "split", "--addr", &store.addr, "7"]);
    let line = out.one_line_failure();
    assert!(line.contains("unexpected reply"), "{line}");
    store.commands();
}

#[test]
fn an_address_with_nothing_listening_is_reported() {
    let addr = format!("127.0.0.1:{}", dead_port());
    let out = tool(&["region", "split", "--addr", &addr, "7"]);
    let line = out.one_line_failure();
    assert!(
        line.contains(&addr) && line.contains("cannot connect"),
        "{line}"
    );
}

#[test]
fn the_leader_is_found_through_the_coordinator() {
    let store = FakeStore::start(vec![Answer::Reply(b":17\r\n")]);
    let tc = TestCoordinator::start();
    let client = tc.client();
    let id = client
        .register_store(StoreMeta {
            id: 0,
            rpc_addr: "127.0.0.1:7401".into(),
            redis_addr: store.addr.clone(),
            cores: 1,
            version: String::new(),
            ..Default::default()
        })
        .expect("register");
    let regions = client
        .bootstrap(vec![slot_key(8192)], 1)
        .expect("bootstrap");
    let led = &regions[1];
    client
        .region_heartbeat(RegionHeartbeat {
            region: Some(led.clone()),
            leader_peer_id: led.peers[0].id,
            ..Default::default()
        })
        .expect("heartbeat");
    assert_eq!(led.peers[0].store_id, id);
    let coord = tc.addr();
    let base = [
        "region",
        "split",
        "--coordinator",
        &coord,
        "--cluster-id",
        "7",
    ];

    let region = led.id.to_string();
    let out = tool(&[&base[..], &[region.as_str(), "--slot", "12288"]].concat());
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("region {} split at slot 12288: new region 17\n", led.id)
    );
    assert_eq!(
        store.commands(),
        vec![cmd(&["NOKV.REGION", "SPLIT", &region, "12288"])]
    );

    // No leader reported for the first region: nothing is sent, the fix is named.
    let out = tool(&[&base[..], &[regions[0].id.to_string().as_str()]].concat());
    let line = out.one_line_failure();
    assert!(
        line.contains("no leader") && line.contains("--addr"),
        "{line}"
    );

    let out = tool(&[&base[..], &["999999"]].concat());
    let line = out.one_line_failure();
    assert!(
        line.contains("region 999999 not found") && line.contains("region list"),
        "{line}"
    );
}

#[test]
fn a_merge_prints_the_region_that_holds_both() {
    let store = FakeStore::start(vec![Answer::Reply(b":8\r\n")]);
    let out = tool(&["region", "merge", "--addr", &store.addr, "7", "8"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "regions 7 and 8 merged: region 8 holds both\n");
    assert_eq!(
        store.commands(),
        vec![cmd(&["NOKV.REGION", "MERGE", "7", "8"])]
    );
    let refused = FakeStore::start(vec![Answer::Reply(
        b"-ERR merge refused: region 9 is not adjacent\r\n",
    )]);
    let out = tool(&["region", "merge", "--addr", &refused.addr, "7", "9"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("not adjacent") && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );
}
