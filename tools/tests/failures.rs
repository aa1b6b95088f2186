//! Failures outside a subcommand's happy path: an unreachable coordinator, a coordinator
//! of another cluster, bad arguments. Each is one line on stderr naming what failed and
//! the fix, a non-zero exit, and never a panic.

mod support;

use support::{dead_port, tool, TestCoordinator};

#[test]
fn an_unreachable_coordinator_is_one_line_and_a_failure() {
    let addr = format!("127.0.0.1:{}", dead_port());
    for sub in [&["stores"][..], &["region", "list"]] {
        let args = [sub, &["--coordinator", &addr, "--timeout", "1s"]].concat();
        let out = tool(&args);
        let line = out.one_line_failure();
        assert_eq!(out.code, Some(1), "{args:?}");
        assert!(
            line.contains(&format!("coordinator {addr}")) && line.contains("--coordinator"),
            "{line}"
        );
    }
}

#[test]
fn a_coordinator_of_another_cluster_names_cluster_id() {
    let tc = TestCoordinator::start();
    let out = tool(&[
        "stores",
        "--coordinator",
        &tc.addr(),
        "--cluster-id",
        "8",
        "--timeout",
        "1s",
    ]);
    let line = out.one_line_failure();
    assert!(line.contains("--cluster-id"), "{line}");
}

#[test]
fn bad_arguments_are_one_line_and_exit_2() {
    let cases: &[&[&str]] = &[
        &["stores"],
        &["stores", "--coordinator", "localhost"],
        &[
            "region",
            "list",
            "--coordinator",
            "127.0.0.1:2390",
            "--timeout",
            "0s",
        ],
        &["region", "split", "7"],
        &["region", "split", "x", "--addr", "127.0.0.1:6380"],
        &["region", "split", "0", "--addr", "127.0.0.1:6380"],
        &[
            "region",
            "split",
            "7",
            "--addr",
            "127.0.0.1:6380",
            "--slot",
            "16384",
        ],
        &[
            "region",
            "split",
            "7",
            "--addr",
            "127.0.0.1:6380",
            "--coordinator",
            "127.0.0.1:2390",
        ],
        &[
            "stores",
            "--coordinator",
            "127.0.0.1:2390",
            "--cluster-id",
            "0",
        ],
        &["region", "merge"],
    ];
    for args in cases {
        let out = tool(args);
        out.one_line_failure();
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        &["--help"][..],
        &["stores", "--help"],
        &["region", "--help"],
        &["region", "list", "--help"],
        &["region", "split", "--help"],
        &["store", "decommission", "--help"],
        &["schedule", "list", "--help"],
        &["schedule", "on", "--help"],
        &["schedule", "off", "--help"],
    ] {
        let out = tool(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.contains("Usage: nokv-tool"), "{args:?}: {out:?}");
        assert!(
            out.stdout.len() > 200,
            "{args:?}: help too short: {}",
            out.stdout
        );
    }
    let out = tool(&["region", "split", "--help"]);
    assert!(out.stdout.contains("NOKV.REGION SPLIT") && out.stdout.contains("MOVED"));
}
