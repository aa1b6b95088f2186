//! TLS on the Redis port (`--tls-cert-file`, `--tls-key-file`): the rustls server
//! configuration, and [`ClientStream`], a client connection on an executor that is plain
//! TCP or TLS over it (rustls' buffers driven by the executor's socket reads and writes).

use crate::error::{Error, Result};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Bytes read from the socket at once.
const TLS_READ_CHUNK: usize = 16 << 10;

/// The server configuration from a PEM certificate chain and its private key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let bad =
        |file: &Path, detail: String| Error::Config(format!("TLS: {}: {detail}", file.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| bad(cert_file, e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad(key_file, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Config(format!(
                "TLS: {} and {} do not make a certificate and its key: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    Ok(Arc::new(config))
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
