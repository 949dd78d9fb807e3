//! Serving DNS over UDP: the receive loops and how they batch.

use std::sync::atomic::AtomicBool;
#[cfg(target_os = "linux")]
use std::sync::atomic::Ordering;
use std::sync::Arc;
#[cfg(target_os = "linux")]
use std::time::Duration;

#[cfg(target_os = "linux")]
use anyhow::Context;
use tokio::net::UdpSocket;

use crate::dns::query::decisions::DecisionCache;
use crate::dns::GeoDnsHandler;

/// Steering decisions remembered per receive loop: room for the distinct resolvers and
/// client subnets of a busy server's working set in 512 KiB (32 bytes a slot).
const DECISION_CACHE_SLOTS: usize = 16_384;

/// How long a UDP thread waits for a datagram before it looks at the stop flag.
#[cfg(target_os = "linux")]
const UDP_STOP_CHECK: Duration = Duration::from_millis(200);

/// Serves a UDP socket with `loops` threads of its own, each blocking in `recvmmsg`
/// (as gdnsd does): under load a batch of queries costs one system call each way, and
/// no readiness polling sits between the kernel and the answers. The threads stop
/// within `UDP_STOP_CHECK` of `stop` being set.
#[cfg(target_os = "linux")]
pub fn serve(
    socket: UdpSocket,
    loops: usize,
    handler: &Arc<GeoDnsHandler>,
    stop: &Arc<AtomicBool>,
    _tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let socket = socket.into_std().context("taking the UDP socket")?;
    socket
        .set_nonblocking(false)
        .context("making the UDP socket blocking")?;
    socket
        .set_read_timeout(Some(UDP_STOP_CHECK))
        .context("setting the UDP receive timeout")?;
    for i in 0..loops {
        let socket = socket.try_clone().context("sharing the UDP socket")?;
        let (handler, stop) = (handler.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_thread(socket, handler, stop))
            .context("starting a UDP thread")?;
    }
    Ok(())
}

/// Receives datagrams in batches and answers each in place; the answers of a batch go
/// out together. A send error (the client's socket gone) loses that one answer, as UDP
/// does; the loop goes on.
#[cfg(target_os = "linux")]
fn udp_thread(socket: std::net::UdpSocket, handler: Arc<GeoDnsHandler>, stop: Arc<AtomicBool>) {
    use crate::dns::listen::mmsg::{RecvBatch, SendBatch};
    use std::io::ErrorKind;
    use std::os::fd::AsRawFd;

    let fd = socket.as_raw_fd();
    let mut rx = RecvBatch::new();
    let mut tx = SendBatch::new();
    let mut cache = DecisionCache::new(DECISION_CACHE_SLOTS);
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(fd, true) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                // Not a busy loop on a persistent error.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        tx.clear();
        for i in 0..n {
            let Some((packet, received)) = rx.datagram(i) else {
                break;
            };
            // Port 0 cannot be answered; such packets are forged or broken. A datagram
            // longer than any query we accept is not worth a FORMERR.
            let Some(src) = received.from.filter(|s| s.port() != 0) else {
                continue;
            };
            if received.truncated {
                tracing::debug!(client = %src, "oversized UDP query dropped");
                continue;
            }
            let Some(out) = tx.next_buffer() else { break };
            if handler.answer_datagram(packet, src, out, &mut cache) {
                tx.push(src);
            }
        }
        let mut sent = 0;
        while sent < tx.len() {
            match tx.send(fd, sent, true) {
                Ok(k) => sent += k.max(1),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "UDP send failed");
                    sent += 1;
                }
            }
        }
    }
}

/// Serves a UDP socket with `loops` tasks answering one datagram at a time.
#[cfg(not(target_os = "linux"))]
pub fn serve(
    socket: UdpSocket,
    loops: usize,
    handler: &Arc<GeoDnsHandler>,
    _stop: &Arc<AtomicBool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let socket = Arc::new(socket);
    for _ in 0..loops {
        tasks.push(tokio::spawn(udp_loop(socket.clone(), handler.clone())));
    }
    Ok(())
}

/// Receives datagrams and answers each in place (one system call each way per query).
#[cfg(not(target_os = "linux"))]
async fn udp_loop(socket: Arc<UdpSocket>, handler: Arc<GeoDnsHandler>) {
    let mut packet = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(1_232);
    let mut cache = DecisionCache::new(DECISION_CACHE_SLOTS);
    loop {
        let (n, src) = match socket.recv_from(&mut packet).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        if src.port() == 0 {
            continue;
        }
        if handler.answer_datagram(&packet[..n], src, &mut out, &mut cache) {
            if let Err(e) = socket.send_to(&out, src).await {
                tracing::debug!(error = %e, client = %src, "UDP send failed");
            }
        }
    }
}
