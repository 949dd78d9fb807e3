//! `geoedge proxy` config: listeners, TLS certificates, routes, limits, forwarding rules and
//! the cache; upstream groups are validated in `upstreams`, protection in `protect`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

pub use super::failover::{peer_upstream, FailoverConfig, PeerConfig, PeerTiming, HOP_HEADER};
use super::forwarding::{self, RawForwarding};
pub use super::forwarding::{ForwardHeaders, Forwarding, InvalidVia, ViaHop};
pub use super::limits::Limits;
use super::limits::RawLimits;
use super::listener_tls::RawTls;
pub use super::listener_tls::{
    AcmeCertificate, AcmeChallenge, CertificateSource, ClientAuth, ClientAuthMode, ListenerTls,
    TlsProfile, TlsVersion,
};
use super::protect::{self, RawAuth, RawRateLimit, RawRule};
pub use super::protect::{AuthConfig, RateConfig, RateLimitConfig, RuleAction, RuleConfig};
pub use super::reports::{Capacity, ReportsConfig};
use super::reports::{RawCapacity, RawReports};
use super::streams::RawStream;
pub use super::streams::{FtpConfig, FtpTls, StreamConfig, StreamMode};
use super::upstreams::RawUpstream;
pub use super::upstreams::{
    Balance, HealthCheckConfig, OriginConfig, OriginProtocol, OriginTlsConfig, ProxyVersion,
    UpstreamConfig,
};
use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxyConfig {
    node: RawNode,
    listen: RawListen,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forwarding: RawForwarding,
    #[serde(default)]
    cache: RawCache,
    access_log: Option<RawAccessLog>,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    streams: Vec<RawStream>,
    reports: Option<RawReports>,
    failover: Option<super::failover::RawFailover>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    region: String,
    #[serde(default)]
    workers: usize,
    log_level: Option<String>,
    /// Token for POST /admin/reload on the admin listener; unset = disabled.
    admin_token_file: Option<PathBuf>,
    /// What this node can take; reported to DNS, which sheds by it.
    capacity: Option<RawCapacity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    #[serde(default)]
    http: Vec<SocketAddr>,
    #[serde(default)]
    https: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    /// Client listeners expect a PROXY protocol header first (behind a TCP balancer):
    /// all of them (`true`), or those listed.
    #[serde(default)]
    proxy_protocol: RawProxyProtocol,
}

#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "true, false, or a list of `http`/`https` listener addresses"
)]
enum RawProxyProtocol {
    All(bool),
    Listeners(Vec<SocketAddr>),
}

impl Default for RawProxyProtocol {
    fn default() -> Self {
        RawProxyProtocol::All(false)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    /// A file (appended to, reopened on SIGHUP/SIGUSR1) or "-" for standard output.
    path: PathBuf,
    #[serde(default)]
    format: AccessLogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// nginx/Apache combined, plus host, duration, origin and cache result.
    #[default]
    Combined,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    #[serde(default = "d_cache_bytes")]
    max_bytes: u64,
    #[serde(default = "d_cache_object")]
    max_object_bytes: u64,
    stale_while_revalidate: Option<ConfigDuration>,
    stale_if_error: Option<ConfigDuration>,
    #[serde(default = "d_coalesce")]
    coalesce_timeout: ConfigDuration,
    purge_token_file: Option<Spanned<PathBuf>>,
    #[serde(default = "d_compress_min")]
    compress_min_bytes: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_bytes: d_cache_bytes(),
            max_object_bytes: d_cache_object(),
            stale_while_revalidate: None,
            stale_if_error: None,
            coalesce_timeout: d_coalesce(),
            purge_token_file: None,
            compress_min_bytes: d_compress_min(),
        }
    }
}

fn d_cache_bytes() -> u64 {
    256 * 1024 * 1024
}
fn d_cache_object() -> u64 {
    8 * 1024 * 1024
}
fn d_coalesce() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn d_compress_min() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    hosts: Vec<String>,
    #[serde(default = "d_prefix")]
    path_prefix: String,
    upstream: Spanned<String>,
    #[serde(default)]
    redirect_https: bool,
    /// Serve GET/HEAD from the shared cache (see [cache]).
    #[serde(default)]
    cache: bool,
    /// Compress cached text responses for clients that accept gzip or brotli.
    #[serde(default)]
    compress: bool,
    rate: Option<RateConfig>,
    #[serde(default)]
    allow: Vec<IpNet>,
    #[serde(default)]
    deny: Vec<IpNet>,
    auth: Option<RawAuth>,
    /// Strict-Transport-Security on this route's HTTPS responses (RFC 6797).
    hsts: Option<Spanned<String>>,
    /// Requests on connections without a verified client certificate get 403.
    #[serde(default)]
    require_client_cert: bool,
}

fn d_prefix() -> String {
    "/".into()
}

/// A validated `geoedge proxy` config.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub path: PathBuf,
    pub node: String,
    pub region: String,
    pub capacity: Option<Capacity>,
    pub workers: usize,
    pub http: Vec<SocketAddr>,
    pub https: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The HTTP and HTTPS listeners where every connection starts with a PROXY protocol
    /// header (v1 or v2) whose source address is the client's.
    pub proxy_protocol: Vec<SocketAddr>,
    /// Certificates and the TLS policy of the HTTPS listeners.
    pub tls: ListenerTls,
    pub limits: Limits,
    pub forwarding: Forwarding,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub streams: Vec<StreamConfig>,
    pub reports: Option<ReportsConfig>,
    /// Other regions' proxies for requests this region has no origin for.
    pub failover: Option<FailoverConfig>,
    pub cache: CacheConfig,
    pub access_log: Option<(PathBuf, AccessLogFormat)>,
    pub rate_limit: RateLimitConfig,
    pub rules: Vec<RuleConfig>,
    /// Log level when RUST_LOG is not set (error, warn, info, debug, trace).
    pub log_level: Option<String>,
    pub admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_bytes: u64,
    pub max_object_bytes: u64,
    /// Used when a response carries no stale-while-revalidate of its own.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub coalesce_timeout: Duration,
    /// Token for the purge endpoint on the admin listener; unset = purge disabled.
    pub purge_token_file: Option<PathBuf>,
    pub compress_min_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-case host names; `*.example.test` matches any single-or-more label prefix.
    pub hosts: Vec<String>,
    pub path_prefix: String,
    pub upstream: String,
    pub redirect_https: bool,
    pub cache: bool,
    pub compress: bool,
    pub rate: Option<RateConfig>,
    /// When non-empty, only these networks may use the route.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub auth: Option<AuthConfig>,
    /// The Strict-Transport-Security value for HTTPS responses, checked to hold max-age.
    pub hsts: Option<String>,
    pub require_client_cert: bool,
}

impl ProxyConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let raw: RawProxyConfig = src.parse()?;
        validate(src, raw)
    }
}

/// The client listeners that expect a PROXY protocol header; a listed address must be
/// one of them, or a typo would leave a balancer's listener reading headers as requests.
fn proxy_protocol_listeners(
    src: &Source,
    listen: &RawListen,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let clients = || listen.http.iter().chain(&listen.https).copied();
    match &listen.proxy_protocol {
        RawProxyProtocol::All(false) => Ok(Vec::new()),
        RawProxyProtocol::All(true) => Ok(clients().collect()),
        RawProxyProtocol::Listeners(addrs) => {
            for (i, addr) in addrs.iter().enumerate() {
                if !clients().any(|c| c == *addr) {
                    return Err(src.error(
                        format!("listen.proxy_protocol[{i}]"),
                        None,
                        format!("{addr} is not one of the `http` or `https` listeners"),
                    ));
                }
            }
            Ok(addrs.clone())
        }
    }
}

fn validate(src: &Source, raw: RawProxyConfig) -> Result<ProxyConfig, ConfigError> {
    if raw.listen.http.is_empty() && raw.listen.https.is_empty() && raw.streams.is_empty() {
        return Err(src.error(
            "listen",
            None,
            "give at least one `http` or `https` address, or a [[streams]] listener",
        ));
    }
    let proxy_protocol = proxy_protocol_listeners(src, &raw.listen)?;
    let tls = super::listener_tls::validate(src, raw.tls)?;
    if !raw.listen.https.is_empty() && tls.certificates.is_empty() {
        return Err(src.error(
            "tls.certificates",
            None,
            "HTTPS listeners need at least one certificate",
        ));
    }

    let capacity = raw
        .node
        .capacity
        .map(|c| super::reports::capacity(src, c))
        .transpose()?;
    let limits = super::limits::validate(src, raw.limits)?;
    let mut upstreams = super::upstreams::validate(src, raw.upstreams)?;
    let web_listeners: Vec<SocketAddr> = raw
        .listen
        .http
        .iter()
        .chain(&raw.listen.https)
        .chain(&raw.listen.admin)
        .copied()
        .collect();
    let streams = super::streams::validate(src, raw.streams, &upstreams, &web_listeners)?;
    if streams.iter().any(|s| s.terminates_tls()) && tls.certificates.is_empty() {
        return Err(src.error(
            "tls.certificates",
            None,
            "TLS stream listeners need at least one certificate",
        ));
    }

    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        match upstreams.iter().find(|u| &u.name == r.upstream.get_ref()) {
            None => {
                return Err(src.error(
                    format!("{key}.upstream"),
                    Some(r.upstream.span()),
                    format!("no upstream is named `{}`", r.upstream.get_ref()),
                ))
            }
            Some(u) if u.protocol.is_stream() => {
                return Err(src.error(
                    format!("{key}.upstream"),
                    Some(r.upstream.span()),
                    format!(
                        "upstream `{}` speaks {}, for [[streams]]; a route needs an HTTP upstream",
                        u.name,
                        u.protocol.name()
                    ),
                ))
            }
            Some(_) => {}
        }
        if r.hosts.is_empty() {
            return Err(src.error(
                format!("{key}.hosts"),
                None,
                "a route needs at least one host",
            ));
        }
        if !r.path_prefix.starts_with('/') {
            return Err(src.error(format!("{key}.path_prefix"), None, "must start with /"));
        }
        if r.rate.is_some_and(|q| q.rps == 0) {
            return Err(src.error(format!("{key}.rate.rps"), None, "must be at least 1"));
        }
        let auth = r.auth.map(|a| protect::auth(src, &key, a)).transpose()?;
        let hsts = match r.hsts {
            None => None,
            Some(v) => {
                let value = v.get_ref().trim().to_string();
                let has_max_age = value
                    .split(';')
                    .any(|d| d.trim().to_ascii_lowercase().starts_with("max-age="));
                if !has_max_age || http::HeaderValue::from_str(&value).is_err() {
                    return Err(src.error(
                        format!("{key}.hsts"),
                        Some(v.span()),
                        "a Strict-Transport-Security value with max-age, as \"max-age=31536000; includeSubDomains\"",
                    ));
                }
                Some(value)
            }
        };
        if r.require_client_cert && tls.client_auth.is_none() {
            return Err(src.error(
                format!("{key}.require_client_cert"),
                None,
                "needs tls.client_ca: the CAs whose client certificates are accepted",
            ));
        }
        routes.push(RouteConfig {
            hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            path_prefix: r.path_prefix,
            upstream: r.upstream.into_inner(),
            redirect_https: r.redirect_https,
            cache: r.cache,
            compress: r.compress,
            rate: r.rate,
            allow: r.allow,
            deny: r.deny,
            auth,
            hsts,
            require_client_cert: r.require_client_cert,
        });
    }
    if routes.is_empty() && (!raw.listen.http.is_empty() || !raw.listen.https.is_empty()) {
        return Err(src.error("routes", None, "HTTP listeners need at least one route"));
    }

    let reports = raw
        .reports
        .map(|r| super::reports::validate(src, r))
        .transpose()?;
    let failover = match raw.failover {
        None => None,
        Some(f) => {
            let reports_key = reports.as_ref().map(|r| &r.key_file);
            let (failover, peers) =
                super::failover::validate(src, f, &raw.node.region, reports_key)?;
            for peer in peers {
                if upstreams
                    .iter()
                    .any(|u| u.name == peer.name || u.origins.iter().any(|o| o.name == peer.name))
                {
                    return Err(src.error(
                        "failover.peers",
                        None,
                        format!(
                            "`{}` is the name of a peer's upstream; rename the upstream or origin that has it",
                            peer.name
                        ),
                    ));
                }
                upstreams.push(peer);
            }
            Some(failover)
        }
    };

    let c = raw.cache;
    if c.max_object_bytes > c.max_bytes {
        return Err(src.error(
            "cache.max_object_bytes",
            None,
            "must not exceed cache.max_bytes",
        ));
    }
    let purge_token_file = match c.purge_token_file {
        None => None,
        Some(p) => {
            let resolved = src.resolve(p.get_ref());
            if !resolved.is_file() {
                return Err(src.error(
                    "cache.purge_token_file",
                    Some(p.span()),
                    format!("{} does not exist", resolved.display()),
                ));
            }
            Some(resolved)
        }
    };
    let cache = CacheConfig {
        max_bytes: c.max_bytes,
        max_object_bytes: c.max_object_bytes,
        stale_while_revalidate: c.stale_while_revalidate.map(|d| d.0).unwrap_or_default(),
        stale_if_error: c.stale_if_error.map(|d| d.0).unwrap_or_default(),
        coalesce_timeout: c.coalesce_timeout.0,
        purge_token_file,
        compress_min_bytes: c.compress_min_bytes,
    };

    let access_log = raw.access_log.map(|a| {
        let path = if a.path.as_os_str() == "-" {
            a.path
        } else {
            src.resolve(&a.path)
        };
        (path, a.format)
    });

    let forwarding = forwarding::validate(src, raw.forwarding)?;

    let rate_limit = protect::rate_limit(src, raw.rate_limit)?;
    let rules = protect::rules(src, raw.rules)?;

    let dns_challenge = tls
        .certificates
        .iter()
        .any(|c| matches!(c, CertificateSource::Acme(a) if a.challenge == AcmeChallenge::Dns01));
    if dns_challenge && reports.is_none() {
        return Err(src.error(
            "tls.certificates",
            None,
            "dns-01 challenges are published by the DNS servers this node reports to: configure [reports]",
        ));
    }
    Ok(ProxyConfig {
        rate_limit,
        rules,
        access_log,
        log_level: raw.node.log_level,
        admin_token_file: raw.node.admin_token_file.map(|p| src.resolve(&p)),
        cache,
        reports,
        failover,
        path: src.path.clone(),
        capacity,
        node: raw.node.name,
        region: raw.node.region,
        workers: raw.node.workers,
        http: raw.listen.http,
        https: raw.listen.https,
        admin: raw.listen.admin,
        proxy_protocol,
        tls,
        limits,
        forwarding,
        routes,
        upstreams,
        streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "eu-1"
region = "eu"

[listen]
http = ["127.0.0.1:0"]

[[routes]]
hosts = ["www.example.test"]
upstream = "web"

[upstreams.web]
[[upstreams.web.origins]]
name = "o1"
addr = "127.0.0.1:9001"
"#;

    fn load(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::from_source(&Source::from_text("/tmp/region.toml", text))
    }

    #[test]
    fn good_config_gets_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.upstreams[0].balance, Balance::LeastConn);
        assert_eq!(c.limits.max_headers, 100);
        assert_eq!(
            c.forwarding.hide_response_headers,
            vec!["server", "x-powered-by"]
        );
        assert_eq!(c.forwarding.via.name(), "geoedge");
    }

    #[test]
    fn unknown_upstream_is_named() {
        let err = load(&GOOD.replace("upstream = \"web\"", "upstream = \"api\"")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("routes[0].upstream"));
        assert!(err.line.is_some());
    }

    #[test]
    fn bad_forwarding_names_are_rejected_with_their_key() {
        let err = load(&format!(
            "{GOOD}\n[forwarding]\nhide_response_headers = [\"server\", \"bad name\"]\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.key.as_deref(),
            Some("forwarding.hide_response_headers[1]")
        );
        let err = load(&format!("{GOOD}\n[forwarding]\nvia = \"my proxy\"\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("forwarding.via"));
        let ok = load(&format!(
            "{GOOD}\n[forwarding]\nhide_response_headers = [\"X-Backend\"]\nvia = \"edge-eu\"\n"
        ))
        .unwrap();
        assert_eq!(ok.forwarding.hide_response_headers, vec!["x-backend"]);
        assert_eq!(ok.forwarding.via.name(), "edge-eu");
        assert_eq!(ok.forwarding.request_headers, ForwardHeaders::ALL);
        let err = load(&format!(
            "{GOOD}\n[forwarding]\nrequest_headers = [\"via\", \"x-real-ip\"]\n"
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("forwarding.request_headers[1]"));
        let some = load(&format!(
            "{GOOD}\n[forwarding]\nrequest_headers = [\"X-Forwarded-For\", \"via\"]\n"
        ))
        .unwrap();
        let set = some.forwarding.request_headers;
        assert!(set.x_forwarded_for && set.via && !set.forwarded && !set.x_forwarded_host);
    }

    #[test]
    fn zero_timeouts_are_rejected_with_their_key() {
        let c = load(&format!(
            "{GOOD}\n[limits]\ntunnel_idle_timeout = \"90s\"\n"
        ))
        .unwrap();
        assert_eq!(c.limits.tunnel_idle_timeout, Duration::from_secs(90));
        assert_eq!(
            load(GOOD).unwrap().limits.tunnel_idle_timeout,
            Duration::from_secs(3600)
        );
        for key in ["header_read_timeout", "idle_timeout", "tunnel_idle_timeout"] {
            let err = load(&format!("{GOOD}\n[limits]\n{key} = \"0s\"\n")).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(format!("limits.{key}").as_str()));
        }
    }

    #[test]
    fn proxy_protocol_is_for_all_client_listeners_or_those_listed() {
        let two = GOOD.replace(
            "http = [\"127.0.0.1:0\"]",
            "http = [\"127.0.0.1:0\", \"127.0.0.2:80\"]",
        );
        let with = |setting: &str| {
            load(&two.replace(
                "[listen]\n",
                &format!("[listen]\nproxy_protocol = {setting}\n"),
            ))
        };
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert!(load(&two).unwrap().proxy_protocol.is_empty());
        assert!(with("false").unwrap().proxy_protocol.is_empty());
        assert_eq!(
            with("true").unwrap().proxy_protocol,
            [addr("127.0.0.1:0"), addr("127.0.0.2:80")]
        );
        assert_eq!(
            with("[\"127.0.0.2:80\"]").unwrap().proxy_protocol,
            [addr("127.0.0.2:80")]
        );
        let err = with("[\"127.0.0.2:80\", \"127.0.0.3:80\"]").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("listen.proxy_protocol[1]"));
        assert!(err.message.contains("127.0.0.3:80"), "{}", err.message);
        let err = with("\"yes\"").unwrap_err();
        assert!(err.message.contains("list of"), "{}", err.message);
    }

    #[test]
    fn https_without_certificates_is_rejected() {
        let err = load(&GOOD.replace("http = [", "https = [")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("tls.certificates"));
    }

    #[test]
    fn unknown_balance_is_rejected_with_line() {
        let err = load(&GOOD.replace(
            "[upstreams.web]\n",
            "[upstreams.web]\nbalance = \"random\"\n",
        ))
        .unwrap_err();
        assert!(err.message.contains("random"), "{err}");
        assert!(err.line.is_some());
    }
}
