//! One core's link to one remote store: the bounded send queue and the writer task that
//! connects (with backoff), cuts frames from the queue and writes them.

use super::secure::{self, RpcStream};
use super::CoreTransport;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use nokv_raft::transport::{Backoff, DropCause, Event, RaftEnvelope, SendQueue};
use std::cell::RefCell;
use std::rc::{Rc, Weak};

/// The queue toward one store and the wake-up of its writer.
pub(super) struct Link {
    store: u64,
    queue: RefCell<SendQueue>,
    wake: LocalSender<()>,
}

impl Link {
    /// A link to `store` whose writer task runs on this executor until the transport stops.
    pub(super) fn start(t: &Rc<CoreTransport>, store: u64) -> Rc<Link> {
        let (wake, woken) = local_channel::new_bounded(1);
        let link = Rc::new(Link {
            store,
            queue: RefCell::new(SendQueue::new(t.shared.config.queue)),
            wake,
        });
        let guard = t.task();
        let write = writer(Rc::downgrade(t), link.clone(), woken);
        glommio::spawn_local(async move {
            let _guard = guard;
            write.await
        })
        .detach();
        link
    }

    /// Queues `env` for the writer; never waits.
    pub(super) fn push(&self, env: RaftEnvelope) -> Result<(), DropCause> {
        self.queue.borrow_mut().push(env).map_err(DropCause::from)?;
        // Full means a wake-up is already pending.
        let _ = self.wake.try_send(());
        Ok(())
    }
}

/// What ended a wait of the writer.
enum Woken {
    Work,
    Stop,
    /// The idle connection was closed by the other side (or failed).
    Closed,
}

/// Connects, then writes whatever is queued, frame by frame; reconnects with backoff after
/// a failure, but only while messages wait (an idle link to a dead store costs nothing).
async fn writer(t: Weak<CoreTransport>, link: Rc<Link>, woken: LocalReceiver<()>) {
    let mut backoff = match t.upgrade() {
        // Seeded per (store, core, destination): cores do not retry in lockstep.
        Some(t) => Backoff::new(
            t.shared.config.backoff,
            (t.shared.config.store_id << 32) ^ ((t.core as u64) << 16) ^ link.store,
        ),
        None => return,
    };
    let mut conn: Option<RpcStream> = None;
    let mut probe = [0u8; 64];
    loop {
        let Some(tp) = t.upgrade() else { return };
        if tp.stop.is_fired() {
            drop_queued(&tp, &link);
            if let Some(c) = &conn {
                super::listen::close_now(c);
            }
            return;
        }
        if link.queue.borrow().is_empty() {
            // Idle: wait for work, watching the connection so that a peer that went away
            // (a restart) is noticed before the next write is lost into a dead socket.
            let stop = tp.stop.clone();
            drop(tp);
            let w = match conn.as_mut() {
                Some(c) => {
                    future::or(
                        async {
                            woken.recv().await;
                            Woken::Work
                        },
                        future::or(
                            async {
                                stop.wait().await;
                                Woken::Stop
                            },
                            async {
                                // The other side never sends: data, EOF or an error all
                                // mean the connection is no good any more.
                                let _ = c.read(&mut probe).await;
                                Woken::Closed
                            },
                        ),
                    )
                    .await
                }
                None => {
                    future::or(
                        async {
                            woken.recv().await;
                            Woken::Work
                        },
                        async {
                            stop.wait().await;
                            Woken::Stop
                        },
                    )
                    .await
                }
            };
            if let Woken::Closed = w {
                tracing::debug!(store = link.store, "connection closed by the other store");
                conn = None;
            }
            continue;
        }
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(&tp, link.store).await {
                Ok(s) => {
                    backoff.reset();
                    tp.shared.stats.add(Event::Connects, 1);
                    conn.insert(s)
                }
                Err(e) => {
                    tp.shared.stats.add(Event::ConnectFailures, 1);
                    tp.resolver.invalidate(link.store);
                    let delay = backoff.next_delay();
                    if backoff.failures() == 1 || backoff.failures().is_power_of_two() {
                        tracing::warn!(core = tp.core, store = link.store, error = %e, failures = backoff.failures(), retry_in_ms = delay.as_millis() as u64, "cannot reach store");
                    }
                    let stop = tp.stop.clone();
                    drop(tp);
                    future::or(
                        async {
                            glommio::timer::sleep(delay).await;
                        },
                        stop.wait(),
                    )
                    .await;
                    continue;
                }
            },
        };
        // Write everything queued, one frame at a time; new messages queue meanwhile.
        let cluster = tp.shared.config.cluster_id;
        let stop = tp.stop.clone();
        let stats = tp.shared.stats.clone();
        drop(tp);
        let mut failed = false;
        loop {
            let Some(frame) = link.queue.borrow_mut().next_frame(cluster) else {
                break;
            };
            let written = future::or(
                async {
                    let w = stream.write_all(&frame.bytes).await;
                    Some(match w {
                        Ok(()) => stream.flush().await,
                        Err(e) => Err(e),
                    })
                },
                async {
                    stop.wait().await;
                    None
                },
            )
            .await;
            match written {
                Some(Ok(())) => {
                    stats.add(Event::FramesSent, 1);
                    stats.add(Event::MessagesSent, frame.messages as u64);
                    stats.add(Event::BytesSent, frame.bytes.len() as u64);
                }
                Some(Err(e)) => {
                    stats.add(
                        Event::Dropped(DropCause::ConnectionLost),
                        frame.messages as u64,
                    );
                    tracing::debug!(store = link.store, error = %e, "write to store failed; reconnecting");
                    failed = true;
                    break;
                }
                None => {
                    stats.add(Event::Dropped(DropCause::Stopping), frame.messages as u64);
                    break;
                }
            }
        }
        if failed {
            conn = None;
        }
    }
}

/// A connection to `store`'s RPC port (its address from the core's resolver cache), TLS
/// under `--tls-cluster`.
pub(super) async fn connect(t: &Rc<CoreTransport>, store: u64) -> Result<RpcStream, String> {
    let addr = t.resolver.resolve(store).await.map_err(|e| e.to_string())?;
    let cfg = &t.shared.config;
    let stream = TcpStream::connect_timeout(addr, cfg.connect_timeout)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if nokv_raft::transport::connected_to_itself(stream.local_addr(), stream.peer_addr()) {
        return Err(format!(
            "connect {addr}: connected to itself (nothing listens there)"
        ));
    }
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(cfg.write_timeout))
        .map_err(|e| format!("write timeout on {addr}: {e}"))?;
    let stream = secure::client(stream, cfg.tls.as_deref(), addr, cfg.connect_timeout)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    tracing::debug!(core = t.core, store, %addr, "connected to store");
    Ok(stream)
}

/// The transport stops: what still waits is dropped (and counted).
fn drop_queued(t: &CoreTransport, link: &Link) {
    let n = link.queue.borrow_mut().clear();
    if n > 0 {
        t.shared
            .stats
            .add(Event::Dropped(DropCause::Stopping), n as u64);
    }
}
