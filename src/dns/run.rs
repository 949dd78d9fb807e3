//! Running a DNS server: bind UDP and TCP on every listen address (one port for both),
//! the control listener, the health ticker, probes and SIGHUP, and serve until told to
//! stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};

use crate::config::DnsConfig;
use crate::control;
use crate::dns::admin::DnsAdmin;
use crate::dns::listen::tcp::tcp_loop;
use crate::dns::server::DnsServer;
use crate::dns::GeoDnsHandler;
use crate::process::clock::now_ms;

impl DnsServer {
    /// Binds every socket, prints one "listening" line per socket, and serves until
    /// `shutdown` resolves.
    pub async fn run(
        self: Arc<Self>,
        cfg: &DnsConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut handler = GeoDnsHandler::new(self.state.clone(), self.metrics.clone())
            .with_challenges(self.challenges.clone());
        if let Some(rrl) = &cfg.rrl {
            handler = handler.with_rrl(rrl.clone());
        }
        if let Some((path, sample)) = &cfg.query_log {
            let log = crate::process::logfile::open(path.clone())
                .with_context(|| format!("opening query log {}", path.display()))?;
            handler = handler.with_query_log(log, *sample);
        }
        let handler = Arc::new(handler);
        let hangup = {
            let server = self.clone();
            crate::process::signals::on_hangup(move || {
                let _ = server.reload_and_report();
            })
        };
        let mut tasks = Vec::new();
        let udp_stop = Arc::new(AtomicBool::new(false));
        let loops = if cfg.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            cfg.workers
        };
        for addr in &cfg.listen {
            let (udp, tcp) = bind_pair(*addr).await?;
            crate::process::listening::announce("UDP", udp.local_addr()?);
            crate::process::listening::announce("TCP", tcp.local_addr()?);
            crate::dns::listen::udp::serve(udp, loops, &handler, &udp_stop, &mut tasks)?;
            tasks.push(tokio::spawn(tcp_loop(
                tcp,
                handler.clone(),
                cfg.max_tcp_connections,
                cfg.tcp_idle_timeout,
                self.metrics.tcp_refused.clone(),
            )));
        }
        if let Some(addr) = cfg.control {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding control listener {addr}"))?;
            crate::process::listening::announce("HTTP (control)", listener.local_addr()?);
            tasks.push(tokio::spawn(control::serve(
                listener,
                Arc::new(DnsAdmin(self.clone())),
            )));
        }

        // Staleness and override expiries need time to pass, not events: re-evaluate
        // often enough that a silent node is dropped within a tick of `stale_after`.
        let tick =
            (cfg.report_interval / 2).clamp(Duration::from_millis(10), Duration::from_millis(100));
        tasks.push(tokio::spawn(tick_loop(self.clone(), tick)));
        self.restart_probes(cfg);
        tasks.push(tokio::spawn(hangup));

        shutdown.await;
        tracing::info!("shutting down");
        udp_stop.store(true, Ordering::Relaxed);
        for task in &tasks {
            task.abort();
        }
        self.stop_probes();
        Ok(())
    }
}

async fn tick_loop(server: Arc<DnsServer>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_geo_check = std::time::Instant::now();
    let mut last_shed_step = std::time::Instant::now();
    loop {
        ticker.tick().await;
        let changes = server.health().tick(now_ms());
        server.apply(changes);
        if last_shed_step.elapsed() >= crate::dns::shed::SHED_INTERVAL {
            last_shed_step = std::time::Instant::now();
            let state = server.state.load();
            if state.shed.enabled() && state.shed.step(&state.table, &state.health) {
                state.health.invalidate_decisions();
            }
        }
        if last_geo_check.elapsed() >= Duration::from_secs(1) {
            last_geo_check = std::time::Instant::now();
            server.reload_geo_if_changed();
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
        // Bursts of queries arrive faster than one loop drains them; a larger receive
        // buffer absorbs them instead of the kernel dropping queries. The kernel may cap
        // it (net.core.rmem_max); that is not an error.
        let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(4 << 20);
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
