//! The Prometheus registry and the metric names every process exports. Names are `pub
//! const` so tests and dashboards refer to the same strings.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const DNS_QUERIES: &str = "geoedge_dns_queries_total";
pub const DNS_STEERED_ANSWERS: &str = "geoedge_dns_steered_answers_total";
pub const DNS_ECS_QUERIES: &str = "geoedge_dns_ecs_queries_total";
pub const DNS_FAIL_OPEN: &str = "geoedge_dns_fail_open_total";
pub const DNS_QUERY_DURATION: &str = "geoedge_dns_query_duration_seconds";
pub const DNS_NODE_UP: &str = "geoedge_dns_node_up";
pub const DNS_REGION_UP: &str = "geoedge_dns_region_up";
pub const DNS_REGION_UTILISATION: &str = "geoedge_dns_region_utilisation";
pub const DNS_REGION_SHED_SHARE: &str = "geoedge_dns_region_shed_share";
pub const DNS_DNSSEC_SIGNED: &str = "geoedge_dns_dnssec_signed_answers_total";
pub const DNS_DNSSEC_CACHE: &str = "geoedge_dns_dnssec_signature_cache_total";
pub const DNS_DNSSEC_CACHE_ENTRIES: &str = "geoedge_dns_dnssec_signature_cache_entries";
pub const DNS_COOKIES: &str = "geoedge_dns_cookies_total";
pub const DNS_SCOPE_NETWORKS: &str = "geoedge_dns_scope_networks";
pub const DNS_SHED_MOVED: &str = "geoedge_dns_shed_moved_total";
pub const DNS_SHED_ALL_FULL: &str = "geoedge_dns_shed_all_full_total";
pub const DNS_REPORTS: &str = "geoedge_dns_reports_total";
pub const DNS_REPORTS_REJECTED: &str = "geoedge_dns_reports_rejected_total";
pub const DNS_PROBES: &str = "geoedge_dns_probes_total";
pub const DNS_PROBE_DURATION: &str = "geoedge_dns_probe_duration_seconds";
pub const DNS_STATE_CHANGES: &str = "geoedge_dns_node_state_changes_total";
pub const DNS_REPORT_AGE: &str = "geoedge_dns_node_report_age_seconds";
pub const DNS_RELOADS: &str = "geoedge_dns_config_reloads_total";
pub const DNS_RRL: &str = "geoedge_dns_rate_limited_total";
pub const DNS_TCP_REFUSED: &str = "geoedge_dns_tcp_connections_refused_total";
pub const BUILD_INFO: &str = "geoedge_build_info";

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for I/O reasons; a metric family that cannot be
    // encoded is a bug, and an empty page says so without taking the process down.
    if TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Registration fails only for a duplicate name, which would be a bug in this file.
    if let Err(e) = registry.register(Box::new(metric.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    metric
}

pub fn register_build_info(registry: &Registry, role: &str) {
    let g = register(
        registry,
        IntGaugeVec::new(
            Opts::new(BUILD_INFO, "geoedge build, always 1"),
            &["version", "role"],
        )
        .expect("static metric options are valid"),
    );
    g.with_label_values(&[env!("CARGO_PKG_VERSION"), role])
        .set(1);
    // CPU, resident memory, open file descriptors (process_* names, as every exporter).
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        let _ = registry.register(Box::new(collector));
    }
}

/// Query types counted by name; everything else is `other`, which keeps label
/// cardinality fixed whatever clients send.
pub const QTYPES: [&str; 9] = [
    "A", "AAAA", "ANY", "SOA", "NS", "CNAME", "MX", "TXT", "other",
];
pub const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];
pub const PROTOCOLS: [&str; 2] = ["udp", "tcp"];

/// The DNS server's metrics, with every label combination resolved up front so the
/// query path only bumps atomics.
pub struct DnsMetrics {
    queries: Vec<IntCounter>,
    pub ecs_present: IntCounter,
    pub ecs_absent: IntCounter,
    pub fail_open: IntCounter,
    pub duration: Histogram,
    steered: IntCounterVec,
    node_up: IntGaugeVec,
    pub region_up: IntGaugeVec,
    pub reports_accepted: IntCounter,
    pub reports_rejected: IntCounterVec,
    pub probes: IntCounterVec,
    pub probe_duration: Histogram,
    pub state_changes: IntCounterVec,
    pub report_age: prometheus::GaugeVec,
    /// Mean utilisation of the region's up nodes that report a capacity.
    pub region_utilisation: prometheus::GaugeVec,
    pub region_shed_share: prometheus::GaugeVec,
    /// Steering decisions that sent a client away from its (busy) region, and those that
    /// found no other region with room; counters copied from the shed table at scrape.
    pub shed_moved: IntCounterVec,
    pub shed_all_full: IntCounter,
    pub reloads: IntCounterVec,
    pub rrl_dropped: IntCounter,
    pub rrl_slipped: IntCounter,
    pub tcp_refused: IntCounter,
    pub dnssec_signed: IntCounter,
    pub dnssec_cache_hits: IntCounter,
    pub dnssec_cache_misses: IntCounter,
    /// Signatures kept per signed zone, set at scrape.
    pub dnssec_cache_entries: IntGaugeVec,
    /// Queries with a COOKIE option, by what it held.
    pub cookies: IntCounterVec,
    /// GeoIP networks and the merged networks ECS scopes come from, per family.
    pub scope_networks: IntGaugeVec,
}

impl DnsMetrics {
    pub fn new(registry: &Registry) -> Self {
        let queries_vec = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    DNS_QUERIES,
                    "DNS queries answered, by protocol, type and rcode",
                ),
                &["proto", "qtype", "rcode"],
            )
            .expect("static metric options are valid"),
        );
        let mut queries = Vec::new();
        for p in PROTOCOLS {
            for q in QTYPES {
                for r in RCODES {
                    queries.push(queries_vec.with_label_values(&[p, q, r]));
                }
            }
        }
        let ecs = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    DNS_ECS_QUERIES,
                    "Queries for steered names, by whether they carried EDNS Client Subnet",
                ),
                &["ecs"],
            )
            .expect("static metric options are valid"),
        );
        let fail_open = register(
            registry,
            IntCounter::new(
                DNS_FAIL_OPEN,
                "Steered answers given while every region was down",
            )
            .expect("valid"),
        );
        let duration = register(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    DNS_QUERY_DURATION,
                    "Time to answer a query, from parsed request to sent response",
                )
                .buckets(vec![
                    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
                    0.002_5, 0.005, 0.01,
                ]),
            )
            .expect("valid"),
        );
        let steered = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    DNS_STEERED_ANSWERS,
                    "Steered answers, by the region answered",
                ),
                &["region"],
            )
            .expect("valid"),
        );
        let node_up = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    DNS_NODE_UP,
                    "1 when the node is answered, 0 when it is down",
                ),
                &["region", "node"],
            )
            .expect("valid"),
        );
        let region_up = register(
            registry,
            IntGaugeVec::new(
                Opts::new(DNS_REGION_UP, "1 when the region has a node up"),
                &["region"],
            )
            .expect("valid"),
        );
        let reports_accepted = register(
            registry,
            IntCounter::new(DNS_REPORTS, "Health reports accepted from nodes").expect("valid"),
        );
        let reports_rejected = register(
            registry,
            IntCounterVec::new(
                Opts::new(DNS_REPORTS_REJECTED, "Health reports refused, by reason"),
                &["reason"],
            )
            .expect("valid"),
        );
        let probes = register(
            registry,
            IntCounterVec::new(
                Opts::new(DNS_PROBES, "Probes of nodes, by result"),
                &["region", "result"],
            )
            .expect("valid"),
        );
        let probe_duration = register(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(DNS_PROBE_DURATION, "Time a node took to answer a probe")
                    .buckets(vec![
                        0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    ]),
            )
            .expect("valid"),
        );
        let state_changes = register(
            registry,
            IntCounterVec::new(
                Opts::new(DNS_STATE_CHANGES, "Node up/down changes"),
                &["region", "node"],
            )
            .expect("valid"),
        );
        let gauge_vec = |name: &str, help: &str| {
            register(
                registry,
                prometheus::GaugeVec::new(Opts::new(name, help), &["region"]).expect("valid"),
            )
        };
        let region_utilisation = gauge_vec(
            DNS_REGION_UTILISATION,
            "Mean load over capacity of the region's up nodes that report one",
        );
        let region_shed_share = gauge_vec(
            DNS_REGION_SHED_SHARE,
            "Share of the region's clients answered with another region",
        );
        let shed_moved = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    DNS_SHED_MOVED,
                    "Steering decisions that sent a client away from this busy region",
                ),
                &["region"],
            )
            .expect("valid"),
        );
        let shed_all_full = register(
            registry,
            IntCounter::with_opts(Opts::new(
                DNS_SHED_ALL_FULL,
                "Steering decisions that found no other region with room",
            ))
            .expect("valid"),
        );
        let report_age = register(
            registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    DNS_REPORT_AGE,
                    "Seconds since the node's last accepted report",
                ),
                &["region", "node"],
            )
            .expect("valid"),
        );
        // Every label value a dashboard or alert asks for exists from the start, at 0,
        // so "no data" never hides "none happened".
        for reason in crate::health::report::Rejection::ALL {
            reports_rejected.with_label_values(&[reason.label()]);
        }
        for e in ["present", "absent"] {
            ecs.with_label_values(&[e]);
        }
        let reloads = register(
            registry,
            IntCounterVec::new(
                Opts::new(DNS_RELOADS, "Config reloads, by result"),
                &["result"],
            )
            .expect("valid"),
        );
        for r in ["ok", "error"] {
            reloads.with_label_values(&[r]);
        }
        let rrl = register(
            registry,
            IntCounterVec::new(
                Opts::new(DNS_RRL, "Responses held back by response rate limiting: dropped, or sent truncated (slip)"),
                &["action"],
            )
            .expect("valid"),
        );
        let tcp_refused = register(
            registry,
            IntCounter::new(
                DNS_TCP_REFUSED,
                "TCP connections closed at once: max_tcp_connections reached",
            )
            .expect("valid"),
        );
        let dnssec_signed = register(
            registry,
            IntCounter::new(
                DNS_DNSSEC_SIGNED,
                "Answers sent with DNSSEC signatures (queries with the DO bit to a signed zone)",
            )
            .expect("valid"),
        );
        let dnssec_cache = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    DNS_DNSSEC_CACHE,
                    "RRsets of signed answers whose signatures came from the cache (hit) or were made for the answer (miss)",
                ),
                &["result"],
            )
            .expect("valid"),
        );
        let dnssec_cache_entries = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    DNS_DNSSEC_CACHE_ENTRIES,
                    "RRset signatures held in the zone's signature cache",
                ),
                &["zone"],
            )
            .expect("valid"),
        );
        let cookies = register(
            registry,
            IntCounterVec::new(
                Opts::new(
                    DNS_COOKIES,
                    "Queries with a DNS cookie, by what it held: valid (a server cookie of ours), invalid (a server cookie we did not make, or expired: BADCOOKIE over UDP), client_only, malformed (FORMERR). Queries without one are the rest of geoedge_dns_queries_total",
                ),
                &["result"],
            )
            .expect("valid"),
        );
        for r in ["valid", "invalid", "client_only", "malformed"] {
            cookies.with_label_values(&[r]);
        }
        let scope_networks = register(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    DNS_SCOPE_NETWORKS,
                    "Networks of the GeoIP database (kind=geoip) and the wider ones that rank the regions alike, which ECS answers are scoped to (kind=merged); the ratio is how many fewer entries a resolver's cache needs",
                ),
                &["family", "kind"],
            )
            .expect("valid"),
        );
        register_build_info(registry, "dns");
        Self {
            scope_networks,
            cookies,
            dnssec_signed,
            dnssec_cache_hits: dnssec_cache.with_label_values(&["hit"]),
            dnssec_cache_misses: dnssec_cache.with_label_values(&["miss"]),
            dnssec_cache_entries,
            tcp_refused,
            reloads,
            rrl_dropped: rrl.with_label_values(&["dropped"]),
            rrl_slipped: rrl.with_label_values(&["slipped"]),
            region_up,
            region_utilisation,
            region_shed_share,
            shed_moved,
            shed_all_full,
            reports_accepted,
            reports_rejected,
            probes,
            probe_duration,
            state_changes,
            report_age,
            queries,
            ecs_present: ecs.with_label_values(&["present"]),
            ecs_absent: ecs.with_label_values(&["absent"]),
            fail_open,
            duration,
            steered,
            node_up,
        }
    }

    pub fn query(&self, tcp: bool, qtype: usize, rcode: usize) -> &IntCounter {
        let p = usize::from(tcp);
        let q = qtype.min(QTYPES.len() - 1);
        let r = rcode.min(RCODES.len() - 1);
        &self.queries[(p * QTYPES.len() + q) * RCODES.len() + r]
    }

    /// Counter handles for each region, resolved once per config.
    pub fn steered_for(&self, regions: &[String]) -> Vec<IntCounter> {
        regions
            .iter()
            .map(|r| self.steered.with_label_values(&[r]))
            .collect()
    }

    pub fn node_gauge(&self, region: &str, node: &str) -> IntGauge {
        self.node_up.with_label_values(&[region, node])
    }
}

pub fn qtype_index(t: hickory_proto::rr::RecordType) -> usize {
    use hickory_proto::rr::RecordType as T;
    match t {
        T::A => 0,
        T::AAAA => 1,
        T::ANY => 2,
        T::SOA => 3,
        T::NS => 4,
        T::CNAME => 5,
        T::MX => 6,
        T::TXT => 7,
        _ => 8,
    }
}

pub fn rcode_index(code: hickory_proto::op::ResponseCode) -> usize {
    use hickory_proto::op::ResponseCode as R;
    match code {
        R::NoError => 0,
        R::FormErr => 1,
        R::ServFail => 2,
        R::NXDomain => 3,
        R::NotImp => 4,
        R::Refused => 5,
        R::BADVERS => 6,
        _ => 7,
    }
}

mod proxy;
mod stream;
pub use proxy::*;
pub use stream::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_counters_land_on_their_labels() {
        let registry = Registry::new();
        let m = DnsMetrics::new(&registry);
        m.query(true, 1, 3).inc();
        let text = render(&registry);
        assert!(
            text.contains(
                r#"geoedge_dns_queries_total{proto="tcp",qtype="AAAA",rcode="NXDOMAIN"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("geoedge_build_info"));
    }

    #[test]
    fn qtype_index_maps_unknown_to_other() {
        use hickory_proto::rr::RecordType;
        assert_eq!(QTYPES[qtype_index(RecordType::AAAA)], "AAAA");
        assert_eq!(QTYPES[qtype_index(RecordType::SRV)], "other");
    }
}
