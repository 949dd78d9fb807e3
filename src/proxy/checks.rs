//! Active origin health checks: GET a path on every origin at an interval, and feed the
//! results through rise/fall into the origin's state.

use std::sync::Arc;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::upstream::Upstream;
use crate::config::proxy::HealthCheckConfig;

pub const USER_AGENT: &str = concat!("geoedge-health-check/", env!("CARGO_PKG_VERSION"));

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
        let result = probe(origin.addr, &origin.authority, &hc).await;
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

/// One check: a fresh connection (so it tests what a new request would meet), a GET of
/// the path, and the expected status, all within the timeout.
pub async fn probe(
    addr: std::net::SocketAddr,
    authority: &http::uri::Authority,
    hc: &HealthCheckConfig,
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let conn_task = tokio::spawn(conn);
        let req = Request::get(hc.path.as_str())
            .header(http::header::HOST, authority.as_str())
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        conn_task.abort();
        let want = StatusCode::from_u16(hc.expect_status).unwrap_or(StatusCode::OK);
        if resp.status() == want {
            Ok(())
        } else {
            Err(format!(
                "status {} (want {})",
                resp.status().as_u16(),
                want.as_u16()
            ))
        }
    };
    match tokio::time::timeout(hc.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}
