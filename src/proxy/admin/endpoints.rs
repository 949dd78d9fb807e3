//! The proxy's admin endpoints (`/healthz`, `/metrics`, cache purge, reload) and the
//! configuration reload behind them and SIGHUP.

use std::sync::Arc;

use crate::config::proxy::{CertificateSource, ProxyConfig};
use crate::control::{self, Admin};
use crate::proxy::listen::tls::TlsListener;
use crate::proxy::upstream::checks;
use crate::proxy::Shared;

pub(crate) struct ProxyAdmin {
    pub(crate) shared: Arc<Shared>,
    pub(crate) reloader: Arc<Reloader>,
}

/// Reloads the proxy's configuration: validated whole first; on any error the running
/// configuration stays. Open connections and in-flight requests finish on the state they
/// started with (each request holds its own snapshot); origins that still exist keep
/// their in-flight counts and health. Listener addresses (and whether they expect a PROXY
/// protocol header), workers, the cache's size and
/// the access log file are set at start and need a restart to change.
pub struct Reloader {
    shared: Arc<Shared>,
    pub(crate) tls: Option<Arc<TlsListener>>,
    path: std::path::PathBuf,
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Reloader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        tls: Option<Arc<TlsListener>>,
        path: std::path::PathBuf,
    ) -> Self {
        Self {
            shared,
            tls,
            path,
            background: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn reload(&self) -> Result<(), String> {
        let cfg = ProxyConfig::load(&self.path).map_err(|e| e.to_string())?;
        let old = self.shared.state.load_full();
        if self.tls.is_none() && !cfg.https.is_empty() {
            return Err("HTTPS listeners were added: that needs a restart".into());
        }
        let tls = cfg.tls.clone();
        let state =
            crate::proxy::ProxyState::build(cfg, &self.shared.origins, &self.shared.metrics)
                .map_err(|e| format!("{e:#}"))?;
        // Certificates and TLS policy last of what can fail: a config that breaks
        // them changes nothing at all.
        if let Some(listener) = &self.tls {
            listener.reconfigure(&tls).map_err(|e| e.to_string())?;
        }
        let o = &old.config;
        let n = &state.config;
        if o.http != n.http
            || o.https != n.https
            || o.admin != n.admin
            || o.workers != n.workers
            || o.proxy_protocol != n.proxy_protocol
        {
            tracing::warn!("listener and worker changes take effect on restart only");
        }
        let state = Arc::new(state);
        self.shared.state.store(state.clone());
        self.restart_background(&state);
        Ok(())
    }

    /// Stops the health checks and reports of the configuration in force (at shutdown).
    pub(crate) fn stop_background(&self) {
        let mut tasks = self.background.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
    }

    pub(crate) fn restart_background(&self, state: &crate::proxy::ProxyState) {
        let mut tasks = self.background.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
        *tasks = checks::spawn(&state.upstreams);
        if let Some(tls) = &self.tls {
            tasks.extend(crate::proxy::listen::acme::spawn(&tls.store, &self.shared));
        }
        if let Some(reports) = state.config.reports.clone() {
            match crate::proxy::admin::report::spawn(self.shared.clone(), reports) {
                Ok(t) => tasks.push(t),
                Err(e) => tracing::error!(error = %e, "health reports not started"),
            }
        }
    }

    pub fn reload_and_report(&self) -> Result<(), String> {
        match self.reload() {
            Ok(()) => {
                self.shared.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.shared
                    .metrics
                    .reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "configuration reload failed; the previous configuration stays in force");
                Err(e)
            }
        }
    }
}

impl ProxyAdmin {
    /// The certificates served, when each expires, and how each was got.
    fn status(&self) -> Vec<u8> {
        let now = crate::process::clock::unix_ms() / 1000;
        let mut certificates = Vec::new();
        if let Some(tls) = &self.reloader.tls {
            let sources = tls.store.sources();
            for (i, c) in tls.store.current().certs.iter().enumerate() {
                let (source, acme_error) = match sources.get(i) {
                    Some(CertificateSource::Acme(a)) => ("acme", tls.store.acme_error(&a.names[0])),
                    Some(CertificateSource::SelfSigned(_)) => ("self_signed", None),
                    _ => ("file", None),
                };
                certificates.push(serde_json::json!({
                    "name": c.label,
                    "source": source,
                    "not_after": c.not_after,
                    "days_left": (c.not_after as f64 - now as f64) / 86_400.0,
                    "acme_error": acme_error,
                }));
            }
        }
        let state = self.shared.state.load();
        let (can_serve, problems) = state.can_serve();
        let up: std::collections::HashMap<String, bool> = state.services().into_iter().collect();
        let m = &self.shared.stream_metrics;
        let services: Vec<_> = state
            .config
            .streams
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "mode": s.mode.name(),
                    "listen": s.listen,
                    "up": up.get(&s.name).copied().unwrap_or(false),
                    "connections_open": m.open.with_label_values(&[&s.name]).get(),
                    "connections": m.connections.with_label_values(&[&s.name]).get(),
                })
            })
            .collect();
        let now_ms = crate::process::clock::now_ms();
        let upstreams: Vec<_> = state
            .upstreams
            .iter()
            .map(|u| {
                let origins: Vec<_> = u
                    .origins
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "name": o.name,
                            "healthy": o.state.is_healthy(),
                            "in_flight": o.state.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                            "bytes": o.state.traffic.total(),
                            "recent_bytes": o.state.traffic.recent(now_ms).round(),
                            "latency_ms": o.state.latency.current_us(now_ms) / 1000.0,
                        })
                    })
                    .collect();
                serde_json::json!({ "name": u.name, "balance": u.balance.name(), "origins": origins })
            })
            .collect();
        serde_json::to_vec_pretty(&serde_json::json!({
            "node": state.config.node,
            "region": state.config.region,
            "can_serve": can_serve,
            "problems": problems,
            "certificates": certificates,
            "services": services,
            "upstreams": upstreams,
        }))
        .unwrap_or_default()
    }
}

impl Admin for ProxyAdmin {
    fn metrics(&self) -> String {
        self.shared.refresh_gauges();
        if let Some(tls) = &self.reloader.tls {
            let now = i64::try_from(crate::process::clock::unix_ms() / 1000).unwrap_or(0);
            for c in &tls.store.current().certs {
                let until = i64::try_from(c.not_after).unwrap_or(i64::MAX);
                self.shared
                    .metrics
                    .cert_expiry
                    .with_label_values(&[&c.label])
                    .set(until.saturating_sub(now));
            }
        }
        crate::metrics::render(&self.shared.registry)
    }

    fn route(&self, req: &control::ControlRequest) -> Option<hyper::Response<control::Body>> {
        use hyper::StatusCode;
        match req.path.as_str() {
            "/cache/purge" => Some(purge(&self.shared, req)),
            "/status" => Some(control::json(StatusCode::OK, self.status())),
            "/admin/reload" => {
                if req.method != hyper::Method::POST {
                    return Some(control::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"));
                }
                let token = self
                    .shared
                    .state
                    .load()
                    .config
                    .admin_token_file
                    .as_deref()
                    .and_then(|p| std::fs::read(p).ok())
                    .map(|t| t.trim_ascii().to_vec());
                let Some(token) = token else {
                    return Some(control::text(
                        StatusCode::FORBIDDEN,
                        "admin endpoints are disabled: set node.admin_token_file\n",
                    ));
                };
                if !control::token_matches(req.header("authorization"), &token) {
                    return Some(control::text(
                        StatusCode::UNAUTHORIZED,
                        "bad or missing bearer token\n",
                    ));
                }
                Some(match self.reloader.reload_and_report() {
                    Ok(()) => control::text(StatusCode::OK, "reloaded\n"),
                    Err(e) => control::text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("reload refused, previous configuration kept: {e}\n"),
                    ),
                })
            }
            _ => None,
        }
    }

    fn healthz(&self) -> (bool, String) {
        let (ok, problems) = self.shared.state.load().can_serve();
        if ok {
            (true, "ok\n".into())
        } else {
            (false, problems.join("\n") + "\n")
        }
    }
}

/// `POST /cache/purge?url=https://host/path` drops a URL with all its variants;
/// `?prefix=host/path/` drops everything under a prefix. Both schemes are purged: it is
/// one resource behind either listener.
fn purge(shared: &Shared, req: &control::ControlRequest) -> hyper::Response<control::Body> {
    use hyper::StatusCode;
    if req.method != hyper::Method::POST {
        return control::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    }
    let Some(cache) = &shared.cache else {
        return control::text(StatusCode::NOT_FOUND, "no route caches\n");
    };
    let Some(token) = &cache.purge_token else {
        return control::text(
            StatusCode::FORBIDDEN,
            "purge is disabled: set cache.purge_token_file\n",
        );
    };
    if !control::token_matches(req.header("authorization"), token) {
        return control::text(StatusCode::UNAUTHORIZED, "bad or missing bearer token\n");
    }
    let purged = match (req.param_decoded("url"), req.param_decoded("prefix")) {
        (Some(url), None) => {
            let Ok(uri) = url.parse::<http::Uri>() else {
                return control::text(StatusCode::BAD_REQUEST, "url is not a URL\n");
            };
            let (Some(host), Some(pq)) = (uri.host(), uri.path_and_query()) else {
                return control::text(StatusCode::BAD_REQUEST, "url needs a host and a path\n");
            };
            ["http", "https"]
                .iter()
                .filter(|s| cache.store.purge(&crate::cache::key(s, host, pq.as_str())))
                .count() as u64
        }
        (None, Some(prefix)) => {
            let prefix = prefix
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .to_string();
            let prefix = prefix.as_str();
            if prefix.is_empty() {
                return control::text(StatusCode::BAD_REQUEST, "empty prefix\n");
            }
            let (host, path) = prefix
                .split_once('/')
                .map(|(h, p)| (h, format!("/{p}")))
                .unwrap_or((prefix, String::new()));
            let prefixes = vec![
                crate::cache::key("http", host, &path),
                crate::cache::key("https", host, &path),
            ];
            cache.store.purge_prefixes(prefixes)
        }
        _ => {
            return control::text(
                StatusCode::BAD_REQUEST,
                "give url=URL or prefix=HOST/PATH\n",
            )
        }
    };
    shared.metrics.cache_purges.inc_by(purged);
    tracing::info!(
        purged,
        url = req.param("url").unwrap_or(""),
        prefix = req.param("prefix").unwrap_or(""),
        "cache purge"
    );
    control::text(StatusCode::OK, format!("purged {purged}\n"))
}
