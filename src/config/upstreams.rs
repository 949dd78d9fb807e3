//! The `[upstreams]` part of the proxy config: origin groups with their balancing,
//! sticky cookie, timeouts, active health checks, passive failure detection, and TLS to
//! the origins.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    #[serde(default)]
    balance: Balance,
    sticky_cookie: Option<String>,
    #[serde(default = "d_connect_timeout")]
    connect_timeout: ConfigDuration,
    #[serde(default = "d_response_timeout")]
    response_timeout: ConfigDuration,
    origins: Vec<RawOrigin>,
    health_check: Option<RawHealthCheck>,
    #[serde(default)]
    passive: RawPassive,
    #[serde(default)]
    protocol: OriginProtocol,
    tls: Option<RawOriginTls>,
    /// A PROXY header on each new origin connection (HTTP/1.1 upstreams).
    send_proxy: Option<ProxyVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOriginTls {
    ca_file: Option<Spanned<PathBuf>>,
    server_name: Option<Spanned<String>>,
    client_cert: Option<Spanned<PathBuf>>,
    client_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

fn d_connect_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}
fn d_response_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    LeastConn,
    RoundRobin,
    WeightedRoundRobin,
    /// Fewest bytes moved recently (a decaying sum, see `proxy::upstream::meter`), relative
    /// to weight.
    LeastTraffic,
    /// Two random choices, the cheaper wins: peak-sensitive latency EWMA × (in-flight + 1).
    PeakEwma,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::LeastConn => "least_conn",
            Balance::RoundRobin => "round_robin",
            Balance::WeightedRoundRobin => "weighted_round_robin",
            Balance::LeastTraffic => "least_traffic",
            Balance::PeakEwma => "peak_ewma",
        }
    }
}

/// PROXY protocol header sent to origins ahead of the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyVersion {
    V1,
    V2,
}

/// How the proxy speaks to an upstream's origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginProtocol {
    /// HTTP/1.1 with a pool of keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 without TLS, by prior knowledge (RFC 9113 §3.3): one multiplexed connection
    /// per origin. What gRPC services and other HTTP/2-only origins speak.
    H2c,
    /// HTTP/1.1 over TLS, pooled like `Http1`.
    Https,
    /// HTTP/2 over TLS, agreed by ALPN; one multiplexed connection per origin like `H2c`.
    H2,
    /// Bytes over TCP, for `[[streams]]`; health checks connect.
    Tcp,
    /// Bytes over TLS, for `[[streams]]`; health checks connect and shake hands.
    Tls,
    /// FTP (RFC 959), for the FTP gateway; health checks expect the `220` banner.
    Ftp,
    /// FTP upgraded with `AUTH TLS` (explicit FTPS, RFC 4217), data connections in TLS too.
    Ftps,
}

impl OriginProtocol {
    /// One multiplexed HTTP/2 connection per origin, rather than a pool of HTTP/1.1 ones.
    pub fn is_http2(self) -> bool {
        matches!(self, OriginProtocol::H2c | OriginProtocol::H2)
    }

    pub fn is_tls(self) -> bool {
        matches!(
            self,
            OriginProtocol::Https | OriginProtocol::H2 | OriginProtocol::Tls | OriginProtocol::Ftps
        )
    }

    /// Carries a `[[streams]]` listener's bytes rather than HTTP requests of a route.
    pub fn is_stream(self) -> bool {
        matches!(
            self,
            OriginProtocol::Tcp | OriginProtocol::Tls | OriginProtocol::Ftp | OriginProtocol::Ftps
        )
    }

    /// The name in config, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            OriginProtocol::Http1 => "http1",
            OriginProtocol::H2c => "h2c",
            OriginProtocol::Https => "https",
            OriginProtocol::H2 => "h2",
            OriginProtocol::Tcp => "tcp",
            OriginProtocol::Tls => "tls",
            OriginProtocol::Ftp => "ftp",
            OriginProtocol::Ftps => "ftps",
        }
    }
}

/// TLS to an upstream's origins (`protocol = "https"` or `"h2"`), checked at load: the
/// files exist and hold what they should, and the names are names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OriginTlsConfig {
    /// PEM certificates trusted to sign the origins' certificates; `None`: the system's
    /// trust store.
    pub ca_file: Option<PathBuf>,
    /// The name origins' certificates are checked against (and sent as SNI), unless an
    /// origin names its own; without either, an origin's IP address.
    pub server_name: Option<String>,
    /// A certificate chain and key presented to origins that ask for one (mTLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any certificate. Logged loudly at start and on every reload, and shown as
    /// `geoedge_proxy_upstream_tls_unverified`.
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin {
    name: String,
    addr: SocketAddr,
    #[serde(default = "d_weight")]
    weight: u32,
    /// This origin's TLS name, where it differs from the upstream's `tls.server_name`.
    server_name: Option<Spanned<String>>,
}

fn d_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(default = "d_hc_path")]
    path: String,
    #[serde(default = "d_hc_interval")]
    interval: ConfigDuration,
    #[serde(default = "d_hc_timeout")]
    timeout: ConfigDuration,
    #[serde(default = "d_hc_status")]
    expect_status: u16,
    #[serde(default = "d_two")]
    rise: u32,
    #[serde(default = "d_two")]
    fall: u32,
}

fn d_hc_path() -> String {
    "/healthz".into()
}
fn d_hc_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn d_hc_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(500))
}
fn d_hc_status() -> u16 {
    200
}
fn d_two() -> u32 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassive {
    #[serde(default = "d_passive_failures")]
    failures: u32,
    #[serde(default = "d_passive_cooldown")]
    cooldown: ConfigDuration,
}

impl Default for RawPassive {
    fn default() -> Self {
        Self {
            failures: d_passive_failures(),
            cooldown: d_passive_cooldown(),
        }
    }
}

fn d_passive_failures() -> u32 {
    3
}
fn d_passive_cooldown() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub balance: Balance,
    pub sticky_cookie: Option<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub origins: Vec<OriginConfig>,
    pub health_check: Option<HealthCheckConfig>,
    pub passive_failures: u32,
    pub passive_cooldown: Duration,
    pub protocol: OriginProtocol,
    /// Present exactly when the protocol runs over TLS.
    pub tls: Option<OriginTlsConfig>,
    /// PROXY header version written first on each origin connection, whose idle
    /// connections then serve only the client they name.
    pub send_proxy: Option<ProxyVersion>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OriginConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    /// Checked here, in the clear, rather than at the origin's own address: a status port
    /// (a failover peer's admin listener).
    pub addr: Option<SocketAddr>,
    pub interval: Duration,
    pub timeout: Duration,
    pub expect_status: u16,
    pub rise: u32,
    pub fall: u32,
}

/// Validates every upstream group; origin names must be unique across all of them.
pub(super) fn validate(
    src: &Source,
    raw: BTreeMap<String, RawUpstream>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    let mut upstreams = Vec::new();
    let mut origin_names = HashSet::new();
    for (name, u) in raw {
        let key = format!("upstreams.{name}");
        if u.origins.is_empty() {
            return Err(src.error(
                format!("{key}.origins"),
                None,
                "an upstream needs at least one origin",
            ));
        }
        let mut origins = Vec::new();
        for (i, o) in u.origins.into_iter().enumerate() {
            if !origin_names.insert(o.name.clone()) {
                return Err(src.error(
                    format!("{key}.origins[{i}].name"),
                    None,
                    format!("origin `{}` is defined twice", o.name),
                ));
            }
            if o.weight == 0 || o.weight > 1000 {
                return Err(src.error(
                    format!("{key}.origins[{i}].weight"),
                    None,
                    "weight must be between 1 and 1000",
                ));
            }
            let server_name = match o.server_name {
                Some(n) => Some(tls_name(src, format!("{key}.origins[{i}].server_name"), n)?),
                None => None,
            };
            if server_name.is_some() && !u.protocol.is_tls() {
                return Err(src.error(
                    format!("{key}.origins[{i}].server_name"),
                    None,
                    "a TLS name needs protocol = \"https\" or \"h2\"",
                ));
            }
            origins.push(OriginConfig {
                name: o.name,
                addr: o.addr,
                weight: o.weight,
                server_name,
            });
        }
        if let Some(cookie) = &u.sticky_cookie {
            if cookie.is_empty()
                || !cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(src.error(
                    format!("{key}.sticky_cookie"),
                    None,
                    "a cookie name is letters, digits, - and _",
                ));
            }
        }
        let health_check = match u.health_check {
            Some(h) => {
                if !h.path.starts_with('/') {
                    return Err(src.error(
                        format!("{key}.health_check.path"),
                        None,
                        "must start with /",
                    ));
                }
                if h.interval.0 < Duration::from_millis(50) {
                    return Err(src.error(
                        format!("{key}.health_check.interval"),
                        None,
                        "must be at least 50ms",
                    ));
                }
                if h.timeout.0 > h.interval.0 {
                    return Err(src.error(
                        format!("{key}.health_check.timeout"),
                        None,
                        "must not be longer than the interval",
                    ));
                }
                Some(HealthCheckConfig {
                    path: h.path,
                    addr: None,
                    interval: h.interval.0,
                    timeout: h.timeout.0,
                    expect_status: h.expect_status,
                    rise: h.rise.max(1),
                    fall: h.fall.max(1),
                })
            }
            None => None,
        };
        let tls = match (u.protocol.is_tls(), u.tls) {
            (true, raw) => Some(origin_tls(src, &key, raw)?),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(src.error(
                    format!("{key}.tls"),
                    None,
                    format!(
                    "TLS settings need protocol = \"https\", \"h2\", \"tls\" or \"ftps\" (this upstream speaks {})",
                    u.protocol.name()
                ),
                ))
            }
        };
        upstreams.push(UpstreamConfig {
            name,
            balance: u.balance,
            sticky_cookie: u.sticky_cookie,
            connect_timeout: u.connect_timeout.0,
            response_timeout: u.response_timeout.0,
            origins,
            health_check,
            passive_failures: u.passive.failures.max(1),
            passive_cooldown: u.passive.cooldown.0,
            protocol: u.protocol,
            tls,
            send_proxy: match (u.send_proxy, u.protocol) {
                (None, _) => None,
                (Some(v), OriginProtocol::Http1 | OriginProtocol::Https) => Some(v),
                (Some(_), p) => {
                    return Err(src.error(
                        format!("{key}.send_proxy"),
                        None,
                        format!(
                            "a PROXY header names one client, so it needs a connection per client: HTTP/1.1 upstreams (\"http1\", \"https\") only, not {}{}",
                            p.name(),
                            if p.is_stream() { " (streams set send_proxy on the [[streams]] entry)" } else { "" }
                        ),
                    ))
                }
            },
        });
    }
    Ok(upstreams)
}

fn tls_name(src: &Source, key: String, name: Spanned<String>) -> Result<String, ConfigError> {
    let span = name.span();
    let name = name.into_inner();
    match ServerName::try_from(name.as_str()) {
        Ok(_) => Ok(name),
        Err(_) => Err(src.error(
            key,
            Some(span),
            format!("`{name}` is not a DNS name or IP address"),
        )),
    }
}

pub(super) fn origin_tls(
    src: &Source,
    key: &str,
    raw: Option<RawOriginTls>,
) -> Result<OriginTlsConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(OriginTlsConfig::default());
    };
    let ca_file = match &raw.ca_file {
        Some(p) => {
            let k = format!("{key}.tls.ca_file");
            let path = src.existing_file(&k, p)?;
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| src.error(&k, Some(p.span()), format!("{}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(src.error(
                    k,
                    Some(p.span()),
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            Some(path)
        }
        None => None,
    };
    let server_name = match raw.server_name {
        Some(n) => Some(tls_name(src, format!("{key}.tls.server_name"), n)?),
        None => None,
    };
    let client_cert = match (&raw.client_cert, &raw.client_key) {
        (None, None) => None,
        (Some(cert), Some(k)) => {
            let cert_key = format!("{key}.tls.client_cert");
            let cert_path = src.existing_file(&cert_key, cert)?;
            let chain = CertificateDer::pem_file_iter(&cert_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    src.error(
                        &cert_key,
                        Some(cert.span()),
                        format!("{}: {e}", cert_path.display()),
                    )
                })?;
            if chain.is_empty() {
                return Err(src.error(
                    cert_key,
                    Some(cert.span()),
                    format!("{} holds no PEM certificate", cert_path.display()),
                ));
            }
            let key_key = format!("{key}.tls.client_key");
            let key_path = src.existing_file(&key_key, k)?;
            PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                src.error(
                    &key_key,
                    Some(k.span()),
                    format!("{}: {e}", key_path.display()),
                )
            })?;
            Some((cert_path, key_path))
        }
        _ => {
            return Err(src.error(
                format!("{key}.tls"),
                None,
                "client_cert and client_key go together",
            ))
        }
    };
    Ok(OriginTlsConfig {
        ca_file,
        server_name,
        client_cert,
        insecure_skip_verify: raw.insecure_skip_verify,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    fn load(upstream: &str) -> Result<ProxyConfig, ConfigError> {
        let text = format!(
            r#"
[node]
name = "eu-1"
region = "eu"

[listen]
http = ["127.0.0.1:0"]

[[routes]]
hosts = ["www.example.test"]
upstream = "web"

[upstreams.web]
{upstream}
"#
        );
        ProxyConfig::from_source(&Source::from_text("/tmp/region.toml", &text))
    }

    const ORIGIN: &str = "[[upstreams.web.origins]]\nname = \"o1\"\naddr = \"127.0.0.1:9443\"\n";

    #[test]
    fn tls_upstreams_verify_against_the_system_store_unless_told_otherwise() {
        let c = load(&format!("protocol = \"https\"\n{ORIGIN}")).unwrap();
        let u = &c.upstreams[0];
        assert!(u.protocol.is_tls() && !u.protocol.is_http2());
        assert_eq!(u.tls, Some(OriginTlsConfig::default()));
        let c = load(&format!("protocol = \"h2\"\n{ORIGIN}")).unwrap();
        assert!(c.upstreams[0].protocol.is_http2());
        // Plain upstreams carry no TLS settings at all.
        let c = load(ORIGIN).unwrap();
        assert_eq!(c.upstreams[0].tls, None);
    }

    #[test]
    fn tls_settings_are_checked_where_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let cases = [
            (
                format!("{ORIGIN}[upstreams.web.tls]\ninsecure_skip_verify = true\n"),
                "upstreams.web.tls",
                "need protocol",
            ),
            (
                format!("protocol = \"https\"\n{ORIGIN}[upstreams.web.tls]\nca_file = \"/nonexistent.pem\"\n"),
                "upstreams.web.tls.ca_file",
                "does not exist",
            ),
            (
                format!(
                    "protocol = \"https\"\n{ORIGIN}[upstreams.web.tls]\nca_file = \"{}\"\n",
                    not_pem.display()
                ),
                "upstreams.web.tls.ca_file",
                "no PEM certificate",
            ),
            (
                format!("protocol = \"https\"\n{ORIGIN}[upstreams.web.tls]\nserver_name = \"not a name\"\n"),
                "upstreams.web.tls.server_name",
                "not a DNS name",
            ),
            (
                format!(
                    "protocol = \"https\"\n{ORIGIN}[upstreams.web.tls]\nclient_cert = \"{}\"\n",
                    not_pem.display()
                ),
                "upstreams.web.tls",
                "go together",
            ),
            (
                format!("{ORIGIN}server_name = \"origin.test\"\n"),
                "upstreams.web.origins[0].server_name",
                "needs protocol",
            ),
            (
                format!("protocol = \"https\"\n{ORIGIN}[upstreams.web.tls]\nverify = false\n"),
                "verify",
                "unknown field",
            ),
        ];
        for (text, key, words) in cases {
            let err = load(&text).unwrap_err();
            let shown = err.to_string();
            assert!(
                err.key.as_deref() == Some(key) || shown.contains(key),
                "{key}: {shown}"
            );
            assert!(shown.contains(words), "{words}: {shown}");
        }
    }

    #[test]
    fn an_origin_names_its_own_tls_name() {
        let c = load(&format!(
            "protocol = \"https\"\n{ORIGIN}server_name = \"o1.internal\"\n[upstreams.web.tls]\nserver_name = \"web.internal\"\n"
        ))
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.origins[0].server_name.as_deref(), Some("o1.internal"));
        assert_eq!(
            u.tls.as_ref().and_then(|t| t.server_name.as_deref()),
            Some("web.internal")
        );
    }
}
