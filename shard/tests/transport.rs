//! Store-to-store transport on loopback: two "stores" in this process, each a set of
//! glommio executors running `nokv_shard::transport`, exchange raft batches; bad frames
//! are refused; a store down at first, or restarting, is reached once it listens.
//! Every wait is bounded by a deadline; no timing is asserted.

mod support;

use futures_lite::future;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use nokv_raft::raftpb::{Message, MessageType};
use nokv_raft::transport::{encode_batch, RaftEnvelope, Route};
use nokv_raft::wire::{self, kind};
use nokv_raft::Epoch;
use nokv_shard::transport::{
    reserve_addr, BackoffConfig, CoreTransport, DropCause, Event, StaticResolver, StoreTransport,
    TransportConfig, TransportStats,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Upper bound of every wait (a failure bound, not a timing assumption).
const LIMIT: Duration = Duration::from_secs(30);
const CLUSTER: u64 = 7;

fn config(store: u64, cores: usize, listen: SocketAddr) -> TransportConfig {
    let mut c = TransportConfig::new(CLUSTER, store, cores, listen);
    // Small frames, so that a few hundred messages make many of them.
    c.queue.max_frame_messages = 16;
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    c.max_payload = 64 << 10;
    c
}

/// The counters that tell where messages stopped, for failure messages.
fn counters(s: &TransportStats) -> String {
    [
        ("connects", Event::Connects),
        ("connect_failures", Event::ConnectFailures),
        ("frames_sent", Event::FramesSent),
        ("messages_sent", Event::MessagesSent),
        ("accepted", Event::Accepted),
        ("refused", Event::Refused),
        ("received", Event::MessagesReceived),
        ("delivered", Event::MessagesDelivered),
        ("lost_in_write", Event::Dropped(DropCause::ConnectionLost)),
        ("queue_full", Event::Dropped(DropCause::QueueFull)),
    ]
    .iter()
    .map(|(name, e)| format!("{name}={}", s.get(*e)))
    .collect::<Vec<_>>()
    .join(" ")
}

fn free_addr() -> SocketAddr {
    reserve_addr(&format!("127.0.0.1:{}", support::free_port())).expect("a free loopback port")
}

/// Peer id of (store, core) in these tests.
fn peer(store: u64, core: u32) -> u64 {
    store * 10 + u64::from(core)
}

/// A raft heartbeat from (from_store, from_core) to (to_store, to_core); `seq` makes it unique.
fn envelope(from: (u64, u32), to: (u64, u32), seq: u64) -> RaftEnvelope {
    let msg = Message {
        msg_type: MessageType::MsgHeartbeat,
        from: peer(from.0, from.1),
        to: peer(to.0, to.1),
        term: 3,
        commit: seq,
        context: format!("seq {seq} from {from:?} to {to:?}")
            .into_bytes()
            .into(),
        ..Message::default()
    };
    let route = Route {
        region_id: 100 + seq % 7,
        epoch: Epoch {
            version: 2,
            conf_version: 5,
        },
        from_store: from.0,
        to_store: to.0,
        to_core: to.1,
    };
    RaftEnvelope::new(route, &msg).expect("encode a raft message")
}

/// Runs `f` on each core of a store (one executor per core, started transport given),
/// then shuts the core's transport down; the handles yield what `f` returned.
fn run_store<F, Fut, R>(st: &StoreTransport, f: F) -> Vec<ExecutorJoinHandle<R>>
where
    F: Fn(Rc<CoreTransport>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    (0..st.config().cores)
        .map(|core| {
            let st = st.clone();
            let f = f.clone();
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("store-{}-core-{core}", st.config().store_id))
                .io_memory(64 << 10)
                .spawn(move || async move {
                    let t = st
                        .start_core(core)
                        .await
                        .expect("start the core's transport");
                    let r = f(t.clone()).await;
                    t.shutdown().await;
                    r
                })
                .expect("spawn an executor")
        })
        .collect()
}

fn join<R: Send + 'static>(handles: Vec<ExecutorJoinHandle<R>>) -> Vec<R> {
    handles
        .into_iter()
        .map(|h| h.join().expect("executor"))
        .collect()
}

/// Drains the core's inbox until `done()` (or the deadline); returns what arrived, in order.
async fn collect_until(t: &CoreTransport, done: impl Fn() -> bool) -> Vec<RaftEnvelope> {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    loop {
        got.extend(t.inbox().drain(usize::MAX));
        if done() || Instant::now() > deadline {
            got.extend(t.inbox().drain(usize::MAX));
            return got;
        }
        future::or(
            t.inbox().ready(),
            glommio::timer::sleep(Duration::from_millis(20)),
        )
        .await;
    }
}

/// Waits (on an executor) until `done()` or the deadline.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (on the test thread) until `done()`; false at the deadline.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The sender (store, core) of an envelope of these tests.
fn sender(env: &RaftEnvelope) -> (u64, u32) {
    (env.from_store, (env.from_peer % 10) as u32)
}

/// Messages by sending (store, core), in arrival order.
type BySender = BTreeMap<(u64, u32), Vec<RaftEnvelope>>;

#[test]
fn two_stores_exchange_raft_batches_between_specific_cores() {
    const CORES: usize = 2;
    const REMOTE: u64 = 300; // per sending core, to the other store's cores in turn
    const LOCAL: u64 = 20; // per sending core, to the other core of its own store
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let resolver = Arc::new(StaticResolver::new([(1, a_addr), (2, b_addr)]));
    let a = StoreTransport::new(config(1, CORES, a_addr), resolver.clone());
    let b = StoreTransport::new(config(2, CORES, b_addr), resolver);
    let per_core = (CORES as u64 * REMOTE) / CORES as u64 + LOCAL;
    let total = per_core * 2 * CORES as u64;
    let (sa, sb) = (a.stats(), b.stats());
    let all_delivered = {
        let (sa, sb) = (sa.clone(), sb.clone());
        move || sa.get(Event::MessagesDelivered) + sb.get(Event::MessagesDelivered) >= total
    };
    let script = move |t: Rc<CoreTransport>| {
        let all_delivered = all_delivered.clone();
        async move {
            let me = (t.store_id(), t.core() as u32);
            let other = if me.0 == 1 { 2 } else { 1 };
            let mut sent = Vec::new();
            for seq in 0..REMOTE {
                let env = envelope(me, (other, (seq % CORES as u64) as u32), seq);
                t.send(env.clone()).expect("queued");
                sent.push(env);
            }
            for seq in 0..LOCAL {
                let env = envelope(me, (me.0, 1 - me.1), 10_000 + seq);
                t.send(env.clone()).expect("handed to the other core");
                sent.push(env);
            }
            // Keep running (and writing) until every core of both stores has everything.
            let got = collect_until(&t, &all_delivered).await;
            (me, sent, got)
        }
    };
    let ha = run_store(&a, script.clone());
    let hb = run_store(&b, script);
    let results: Vec<_> = join(ha).into_iter().chain(join(hb)).collect();

    // Every envelope arrived at the core it was addressed to, byte for byte, in the order
    // each sender sent it.
    let mut expected: BTreeMap<(u64, u32), BySender> = BTreeMap::new();
    for (from, sent, _) in &results {
        for env in sent {
            expected
                .entry((env.to_store, env.to_core))
                .or_default()
                .entry(*from)
                .or_default()
                .push(env.clone());
        }
    }
    for (me, _, got) in &results {
        assert_eq!(got.len() as u64, per_core, "core {me:?} got {}", got.len());
        let mut by_sender = BySender::new();
        for env in got {
            assert_eq!((env.to_store, env.to_core), *me, "misrouted");
            by_sender.entry(sender(env)).or_default().push(env.clone());
        }
        assert_eq!(&by_sender, expected.get(me).expect("expected"), "{me:?}");
        for env in got {
            let msg = env.message().expect("the raft message decodes");
            assert_eq!(msg.to, peer(me.0, me.1));
        }
    }
    for s in [&sa, &sb] {
        assert_eq!(s.dropped(), 0);
        assert_eq!(s.frames_rejected(), 0);
        assert_eq!(s.get(Event::MessagesDelivered), per_core * CORES as u64);
        assert_eq!(s.get(Event::MessagesSent), REMOTE * CORES as u64);
        // Batched: fewer frames than messages.
        assert!(s.get(Event::FramesSent) < s.get(Event::MessagesSent));
    }
}

#[test]
fn a_store_down_at_first_is_reached_once_it_starts() {
    const N: u64 = 50;
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let resolver = Arc::new(StaticResolver::new([(1, a_addr), (2, b_addr)]));
    let a = StoreTransport::new(config(1, 1, a_addr), resolver.clone());
    let b = StoreTransport::new(config(2, 2, b_addr), resolver);
    let (sa, sb) = (a.stats(), b.stats());
    let sent: Vec<RaftEnvelope> = (0..N).map(|i| envelope((1, 0), (2, 1), i)).collect();
    let ha = {
        let sent = sent.clone();
        let sb = sb.clone();
        run_store(&a, move |t| {
            let sent = sent.clone();
            let sb = sb.clone();
            async move {
                for env in sent {
                    t.send(env).expect("queued while the store is down");
                }
                wait_until(|| sb.get(Event::MessagesDelivered) >= N).await;
            }
        })
    };
    // Store 2 is not listening yet: the writer fails to connect and backs off.
    assert!(
        eventually(|| sa.get(Event::ConnectFailures) >= 3),
        "no connect attempts"
    );
    assert_eq!(sa.get(Event::Connects), 0);
    let hb = run_store(&b, {
        let sb = sb.clone();
        move |t| {
            let sb = sb.clone();
            async move { collect_until(&t, || sb.get(Event::MessagesDelivered) >= N).await }
        }
    });
    let got = join(hb);
    join(ha);
    assert!(got[0].is_empty(), "nothing was addressed to core 0");
    assert_eq!(got[1], sent, "every message, in order, at core 1");
    assert!(sa.get(Event::Connects) >= 1);
    assert_eq!(sa.dropped(), 0);
}

/// Writes `bytes` on a new connection to `addr` (then half-closes it when `shut`), and
/// waits for the server to close the connection.
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8], shut: bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(LIMIT)).expect("timeout");
    // The server may close before taking everything: a failed write is fine.
    let _ = s.write_all(bytes);
    if shut {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut buf = [0u8; 64];
    let started = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => panic!("the store port never answers"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the connection was not dropped within {LIMIT:?}")
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return, // reset: dropped too
        }
        assert!(started.elapsed() < LIMIT);
    }
}

fn frame(cluster: u64, envelopes: Vec<RaftEnvelope>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_batch(&mut out, cluster, envelopes);
    out
}

#[test]
fn bad_frames_drop_the_connection_count_and_deliver_nothing() {
    use nokv_raft::transport::FrameReject;
    let b_addr = free_addr();
    let b = StoreTransport::new(
        config(2, 2, b_addr),
        Arc::new(StaticResolver::new([(2, b_addr)])),
    );
    let sb = b.stats();
    const MARKER: u64 = 999;
    let marker_seen = Arc::new(AtomicBool::new(false));
    let listening = Arc::new(AtomicUsize::new(0));
    let hb = run_store(&b, {
        let marker_seen = marker_seen.clone();
        let listening = listening.clone();
        move |t| {
            let marker_seen = marker_seen.clone();
            listening.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut got = Vec::new();
                let deadline = Instant::now() + LIMIT * 2;
                while !marker_seen.load(Ordering::SeqCst) && Instant::now() < deadline {
                    for env in t.inbox().drain(usize::MAX) {
                        if env.message().ok().map(|m| m.commit) == Some(MARKER) {
                            marker_seen.store(true, Ordering::SeqCst);
                        }
                        got.push(env);
                    }
                    future::or(
                        t.inbox().ready(),
                        glommio::timer::sleep(Duration::from_millis(20)),
                    )
                    .await;
                }
                got.extend(t.inbox().drain(usize::MAX));
                got
            }
        }
    });
    assert!(
        eventually(|| listening.load(Ordering::SeqCst) == 2),
        "store 2 did not start"
    );
    let for_b = |seq| envelope((1, 0), (2, 0), seq);
    let good = frame(CLUSTER, vec![for_b(1), for_b(2)]);
    let rejected = |r| sb.get(Event::FrameRejected(r));

    let cases: Vec<(&str, Vec<u8>, bool, FrameReject)> = vec![
        (
            "another cluster",
            frame(CLUSTER + 1, vec![for_b(3)]),
            false,
            FrameReject::Cluster,
        ),
        (
            "an unknown protocol version",
            {
                let mut f = good.clone();
                f[4] = 0x77;
                f
            },
            false,
            FrameReject::Version,
        ),
        (
            "over the size bound",
            {
                let mut f = Vec::new();
                wire::encode_raw(&mut f, kind::RAFT_BATCH, CLUSTER, 0, &vec![0u8; 65 << 10]);
                f
            },
            false,
            FrameReject::TooLarge,
        ),
        (
            "a failing checksum",
            {
                let mut f = good.clone();
                let last = f.len() - 1;
                f[last] ^= 0x40;
                f
            },
            false,
            FrameReject::Checksum,
        ),
        (
            "garbage bytes",
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n".to_vec(),
            false,
            FrameReject::Magic,
        ),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            true,
            FrameReject::Truncated,
        ),
        (
            "not a raft batch",
            {
                let mut f = Vec::new();
                wire::encode_raw(&mut f, kind::COORD_REQUEST, CLUSTER, 1, b"GET k");
                f
            },
            false,
            FrameReject::Payload,
        ),
    ];
    for (what, bytes, shut, reason) in cases {
        let before = rejected(reason);
        send_and_expect_close(b_addr, &bytes, shut);
        assert!(
            eventually(|| rejected(reason) == before + 1),
            "{what}: not counted as {reason:?}"
        );
    }
    assert_eq!(
        sb.get(Event::MessagesReceived),
        0,
        "nothing of a bad frame is taken"
    );

    // A good frame then a bad one on one connection: the good frame's messages arrive,
    // then the connection is dropped.
    let mut two = frame(CLUSTER, vec![for_b(42)]);
    two.extend_from_slice(&frame(CLUSTER + 1, vec![for_b(43)]));
    send_and_expect_close(b_addr, &two, false);

    // The store still serves: a marker on a fresh connection, to the other core.
    let mut s = TcpStream::connect(b_addr).expect("connect");
    s.write_all(&frame(CLUSTER, vec![envelope((1, 0), (2, 1), MARKER)]))
        .expect("write the marker");
    assert!(
        eventually(|| marker_seen.load(Ordering::SeqCst)),
        "marker not delivered"
    );
    drop(s);
    let got = join(hb);
    let seqs: Vec<Vec<u64>> = got
        .iter()
        .map(|g| {
            g.iter()
                .map(|e| e.message().expect("decodes").commit)
                .collect()
        })
        .collect();
    assert_eq!(
        seqs,
        vec![vec![42], vec![MARKER]],
        "only the good frames' messages"
    );
    assert_eq!(sb.frames_rejected(), 8);
    assert_eq!(sb.get(Event::Dropped(DropCause::InboxFull)), 0);
}

#[test]
fn a_restarted_store_is_reconnected_to() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let resolver = Arc::new(StaticResolver::new([(1, a_addr), (2, b_addr)]));
    let a = StoreTransport::new(config(1, 1, a_addr), resolver.clone());
    let sa = a.stats();
    let stop_a = Arc::new(AtomicBool::new(false));
    // Store 1 sends a heartbeat to store 2's core 1 every 10 ms until told to stop.
    let ha = run_store(&a, {
        let stop_a = stop_a.clone();
        move |t| {
            let stop_a = stop_a.clone();
            async move {
                let deadline = Instant::now() + LIMIT * 3;
                let mut seq = 0;
                while !stop_a.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let _ = t.send(envelope((1, 0), (2, 1), seq));
                    seq += 1;
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    let incarnation = |min: usize| {
        let b = StoreTransport::new(config(2, 2, b_addr), resolver.clone());
        let sb = b.stats();
        let sb2 = sb.clone();
        let got = join(run_store(&b, move |t| {
            let sb = sb.clone();
            async move { collect_until(&t, || sb.get(Event::MessagesDelivered) >= min as u64).await }
        }));
        assert!(got[0].is_empty());
        let seqs: Vec<u64> = got[1]
            .iter()
            .map(|e| e.message().expect("decodes").commit)
            .collect();
        assert!(
            seqs.len() >= min,
            "only {} messages arrived; sender: {}; receiver: {}",
            seqs.len(),
            counters(&sa),
            counters(&sb2)
        );
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        seqs
    };
    let first = incarnation(5);
    // Store 2 stopped (its executors ended, listeners and connections closed); it comes back
    // on the same address and store 1 reconnects.
    let second = incarnation(5);
    stop_a.store(true, Ordering::SeqCst);
    join(ha);
    assert!(
        second[0] > *first.last().expect("some"),
        "the second incarnation got new messages"
    );
    assert!(sa.get(Event::Connects) >= 2, "reconnected");
}

#[test]
fn a_node_with_an_rpc_port_refuses_bad_frames_and_keeps_serving() {
    use support::{sample, Server, R};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(
        dir.path(),
        &[
            "--cores",
            "2",
            "--rpc-addr",
            "127.0.0.1:0",
            "--cluster-id",
            "5",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let rpc: SocketAddr = server
        .rpc
        .as_deref()
        .expect("the server prints its rpc address")
        .parse()
        .expect("an address");
    let count = |name: &str, labels: &str| sample(&server.scrape(), name, labels).unwrap_or(-1.0);
    // The node is store 1 (a single-store layout).
    let to_node = |core, seq| envelope((2, 0), (1, core), seq);
    send_and_expect_close(rpc, &frame(6, vec![to_node(0, 1)]), false);
    send_and_expect_close(
        rpc,
        b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
        false,
    );
    assert!(eventually(|| count(
        "nokv_transport_frames_rejected_total",
        "reason=\"cluster\""
    ) == 1.0));
    assert!(eventually(|| count(
        "nokv_transport_frames_rejected_total",
        "reason=\"magic\""
    ) == 1.0));
    // A good frame: one message for core 1 of this store, one for another store.
    let mut s = TcpStream::connect(rpc).expect("connect");
    s.write_all(&frame(5, vec![to_node(1, 2), envelope((2, 0), (9, 0), 3)]))
        .expect("write");
    assert!(eventually(|| count(
        "nokv_transport_messages_delivered_total",
        ""
    ) == 1.0));
    assert_eq!(
        count(
            "nokv_transport_envelopes_rejected_total",
            "reason=\"wrong_store\""
        ),
        1.0
    );
    drop(s);
    // Clients are served as before.
    let mut c = server.client();
    assert_eq!(c.cmd("SET k v"), R::ok());
    assert_eq!(c.cmd("GET k"), R::bulk("v"));
    // A second server cannot take the same RPC port (nor a port shared with Redis).
    let other = tempfile::tempdir().expect("tempdir");
    let rpc_flag = rpc.to_string();
    let (status, stderr) = support::run_to_exit(
        other.path(),
        &["--redis-addr", "127.0.0.1:0", "--rpc-addr", &rpc_flag],
    );
    assert!(!status.success());
    assert!(stderr.contains("already in use"), "{stderr}");
    let free = free_addr().to_string();
    let (status, stderr) =
        support::run_to_exit(other.path(), &["--redis-addr", &free, "--rpc-addr", &free]);
    assert!(!status.success());
    assert!(stderr.contains("different ports"), "{stderr}");
    assert!(server.terminate().success(), "SIGTERM: exit 0");
}
