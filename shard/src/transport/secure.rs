//! The RPC port's connections as one stream type, plain TCP or mutual TLS over it
//! (`--tls-cluster`, [`crate::tls::ClusterTls`]): [`RpcStream`]. A socket is wrapped right
//! after its connect ([`client`]) or accept ([`server`]), the handshake bounded by the
//! transport's connect timeout; the rest of the transport reads and writes an
//! [`RpcStream`] (futures-io's `AsyncRead`/`AsyncWrite`, rustls driven by futures-rustls
//! over the executor's socket).
//!
//! Under TLS a write may leave ciphertext in rustls' buffer: writers flush after each
//! `write_all` (a no-op on plain TCP).

use crate::tls::ClusterTls;
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{future, Future};
use glommio::net::TcpStream;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A connection on the RPC port: plain TCP, or TLS over it (either side of the session).
pub(super) enum RpcStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, this store connected.
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// TLS, this store accepted.
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl RpcStream {
    /// The socket under the session.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            RpcStream::Plain(s) => s,
            RpcStream::Client(s) => s.get_ref().0,
            RpcStream::Server(s) => s.get_ref().0,
        }
    }
}

impl AsRawFd for RpcStream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

/// Bounds `handshake` by `timeout`.
async fn bounded<T>(
    timeout: Duration,
    handshake: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    future::or(handshake, async {
        glommio::timer::sleep(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not done in {} ms", timeout.as_millis()),
        ))
    })
    .await
}

/// The connecting side: `tcp` as is, or a TLS session to the store at `addr` over it
/// (handshake done within `timeout`, the peer's certificate checked).
pub(super) async fn client(
    tcp: TcpStream,
    tls: Option<&ClusterTls>,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<RpcStream> {
    let Some(tls) = tls else {
        return Ok(RpcStream::Plain(tcp));
    };
    let connector = futures_rustls::TlsConnector::from(tls.client.clone());
    let name = tls.server_name(addr.ip());
    let s = bounded(timeout, async {
        let mut s = connector.connect(name, tcp).await?;
        accepted(&mut s).await?;
        Ok(s)
    })
    .await?;
    Ok(RpcStream::Client(Box::new(s)))
}

/// Waits until the server accepted this store's certificate. Under TLS 1.3 the client's
/// handshake ends before the server checked its certificate: a refusal would only show
/// at the first read, after frames were written into a dead session. The server sends
/// its session tickets once it accepted the client (rustls sends them unless configured
/// not to; [`ClusterTls`] keeps that on), so their arrival is the acceptance; an alert
/// or a close before them is the refusal. Under TLS 1.2 the server checked it before the
/// handshake ended.
async fn accepted(s: &mut futures_rustls::client::TlsStream<TcpStream>) -> io::Result<()> {
    let tls13 = s.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    if !tls13 || s.get_ref().1.tls13_tickets_received() > 0 {
        return Ok(());
    }
    future::poll_fn(|cx| {
        let mut byte = [0u8; 1];
        match Pin::new(&mut *s).poll_read(cx, &mut byte) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the other store right after the handshake (our certificate refused?)",
            ))),
            Poll::Ready(Ok(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "data from the other store before any request",
            ))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Every record that arrived was processed: tickets, if they came.
            Poll::Pending if s.get_ref().1.tls13_tickets_received() > 0 => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The accepting side: `tcp` as is, or a TLS session over it (handshake done within
/// `timeout`, the client's certificate checked).
pub(super) async fn server(
    tcp: TcpStream,
    tls: Option<&ClusterTls>,
    timeout: Duration,
) -> io::Result<RpcStream> {
    let Some(tls) = tls else {
        return Ok(RpcStream::Plain(tcp));
    };
    let acceptor = futures_rustls::TlsAcceptor::from(tls.server.clone());
    let s = bounded(timeout, acceptor.accept(tcp)).await?;
    Ok(RpcStream::Server(Box::new(s)))
}

impl AsyncRead for RpcStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            RpcStream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            RpcStream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RpcStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            RpcStream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            RpcStream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_flush(cx),
            RpcStream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            RpcStream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RpcStream::Plain(s) => Pin::new(s).poll_close(cx),
            RpcStream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
            RpcStream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}
