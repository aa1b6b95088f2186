//! Key-value requests this core sends to other stores (a command forwarded to its region's
//! leader): one connection per (core, store), opened on first use, requests pipelined on
//! it and answers matched to their callers by request id.

use super::listen::shutdown_fd;
use super::outbound::connect;
use super::CoreTransport;
use crate::oneshot;
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use nokv_raft::kv::{self, KvRequest, KvResponse};
use nokv_raft::wire::{kind, FrameDecoder, FrameLimits};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

/// Most requests queued for one store's connection and not yet written.
const MAX_QUEUED: usize = 1024;
/// Bytes read from a connection at once.
const READ_CHUNK: usize = 64 * 1024;

/// Why a key-value request to another store got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvCallError {
    /// The request was never written: the store did not see it (safe to send again).
    #[error("store {store} not reached: {detail}")]
    NotSent {
        /// The store.
        store: u64,
        /// Why.
        detail: String,
    },
    /// The request was written but no answer came: it may have run.
    #[error("no answer from store {store}: {detail}")]
    NoAnswer {
        /// The store.
        store: u64,
        /// Why.
        detail: String,
    },
}

/// Where a link's frames (request id, encoded frame) go to its writer task.
type FrameSender = LocalSender<(u64, Vec<u8>)>;

/// What a caller waits for.
type Answer = Result<KvResponse, KvCallError>;

/// A caller waiting for the answer to one request.
struct Waiting {
    tx: oneshot::Sender<Answer>,
    /// The request went out on the connection.
    written: bool,
}

/// One connection to a store and the requests waiting on it.
struct Link {
    store: u64,
    /// Frames for the writer task (None once the link failed).
    frames: RefCell<Option<FrameSender>>,
    waiting: RefCell<HashMap<u64, Waiting>>,
    /// The connection's descriptor once connected (shut down when the link fails).
    fd: Cell<Option<std::os::fd::RawFd>>,
}

impl Link {
    /// The link is done: every caller still waiting gets `detail`, the connection is shut
    /// down and the writer told to end.
    fn fail(&self, detail: &str) {
        self.frames.borrow_mut().take();
        if let Some(fd) = self.fd.take() {
            shutdown_fd(fd);
        }
        let waiting: Vec<Waiting> = self.waiting.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in waiting {
            let detail = detail.to_string();
            w.tx.send(Err(if w.written {
                KvCallError::NoAnswer {
                    store: self.store,
                    detail,
                }
            } else {
                KvCallError::NotSent {
                    store: self.store,
                    detail,
                }
            }));
        }
    }
}

/// This core's connections for key-value requests, by store.
#[derive(Default)]
pub(super) struct KvLinks {
    links: RefCell<HashMap<u64, Rc<Link>>>,
    next_id: Cell<u64>,
}

impl CoreTransport {
    /// Sends `request` to store `store` and waits up to `timeout` for its answer.
    pub async fn kv_call(
        self: &Rc<Self>,
        store: u64,
        request: &KvRequest,
        timeout: Duration,
    ) -> Result<KvResponse, KvCallError> {
        if self.stop.is_fired() {
            return Err(KvCallError::NotSent {
                store,
                detail: "the store is stopping".into(),
            });
        }
        if let Some(faults) = &self.shared.config.net_faults {
            if faults.rules().cut(self.shared.config.store_id, store) {
                // A partition: the request goes out and no answer comes back.
                future::or(glommio::timer::sleep(timeout), self.stop.wait()).await;
                return Err(KvCallError::NoAnswer {
                    store,
                    detail: "cut off by an injected network fault".into(),
                });
            }
        }
        let link = self.kv_link(store);
        let id = self.kv_links.next_id.get() + 1;
        self.kv_links.next_id.set(id);
        let mut frame = Vec::new();
        kv::encode_request(&mut frame, self.shared.config.cluster_id, id, request);
        let (tx, rx) = oneshot::channel();
        link.waiting
            .borrow_mut()
            .insert(id, Waiting { tx, written: false });
        let queued = match link.frames.borrow().as_ref() {
            Some(frames) => frames.try_send((id, frame)).is_ok(),
            None => false,
        };
        if !queued {
            link.waiting.borrow_mut().remove(&id);
            return Err(KvCallError::NotSent {
                store,
                detail: "the connection's queue is full or closed".into(),
            });
        }
        let answer = future::or(async { Some(rx.await) }, async {
            future::or(glommio::timer::sleep(timeout), self.stop.wait()).await;
            None
        })
        .await;
        match answer {
            Some(Some(answer)) => answer,
            Some(None) => Err(KvCallError::NoAnswer {
                store,
                detail: "the connection closed".into(),
            }),
            None => {
                let written = link
                    .waiting
                    .borrow_mut()
                    .remove(&id)
                    .is_none_or(|w| w.written);
                let detail = if self.stop.is_fired() {
                    "the store is stopping".to_string()
                } else {
                    format!("no answer within {} ms", timeout.as_millis())
                };
                Err(if written {
                    KvCallError::NoAnswer { store, detail }
                } else {
                    KvCallError::NotSent { store, detail }
                })
            }
        }
    }

    /// The link to `store`, started if there is none.
    fn kv_link(self: &Rc<Self>, store: u64) -> Rc<Link> {
        if let Some(l) = self.kv_links.links.borrow().get(&store) {
            return l.clone();
        }
        let (tx, rx) = local_channel::new_bounded(MAX_QUEUED);
        let link = Rc::new(Link {
            store,
            frames: RefCell::new(Some(tx)),
            waiting: RefCell::new(HashMap::new()),
            fd: Cell::new(None),
        });
        self.kv_links.links.borrow_mut().insert(store, link.clone());
        let guard = self.task();
        let t = self.clone();
        let l = link.clone();
        glommio::spawn_local(async move {
            let _guard = guard;
            let detail = run_link(&t, &l, rx).await;
            tracing::debug!(core = t.core, store, %detail, "key-value link closed");
            l.fail(&detail);
            let mut links = t.kv_links.links.borrow_mut();
            if links.get(&store).is_some_and(|x| Rc::ptr_eq(x, &l)) {
                links.remove(&store);
            }
        })
        .detach();
        link
    }
}

/// Connects `link` and runs its writer (here) and reader (a task) until one fails or the
/// transport stops; gives why it ended.
async fn run_link(
    t: &Rc<CoreTransport>,
    link: &Rc<Link>,
    frames: LocalReceiver<(u64, Vec<u8>)>,
) -> String {
    let connected = future::or(async { Some(connect(t, link.store).await) }, async {
        t.stop.wait().await;
        None
    })
    .await;
    let stream = match connected {
        None => return "the store is stopping".into(),
        Some(Err(e)) => {
            t.resolver.invalidate(link.store);
            return e;
        }
        Some(Ok(s)) => s,
    };
    link.fd.set(Some(stream.as_raw_fd()));
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let guard = t.task();
    let (rt, rl) = (t.clone(), link.clone());
    glommio::spawn_local(async move {
        let _guard = guard;
        let detail = read_answers(&rt, &rl, &mut reader).await;
        rl.fail(&detail);
    })
    .detach();
    let mut out = Vec::new();
    loop {
        let next = future::or(frames.recv(), async {
            t.stop.wait().await;
            None
        })
        .await;
        let Some((id, frame)) = next else {
            return "closed".into();
        };
        out.clear();
        let take = |id: u64, frame: Vec<u8>, out: &mut Vec<u8>| {
            if let Some(w) = link.waiting.borrow_mut().get_mut(&id) {
                w.written = true;
                out.extend_from_slice(&frame);
            }
        };
        take(id, frame, &mut out);
        // Whatever else is queued goes out in the same write.
        while out.len() < READ_CHUNK {
            match future::poll_once(frames.recv()).await {
                Some(Some((id, frame))) => take(id, frame, &mut out),
                _ => break,
            }
        }
        if !out.is_empty() {
            if let Err(e) = writer.write_all(&out).await {
                return format!("write: {e}");
            }
            if let Err(e) = writer.flush().await {
                return format!("write: {e}");
            }
        }
    }
}

/// Reads answer frames and hands each to its caller; gives why it stopped.
async fn read_answers(
    t: &Rc<CoreTransport>,
    link: &Link,
    reader: &mut futures_lite::io::ReadHalf<super::secure::RpcStream>,
) -> String {
    let cfg = &t.shared.config;
    let mut decoder = FrameDecoder::new(FrameLimits {
        cluster_id: cfg.cluster_id,
        max_payload: cfg.max_payload,
    });
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let read = future::or(async { Some(reader.read(&mut buf).await) }, async {
            t.stop.wait().await;
            None
        })
        .await;
        let n = match read {
            None => return "the store is stopping".into(),
            Some(Err(e)) => return format!("read: {e}"),
            Some(Ok(0)) => return "closed by the other store".into(),
            Some(Ok(n)) => n,
        };
        decoder.feed(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("bad answer frame: {e}"),
            };
            if frame.kind != kind::KV_RESPONSE {
                return format!("unexpected frame kind {} on a key-value link", frame.kind);
            }
            let response: KvResponse = match frame.decode() {
                Ok(r) => r,
                Err(e) => return format!("bad answer: {e}"),
            };
            let waiting = link.waiting.borrow_mut().remove(&frame.request_id);
            if let Some(w) = waiting {
                w.tx.send(Ok(response));
            }
        }
    }
}
