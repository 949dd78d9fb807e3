//! DNS over TCP (RFC 7766): length-prefixed messages on connections under a cap and an
//! idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::dns::GeoDnsHandler;

/// Serves DNS over TCP (RFC 7766): at most `max_connections` at once (more are closed
/// at once and counted), each closed after `idle` without a complete query; queries on a
/// connection are answered in order.
pub async fn tcp_loop(
    listener: TcpListener,
    handler: Arc<GeoDnsHandler>,
    max_connections: usize,
    idle: Duration,
    refused: prometheus::IntCounter,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.inc();
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(stream, peer, &handler, idle).await {
                tracing::debug!(client = %peer, error = %e, "DNS TCP connection ended");
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    handler: &GeoDnsHandler,
    idle: Duration,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    let mut packet = Vec::new();
    let mut out = Vec::with_capacity(4096);
    loop {
        // The whole message, length and body, must arrive within the idle timeout.
        let read = async {
            let len = reader.read_u16().await? as usize;
            packet.resize(len, 0);
            reader.read_exact(&mut packet).await?;
            Ok::<_, std::io::Error>(len)
        };
        let len = match tokio::time::timeout(idle, read).await {
            Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(len)) => len,
        };
        if len == 0 {
            return Ok(());
        }
        if handler.answer_stream(&packet, peer, &mut out) {
            let Ok(n) = u16::try_from(out.len()) else {
                continue;
            };
            let mut frame = Vec::with_capacity(out.len() + 2);
            frame.extend_from_slice(&n.to_be_bytes());
            frame.extend_from_slice(&out);
            writer.write_all(&frame).await?;
        }
    }
}
