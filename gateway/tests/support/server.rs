//! A tiny blocking TCP server over the sans-IO session, for tests and the
//! `embedded_server` example only (one thread per connection, loopback).

#![allow(dead_code)]

use nokv_gateway::session::{Config, Session, Shared, State};
use nokv_gateway::store::{Backend, DbStore};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How often blocked reads wake up to check for shutdown.
const POLL: Duration = Duration::from_millis(100);

/// A running server; stops (and joins its threads) on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `store` on 127.0.0.1:`port` (0: any free port) with at most `max_connections` clients.
    pub fn start(
        store: Arc<DbStore>,
        config: Config,
        port: u16,
        max_connections: usize,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Shared::new(config, store.now_ms());
        let stop2 = stop.clone();
        let accept = std::thread::Builder::new()
            .name("gateway-accept".into())
            .spawn(move || accept_loop(listener, store, shared, stop2, max_connections))?;
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the server stops (never, unless dropped elsewhere).
    pub fn wait(mut self) {
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    store: Arc<DbStore>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    max: usize,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                workers.retain(|h| !h.is_finished());
                if live.load(Ordering::SeqCst) >= max {
                    shared.rejected_connections.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
                    continue;
                }
                live.fetch_add(1, Ordering::SeqCst);
                let (store, shared, stop, live2) =
                    (store.clone(), shared.clone(), stop.clone(), live.clone());
                let spawned = std::thread::Builder::new()
                    .name("gateway-conn".into())
                    .spawn(move || {
                        let _ = serve(stream, peer, &store, shared, &stop);
                        live2.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(_) => {
                        live.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    for h in workers {
        let _ = h.join();
    }
}

fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    store: &DbStore,
    shared: Arc<Shared>,
    stop: &AtomicBool,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let laddr = stream.local_addr()?.to_string();
    let mut session = Session::new(shared, peer.to_string(), laddr, store.now_ms());
    let mut buf = vec![0u8; READ_CHUNK];
    while !stop.load(Ordering::SeqCst) {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if session.feed(&buf[..n]).is_err() {
            return Ok(());
        }
        // Bounded: every round either runs requests or stops (no input left, or closing).
        loop {
            session.run(store);
            if session.state() == State::CloseNow {
                return Ok(());
            }
            let out = session.take_output();
            stream.write_all(&out)?;
            if session.state() == State::CloseAfterFlush {
                return Ok(());
            }
            if !session.budget_exhausted() {
                break;
            }
            session.resume();
        }
    }
    Ok(())
}
