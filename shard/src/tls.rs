//! TLS configuration and the Redis port's TLS.
//!
//! - The Redis port (`--tls-cert-file`, `--tls-key-file`): [`server_config`], and
//!   [`ClientStream`], a client connection on an executor that is plain TCP or TLS over it
//!   (rustls' buffers driven by the executor's socket reads and writes).
//! - Between stores (`--tls-cluster`, `--tls-ca-cert-file`, `--tls-peer-name`):
//!   [`ClusterTls`], mutual TLS with the store's certificate on both sides and the peers'
//!   checked against the cluster's CA; the RPC transport wraps its sockets with it
//!   (`transport::secure`), the snapshot sender and the consistency query use its blocking
//!   client ([`ClusterTls::connect_blocking`]).

use crate::error::{Error, Result};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream as StdTcpStream};
use std::path::Path;
use std::sync::Arc;

/// Bytes read from the socket at once.
const TLS_READ_CHUNK: usize = 16 << 10;

/// An error about `file`.
fn bad(file: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Config(format!("TLS: {}: {detail}", file.display()))
}

/// The PEM certificates in `file` (at least one).
fn load_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(file, e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(file, e))?;
    if certs.is_empty() {
        return Err(bad(file, "no certificate in the file"));
    }
    Ok(certs)
}

/// The PEM private key in `file`.
fn load_key(file: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(file).map_err(|e| bad(file, e))
}

/// The crypto of every configuration here: rustls on ring.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The error of a certificate chain and key that do not go together.
fn mismatch(cert_file: &Path, key_file: &Path, e: rustls::Error) -> Error {
    Error::Config(format!(
        "TLS: {} and {} do not make a certificate and its key: {e}",
        cert_file.display(),
        key_file.display()
    ))
}

/// The server configuration from a PEM certificate chain and its private key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| mismatch(cert_file, key_file, e))?;
    Ok(Arc::new(config))
}

/// Mutual TLS between the stores of a cluster (`--tls-cluster`): the store's certificate
/// presented as server and as client, the peers' checked against the cluster's CA.
#[derive(Debug)]
pub struct ClusterTls {
    /// Accepting side: asks for a client certificate and refuses one the CA did not sign.
    pub server: Arc<rustls::ServerConfig>,
    /// Connecting side: presents the store's certificate, checks the server's.
    pub client: Arc<rustls::ClientConfig>,
    /// `--tls-peer-name`: the name every peer's certificate carries (None: its address).
    peer_name: Option<ServerName<'static>>,
}

impl ClusterTls {
    /// The configurations from the store's PEM certificate chain and key, the CA file its
    /// peers' certificates chain to, and the fixed name they carry (if they carry one).
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        ca_file: &Path,
        peer_name: Option<&str>,
    ) -> Result<Arc<ClusterTls>> {
        let certs = load_certs(cert_file)?;
        let key = load_key(key_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_certs(ca_file)? {
            roots.add(ca).map_err(|e| bad(ca_file, e))?;
        }
        let roots = Arc::new(roots);
        let peer_name = peer_name
            .map(|n| {
                ServerName::try_from(n.to_string())
                    .map_err(|e| Error::Config(format!("--tls-peer-name {n:?}: {e}")))
            })
            .transpose()?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| bad(ca_file, e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| mismatch(cert_file, key_file, e))?;
        // TLS 1.3 session tickets, sent once the client's certificate was accepted: the
        // connecting store waits for them (`transport::secure`). rustls' default, kept.
        server.send_tls13_tickets = server.send_tls13_tickets.max(1);
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| mismatch(cert_file, key_file, e))?;
        // Resumption on (rustls' default, kept explicit): a client that offers no
        // resumption gets no TLS 1.3 tickets, and the transport's connect waits for them.
        client.resumption = rustls::client::Resumption::in_memory_sessions(256);
        Ok(Arc::new(ClusterTls {
            server: Arc::new(server),
            client: Arc::new(client),
            peer_name,
        }))
    }

    /// The name the certificate of the store at `ip` must carry: `--tls-peer-name`, else
    /// the address itself.
    pub fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        match &self.peer_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(ip.into()),
        }
    }

    /// A TLS session over the connected `tcp` to the store at `addr` (blocking IO; the
    /// socket's timeouts bound the handshake), handshake done and, under TLS 1.3, this
    /// side's certificate accepted ([`await_acceptance`]).
    pub fn connect_blocking(
        &self,
        tcp: StdTcpStream,
        addr: SocketAddr,
    ) -> io::Result<rustls::StreamOwned<rustls::ClientConnection, StdTcpStream>> {
        let conn = rustls::ClientConnection::new(self.client.clone(), self.server_name(addr.ip()))
            .map_err(io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        await_acceptance(&mut stream.conn, &stream.sock)?;
        Ok(stream)
    }

    /// The snapshot sender's connector: a TLS session to the store at `addr` over the
    /// socket it connected.
    pub fn snapshot_connector(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Box<nokv_raft::snapshot_stream::Connector> {
        let tls = self.clone();
        Box::new(move |tcp: StdTcpStream| {
            let stream = tls.connect_blocking(tcp, addr)?;
            Ok(Box::new(SnapTls(stream)) as Box<dyn nokv_raft::snapshot_stream::SnapConn>)
        })
    }
}

impl ClusterTls {
    /// `nokv-client`'s connector for the stores' RPC ports (`nokv-redis --tls-cluster`): a
    /// TLS session, once the store accepted this side's certificate, split into the
    /// halves the client's reader thread and writers use.
    pub fn store_connector(self: &Arc<Self>) -> nokv_client::conn::StoreConnector {
        let tls = self.clone();
        nokv_client::conn::StoreConnector(Arc::new(move |addr, tcp| {
            let stream = tls.connect_blocking(tcp, addr)?;
            let (conn, sock) = (stream.conn, stream.sock);
            let shared = Arc::new(SplitTls {
                conn: std::sync::Mutex::new(conn),
                out: std::sync::Mutex::new(sock.try_clone()?),
            });
            Ok(nokv_client::conn::Halves {
                reader: Box::new(TlsReadHalf {
                    shared: shared.clone(),
                    sock,
                    buf: vec![0; TLS_READ_CHUNK],
                    pos: 0,
                    len: 0,
                }),
                writer: Box::new(TlsWriteHalf { shared }),
            })
        }))
    }
}

/// Under TLS 1.3 the client's handshake ends before the server checked the client's
/// certificate: waits for the session tickets the server sends once it accepted it (an
/// alert or a close first is the refusal; the socket's read timeout bounds the wait).
fn await_acceptance(
    conn: &mut rustls::ClientConnection,
    mut sock: &StdTcpStream,
) -> io::Result<()> {
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Ok(());
    }
    // Bounded by the socket's read timeout: each turn reads or fails.
    while conn.tls13_tickets_received() == 0 {
        if conn.read_tls(&mut sock)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the store right after the handshake (our certificate refused?)",
            ));
        }
        conn.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// One client TLS session used by two threads: records are made and taken under `conn`;
/// ciphertext is written to the socket under `out`, taken before `conn` is let go so
/// records go out in order, while reads of the socket hold neither.
struct SplitTls {
    conn: std::sync::Mutex<rustls::ClientConnection>,
    out: std::sync::Mutex<StdTcpStream>,
}

impl SplitTls {
    /// Hands the records rustls has ready to the socket (see the type's doc).
    fn send(
        &self,
        mut conn: std::sync::MutexGuard<'_, rustls::ClientConnection>,
    ) -> io::Result<()> {
        let mut records = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut records)?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        drop(conn);
        out.write_all(&records)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rustls::ClientConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The reading half of a [`ClusterTls::store_connector`] session.
struct TlsReadHalf {
    shared: Arc<SplitTls>,
    sock: StdTcpStream,
    /// Ciphertext read from the socket; `buf[pos..len]` not yet taken by rustls.
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

impl Read for TlsReadHalf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // Bounded: each turn returns plaintext, feeds rustls read bytes, or reads the socket.
        loop {
            {
                let mut conn = self.shared.conn();
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n), // 0: the store closed the session cleanly
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.pos < self.len {
                    let took = conn.read_tls(&mut &self.buf[self.pos..self.len])?;
                    if took == 0 {
                        return Err(io::Error::other("TLS: rustls takes no more input"));
                    }
                    self.pos += took;
                    let processed = conn.process_new_packets();
                    // What processing produced (an alert, a key update) goes out first.
                    self.shared.send(conn)?;
                    processed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            let n = self.sock.read(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            (self.pos, self.len) = (0, n);
        }
    }
}

/// The writing half of a [`ClusterTls::store_connector`] session.
struct TlsWriteHalf {
    shared: Arc<SplitTls>,
}

impl Write for TlsWriteHalf {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut conn = self.shared.conn();
        let n = conn.writer().write(data)?;
        self.shared.send(conn)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let conn = self.shared.conn();
        self.shared.send(conn)
    }
}

/// A snapshot transfer's TLS session (blocking).
struct SnapTls(rustls::StreamOwned<rustls::ClientConnection, StdTcpStream>);

impl Read for SnapTls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for SnapTls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl nokv_raft::snapshot_stream::SnapConn for SnapTls {
    fn end_writes(&mut self) -> io::Result<()> {
        self.0.conn.send_close_notify();
        self.0.flush()
    }
}

/// A client connection: plain TCP, or TLS over it.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS: the socket, rustls' state and ciphertext read but not yet handed to it.
    Tls {
        /// The socket.
        sock: TcpStream,
        /// rustls' side of the session.
        conn: Box<rustls::ServerConnection>,
        /// Ciphertext read from the socket; `pos` bytes of it already given to rustls.
        pending: Vec<u8>,
        /// How much of `pending` rustls took.
        pos: usize,
    },
}

impl ClientStream {
    /// `sock` as is, or as the server side of a TLS session under `tls`.
    pub fn new(sock: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        Ok(match tls {
            None => ClientStream::Plain(sock),
            Some(config) => ClientStream::Tls {
                sock,
                conn: Box::new(
                    rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?,
                ),
                pending: Vec::new(),
                pos: 0,
            },
        })
    }

    /// Reads what the client sent (decrypted); 0 at its end.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use futures_lite::AsyncReadExt;
        match self {
            ClientStream::Plain(s) => s.read(buf).await,
            ClientStream::Tls {
                sock,
                conn,
                pending,
                pos,
            } => loop {
                match conn.reader().read(buf) {
                    Ok(n) => return Ok(n), // 0: the client closed the session cleanly
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if *pos < pending.len() {
                    let mut rd = &pending[*pos..];
                    let took = conn.read_tls(&mut rd)?;
                    if took == 0 {
                        return Err(io::Error::other("TLS: rustls takes no more input"));
                    }
                    *pos += took;
                    let processed = conn.process_new_packets();
                    // Handshake messages, or the alert that says why the session ends.
                    flush_tls(sock, conn).await?;
                    if let Err(e) = processed {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    continue;
                }
                flush_tls(sock, conn).await?;
                pending.resize(TLS_READ_CHUNK, 0);
                let n = sock.read(pending).await?;
                pending.truncate(n);
                *pos = 0;
                if n == 0 {
                    return Ok(0);
                }
            },
        }
    }

    /// Writes all of `data` (encrypted under TLS) to the client.
    pub async fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        use futures_lite::AsyncWriteExt;
        match self {
            ClientStream::Plain(s) => s.write_all(data).await,
            ClientStream::Tls { sock, conn, .. } => {
                // rustls buffers a bounded amount: hand it pieces, sending each.
                while !data.is_empty() {
                    let n = conn.writer().write(data)?;
                    data = &data[n..];
                    flush_tls(sock, conn).await?;
                    if n == 0 && !data.is_empty() && !conn.wants_write() {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "TLS: session closed",
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// Flushes the socket before the connection is closed (a TLS session says goodbye).
    pub async fn close(&mut self) {
        use futures_lite::AsyncWriteExt;
        match self {
            ClientStream::Plain(s) => {
                let _ = s.flush().await;
            }
            ClientStream::Tls { sock, conn, .. } => {
                conn.send_close_notify();
                let _ = flush_tls(sock, conn).await;
                let _ = sock.flush().await;
            }
        }
    }
}

/// Sends every TLS record rustls has ready.
async fn flush_tls(sock: &mut TcpStream, conn: &mut rustls::ServerConnection) -> io::Result<()> {
    use futures_lite::AsyncWriteExt;
    let mut out = Vec::new();
    while conn.wants_write() {
        out.clear();
        conn.write_tls(&mut out)?;
        sock.write_all(&out).await?;
    }
    Ok(())
}
