//! The regional proxy's metrics: names, label values, and the handles the request path
//! increments (resolved once, never looked up per request).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::{register, register_build_info};

pub const PROXY_REQUESTS: &str = "geoedge_proxy_requests_total";
pub const PROXY_REQUEST_DURATION: &str = "geoedge_proxy_request_duration_seconds";
pub const PROXY_UPSTREAM_IN_FLIGHT: &str = "geoedge_proxy_upstream_in_flight";
pub const PROXY_UPSTREAM_UP: &str = "geoedge_proxy_upstream_up";
pub const PROXY_RETRIES: &str = "geoedge_proxy_retries_total";
pub const PROXY_FAILOVER: &str = "geoedge_proxy_failover_total";
pub const PROXY_FAILOVER_RECEIVED: &str = "geoedge_proxy_failover_received_total";
pub const PROXY_UPSTREAM_ERRORS: &str = "geoedge_proxy_upstream_errors_total";
pub const PROXY_UPSTREAM_CONNECTIONS: &str = "geoedge_proxy_upstream_connections_opened_total";
pub const PROXY_UPSTREAM_TLS_UNVERIFIED: &str = "geoedge_proxy_upstream_tls_unverified";
pub const PROXY_TLS_HANDSHAKES: &str = "geoedge_proxy_tls_handshakes_total";
pub const PROXY_TLS_RESUMED: &str = "geoedge_proxy_tls_resumed_total";
pub const PROXY_CONNECTIONS_OPEN: &str = "geoedge_proxy_connections_open";
pub const PROXY_CONNECTIONS: &str = "geoedge_proxy_connections_total";
pub const PROXY_TUNNELS_OPEN: &str = "geoedge_proxy_tunnels_open";
pub const PROXY_CERT_RELOADS: &str = "geoedge_proxy_certificate_reloads_total";
pub const PROXY_CERT_EXPIRY: &str = "geoedge_proxy_certificate_expiry_seconds";
pub const PROXY_ACME_ORDERS: &str = "geoedge_proxy_acme_orders_total";
pub const PROXY_REPORTS: &str = "geoedge_proxy_reports_sent_total";
pub const PROXY_RULE_MATCHES: &str = "geoedge_proxy_rule_matches_total";
pub const PROXY_RATE_LIMITED: &str = "geoedge_proxy_rate_limited_total";
pub const PROXY_RATE_LIMIT_CLIENTS: &str = "geoedge_proxy_rate_limit_clients";
pub const PROXY_AUTH_FAILURES: &str = "geoedge_proxy_auth_failures_total";
pub const PROXY_ACCESS_DENIED: &str = "geoedge_proxy_access_denied_total";
pub const PROXY_RELOADS: &str = "geoedge_proxy_config_reloads_total";
pub const PROXY_REFUSED: &str = "geoedge_proxy_refused_requests_total";

/// The `reason` labels of `PROXY_REFUSED`, in `proxy::refused::Refusal` order.
pub const REFUSAL_REASONS: [&str; 6] = [
    "malformed",
    "head_too_large",
    "uri_too_long",
    "version",
    "header_timeout",
    "proxy_header",
];

/// The `route` label of requests no route took (421, 404, 400 before routing).
pub const UNROUTED: &str = "-";
pub const CACHE_REQUESTS: &str = "geoedge_proxy_cache_requests_total";
pub const CACHE_STALE_SERVED: &str = "geoedge_proxy_cache_stale_served_total";
pub const CACHE_REVALIDATIONS: &str = "geoedge_proxy_cache_revalidations_total";
pub const CACHE_COALESCED: &str = "geoedge_proxy_cache_coalesced_waiters_total";
pub const CACHE_BYTES: &str = "geoedge_proxy_cache_bytes";
pub const CACHE_OBJECTS: &str = "geoedge_proxy_cache_objects";
pub const CACHE_EVICTIONS: &str = "geoedge_proxy_cache_evictions_total";
pub const CACHE_PURGES: &str = "geoedge_proxy_cache_purges_total";
pub const CACHE_FILE_SENDS: &str = "geoedge_proxy_cache_file_sends_total";

pub const METHOD_CLASSES: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "other"];
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub fn method_index(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        _ => 5,
    }
}

pub fn status_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// Per-route counters and histogram, resolved once per config.
pub struct RouteMetrics {
    requests: Vec<IntCounter>,
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn request(&self, method: usize, status: usize) -> &IntCounter {
        &self.requests[method.min(5) * STATUS_CLASSES.len() + status.min(4)]
    }
}

pub struct ProxyMetrics {
    requests: IntCounterVec,
    duration: prometheus::HistogramVec,
    pub in_flight: IntGaugeVec,
    pub upstream_up: IntGaugeVec,
    pub retries: IntCounterVec,
    /// Requests this region could not serve, by what became of them.
    pub failover: IntCounterVec,
    /// Requests a peer region's proxy forwarded here.
    pub failover_received: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_connections: IntCounterVec,
    /// 1 for an upstream whose origins' certificates are not verified.
    pub upstream_tls_unverified: IntGaugeVec,
    pub tls_ok: IntCounter,
    pub tls_failed: IntCounter,
    pub tls_resumed: IntCounter,
    pub connections_open: IntGauge,
    pub connections: IntCounterVec,
    pub tunnels_open: IntGauge,
    pub cert_reload_ok: IntCounter,
    pub cert_reload_failed: IntCounter,
    /// Seconds until each served certificate expires (negative once it has).
    pub cert_expiry: IntGaugeVec,
    pub acme_ok: IntCounter,
    pub acme_failed: IntCounter,
    pub reports: IntCounterVec,
    pub cache_hit: IntCounter,
    pub cache_miss: IntCounter,
    pub cache_uncacheable: IntCounter,
    pub cache_stale_while_revalidate: IntCounter,
    pub cache_stale_if_error: IntCounter,
    pub cache_stale_max_stale: IntCounter,
    pub cache_revalidated_not_modified: IntCounter,
    pub cache_revalidated_modified: IntCounter,
    pub cache_revalidation_failed: IntCounter,
    pub cache_coalesced: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_objects: IntGauge,
    pub cache_evictions: IntCounter,
    pub cache_purges: IntCounter,
    pub cache_file_sends: IntCounter,
    pub rule_matches: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_clients: IntGauge,
    pub auth_failures: IntCounterVec,
    pub access_denied: IntCounter,
    pub reloads: IntCounterVec,
    /// By `REFUSAL_REASONS` index.
    pub refused: Vec<IntCounter>,
    /// Requests no route took.
    pub unrouted: RouteMetrics,
}

impl ProxyMetrics {
    /// Requests answered so far, over every route, method and status.
    pub fn requests_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.requests
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    pub fn new(registry: &Registry) -> Self {
        let v = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let requests = v(
            PROXY_REQUESTS,
            "Requests answered, by route, method and status class",
            &["route", "method", "status"],
        );
        let duration = register(
            registry,
            prometheus::HistogramVec::new(
                HistogramOpts::new(
                    PROXY_REQUEST_DURATION,
                    "Time from request head to response head, by route",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["route"],
            )
            .expect("valid"),
        );
        let in_flight = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    PROXY_UPSTREAM_IN_FLIGHT,
                    "Requests in flight at each origin",
                ),
                &["upstream", "origin"],
            )
            .expect("valid"),
        );
        let upstream_up = register(
            registry,
            IntGaugeVec::new(
                Opts::new(PROXY_UPSTREAM_UP, "1 when the origin takes traffic"),
                &["upstream", "origin"],
            )
            .expect("valid"),
        );
        let upstream_tls_unverified = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    PROXY_UPSTREAM_TLS_UNVERIFIED,
                    "1 when the upstream's origin certificates are not verified (insecure_skip_verify)",
                ),
                &["upstream"],
            )
            .expect("valid"),
        );
        let cert_expiry = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    PROXY_CERT_EXPIRY,
                    "Seconds until the certificate expires, by its first name",
                ),
                &["certificate"],
            )
            .expect("valid"),
        );
        let acme = v(
            PROXY_ACME_ORDERS,
            "ACME orders (issues and renewals), by result",
            &["result"],
        );
        let retries = v(
            PROXY_RETRIES,
            "Requests retried on another origin",
            &["upstream"],
        );
        let failover = v(
            PROXY_FAILOVER,
            "Requests with no origin in this region: forwarded to a peer region (result=forwarded, peer=its region), a peer that failed (peer_failed), none up (no_peer, peer=none), or a request a peer forwarded that could not be served here either (hop_refused, peer=the region it came from)",
            // `peer`, not `region`: scrape targets carry `region` (the proxy's own), and a
            // clash would have Prometheus rename ours to exported_region.
            &["peer", "result"],
        );
        let failover_received = v(
            PROXY_FAILOVER_RECEIVED,
            "Requests forwarded here by a peer region's proxy (a verified failover mark)",
            &["from"],
        );
        let upstream_errors = v(
            PROXY_UPSTREAM_ERRORS,
            "Origin failures, by kind",
            &["upstream", "kind"],
        );
        // Each new origin connection is a handshake the pool or the shared HTTP/2
        // connection should have saved: churn here (origins closing keep-alive early, a
        // pool too small) shows before latency does.
        let upstream_connections = v(
            PROXY_UPSTREAM_CONNECTIONS,
            "Connections opened to origins",
            &["upstream"],
        );
        let tls = v(
            PROXY_TLS_HANDSHAKES,
            "TLS handshakes, by result",
            &["result"],
        );
        let connections_open = register(
            registry,
            IntGauge::new(PROXY_CONNECTIONS_OPEN, "Client connections open now").expect("valid"),
        );
        let tunnels_open = register(
            registry,
            IntGauge::new(
                PROXY_TUNNELS_OPEN,
                "WebSocket tunnels open now (each also counts as an open connection)",
            )
            .expect("valid"),
        );
        let connections = v(
            PROXY_CONNECTIONS,
            "Client connections accepted, by listener kind",
            &["listener"],
        );
        let reloads = v(
            PROXY_CERT_RELOADS,
            "Certificate reloads, by result",
            &["result"],
        );
        let reports = v(
            PROXY_REPORTS,
            "Health reports sent to DNS servers, by result",
            &["dns", "result"],
        );
        let cache_requests = v(
            CACHE_REQUESTS,
            "Requests on caching routes, by cache result",
            &["result"],
        );
        let stale = v(
            CACHE_STALE_SERVED,
            "Stale responses served, by reason",
            &["reason"],
        );
        let revalidations = v(
            CACHE_REVALIDATIONS,
            "Revalidations with the origin, by result",
            &["result"],
        );
        let gauge =
            |name: &str, help: &str| register(registry, IntGauge::new(name, help).expect("valid"));
        let counter = |name: &str, help: &str| {
            register(registry, IntCounter::new(name, help).expect("valid"))
        };
        register_build_info(registry, "proxy");
        Self {
            cache_hit: cache_requests.with_label_values(&["hit"]),
            cache_miss: cache_requests.with_label_values(&["miss"]),
            cache_uncacheable: cache_requests.with_label_values(&["uncacheable"]),
            cache_stale_while_revalidate: stale.with_label_values(&["while_revalidate"]),
            cache_stale_if_error: stale.with_label_values(&["if_error"]),
            cache_stale_max_stale: stale.with_label_values(&["max_stale"]),
            cache_revalidated_not_modified: revalidations.with_label_values(&["not_modified"]),
            cache_revalidated_modified: revalidations.with_label_values(&["modified"]),
            cache_revalidation_failed: revalidations.with_label_values(&["error"]),
            cache_coalesced: counter(
                CACHE_COALESCED,
                "Requests that waited for another's origin fetch",
            ),
            cache_bytes: gauge(CACHE_BYTES, "Bytes held by the cache"),
            cache_objects: gauge(CACHE_OBJECTS, "URLs held by the cache"),
            cache_evictions: counter(
                CACHE_EVICTIONS,
                "Objects evicted to stay within the byte bound",
            ),
            cache_purges: counter(CACHE_PURGES, "Objects dropped by purge requests"),
            tls_resumed: counter(
                PROXY_TLS_RESUMED,
                "TLS handshakes that resumed an earlier session (a ticket or the TLS 1.2 cache); also counted in the handshakes' ok",
            ),
            cache_file_sends: counter(
                CACHE_FILE_SENDS,
                "Answers from the cache whose body went out by sendfile from its sealed file",
            ),
            rule_matches: v(
                PROXY_RULE_MATCHES,
                "Requests matched by each request rule",
                &["rule", "action"],
            ),
            rate_limited: {
                let c = v(
                    PROXY_RATE_LIMITED,
                    "Requests refused with 429, by limit",
                    &["scope"],
                );
                for s in ["client", "route", "global", "connections"] {
                    c.with_label_values(&[s]);
                }
                c
            },
            rate_limit_clients: gauge(
                PROXY_RATE_LIMIT_CLIENTS,
                "Clients the per-client rate limiter remembers",
            ),
            auth_failures: {
                let c = v(
                    PROXY_AUTH_FAILURES,
                    "Requests refused with 401, by reason",
                    &["reason"],
                );
                for r in ["missing", "malformed", "bad_credentials"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            access_denied: counter(
                PROXY_ACCESS_DENIED,
                "Requests refused by a route's address lists",
            ),
            reloads: {
                let c = v(PROXY_RELOADS, "Config reloads, by result", &["result"]);
                for r in ["ok", "error"] {
                    c.with_label_values(&[r]);
                }
                c
            },
            refused: {
                let c = v(
                    PROXY_REFUSED,
                    "Requests refused before they could be read: malformed, too large, unsupported version, or too slow",
                    &["reason"],
                );
                REFUSAL_REASONS
                    .iter()
                    .map(|r| c.with_label_values(&[r]))
                    .collect()
            },
            unrouted: route_metrics(&requests, &duration, UNROUTED),
            requests,
            duration,
            in_flight,
            upstream_up,
            retries,
            failover,
            failover_received,
            upstream_errors,
            upstream_connections,
            upstream_tls_unverified,
            tls_ok: tls.with_label_values(&["ok"]),
            tls_failed: tls.with_label_values(&["error"]),
            connections_open,
            connections,
            tunnels_open,
            cert_reload_ok: reloads.with_label_values(&["ok"]),
            cert_reload_failed: reloads.with_label_values(&["error"]),
            cert_expiry,
            acme_ok: acme.with_label_values(&["ok"]),
            acme_failed: acme.with_label_values(&["error"]),
            reports,
        }
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        route_metrics(&self.requests, &self.duration, route)
    }
}

fn route_metrics(
    requests: &IntCounterVec,
    duration: &prometheus::HistogramVec,
    route: &str,
) -> RouteMetrics {
    let mut counters = Vec::new();
    for m in METHOD_CLASSES {
        for s in STATUS_CLASSES {
            counters.push(requests.with_label_values(&[route, m, s]));
        }
    }
    RouteMetrics {
        requests: counters,
        duration: duration.with_label_values(&[route]),
    }
}
