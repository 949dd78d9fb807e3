//! Active origin health checks: GET a path on every HTTP origin at an interval (stream
//! origins: a connect, a TLS handshake, or an FTP banner), and feed the results through
//! rise/fall into the origin's state.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::proxy::{HealthCheckConfig, OriginProtocol};
use crate::proxy::upstream::connect;
use crate::proxy::upstream::group::Upstream;

/// Starts one check loop per origin of every upstream that has checks configured.
pub fn spawn(upstreams: &[Arc<Upstream>]) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for u in upstreams {
        let Some(hc) = u.health_check.clone() else {
            continue;
        };
        for index in 0..u.origins.len() {
            let u = u.clone();
            let hc = hc.clone();
            tasks.push(tokio::spawn(async move { check_loop(u, index, hc).await }));
        }
    }
    tasks
}

async fn check_loop(upstream: Arc<Upstream>, index: usize, hc: HealthCheckConfig) {
    let origin = &upstream.origins[index];
    let mut ticker = tokio::time::interval(hc.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = match upstream.protocol {
            OriginProtocol::Tcp | OriginProtocol::Tls => {
                connect::open(origin.addr, hc.timeout, upstream.tls_to(index), None)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            OriginProtocol::Ftp | OriginProtocol::Ftps => {
                crate::proxy::ftp::check::check(&upstream, index, hc.timeout).await
            }
            _ => http_check(&upstream, index, &hc).await,
        };
        let ok = result.is_ok();
        if let Some(up) = origin.state.record_check(ok) {
            match &result {
                Ok(()) => {
                    tracing::info!(upstream = %upstream.name, origin = %origin.name, "origin is up after {} good checks", hc.rise)
                }
                Err(why) => {
                    tracing::warn!(upstream = %upstream.name, origin = %origin.name, reason = %why, up, "origin is down after {} failed checks", hc.fall)
                }
            }
        }
    }
}

async fn http_check(
    upstream: &Upstream,
    index: usize,
    hc: &HealthCheckConfig,
) -> Result<(), String> {
    let origin = &upstream.origins[index];
    if let Some(addr) = hc.addr {
        // A status port of its own, in the clear (a failover peer's admin listener).
        let connect = async {
            connect::open(addr, hc.timeout, None, None)
                .await
                .map_err(|e| e.to_string())
        };
        let authority = addr.to_string();
        return crate::probe::probe(
            connect,
            &authority,
            &hc.path,
            hc.timeout,
            hc.expect_status,
            false,
            false,
        )
        .await;
    }
    // Over the same TLS as requests: a check that passed in the clear would say nothing
    // of an origin whose certificate has expired.
    let connect = async {
        connect::open(origin.addr, hc.timeout, upstream.tls_to(index), None)
            .await
            .map_err(|e| e.to_string())
    };
    crate::probe::probe(
        connect,
        origin.authority.as_str(),
        &hc.path,
        hc.timeout,
        hc.expect_status,
        upstream.protocol.is_http2(),
        upstream.tls.is_some(),
    )
    .await
}
