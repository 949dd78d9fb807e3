//! A DNS server's shared parts and what changes them: reloads (config, keys, GeoIP
//! database), nodes that announce themselves, health transitions and the probe loops.
//! Binding sockets and running is `run`; the control routes are `admin`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context;
use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus::Registry;

use crate::acme::table::ChallengeTable;
use crate::config::dns::ProbeConfig;
use crate::config::DnsConfig;
use crate::dns::DnsState;
use crate::health::report::ReportKey;
use crate::health::{HealthTable, Transition};
use crate::metrics::DnsMetrics;
use crate::process::clock::now_ms;

/// A DNS server's shared parts: what the query path, the control side and the health
/// loops all see.
pub struct DnsServer {
    pub state: Arc<ArcSwap<DnsState>>,
    /// dns-01 challenges the proxies published, answered as TXT.
    pub challenges: Arc<ChallengeTable>,
    pub metrics: Arc<DnsMetrics>,
    pub registry: Registry,
    pub report_key: ArcSwapOption<ReportKey>,
    pub admin_token: ArcSwapOption<Vec<u8>>,
    pub max_clock_skew_ms: std::sync::atomic::AtomicU64,
    /// The config in force, for reloads.
    config: Mutex<DnsConfig>,
    /// The GeoIP file's modification time when it was loaded.
    geo_stamp: Mutex<Option<SystemTime>>,
    /// Last logged state of each region, to log region changes once.
    region_up: Mutex<Vec<bool>>,
    /// Probe loops of the config in force, restarted on reload.
    probes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Nodes that announced themselves by signed report in regions that allow it:
    /// (region, node).
    dynamic: Mutex<Vec<(String, crate::config::dns::NodeConfig)>>,
}

/// Dynamic nodes at most, so a leaked key cannot grow the table without bound.
const MAX_DYNAMIC_NODES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    State(#[from] crate::dns::state::StateError),
    #[error("{0}")]
    Key(String),
}

fn file_stamp(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_keys(cfg: &DnsConfig) -> Result<(Option<ReportKey>, Option<Vec<u8>>), String> {
    let report_key = cfg
        .report_key_file
        .as_deref()
        .map(ReportKey::from_file)
        .transpose()
        .map_err(|e| e.to_string())?;
    let admin_token = cfg
        .admin_token_file
        .as_deref()
        .map(|p| {
            std::fs::read(p)
                .map(|t| t.trim_ascii().to_vec())
                .map_err(|e| format!("reading {}: {e}", p.display()))
        })
        .transpose()?;
    if admin_token.as_ref().is_some_and(|t| t.len() < 16) {
        return Err("health.admin_token_file: the token must be at least 16 bytes".into());
    }
    Ok((report_key, admin_token))
}

impl DnsServer {
    pub fn new(cfg: &DnsConfig) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let metrics = Arc::new(DnsMetrics::new(&registry));
        let mut state =
            DnsState::build(cfg).with_context(|| format!("loading {}", cfg.path.display()))?;
        state.attach_metrics(&metrics);
        let (report_key, admin_token) = read_keys(cfg).map_err(anyhow::Error::msg)?;
        let region_up = (0..state.table.regions.len())
            .map(|r| {
                state.table.regions[r]
                    .nodes
                    .clone()
                    .any(|n| state.health.is_up(n))
            })
            .collect();
        let server = Self {
            state: Arc::new(ArcSwap::from_pointee(state)),
            challenges: Arc::new(ChallengeTable::default()),
            metrics,
            registry,
            report_key: ArcSwapOption::from(report_key.map(Arc::new)),
            admin_token: ArcSwapOption::from(admin_token.map(Arc::new)),
            max_clock_skew_ms: std::sync::atomic::AtomicU64::new(
                cfg.max_clock_skew.as_millis() as u64
            ),
            config: Mutex::new(cfg.clone()),
            geo_stamp: Mutex::new(file_stamp(&cfg.geoip_database)),
            region_up: Mutex::new(region_up),
            probes: Mutex::new(Vec::new()),
            dynamic: Mutex::new(Vec::new()),
        };
        server.init_series();
        server.refresh_gauges();
        Ok(server)
    }

    /// The config plus the dynamic nodes that are still allowed by it.
    fn with_dynamic(&self, cfg: &DnsConfig) -> DnsConfig {
        let mut cfg = cfg.clone();
        for (region, node) in self
            .dynamic
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(r) = cfg
                .regions
                .iter_mut()
                .find(|r| &r.name == region && r.dynamic_nodes)
            {
                if !r.nodes.iter().any(|n| n.name == node.name) {
                    r.nodes.push(node.clone());
                }
            }
        }
        cfg
    }

    /// Adds a node that reported itself in a region with `dynamic_nodes = true`, and
    /// returns its id in the new state. None when the region does not allow it, the
    /// report has no address, or the limit is reached.
    pub fn add_dynamic_node(
        self: &Arc<Self>,
        region: &str,
        name: &str,
        addresses: &[IpAddr],
    ) -> Option<usize> {
        let cfg = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !cfg
            .regions
            .iter()
            .any(|r| r.name == region && r.dynamic_nodes)
        {
            return None;
        }
        let ipv4 = addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        let ipv6 = addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        if ipv4.is_none() && ipv6.is_none() {
            return None;
        }
        {
            let mut dynamic = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
            if dynamic.len() >= MAX_DYNAMIC_NODES || dynamic.iter().any(|(_, n)| n.name == name) {
                return None;
            }
            dynamic.push((
                region.to_string(),
                crate::config::dns::NodeConfig {
                    name: name.to_string(),
                    ipv4,
                    ipv6,
                    // Up as soon as its first report says it can serve.
                    initial: crate::config::dns::InitialState::Down,
                },
            ));
        }
        let previous = self.state.load_full();
        let mut state =
            match DnsState::build_with_geo(&self.with_dynamic(&cfg), previous.geo.clone()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot add dynamic node");
                    return None;
                }
            };
        state.attach_metrics(&self.metrics);
        state.adopt_health(&previous);
        let id = state.table.node_by_name(name);
        self.state.store(Arc::new(state));
        tracing::info!(node = name, region, "dynamic node joined");
        self.init_series();
        id
    }

    /// The health table of the state in force.
    pub fn health(&self) -> Arc<HealthTable> {
        self.state.load().health.clone()
    }

    /// Reloads the config from its file: validated whole first; if anything is wrong the
    /// running config stays and the error is returned (and logged and counted by the
    /// caller). Listener addresses are bound once: changing them needs a restart.
    pub fn reload(self: &Arc<Self>) -> Result<(), ReloadError> {
        let path = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .path
            .clone();
        let cfg = DnsConfig::load(&path)?;
        let (report_key, admin_token) = read_keys(&cfg).map_err(ReloadError::Key)?;
        let previous = self.state.load_full();
        let geo = if cfg.geoip_database == previous.geo.path()
            && file_stamp(&cfg.geoip_database)
                == *self.geo_stamp.lock().unwrap_or_else(|p| p.into_inner())
        {
            previous.geo.clone()
        } else {
            Arc::new(
                crate::geo::GeoDb::open(&cfg.geoip_database)
                    .map_err(crate::dns::state::StateError::from)?,
            )
        };
        let mut state = DnsState::build_with_geo(&self.with_dynamic(&cfg), geo)?;
        state.attach_metrics(&self.metrics);
        if !state.adopt_health(&previous) {
            tracing::warn!("the nodes or health settings changed: node health starts afresh");
        }
        {
            let old = self.config.lock().unwrap_or_else(|p| p.into_inner());
            if old.listen != cfg.listen || old.control != cfg.control || old.workers != cfg.workers
            {
                tracing::warn!("listen, control and workers changes take effect on restart only");
            }
        }
        *self.geo_stamp.lock().unwrap_or_else(|p| p.into_inner()) = file_stamp(&cfg.geoip_database);
        self.state.store(Arc::new(state));
        self.report_key.store(report_key.map(Arc::new));
        self.admin_token.store(admin_token.map(Arc::new));
        self.max_clock_skew_ms.store(
            cfg.max_clock_skew.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        *self.region_up.lock().unwrap_or_else(|p| p.into_inner()) = vec![true; cfg.regions.len()];
        self.init_series();
        self.restart_probes(&cfg);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = cfg;
        self.refresh_gauges();
        Ok(())
    }

    /// Reload, logged and counted; what SIGHUP and the admin endpoint call.
    pub fn reload_and_report(self: &Arc<Self>) -> Result<(), String> {
        match self.reload() {
            Ok(()) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, "configuration reload failed; the previous configuration stays in force");
                Err(e.to_string())
            }
        }
    }

    /// Reloads the GeoIP database alone when its file changed on disk (an updater
    /// replaced it). Queries keep being answered from the old one until the swap.
    pub(crate) fn reload_geo_if_changed(self: &Arc<Self>) {
        let cfg = self
            .config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stamp = file_stamp(&cfg.geoip_database);
        if stamp == *self.geo_stamp.lock().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        match crate::geo::GeoDb::open(&cfg.geoip_database) {
            Ok(geo) => {
                let previous = self.state.load_full();
                match DnsState::build_with_geo(&self.with_dynamic(&cfg), Arc::new(geo)) {
                    Ok(mut state) => {
                        state.attach_metrics(&self.metrics);
                        state.adopt_health(&previous);
                        self.state.store(Arc::new(state));
                        *self.geo_stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
                        tracing::info!(path = %cfg.geoip_database.display(), "GeoIP database reloaded");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "GeoIP reload failed; keeping the previous database")
                    }
                }
            }
            Err(e) => {
                // A half-written file is the usual cause: try again on the next tick, but
                // say it once per change.
                *self.geo_stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
                tracing::error!(error = %e, "GeoIP database changed but cannot be opened; keeping the previous one");
            }
        }
    }

    /// Logs and counts node changes (once each, with the reason), and region changes.
    pub fn apply(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        let state = self.state.load();
        let table = &state.table;
        for t in &transitions {
            let Some(node) = table.nodes.get(t.node) else {
                continue;
            };
            let region = &table.regions[node.region].name;
            if t.up {
                tracing::info!(node = %node.name, region = %region, reason = t.reason.as_str(), "node is up");
            } else {
                tracing::warn!(node = %node.name, region = %region, reason = t.reason.as_str(), "node is DOWN");
            }
            self.metrics
                .state_changes
                .with_label_values(&[region, &node.name])
                .inc();
            self.metrics
                .node_gauge(region, &node.name)
                .set(i64::from(t.up));
        }
        let mut logged = self.region_up.lock().unwrap_or_else(|p| p.into_inner());
        for (rid, r) in table.regions.iter().enumerate() {
            let up = table.region_is_up(rid, |n| state.health.is_up(n));
            if logged.get(rid).copied() != Some(up) {
                if up {
                    tracing::info!(region = %r.name, "region is up");
                } else {
                    tracing::warn!(region = %r.name, "region is DOWN: its clients go to the next nearest region");
                }
                if let Some(slot) = logged.get_mut(rid) {
                    *slot = up;
                }
            }
            self.metrics
                .region_up
                .with_label_values(&[&r.name])
                .set(i64::from(up));
        }
    }

    /// Creates every per-node and per-region series at its current value, so dashboards
    /// and alerts see them before anything changes.
    fn init_series(&self) {
        let state = self.state.load();
        for node in &state.table.nodes {
            let region = &state.table.regions[node.region].name;
            self.metrics
                .state_changes
                .with_label_values(&[region, &node.name]);
        }
        for r in &state.table.regions {
            for result in ["ok", "failed"] {
                self.metrics.probes.with_label_values(&[&r.name, result]);
            }
            self.metrics.steered_for(std::slice::from_ref(&r.name));
        }
    }

    /// Brings gauges that depend on time (report ages) or state up to date.
    pub fn refresh_gauges(&self) {
        let state = self.state.load();
        let now = now_ms();
        for (id, node) in state.table.nodes.iter().enumerate() {
            let region = &state.table.regions[node.region].name;
            self.metrics
                .node_gauge(region, &node.name)
                .set(i64::from(state.health.is_up(id)));
            if let Some(age) = state.health.status(id, now).and_then(|s| s.report_age_ms) {
                self.metrics
                    .report_age
                    .with_label_values(&[region, &node.name])
                    .set(age as f64 / 1000.0);
            }
        }
        for (rid, r) in state.table.regions.iter().enumerate() {
            let up = state.table.region_is_up(rid, |n| state.health.is_up(n));
            self.metrics
                .region_up
                .with_label_values(&[&r.name])
                .set(i64::from(up));
        }
        let shed = &state.shed;
        for (i, name) in shed.names().iter().enumerate() {
            let m = &self.metrics;
            m.region_utilisation
                .with_label_values(&[name])
                .set(shed.utilisation(i).unwrap_or(0.0));
            m.region_shed_share
                .with_label_values(&[name])
                .set(shed.share(i));
            // The table counts; the registry's counters catch up at each scrape (a
            // reload's new table starts again at 0, which the counters never go below).
            let moved = shed.moved[i].load(std::sync::atomic::Ordering::Relaxed);
            let counter = m.shed_moved.with_label_values(&[name]);
            counter.inc_by(moved.saturating_sub(counter.get()));
        }
        let (merged_v4, merged_v6) = state.scopes.counts();
        for (family, geoip, merged) in [
            ("ipv4", state.geo_networks.0, merged_v4),
            ("ipv6", state.geo_networks.1, merged_v6),
        ] {
            let g = &self.metrics.scope_networks;
            g.with_label_values(&[family, "geoip"]).set(geoip as i64);
            g.with_label_values(&[family, "merged"]).set(merged as i64);
        }
        for zone in &state.zones {
            if let Some(signer) = &zone.signer {
                self.metrics
                    .dnssec_cache_entries
                    .with_label_values(&[&zone.origin.to_string()])
                    .set(signer.cached() as i64);
            }
        }
        let full = shed.all_full.load(std::sync::atomic::Ordering::Relaxed);
        let counter = &self.metrics.shed_all_full;
        counter.inc_by(full.saturating_sub(counter.get()));
    }

    pub(crate) fn stop_probes(&self) {
        for task in self
            .probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }

    pub(crate) fn restart_probes(self: &Arc<Self>, cfg: &DnsConfig) {
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        for t in probes.drain(..) {
            t.abort();
        }
        // Probes spawn tasks: only inside a runtime (a reload outside one has none).
        if tokio::runtime::Handle::try_current().is_ok() {
            *probes = self.clone().spawn_probes(cfg);
        }
    }

    fn spawn_probes(self: Arc<Self>, cfg: &DnsConfig) -> Vec<tokio::task::JoinHandle<()>> {
        let state = self.state.load();
        let mut tasks = Vec::new();
        for (rid, region) in cfg.regions.iter().enumerate() {
            let Some(probe) = &region.probe else { continue };
            for id in state.table.regions[rid].nodes.clone() {
                let node = &state.table.nodes[id];
                let Some(ip) = node.ipv4.map(IpAddr::V4).or(node.ipv6.map(IpAddr::V6)) else {
                    continue;
                };
                let addr = SocketAddr::new(ip, probe.port);
                tasks.push(tokio::spawn(probe_loop(
                    self.clone(),
                    id,
                    region.name.clone(),
                    addr,
                    probe.clone(),
                )));
            }
        }
        tasks
    }
}

async fn probe_loop(
    server: Arc<DnsServer>,
    node: usize,
    region: String,
    addr: SocketAddr,
    probe: ProbeConfig,
) {
    let mut ticker = tokio::time::interval(probe.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ok_counter = server.metrics.probes.with_label_values(&[&region, "ok"]);
    let fail_counter = server
        .metrics
        .probes
        .with_label_values(&[&region, "failed"]);
    let host = addr.to_string();
    loop {
        ticker.tick().await;
        let started = std::time::Instant::now();
        let result =
            crate::probe::http_probe(addr, &host, &probe.path, probe.timeout, probe.expect_status)
                .await;
        server
            .metrics
            .probe_duration
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => ok_counter.inc(),
            Err(why) => {
                fail_counter.inc();
                tracing::debug!(node = node, %addr, reason = %why, "probe failed");
            }
        }
        let change = server.health().record_probe(node, result.is_ok(), now_ms());
        server.apply(change.into_iter().collect());
    }
}
