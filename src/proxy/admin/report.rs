//! Health reports, this node -> every DNS server, on their own task: a DNS server that is
//! down or slow costs this loop a timeout, never the request path anything.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::config::proxy::ReportsConfig;
use crate::health::report::{NodeLoad, Report, ReportKey, REPORT_PATH, SIGNATURE_HEADER};
use crate::process::clock::unix_ms;
use crate::proxy::Shared;

/// Requests and CPU time between two reports, for the load a report carries.
pub struct LoadMeter {
    last: Option<(u64, f64, std::time::Instant)>,
}

impl LoadMeter {
    pub fn new() -> Self {
        Self { last: None }
    }

    /// (requests per second, CPU share) since the previous call; zeros the first time.
    pub fn sample(
        &mut self,
        requests: u64,
        cpu_seconds: f64,
        now: std::time::Instant,
    ) -> (f64, f64) {
        let rates = match self.last {
            Some((r0, c0, t0)) => {
                let wall = now.duration_since(t0).as_secs_f64();
                if wall > 0.0 {
                    (
                        requests.saturating_sub(r0) as f64 / wall,
                        (cpu_seconds - c0).max(0.0) / wall,
                    )
                } else {
                    (0.0, 0.0)
                }
            }
            None => (0.0, 0.0),
        };
        self.last = Some((requests, cpu_seconds, now));
        rates
    }
}

impl Default for LoadMeter {
    fn default() -> Self {
        Self::new()
    }
}

/// User plus system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the zeroed struct we pass, which lives for the
    // call; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) != 0 {
            return 0.0;
        }
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The report this node would send now.
pub fn current(
    shared: &Shared,
    addresses: &[std::net::IpAddr],
    seq: u64,
    meter: &mut LoadMeter,
) -> Report {
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
        capacity: state.config.capacity.map(|c| {
            let (rps, cpu) = meter.sample(
                shared.metrics.requests_total(),
                cpu_seconds(),
                std::time::Instant::now(),
            );
            NodeLoad {
                rps,
                in_flight,
                connections: shared.metrics.connections_open.get().max(0) as u64,
                cpu,
                max_rps: c.max_rps,
                max_in_flight: c.max_in_flight,
            }
        }),
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
    let mut meter = LoadMeter::new();
    loop {
        ticker.tick().await;
        seq += 1;
        let body = match serde_json::to_vec(&current(&shared, &cfg.addresses, seq, &mut meter)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_meter_gives_rates_over_the_interval() {
        let mut m = LoadMeter::new();
        let t0 = Instant::now();
        assert_eq!(m.sample(100, 1.0, t0), (0.0, 0.0));
        let (rps, cpu) = m.sample(600, 1.25, t0 + Duration::from_millis(500));
        assert!((rps - 1000.0).abs() < 1e-6, "{rps}");
        assert!((cpu - 0.5).abs() < 1e-6, "{cpu}");
        // A counter that went backwards (a reset) reads as no requests.
        assert_eq!(m.sample(10, 1.25, t0 + Duration::from_secs(1)).0, 0.0);
    }
}
