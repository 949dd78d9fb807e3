//! What every request of the proxy reads: the state built from one config (routes,
//! upstreams, rules, rate limits), swapped whole on reload, and what outlives reloads
//! (the cache, origin state, connection counts, metrics).

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{IntGauge, Registry};

use super::cached::serve::CacheRuntime;
use super::route::router::Router;
use super::route::{auth, ratelimit, rules};
use super::upstream::failover::Peers;
use super::upstream::group::{OriginRegistry, Upstream};
use crate::config::proxy::ProxyConfig;
use crate::health::report::ReportKey;
use crate::metrics::{ProxyMetrics, RouteMetrics, StreamMetrics};

pub struct RouteRuntime {
    /// Label for metrics and logs: `host-pattern + prefix` of the first host.
    pub label: String,
    pub upstream: usize,
    pub redirect_https: bool,
    pub cache: bool,
    pub compress: bool,
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
    pub auth: Option<RouteAuth>,
    /// Strict-Transport-Security for the route's HTTPS responses.
    pub hsts: Option<http::HeaderValue>,
    pub require_client_cert: bool,
    pub metrics: RouteMetrics,
}

pub struct RouteAuth {
    pub realm: String,
    pub users: auth::Users,
    pub forward_authorization: bool,
}

/// Everything a request reads, swapped whole on reload.
pub struct ProxyState {
    pub config: ProxyConfig,
    pub router: Router,
    pub routes: Vec<RouteRuntime>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// In-flight gauges per upstream, per origin.
    pub in_flight_gauges: Vec<Vec<IntGauge>>,
    pub rules: Vec<rules::Rule>,
    /// Match counters, one per rule.
    pub rule_counters: Vec<prometheus::IntCounter>,
    pub rate: ratelimit::RateLimits,
    /// Present with `[failover]`.
    pub failover: Option<Peers>,
}

impl ProxyState {
    pub fn build(
        config: ProxyConfig,
        registry: &OriginRegistry,
        metrics: &ProxyMetrics,
    ) -> anyhow::Result<Self> {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u, registry).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let mut routes = Vec::new();
        for r in &config.routes {
            let label = format!(
                "{}{}",
                r.hosts.first().map(String::as_str).unwrap_or("*"),
                r.path_prefix
            );
            let auth = match &r.auth {
                Some(a) => Some(RouteAuth {
                    realm: a.realm.clone(),
                    users: auth::Users::load(&a.users_file)?,
                    forward_authorization: a.forward_authorization,
                }),
                None => None,
            };
            routes.push(RouteRuntime {
                metrics: metrics.route(&label),
                label,
                upstream: upstreams
                    .iter()
                    .position(|u| u.name == r.upstream)
                    .unwrap_or(0),
                redirect_https: r.redirect_https,
                cache: r.cache,
                compress: r.compress,
                allow: r.allow.clone(),
                deny: r.deny.clone(),
                auth,
                hsts: r
                    .hsts
                    .as_deref()
                    .and_then(|v| http::HeaderValue::from_str(v).ok()),
                require_client_cert: r.require_client_cert,
            });
        }
        let rules = rules::compile(&config.rules);
        let rule_counters = rules
            .iter()
            .map(|r| {
                let action = match r.action {
                    crate::config::proxy::RuleAction::Deny => "deny",
                    crate::config::proxy::RuleAction::Allow => "allow",
                    crate::config::proxy::RuleAction::Tag => "tag",
                };
                metrics.rule_matches.with_label_values(&[&r.name, action])
            })
            .collect();
        let route_rates: Vec<_> = config.routes.iter().map(|r| r.rate).collect();
        let rate = ratelimit::RateLimits::new(&config.rate_limit, &route_rates);
        for u in &upstreams {
            let unverified = u.tls.as_ref().is_some_and(|t| t.unverified);
            if unverified {
                tracing::warn!(
                    upstream = %u.name,
                    "TLS to this upstream's origins does NOT verify their certificates (insecure_skip_verify): anyone on the path can read and change its traffic"
                );
            }
            metrics
                .upstream_tls_unverified
                .with_label_values(&[&u.name])
                .set(i64::from(unverified));
            metrics.retries.with_label_values(&[&u.name]);
            metrics.upstream_connections.with_label_values(&[&u.name]);
            for kind in ["connect", "tls", "reset", "bad_response", "timeout", "5xx"] {
                metrics.upstream_errors.with_label_values(&[&u.name, kind]);
            }
            if let Some(r) = &config.reports {
                for dns in &r.dns {
                    for result in ["ok", "failed"] {
                        metrics.reports.with_label_values(&[dns, result]);
                    }
                }
            }
        }
        for listener in ["http", "https"] {
            metrics.connections.with_label_values(&[listener]);
        }
        let in_flight_gauges = upstreams
            .iter()
            .map(|u| {
                u.origins
                    .iter()
                    .map(|o| metrics.in_flight.with_label_values(&[&u.name, &o.name]))
                    .collect()
            })
            .collect();
        let failover = match &config.failover {
            Some(f) => Some(Peers {
                key: ReportKey::from_file(&f.key_file)?,
                region: config.region.clone(),
                peers: f
                    .peers
                    .iter()
                    .filter_map(|p| {
                        let index = upstreams.iter().position(|u| u.name == p.upstream)?;
                        Some((p.region.clone(), index))
                    })
                    .collect(),
            }),
            None => None,
        };
        for (region, _) in failover.iter().flat_map(|f| &f.peers) {
            for result in ["forwarded", "peer_failed", "hop_refused"] {
                metrics.failover.with_label_values(&[region, result]);
            }
            // Peers usually fail over to each other: show their zero before the first.
            metrics.failover_received.with_label_values(&[region]);
        }
        if failover.is_some() {
            metrics.failover.with_label_values(&["none", "no_peer"]);
        }
        Ok(Self {
            failover,
            router: Router::new(&config.routes),
            config,
            routes,
            upstreams,
            in_flight_gauges,
            rules,
            rule_counters,
            rate,
        })
    }

    /// Whether every route has at least one healthy origin: what `/healthz` reports and
    /// what the DNS side reads.
    pub fn can_serve(&self) -> (bool, Vec<String>) {
        let mut problems = Vec::new();
        for r in &self.routes {
            if let Some(u) = self.upstreams.get(r.upstream) {
                if !u.can_serve() {
                    problems.push(format!(
                        "route {}: no healthy origin in upstream {}",
                        r.label, u.name
                    ));
                }
            }
        }
        // Stream services travel on their own in reports (steered names that need one
        // say so); they decide a node's verdict only where it has no routes at all.
        let services = self.services();
        if self.routes.is_empty() && !services.is_empty() && !services.iter().any(|(_, up)| *up) {
            problems.push("no stream service has a healthy origin".to_string());
        }
        (problems.is_empty(), problems)
    }

    /// The upstream a stream (or an SNI rule of one) names.
    pub fn upstream(&self, name: &str) -> Option<(usize, &Arc<Upstream>)> {
        self.upstreams
            .iter()
            .enumerate()
            .find(|(_, u)| u.name == name)
    }

    /// Each stream service and whether it can take connections now (one of its upstreams
    /// has a healthy origin): what the reports carry for steered names that need it.
    pub fn services(&self) -> Vec<(String, bool)> {
        self.config
            .streams
            .iter()
            .map(|s| {
                let up = s
                    .upstreams()
                    .any(|u| self.upstream(u).is_some_and(|(_, u)| u.can_serve()));
                (s.name.clone(), up)
            })
            .collect()
    }
}

/// What every connection task shares.
pub struct Shared {
    pub state: ArcSwap<ProxyState>,
    /// Present when any route caches; outlives config reloads.
    pub cache: Option<CacheRuntime>,
    pub access_log: Option<(
        crate::process::logfile::LogFile,
        crate::config::proxy::AccessLogFormat,
    )>,
    /// Open connections per client, for `max_connections_per_client`.
    pub connection_counts: ratelimit::ConnectionCounts,
    pub metrics: ProxyMetrics,
    pub stream_metrics: StreamMetrics,
    pub registry: Registry,
    pub origins: OriginRegistry,
}

impl Shared {
    pub fn new(config: ProxyConfig) -> anyhow::Result<Arc<Self>> {
        let registry = Registry::new();
        let metrics = ProxyMetrics::new(&registry);
        let stream_metrics = StreamMetrics::new(&registry);
        let origins = OriginRegistry::default();
        let cache = if config.routes.iter().any(|r| r.cache) {
            Some(CacheRuntime::new(&config.cache)?)
        } else {
            None
        };
        let access_log = match &config.access_log {
            Some((path, format)) => Some((
                crate::process::logfile::open(path.clone())
                    .map_err(|e| anyhow::anyhow!("opening access log {}: {e}", path.display()))?,
                *format,
            )),
            None => None,
        };
        let state = ProxyState::build(config, &origins, &metrics)?;
        Ok(Arc::new(Self {
            connection_counts: ratelimit::ConnectionCounts::default(),
            access_log,
            cache,
            state: ArcSwap::from_pointee(state),
            metrics,
            stream_metrics,
            registry,
            origins,
        }))
    }

    /// Brings the health gauges up to date (called before each scrape).
    pub fn refresh_gauges(&self) {
        self.metrics
            .rate_limit_clients
            .set(self.state.load().rate.tracked_clients() as i64);
        if let Some(cache) = &self.cache {
            self.metrics.cache_bytes.set(cache.store.bytes() as i64);
            self.metrics.cache_objects.set(cache.store.objects() as i64);
            let seen = self.metrics.cache_evictions.get();
            let now = cache.store.evictions();
            if now > seen {
                self.metrics.cache_evictions.inc_by(now - seen);
            }
        }
        let state = self.state.load();
        for u in &state.upstreams {
            for o in &u.origins {
                self.metrics
                    .upstream_up
                    .with_label_values(&[&u.name, &o.name])
                    .set(i64::from(o.state.is_healthy()));
            }
        }
        for (service, up) in state.services() {
            self.stream_metrics
                .up
                .with_label_values(&[&service])
                .set(i64::from(up));
        }
    }
}
