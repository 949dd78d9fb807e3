//! Sockets and lifecycle of the DNS server: bind UDP and TCP on every listen address,
//! the control listener, and run until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use hickory_server::Server;
use prometheus::Registry;
use tokio::net::{TcpListener, UdpSocket};

use super::{DnsState, GeoDnsHandler};
use crate::config::DnsConfig;
use crate::control::{self, RegistryAdmin};
use crate::health::HealthTable;
use crate::metrics::DnsMetrics;

/// A running DNS server's shared parts, for the control side and for tests in-process.
pub struct DnsServer {
    pub state: Arc<ArcSwap<DnsState>>,
    pub health: Arc<HealthTable>,
    pub metrics: Arc<DnsMetrics>,
    pub registry: Registry,
}

impl DnsServer {
    pub fn new(cfg: &DnsConfig) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let metrics = Arc::new(DnsMetrics::new(&registry));
        let mut state =
            DnsState::build(cfg).with_context(|| format!("loading {}", cfg.path.display()))?;
        state.attach_metrics(&metrics);
        let health = Arc::new(HealthTable::new(
            &state.initial_health(),
            cfg.rise,
            cfg.fall,
        ));
        for (id, node) in state.table.nodes.iter().enumerate() {
            let region = &state.table.regions[node.region].name;
            metrics
                .node_gauge(region, &node.name)
                .set(i64::from(health.is_up(id)));
        }
        Ok(Self {
            state: Arc::new(ArcSwap::from_pointee(state)),
            health,
            metrics,
            registry,
        })
    }

    /// Binds every socket, prints one "listening" line per socket, and serves until
    /// `shutdown` resolves.
    pub async fn run(
        self,
        cfg: &DnsConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let handler = Arc::new(GeoDnsHandler::new(
            self.state.clone(),
            self.health.clone(),
            self.metrics.clone(),
        ));
        let mut server = Server::new(SharedHandler(handler.clone()));
        let mut udp_tasks = Vec::new();
        let loops = if cfg.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.workers
        };
        for addr in &cfg.listen {
            let (udp, tcp) = bind_pair(*addr).await?;
            println!("listening for UDP on {}", udp.local_addr()?);
            println!("listening for TCP on {}", tcp.local_addr()?);
            let udp = Arc::new(udp);
            for _ in 0..loops {
                udp_tasks.push(tokio::spawn(udp_loop(udp.clone(), handler.clone())));
            }
            // 64 KiB: the largest DNS message, so a TCP answer is never cut.
            server.register_listener(tcp, cfg.tcp_idle_timeout, 65_535);
        }
        let control_task = match cfg.control {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding control listener {addr}"))?;
                println!("listening for HTTP (control) on {}", listener.local_addr()?);
                let admin = Arc::new(RegistryAdmin(self.registry.clone()));
                Some(tokio::spawn(control::serve(listener, admin)))
            }
            None => None,
        };
        use std::io::Write;
        let _ = std::io::stdout().flush();

        shutdown.await;
        tracing::info!("shutting down");
        if let Some(task) = control_task {
            task.abort();
        }
        for task in udp_tasks {
            task.abort();
        }
        server
            .shutdown_gracefully()
            .await
            .map_err(|e| anyhow::anyhow!("DNS server shutdown: {e}"))?;
        Ok(())
    }
}

/// Lets hickory's `Server` (TCP) and our UDP loops share one handler.
struct SharedHandler(Arc<GeoDnsHandler>);

#[async_trait::async_trait]
impl hickory_server::server::RequestHandler for SharedHandler {
    async fn handle_request<
        R: hickory_server::server::ResponseHandler,
        T: hickory_server::net::runtime::Time,
    >(
        &self,
        request: &hickory_server::server::Request,
        response_handle: R,
    ) -> hickory_server::server::ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// Receives datagrams and answers each in place. A send error (the client's socket
/// gone, a full buffer) loses that one answer, as UDP does; the loop goes on.
async fn udp_loop(socket: Arc<UdpSocket>, handler: Arc<GeoDnsHandler>) {
    let mut packet = vec![0u8; 65_535];
    let mut out = Vec::with_capacity(1_232);
    loop {
        let (n, src) = match socket.recv_from(&mut packet).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        // Port 0 cannot be answered; such packets are forged or broken.
        if src.port() == 0 {
            continue;
        }
        if handler.answer_datagram(&packet[..n], src, &mut out) {
            if let Err(e) = socket.send_to(&out, src).await {
                tracing::debug!(error = %e, client = %src, "UDP send failed");
            }
        }
    }
}

/// Binds UDP and TCP on the same address. With port 0, the kernel picks the UDP port and
/// TCP takes the same one, so clients can fall back from UDP to TCP on one port.
async fn bind_pair(addr: SocketAddr) -> anyhow::Result<(UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding UDP {addr}"))?;
        let bound = udp.local_addr()?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "binding TCP {addr}: {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    ))
}
