//! Opening a connection to an origin: TCP with Nagle off, TLS on top where the upstream
//! asks for it, and the connect timeout that turns a slow opening into an error naming
//! the origin. HTTP/1.1, HTTP/2 and health checks share it, so all fail the same way and
//! the retry rule reads one error type: a certificate that does not verify is a connect
//! error, retried on another origin like a refused connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::proxy::maybe_tls::MaybeTls;
use crate::proxy::upstream::origin_tls::OriginTls;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ConnectError {
    /// The `kind` label of `geoedge_proxy_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Tls { .. } => "tls",
            _ => "connect",
        }
    }
}

/// A connection to an origin, in the clear or over TLS.
pub type OriginStream = MaybeTls<TlsStream<TcpStream>>;

impl OriginStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(tcp) => tcp,
            MaybeTls::Tls(tls) => tls.get_ref().0,
        }
    }
}

/// A TCP connection to `addr`; requests are written whole, so Nagle only delays them.
pub async fn tcp(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs `opening` (a TCP connect, and whatever handshake follows it) within `timeout`.
pub async fn within<T>(
    addr: SocketAddr,
    timeout: Duration,
    opening: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(timeout, opening).await {
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Ok(Ok(opened)) => Ok(opened),
    }
}

/// The TLS half of connecting, for the upstreams that ask for it.
pub struct TlsTo<'a> {
    pub tls: &'a OriginTls,
    pub name: &'a ServerName<'static>,
}

/// A connection to `addr` within `timeout`: TCP, then `preface` (a PROXY header) when
/// given, then the TLS handshake when `tls` is given. A handshake that fails (a
/// certificate that does not verify, an origin that will not speak HTTP/2 when `h2` was
/// asked for) is `ConnectError::Tls`, logged with why.
pub async fn open(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<TlsTo<'_>>,
    preface: Option<&[u8]>,
) -> Result<OriginStream, ConnectError> {
    let opened = async {
        let mut stream = tcp(addr).await?;
        if let Some(bytes) = preface {
            tokio::io::AsyncWriteExt::write_all(&mut stream, bytes).await?;
        }
        Ok(stream)
    };
    let Some(TlsTo { tls, name }) = tls else {
        return within(addr, timeout, opened).await.map(OriginStream::Plain);
    };
    let handshake = async {
        let stream = opened.await.map_err(Handshake::Tcp)?;
        let tls_stream = tls
            .connector
            .connect(name.clone(), stream)
            .await
            .map_err(Handshake::Tls)?;
        if tls.needs_h2 && tls_stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Handshake::Tls(io::Error::other(
                "the origin did not agree to HTTP/2 by ALPN",
            )));
        }
        Ok(tls_stream)
    };
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(Handshake::Tcp(source))) => Err(ConnectError::Io { addr, source }),
        Ok(Err(Handshake::Tls(source))) => {
            tracing::warn!(origin = %addr, name = ?name, reason = %source, "TLS handshake with origin failed");
            Err(ConnectError::Tls { addr, source })
        }
        Ok(Ok(stream)) => Ok(OriginStream::Tls(Box::new(stream))),
    }
}

enum Handshake {
    Tcp(io::Error),
    Tls(io::Error),
}
