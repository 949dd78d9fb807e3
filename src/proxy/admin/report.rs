//! Health reports, this node -> every DNS server, on their own task: a DNS server that is
//! down or slow costs this loop a timeout, never the request path anything.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::proxy::ReportsConfig;
use crate::health::report::{Report, ReportKey, REPORT_PATH, SIGNATURE_HEADER};
use crate::process::clock::unix_ms;
use crate::proxy::Shared;

/// The report this node would send now.
pub fn current(shared: &Shared, addresses: &[std::net::IpAddr], seq: u64) -> Report {
    let state = shared.state.load();
    let (can_serve, _) = state.can_serve();
    let mut healthy = 0u32;
    let mut total = 0u32;
    let mut in_flight = 0u64;
    for u in &state.upstreams {
        for o in &u.origins {
            total += 1;
            if o.state.is_healthy() {
                healthy += 1;
            }
            in_flight += o.state.in_flight.load(Ordering::Relaxed) as u64;
        }
    }
    Report {
        node: state.config.node.clone(),
        region: state.config.region.clone(),
        addresses: addresses.to_vec(),
        can_serve,
        healthy_origins: healthy,
        total_origins: total,
        in_flight,
        load: in_flight as f64 / f64::from(healthy.max(1)),
        seq,
        timestamp_ms: unix_ms(),
        services: state.services().into_iter().collect(),
    }
}

pub fn spawn(
    shared: Arc<Shared>,
    cfg: ReportsConfig,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let key = ReportKey::from_file(&cfg.key_file)?;
    let client = reqwest::Client::builder()
        .timeout(cfg.interval.max(Duration::from_millis(100)))
        .pool_max_idle_per_host(2)
        .build()?;
    Ok(tokio::spawn(report_loop(shared, cfg, key, client)))
}

async fn report_loop(
    shared: Arc<Shared>,
    cfg: ReportsConfig,
    key: ReportKey,
    client: reqwest::Client,
) {
    // Sequence numbers start at the wall clock in microseconds, so a restarted node keeps
    // counting upwards and the DNS servers do not take its reports for replays.
    let mut seq = unix_ms().saturating_mul(1000);
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = vec![false; cfg.dns.len()];
    loop {
        ticker.tick().await;
        seq += 1;
        let body = match serde_json::to_vec(&current(&shared, &cfg.addresses, seq)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a health report");
                continue;
            }
        };
        let signature = key.sign(&body);
        // All DNS servers at once; the slowest only delays this loop, bounded by the
        // client's timeout.
        let mut sends = tokio::task::JoinSet::new();
        for (i, base) in cfg.dns.iter().enumerate() {
            let request = client
                .post(format!("{base}{REPORT_PATH}"))
                .header(SIGNATURE_HEADER, signature.as_str())
                .header("content-type", "application/json")
                .body(body.clone());
            sends.spawn(async move {
                let outcome = match request.send().await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(format!("status {}", resp.status().as_u16())),
                    Err(e) => Err(e.to_string()),
                };
                (i, outcome)
            });
        }
        while let Some(joined) = sends.join_next().await {
            let Ok((i, outcome)) = joined else { continue };
            let dns = &cfg.dns[i];
            match &outcome {
                Ok(()) if failing[i] => {
                    tracing::info!(dns = %dns, "health reports reach the DNS server again")
                }
                Err(e) if !failing[i] => {
                    tracing::warn!(dns = %dns, error = %e, "health report not accepted")
                }
                _ => {}
            }
            failing[i] = outcome.is_err();
            shared
                .metrics
                .reports
                .with_label_values(&[dns.as_str(), if outcome.is_ok() { "ok" } else { "failed" }])
                .inc();
        }
    }
}
