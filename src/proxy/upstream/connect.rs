//! Opening a connection to an origin: TCP with Nagle off, and the connect timeout that
//! turns a slow opening into an error naming the origin. HTTP/1.1 and h2c share it, so
//! both fail the same way and the retry rule reads one error type.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
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
