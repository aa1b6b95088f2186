//! `nokv-tool`: NoKV's operator CLI (docs/tools.md). This slice covers stores, regions and
//! the scheduler: `stores`, `store decommission`, `region list`, `schedule list|on|off`
//! (from the coordinator), `region split` and `region merge` (the `NOKV.REGION SPLIT` and
//! `MERGE` operator commands on a store's Redis port) and `hot` (`NOKV.REGION HOT` of
//! stores).
//!
//! Every failure is one line on stderr, `nokv-tool: error: <what failed>; fix: <what to
//! try>`, and a non-zero exit (1; 2 for a command line that does not parse).

mod coord;
mod error;
mod hot;
mod region;
mod render;
mod resp;
mod schedule;
mod stores;

use clap::{Args, Parser, Subcommand};
use error::{Error, Result};
use serde::Serialize;
use std::io::Write as _;
use std::time::Duration;

/// Default `--timeout` of coordinator calls.
const COORD_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `--timeout` of a split or merge: the store waits for it to apply through raft.
const SPLIT_TIMEOUT: Duration = Duration::from_secs(15);

/// NoKV operator tool: lists the stores and regions a cluster's coordinator knows, and runs
/// operator commands on stores. Every failure prints one line on stderr naming what failed
/// and what to try, and exits non-zero (docs/tools.md).
#[derive(Debug, Parser)]
#[command(name = "nokv-tool", version)]
struct Cli {
    /// The cluster's id (the coordinator's and stores' --cluster-id); frames of another
    /// cluster are refused.
    #[arg(long, global = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_id: u64,
    /// How long one call may take, retries and redirects included: a number with a unit,
    /// `ms`, `s` or `m` (a bare number is seconds). Default 5s for coordinator calls, 15s
    /// for a split.
    #[arg(long, global = true, value_parser = parse_duration)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lists the stores registered with the coordinator: id, state (up or down), time since
    /// the last heartbeat, cores, Redis and RPC addresses, region and leader counts from the
    /// last heartbeat, version.
    Stores(StoresArgs),
    /// Regions: list them, split one, merge two.
    #[command(subcommand)]
    Region(RegionCmd),
    /// The busiest regions over the stores' last split-check interval (`NOKV.REGION HOT`):
    /// requests and written bytes per second, the most requested sampled key and its share
    /// (near 1: a hot key no split can spread), busiest first.
    Hot(HotArgs),
    /// Stores: decommission one.
    #[command(subcommand)]
    Store(StoreCmd),
    /// The coordinator's scheduler: list its operators, switch it on or off.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("stores").required(true).args(["addr", "coordinator"]))]
struct HotArgs {
    /// Stores' Redis ports (host:port), comma-separated.
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',', value_parser = parse_addr)]
    addr: Vec<String>,
    /// Asks every store the coordinator knows instead of --addr.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', value_parser = parse_addr)]
    coordinator: Vec<String>,
    /// The stores' password (sent with AUTH first).
    #[arg(long)]
    password: Option<String>,
    /// Prints a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum StoreCmd {
    /// Marks a store decommissioning: it gets no new replica, the coordinator's scheduler
    /// moves every replica off it (leadership first, never below the region's voter
    /// count), then marks it removed; a removed store may not register again under its id.
    /// Refused when the other up stores could not hold every region's voters.
    Decommission(DecommissionArgs),
}

#[derive(Debug, Subcommand)]
enum ScheduleCmd {
    /// Lists the scheduler's operators in flight (id, region, kind, target store:core,
    /// peer, the store it moves away from, reason, age) and its counters.
    List(ScheduleListArgs),
    /// Switches the scheduler on: it issues operators again.
    On(ScheduleSwitchArgs),
    /// Switches the scheduler off: no new operators (those in flight are still resent);
    /// until the coordinator restarts or its leader changes (then `--schedule` rules).
    Off(ScheduleSwitchArgs),
}

#[derive(Debug, Args)]
struct DecommissionArgs {
    /// The store to drain.
    #[arg(value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    store: u64,
    #[command(flatten)]
    coord: CoordArgs,
    /// Prints the store's record (as `stores --json` does) instead of a line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ScheduleListArgs {
    #[command(flatten)]
    coord: CoordArgs,
    /// Prints a JSON object (`enabled`, counters, `operators`) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ScheduleSwitchArgs {
    #[command(flatten)]
    coord: CoordArgs,
}

#[derive(Debug, Subcommand)]
enum RegionCmd {
    /// Lists every region in key order: id, range (`slots [a, b)` for Redis-namespace
    /// regions, else escaped keys), epoch as version/conf_version, the leader's store:core
    /// and every replica as store:core(role).
    List(ListArgs),
    /// Splits a region: sends `NOKV.REGION SPLIT <REGION> [<SLOT>]` to a store's Redis port
    /// (--addr, or the region's leader found through --coordinator), follows one -MOVED
    /// redirect, and prints `region R split at slot S: new region N`.
    Split(SplitArgs),
    /// Merges two adjacent regions led by one core of a store: sends `NOKV.REGION MERGE <A>
    /// <B>` to its Redis port (--addr; in a cluster, the store leading both) and prints
    /// which region holds both now (the one whose raft log is further ahead). Refused when
    /// they are not adjacent, on two cores (move one first: `NOKV.REGION MOVE`), led by two
    /// stores, or with replicas on different cores of another store.
    Merge(MergeArgs),
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// One region.
    #[arg(value_name = "A", value_parser = clap::value_parser!(u64).range(1..))]
    a: u64,
    /// Its neighbour.
    #[arg(value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    b: u64,
    /// The store's Redis port (host:port).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr, required = true)]
    addr: String,
    /// The store's password (sent with AUTH first).
    #[arg(long)]
    password: Option<String>,
    /// Prints the result as a JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

/// The coordinator endpoints.
#[derive(Debug, Args)]
struct CoordArgs {
    /// The coordinator's address, or every replica's, comma-separated (host:port).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', required = true, value_parser = parse_addr)]
    coordinator: Vec<String>,
}

#[derive(Debug, Args)]
struct StoresArgs {
    #[command(flatten)]
    coord: CoordArgs,
    /// Prints a JSON array (one object per store) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    coord: CoordArgs,
    /// Prints a JSON array (one object per region, keys in hex) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["addr", "coordinator"]))]
struct SplitArgs {
    /// The region to split.
    #[arg(value_name = "REGION", value_parser = clap::value_parser!(u64).range(1..))]
    region: u64,
    /// The first hash slot of the new region (0..16384); without it the store chooses the
    /// split point.
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..16384))]
    slot: Option<u16>,
    /// The Redis port of a store (host:port): the region's leader, or a store that
    /// redirects to it with -MOVED.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_addr)]
    addr: Option<String>,
    /// Finds the region's leader store through these coordinator endpoints instead of
    /// --addr.
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',', value_parser = parse_addr)]
    coordinator: Vec<String>,
    /// The stores' password (sent with AUTH first).
    #[arg(long)]
    password: Option<String>,
    /// Prints the result as a JSON object instead of a line.
    #[arg(long)]
    json: bool,
}

/// Checks that `s` is `host:port` with a non-zero port.
pub(crate) fn parse_addr(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(s.to_string())
        }
        _ => Err(format!("`{s}` is not host:port (e.g. 127.0.0.1:2390)")),
    }
}

/// A duration with a unit (`500ms`, `30s`, `2m`; a bare number is seconds), above zero.
/// A `--timeout`: a duration above zero (`nokv_coordinator::args::parse_duration`).
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    match nokv_coordinator::args::parse_duration(s)? {
        Duration::ZERO => Err("the timeout must be above zero".into()),
        d => Ok(d),
    }
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(Error::Output)
}

fn print_json(value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(Error::Json)?;
    text.push('\n');
    print(&text)
}

fn run(cli: Cli) -> Result<()> {
    let coord_timeout = cli.timeout.unwrap_or(COORD_TIMEOUT);
    match cli.cmd {
        Cmd::Stores(a) => {
            let coord = coord::Coord::new(&a.coord.coordinator, cli.cluster_id, coord_timeout)?;
            let rows: Vec<_> = coord.stores()?.iter().map(stores::row).collect();
            if a.json {
                print_json(&rows)
            } else {
                print(&stores::table(&rows))
            }
        }
        Cmd::Region(RegionCmd::List(a)) => {
            let coord = coord::Coord::new(&a.coord.coordinator, cli.cluster_id, coord_timeout)?;
            let rows: Vec<_> = coord.routes()?.iter().filter_map(region::row).collect();
            if a.json {
                print_json(&rows)
            } else {
                print(&region::table(&rows))
            }
        }
        Cmd::Hot(a) => {
            let addrs = if a.addr.is_empty() {
                let coord = coord::Coord::new(&a.coordinator, cli.cluster_id, coord_timeout)?;
                coord
                    .stores()?
                    .iter()
                    .filter_map(|s| s.meta.as_ref().map(|m| m.redis_addr.clone()))
                    .collect()
            } else {
                a.addr
            };
            let rows = hot::hot(&addrs, a.password.as_deref(), coord_timeout)?;
            if a.json {
                print_json(&rows)
            } else {
                print(&hot::table(&rows))
            }
        }
        Cmd::Store(StoreCmd::Decommission(a)) => {
            let coord = coord::Coord::new(&a.coord.coordinator, cli.cluster_id, coord_timeout)?;
            let row = stores::row(&coord.decommission(a.store)?);
            if a.json {
                print_json(&row)
            } else {
                print(&stores::decommission_line(&row))
            }
        }
        Cmd::Schedule(ScheduleCmd::List(a)) => {
            let coord = coord::Coord::new(&a.coord.coordinator, cli.cluster_id, coord_timeout)?;
            let s = schedule::from(&coord.operators()?);
            if a.json {
                print_json(&s)
            } else {
                print(&schedule::text(&s))
            }
        }
        Cmd::Schedule(ScheduleCmd::On(a)) => switch(&a, cli.cluster_id, coord_timeout, true),
        Cmd::Schedule(ScheduleCmd::Off(a)) => switch(&a, cli.cluster_id, coord_timeout, false),
        Cmd::Region(RegionCmd::Merge(a)) => {
            let done = region::merge(
                &a.addr,
                a.a,
                a.b,
                a.password.as_deref(),
                cli.timeout.unwrap_or(SPLIT_TIMEOUT),
            )?;
            if a.json {
                print_json(&done)
            } else {
                print(&format!("{}\n", done.line()))
            }
        }
        Cmd::Region(RegionCmd::Split(a)) => {
            let addr = match a.addr {
                Some(addr) => addr,
                None => {
                    let coord = coord::Coord::new(&a.coordinator, cli.cluster_id, coord_timeout)?;
                    region::leader_redis_addr(&coord.route(a.region)?, a.region)?
                }
            };
            let done = region::split(
                &addr,
                a.region,
                a.slot,
                a.password.as_deref(),
                cli.timeout.unwrap_or(SPLIT_TIMEOUT),
            )?;
            if a.json {
                print_json(&done)
            } else {
                print(&format!("{}\n", done.line()))
            }
        }
    }
}

/// `schedule on|off`.
fn switch(a: &ScheduleSwitchArgs, cluster_id: u64, timeout: Duration, on: bool) -> Result<()> {
    let coord = coord::Coord::new(&a.coord.coordinator, cluster_id, timeout)?;
    let s = schedule::from(&coord.set_scheduling(on)?);
    print(&format!(
        "scheduling {}: {} operators in flight\n",
        if s.enabled { "on" } else { "off" },
        s.operators.len()
    ))
}

/// A clap error as one line: its message lines up to the usage, joined.
fn clap_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let msg: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = msg.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    error::one_line(msg)
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            match e.kind() {
                K::DisplayHelp
                | K::DisplayVersion
                | K::DisplayHelpOnMissingArgumentOrSubcommand => {
                    // Help and version text, as clap prints it (stdout; stderr with exit
                    // status 2 when a subcommand is missing).
                    e.exit()
                }
                _ => {
                    eprintln!(
                        "nokv-tool: error: {}; fix: see `--help` of the subcommand",
                        clap_error_line(&e)
                    );
                    std::process::exit(2);
                }
            }
        }
    };
    match run(cli) {
        Ok(()) => {}
        Err(e) if e.is_broken_pipe() => {}
        Err(e) => {
            eprintln!(
                "nokv-tool: error: {}; fix: {}",
                error::one_line(&e.to_string()),
                e.fix()
            );
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn addresses_and_durations_are_checked() {
        assert!(parse_addr("127.0.0.1:2390").is_ok());
        assert!(parse_addr("[::1]:6380").is_ok());
        assert!(parse_addr("localhost").is_err());
        assert!(parse_addr(":6380").is_err());
        assert!(parse_addr("h:0").is_err());
        assert!(parse_addr("h:99999").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn parse_errors_become_one_line() {
        let e = Cli::try_parse_from(["nokv-tool", "region", "split", "7"]).expect_err("no target");
        let line = clap_error_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--addr"), "{line}");
        let e = Cli::try_parse_from(["nokv-tool", "region", "split", "x", "--addr", "h:1"])
            .expect_err("bad region");
        assert!(
            clap_error_line(&e).contains("REGION"),
            "{}",
            clap_error_line(&e)
        );
    }
}
