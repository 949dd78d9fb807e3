//! Passive data connections through the gateway. For each `PASV`/`EPSV` the gateway
//! listens on a port of its own range; the client's data connection is taken only from
//! the control connection's address (anything else is refused and the port keeps
//! waiting: no port theft, no FXP); the gateway then connects to the port the origin
//! offered at the origin's own address (never the address a reply names: no bounce), puts
//! TLS on either side as the two control connections agreed, and pipes the two.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::metrics::StreamRefusal;
use crate::proxy::maybe_tls::ClientStream;
use crate::proxy::stream::pipe::{pipe_until_origin_done, PipeEnd, Piped};
use crate::proxy::upstream::connect::{self, OriginStream};
use crate::proxy::upstream::group::OriginState;
use crate::proxy::Shared;

/// Hands out passive ports of a range in turn, so a port just closed is not the next
/// one offered (a late packet of the last transfer cannot land in the next).
#[derive(Default)]
pub struct PortPool {
    next: AtomicUsize,
}

impl PortPool {
    /// A listener on a free port of `range` at `ip`, or None when every port is taken.
    pub async fn listen(&self, ip: IpAddr, range: &RangeInclusive<u16>) -> Option<TcpListener> {
        let size = usize::from(range.end() - range.start()) + 1;
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..size {
            let port = range.start() + ((first + i) % size) as u16;
            if let Ok(listener) = TcpListener::bind((ip, port)).await {
                self.next.store(first + i + 1, Ordering::Relaxed);
                return Some(listener);
            }
        }
        None
    }
}

/// Everything one data connection needs, fixed when the passive reply is sent.
pub struct DataPlan {
    pub listener: TcpListener,
    pub client_ip: IpAddr,
    /// The origin's control address with the port its passive reply named.
    pub origin: SocketAddr,
    pub origin_tls: Option<(TlsConnector, ServerName<'static>)>,
    pub client_tls: Option<TlsAcceptor>,
    pub accept_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub service: String,
    /// The origin's state: its `least_traffic` meter counts the transfer.
    pub meter: Arc<OriginState>,
}

#[derive(Debug)]
pub enum DataError {
    /// The client did not connect in time.
    NoClient,
    Origin(String),
    ClientTls(String),
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataError::NoClient => write!(f, "the client did not open the data connection"),
            DataError::Origin(why) => write!(f, "data connection to the origin: {why}"),
            DataError::ClientTls(why) => write!(f, "TLS on the client's data connection: {why}"),
        }
    }
}

/// Takes the client's data connection, opens the origin's, and pipes them.
pub async fn run(plan: DataPlan, shared: Arc<Shared>) -> Result<Piped, DataError> {
    let deadline = tokio::time::Instant::now() + plan.accept_timeout;
    let client_tcp = loop {
        let accepted = tokio::time::timeout_at(deadline, plan.listener.accept()).await;
        let Ok(Ok((tcp, peer))) = accepted else {
            abort_origin_transfer(&plan).await;
            return Err(DataError::NoClient);
        };
        if canonical(peer.ip()) == canonical(plan.client_ip) {
            break tcp;
        }
        tracing::warn!(service = %plan.service, from = %peer, expected = %plan.client_ip, "data connection from another address refused");
        shared
            .stream_metrics
            .refused(&plan.service, StreamRefusal::DataSource);
    };
    // One connection per passive reply: the port is free again from here.
    drop(plan.listener);
    let _ = client_tcp.set_nodelay(true);
    let origin_side = async {
        let tcp = connect::within(plan.origin, plan.connect_timeout, connect::tcp(plan.origin))
            .await
            .map_err(|e| DataError::Origin(e.to_string()))?;
        match &plan.origin_tls {
            None => Ok(OriginStream::Plain(tcp)),
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                match tokio::time::timeout(plan.connect_timeout, handshake).await {
                    Ok(Ok(tls)) => Ok(OriginStream::Tls(Box::new(tls))),
                    Ok(Err(e)) => Err(DataError::Origin(format!("TLS: {e}"))),
                    Err(_) => Err(DataError::Origin("TLS handshake timed out".into())),
                }
            }
        }
    };
    let client_side = async {
        match &plan.client_tls {
            None => Ok(ClientStream::Plain(client_tcp)),
            Some(acceptor) => {
                let handshake = acceptor.accept(client_tcp);
                match tokio::time::timeout(plan.accept_timeout, handshake).await {
                    Ok(Ok(tls)) => Ok(ClientStream::Tls(Box::new(tls))),
                    Ok(Err(e)) => Err(DataError::ClientTls(e.to_string())),
                    Err(_) => Err(DataError::ClientTls("handshake timed out".into())),
                }
            }
        }
    };
    let (origin, client) = tokio::join!(origin_side, client_side);
    let (mut origin, mut client) = (origin?, client?);
    shared
        .stream_metrics
        .data_channels
        .with_label_values(&[&plan.service])
        .inc();
    Ok(pipe_until_origin_done(
        &mut client,
        &mut origin,
        plan.idle_timeout,
        Some(&plan.meter.traffic),
    )
    .await)
}

/// The origin is waiting for a data connection that will not come: connect and reset it,
/// so the origin fails the transfer at once (rather than after its own accept timeout)
/// and its control connection is free for the next command.
async fn abort_origin_transfer(plan: &DataPlan) {
    let opening = connect::within(plan.origin, plan.connect_timeout, connect::tcp(plan.origin));
    if let Ok(tcp) = opening.await {
        // A reset, not a FIN: an upload must not end as an empty file stored as complete.
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
    }
}

/// What a finished data channel task came to: the pipe, or why it failed.
pub fn joined(
    joined: Result<Result<Piped, DataError>, tokio::task::JoinError>,
) -> Result<Piped, String> {
    match joined {
        Ok(Ok(piped)) => match &piped.end {
            PipeEnd::Error { side, error } => Err(format!("{side} data connection: {error}")),
            _ => Ok(piped),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("data channel task: {e}")),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_handed_out_in_turn_and_a_taken_one_is_skipped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ip: IpAddr = "127.0.0.1".parse().unwrap();
            // Find three free consecutive ports to use as the range.
            let probe = TcpListener::bind((ip, 0)).await.unwrap();
            let base = probe
                .local_addr()
                .unwrap()
                .port()
                .saturating_sub(3)
                .max(1024);
            drop(probe);
            let range = base..=base + 2;
            let pool = PortPool::default();
            let a = pool.listen(ip, &range).await;
            let b = pool.listen(ip, &range).await;
            let (Some(a), Some(b)) = (a, b) else {
                eprintln!("skipped: ports {base}-{} not free here", base + 2);
                return;
            };
            let (pa, pb) = (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            );
            assert_ne!(pa, pb);
            assert!(range.contains(&pa) && range.contains(&pb));
            let c = pool.listen(ip, &range).await;
            if let Some(c) = &c {
                assert!(![pa, pb].contains(&c.local_addr().unwrap().port()));
            }
            // With all three held, nothing is left.
            if c.is_some() {
                assert!(pool.listen(ip, &range).await.is_none());
            }
        });
    }
}
