//! Linearizability of single-key commands on a three-store cluster under faults: clients
//! send GET, SET, SET NX (a conditional write), DEL and INCR through RESP to every store
//! (each forwards to the leader) while a nemesis isolates stores and cuts pairs apart (`NOKV_DEBUG_NET_FAULTS`), SIGKILLs and
//! restarts them, pauses them (SIGSTOP), drops, duplicates and delays raft messages, and
//! takes the coordinator away. The whole history is checked with a Wing & Gong / Porcupine-style checker (`lincheck`).
//! Negative control: leaders that serve reads without a lease or ReadIndex and keep
//! leading without a quorum (`NOKV_DEBUG_READ_WITHOUT_QUORUM`) must be caught serving a
//! stale value once cut off.
//!
//! A second scenario runs each store on its own host (a network namespace joined to the
//! others by veth pairs and a bridge, `support::netns`) and takes the leader's link down
//! or makes it flap, besides SIGKILL and SIGSTOP (`tc netem` delay and loss would go
//! here, but this kernel has no netem qdisc: "Specified qdisc kind is unknown").
//!
//! `NOKV_LIN_SECS` sets the nemesis' duration (default 36 s: each kind of fault once; 24 s
//! across hosts).

mod lincheck;
mod support;

use lincheck::{Input, Op, Output};
use nokv_coordinator::{Server as CoordServer, ServerOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::cluster::{
    add_store_args, free_addr, id_at, start_coordinator_on, StoreSpec, IO_TIMEOUT,
};
use support::netns::Hosts;
use support::{Client, Server, R};

/// Keys the clients share (few, so that operations on one key overlap often).
const KEYS: usize = 5;
/// Client threads of the main scenario (two per store).
const CLIENTS: usize = 6;
/// A store's own bound on a request (answers `-TRYAGAIN` after it).
const REQUEST_TIMEOUT_MS: &str = "2000";
/// Most operations per client (a bound on the history, besides the duration).
const MAX_OPS: usize = 20_000;
/// Pause between a client's operations (bounds the history's size).
const THINK: Duration = Duration::from_millis(10);

/// Three stores with `--redirect forward`, an in-process coordinator, a faults file; with
/// `hosts`, each store on its own network-namespace host.
struct Lab {
    // Dropped in this order: the stores, then their hosts, then the workdirs.
    servers: Vec<Option<Server>>,
    /// `nokv-redis` in front of the cluster, when the clients go through it: its process
    /// and address.
    gateway: Option<(Server, String)>,
    coord_server: Option<CoordServer>,
    hosts: Option<Arc<Hosts>>,
    faults: std::path::PathBuf,
    coord: Arc<nokv_coordinator::Coordinator>,
    coord_addr: String,
    specs: Vec<StoreSpec>,
    ids: Vec<u64>,
    env: Vec<(&'static str, String)>,
    _dir: tempfile::TempDir,
}

impl Lab {
    fn start(hosts: Option<Hosts>, extra_env: &[(&'static str, &str)]) -> Lab {
        let hosts = hosts.map(Arc::new);
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = dir.path().join("net-faults");
        std::fs::write(&faults, "").expect("faults file");
        let bind = match &hosts {
            Some(h) => format!("{}:0", h.gateway()),
            None => "127.0.0.1:0".to_string(),
        };
        let (coord, coord_server, coord_addr) = start_coordinator_on(
            &dir.path().join("coord"),
            Duration::from_secs(30),
            false,
            &bind,
        );
        let specs: Vec<StoreSpec> = (0..3)
            .map(|i| StoreSpec {
                workdir: dir.path().join(format!("store-{}", i + 1)),
                redis: match &hosts {
                    Some(h) => format!("{}:6379", h.addr(i)),
                    None => free_addr(),
                },
                rpc: match &hosts {
                    Some(h) => format!("{}:7380", h.addr(i)),
                    None => free_addr(),
                },
                redirect: "forward",
            })
            .collect();
        let mut env = vec![("NOKV_DEBUG_NET_FAULTS", faults.display().to_string())];
        env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
        let mut lab = Lab {
            gateway: None,
            hosts,
            _dir: dir,
            faults,
            coord,
            coord_server: Some(coord_server),
            coord_addr,
            specs,
            servers: Vec::new(),
            ids: Vec::new(),
            env,
        };
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (spec, coord, env, hosts) = (
                    lab.specs[i].clone(),
                    lab.coord_addr.clone(),
                    lab.env.clone(),
                    lab.hosts.clone(),
                );
                std::thread::spawn(move || launch(hosts.as_deref(), i, &spec, &coord, &env))
            })
            .collect();
        lab.servers = handles
            .into_iter()
            .map(|h| Some(h.join().expect("store started")))
            .collect();
        lab.ids = lab
            .specs
            .iter()
            .map(|s| id_at(&lab.coord, &s.redis))
            .collect();
        lab
    }

    fn set_faults(&self, rules: &str) {
        std::fs::write(&self.faults, rules).expect("write faults");
    }

    fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.kill();
        }
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        if let Some(s) = &self.servers[i] {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(s.child.id() as libc::pid_t, signal) };
        }
    }

    fn restart(&mut self, i: usize) {
        self.servers[i] = Some(launch(
            self.hosts.as_deref(),
            i,
            &self.specs[i],
            &self.coord_addr,
            &self.env,
        ));
    }

    /// The index of the store leading `key`'s region (as the first store that answers
    /// sees it), if known.
    fn leader_of(&self, key: &str) -> Option<usize> {
        let slot = u32::from(nokv_gateway::model::slot(key.as_bytes()));
        let lines = self.specs.iter().find_map(|spec| {
            let mut c = Client::try_connect(&spec.redis, Duration::from_secs(1))?;
            match c.try_cmd(&[b"NOKV.REGION", b"LIST"]) {
                Some(R::Array(lines)) => Some(lines),
                _ => None,
            }
        })?;
        let field = |line: &str, name: &str| -> Option<String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        lines.iter().find_map(|l| {
            let R::Bulk(b) = l else { return None };
            let line = String::from_utf8_lossy(b);
            let slots = field(&line, "slots")?;
            let (s, e) = slots.split_once("..")?;
            let (s, e): (u32, u32) = (s.parse().ok()?, e.parse().ok()?);
            if !(s..e).contains(&slot) {
                return None;
            }
            let leader: u64 = field(&line, "leader_store")?.parse().ok()?;
            self.ids.iter().position(|&id| id == leader)
        })
    }

    fn logs(&self) -> String {
        support::cluster::log_tails(&self.specs)
    }
}

/// Starts store `i` (on its host with `hosts`; protected mode off there, as the clients
/// and the other stores connect from other addresses).
fn launch(
    hosts: Option<&Hosts>,
    i: usize,
    spec: &StoreSpec,
    coord: &str,
    env: &[(&'static str, String)],
) -> Server {
    let mut cmd = match hosts {
        Some(h) => {
            let mut cmd = h.command(i, env!("CARGO_BIN_EXE_nokv-server"));
            cmd.args(["--protected-mode", "no"]);
            cmd
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_nokv-server")),
    };
    add_store_args(&mut cmd, spec, coord);
    cmd.args(["--request-timeout-ms", REQUEST_TIMEOUT_MS])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    Server::launch(cmd, spec.workdir.with_extension("stderr.log"))
}

/// What the clients recorded.
#[derive(Default)]
struct Record {
    ops: Vec<Op>,
    /// Reads answered with an error or not at all (left out: they change nothing).
    reads_failed: usize,
    /// Writes never sent (no connection).
    not_sent: usize,
}

/// Client `id`'s loop against store `addr` until `stop` (or `MAX_OPS`): random commands
/// on `keys`, each recorded with its call and return times since `t0`.
fn client_loop(
    id: usize,
    addr: String,
    keys: Vec<String>,
    mix: (u32, u32),
    t0: Instant,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
) {
    let mut rng = (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut roll = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut conn: Option<Client> = None;
    let now = || t0.elapsed().as_nanos() as u64;
    for n in 0..MAX_OPS {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let key = keys[roll(keys.len() as u64) as usize].clone();
        let pick = roll(100) as u32;
        let input = if pick < mix.0 {
            Input::Get
        } else if pick < mix.0 + mix.1 {
            Input::Set(((id as i64) << 32) + n as i64 + 1)
        } else {
            // The rest: INCR, a conditional SET NX, DEL.
            match roll(10) {
                0..=5 => Input::Incr,
                6..=7 => Input::SetNx(((id as i64) << 32) + n as i64 + 1),
                _ => Input::Del,
            }
        };
        if conn.is_none() {
            conn = Client::try_connect(&addr, IO_TIMEOUT);
        }
        let Some(c) = conn.as_mut() else {
            if input != Input::Get {
                record.lock().expect("record").not_sent += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let value;
        let args: Vec<&[u8]> = match input {
            Input::Get => vec![b"GET", key.as_bytes()],
            Input::Set(v) => {
                value = v.to_string();
                vec![b"SET", key.as_bytes(), value.as_bytes()]
            }
            Input::Incr => vec![b"INCR", key.as_bytes()],
            Input::SetNx(v) => {
                value = v.to_string();
                vec![b"SET", key.as_bytes(), value.as_bytes(), b"NX"]
            }
            Input::Del => vec![b"DEL", key.as_bytes()],
        };
        let call = now();
        let reply = c.try_cmd(&args);
        let ret = now();
        if reply.is_none() {
            conn = None; // its state is unknown: a late reply must not be read as the next
        }
        let output = match (input, &reply) {
            (Input::Get, Some(R::Nil)) => Some(Output::Value(None)),
            (Input::Get, Some(R::Bulk(b))) => {
                let v = String::from_utf8_lossy(b)
                    .parse()
                    .expect("an integer value");
                Some(Output::Value(Some(v)))
            }
            (Input::Set(_), Some(R::Simple(s))) if s == "OK" => Some(Output::Ok),
            (Input::Incr, Some(R::Int(v))) => Some(Output::Incremented(*v)),
            (Input::SetNx(_), Some(R::Simple(s))) if s == "OK" => Some(Output::Ok),
            (Input::SetNx(_), Some(R::Nil)) => Some(Output::NotSet),
            (Input::Del, Some(R::Int(n))) => Some(Output::Deleted(*n)),
            (_, Some(R::Error(_)) | None) => None,
            (_, Some(other)) => panic!("client {id}: {args:?} answered {other:?}"),
        };
        let mut rec = record.lock().expect("record");
        match (input, output) {
            (Input::Get, None) => rec.reads_failed += 1,
            _ => rec.ops.push(Op {
                client: id,
                key,
                call,
                ret: if output.is_some() { ret } else { u64::MAX },
                input,
                output,
            }),
        }
        drop(rec);
        // Unavailable for now: do not pile up operations of unknown outcome.
        std::thread::sleep(if output.is_none() {
            Duration::from_millis(200)
        } else {
            THINK
        });
    }
}

/// Starts one client per entry of `plan`: (the store it sends to, its mix: percent of
/// GETs, percent of SETs; the rest are INCRs).
fn start_clients(
    lab: &Lab,
    keys: &[String],
    plan: &[(usize, (u32, u32))],
    stop: &Arc<AtomicBool>,
    record: &Arc<Mutex<Record>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let t0 = Instant::now();
    plan.iter()
        .enumerate()
        .map(|(i, &(store, mix))| {
            let addr = match &lab.gateway {
                Some((_, addr)) => addr.clone(),
                None => lab.specs[store].redis.clone(),
            };
            let keys = keys.to_vec();
            let (stop, record) = (stop.clone(), record.clone());
            std::thread::spawn(move || client_loop(i, addr, keys, mix, t0, stop, record))
        })
        .collect()
}

/// Counts of a history for the report.
fn summary(rec: &Record) -> String {
    let ok = |f: fn(&Input) -> bool| {
        rec.ops
            .iter()
            .filter(|o| f(&o.input) && o.output.is_some())
            .count()
    };
    let unknown = rec.ops.iter().filter(|o| o.output.is_none()).count();
    format!(
        "{} ops recorded: {} reads, {} sets, {} incrs, {} set-nx, {} dels answered, {} writes of unknown outcome; {} reads failed, {} writes not sent",
        rec.ops.len(),
        ok(|i| *i == Input::Get),
        ok(|i| matches!(i, Input::Set(_))),
        ok(|i| *i == Input::Incr),
        ok(|i| matches!(i, Input::SetNx(_))),
        ok(|i| *i == Input::Del),
        unknown,
        rec.reads_failed,
        rec.not_sent
    )
}

/// One kind of fault the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The leader of a key's region cut from every store (`isolate`) for 4 s.
    Isolate,
    /// That leader SIGKILLed, restarted 1 s later.
    Kill,
    /// 20% of raft messages dropped, 10% duplicated, all delayed 0-40 ms, for 4 s.
    Chaos,
    /// The coordinator stopped 3 s, then back on its address.
    CoordinatorStop,
    /// The leader and one follower cut apart (both reach the third store) for 4 s.
    PairCut,
    /// The leader paused (SIGSTOP) 3 s: its clock runs on, as in a long GC pause.
    Pause,
    /// The leader's host's link down 4 s (network namespaces).
    LinkDown,
    /// The leader's host's link flapping: 5 x (300 ms down, 300 ms up).
    LinkFlap,
}

/// Injects `fault` aimed at the leader of `key`'s region (store `victim`); a line for
/// the report.
fn inject(lab: &mut Lab, fault: Fault, key: &str, victim: usize, round: usize) -> String {
    let sleep = |s: u64| std::thread::sleep(Duration::from_millis(s));
    match fault {
        Fault::Isolate => {
            lab.set_faults(&format!("isolate {}\n", lab.ids[victim]));
            sleep(4000);
            lab.set_faults("");
            format!("store {victim} (leading {key}) isolated 4 s")
        }
        Fault::Kill => {
            lab.kill(victim);
            sleep(1000);
            lab.restart(victim);
            format!("store {victim} (leading {key}) SIGKILLed, restarted after 1 s")
        }
        Fault::Chaos => {
            lab.set_faults("drop 20\ndup 10\ndelay 0 40\n");
            sleep(4000);
            lab.set_faults("");
            "20% of raft messages dropped, 10% duplicated, all delayed 0-40 ms (reordered) for 4 s"
                .into()
        }
        Fault::CoordinatorStop => {
            if let Some(s) = lab.coord_server.take() {
                s.shutdown();
            }
            sleep(3000);
            lab.coord_server = Some(
                CoordServer::start(lab.coord.clone(), &lab.coord_addr, ServerOptions::default())
                    .expect("coordinator serves again on its address"),
            );
            "coordinator stopped 3 s".into()
        }
        Fault::PairCut => {
            let other = (victim + 1 + round % 2) % 3;
            lab.set_faults(&format!("cut {} {}\n", lab.ids[victim], lab.ids[other]));
            sleep(4000);
            lab.set_faults("");
            format!("stores {victim} (leading {key}) and {other} cut apart 4 s")
        }
        Fault::Pause => {
            lab.signal(victim, libc::SIGSTOP);
            sleep(3000);
            lab.signal(victim, libc::SIGCONT);
            format!("store {victim} (leading {key}) paused (SIGSTOP) 3 s")
        }
        Fault::LinkDown | Fault::LinkFlap => {
            let hosts = lab.hosts.clone().expect("link faults need hosts");
            if fault == Fault::LinkDown {
                hosts.set_link(victim, false);
                sleep(4000);
                hosts.set_link(victim, true);
                format!("host {victim} (leading {key}) link down 4 s")
            } else {
                for _ in 0..5 {
                    hosts.set_link(victim, false);
                    sleep(300);
                    hosts.set_link(victim, true);
                    sleep(300);
                }
                format!("host {victim} (leading {key}) link flapping 3 s")
            }
        }
    }
}

/// 6 clients (two per store) on `KEYS` keys while the nemesis cycles through `faults`
/// for `secs` seconds; fails on a non-linearizable key or when too little was answered.
fn linearizable_under(mut lab: Lab, faults: &[Fault], secs: u64) {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("lin:{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let plan: Vec<(usize, (u32, u32))> = (0..CLIENTS).map(|i| (i % 3, (50, 25))).collect();
    let clients = start_clients(&lab, &keys, &plan, &stop, &record);

    // One fault at a time, cycling through the kinds, each healed before the next.
    let mut injected: Vec<String> = Vec::new();
    let mut counts = vec![0usize; faults.len()];
    let end = Instant::now() + Duration::from_secs(secs);
    let mut round = 0usize;
    std::thread::sleep(Duration::from_secs(2));
    while Instant::now() < end {
        let key = keys[(round * 3 + 1) % KEYS].clone();
        let victim = lab.leader_of(&key).unwrap_or(round % 3);
        let kind = round % faults.len();
        counts[kind] += 1;
        injected.push(inject(&mut lab, faults[kind], &key, victim, round));
        std::thread::sleep(Duration::from_secs(2));
        round += 1;
    }
    lab.set_faults("");
    // A quiet stretch so the last operations are answered normally.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let rec = std::mem::take(&mut *record.lock().expect("record"));
    let started = Instant::now();
    let violations = lincheck::check(&rec.ops);
    let kinds: Vec<String> = faults
        .iter()
        .zip(&counts)
        .map(|(f, n)| format!("{n} x {f:?}"))
        .collect();
    println!(
        "linearizability: {}; {} keys checked in {:.2} s; {} faults injected ({}): {}; anomalies: {}",
        summary(&rec),
        KEYS,
        started.elapsed().as_secs_f64(),
        injected.len(),
        kinds.join(", "),
        if injected.len() <= 12 {
            injected.join("; ")
        } else {
            format!("{} ...", injected[..12].join("; "))
        },
        violations.len()
    );
    let answered_writes = rec
        .ops
        .iter()
        .filter(|o| o.input != Input::Get && o.output.is_some())
        .count();
    let answered_reads = rec.ops.iter().filter(|o| o.input == Input::Get).count();
    assert!(
        answered_writes >= 50 && answered_reads >= 50,
        "too few operations answered to check anything: {}\n{}",
        summary(&rec),
        lab.logs()
    );
    assert!(
        violations.is_empty(),
        "{}\n{}",
        violations.iter().map(|v| v.to_string()).collect::<String>(),
        lab.logs()
    );
}

/// `NOKV_LIN_SECS`, or `default` seconds.
fn nemesis_secs(default: u64) -> u64 {
    std::env::var("NOKV_LIN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn single_key_commands_stay_linearizable_through_partitions_kills_and_message_chaos() {
    let faults = [
        Fault::Isolate,
        Fault::Kill,
        Fault::Chaos,
        Fault::CoordinatorStop,
        Fault::PairCut,
        Fault::Pause,
    ];
    linearizable_under(Lab::start(None, &[]), &faults, nemesis_secs(36));
}

#[test]
fn single_key_commands_through_nokv_redis_stay_linearizable_while_leaders_fail() {
    let mut lab = Lab::start(None, &[]);
    let addr = free_addr();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_nokv-redis"));
    cmd.args(["--coordinator", &lab.coord_addr, "--cluster-id", "7"])
        .args(["--listen", &addr, "--timeout-ms", "8000"]);
    let log = lab.specs[0].workdir.with_file_name("nokv-redis.log");
    lab.gateway = Some((Server::launch(cmd, log), addr));
    let faults = [Fault::Kill, Fault::Isolate, Fault::Pause];
    linearizable_under(lab, &faults, nemesis_secs(24));
}

#[test]
fn single_key_commands_stay_linearizable_across_hosts_with_links_down_and_flapping() {
    let hosts = match Hosts::create(3) {
        Ok(h) => h,
        Err(e) => {
            println!("skipped: no network namespaces here ({e})");
            return;
        }
    };
    let faults = [Fault::LinkDown, Fault::LinkFlap, Fault::Kill, Fault::Pause];
    linearizable_under(Lab::start(Some(hosts), &[]), &faults, nemesis_secs(24));
}

/// Two readers on the leader of one key's region and four writers on the other stores;
/// the leader is cut off for 8 s. The history and its violations.
fn cut_off_leader(env: &[(&'static str, &str)]) -> (Record, Vec<lincheck::Violation>, Lab) {
    let lab = Lab::start(None, env);
    let key = "stale:0".to_string();
    let mut c = Client::try_connect(&lab.specs[0].redis, IO_TIMEOUT).expect("connect");
    assert_eq!(c.try_cmd(&[b"SET", key.as_bytes(), b"0"]), Some(R::ok()));
    let leader = lab.leader_of(&key).expect("the key's region has a leader");
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Record::default()));
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let plan = [
        (leader, (100, 0)),
        (leader, (100, 0)),
        (others[0], (0, 50)),
        (others[1], (0, 50)),
        (others[0], (0, 50)),
        (others[1], (0, 50)),
    ];
    // The first SET is part of the history (before every client's first call).
    record.lock().expect("record").ops.push(Op {
        client: usize::MAX,
        key: key.clone(),
        call: 0,
        ret: 0,
        input: Input::Set(0),
        output: Some(Output::Ok),
    });
    let clients = start_clients(&lab, std::slice::from_ref(&key), &plan, &stop, &record);
    std::thread::sleep(Duration::from_secs(1));
    lab.set_faults(&format!("isolate {}\n", lab.ids[leader]));
    std::thread::sleep(Duration::from_secs(8));
    lab.set_faults("");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for h in clients {
        h.join().expect("client");
    }
    let rec = std::mem::take(&mut *record.lock().expect("record"));
    let violations = lincheck::check(&rec.ops);
    (rec, violations, lab)
}

#[test]
fn a_cut_off_leader_serves_no_stale_read() {
    let (rec, violations, lab) = cut_off_leader(&[]);
    println!(
        "cut-off leader: {}; anomalies: {}",
        summary(&rec),
        violations.len()
    );
    let sets = rec
        .ops
        .iter()
        .filter(|o| o.output == Some(Output::Ok))
        .count();
    assert!(
        sets > 10,
        "the majority took too few writes: {}",
        summary(&rec)
    );
    assert!(
        violations.is_empty(),
        "{}\n{}",
        violations.iter().map(|v| v.to_string()).collect::<String>(),
        lab.logs()
    );
}

#[test]
fn a_cut_off_leader_reading_without_a_quorum_is_caught_serving_stale_values() {
    let (rec, violations, lab) = cut_off_leader(&[("NOKV_DEBUG_READ_WITHOUT_QUORUM", "1")]);
    println!(
        "negative control: {}; anomalies: {}\n{}",
        summary(&rec),
        violations.len(),
        violations.iter().map(|v| v.to_string()).collect::<String>()
    );
    assert!(
        !violations.is_empty(),
        "a leader cut off from its quorum served reads without a lease or ReadIndex, and the checker saw nothing: {}\n{}",
        summary(&rec),
        lab.logs()
    );
}
