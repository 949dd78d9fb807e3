//! `geoedge dns` config: listeners, GeoIP database, zones with their steered names, regions
//! and their nodes, steering overrides and health thresholds.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};
use serde::Deserialize;
use toml::Spanned;

pub use super::dnssec::{DnssecConfig, KeyAlgorithm};
pub use super::edns::EdnsConfig;
use super::names::parse_fqdn;
use super::regions::{validate_regions, RawRegion};
pub use super::regions::{InitialState, NodeConfig, ProbeConfig, RegionConfig};
pub use super::steering::{AllDown, OverrideConfig, OverrideMatch};
use super::steering::{RawSteering, Steering};
use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsConfig {
    server: RawServer,
    geoip: RawGeoip,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    steering: RawSteering,
    #[serde(default)]
    zones: Vec<RawZone>,
    #[serde(default)]
    regions: Vec<RawRegion>,
    rrl: Option<RawRrl>,
    #[serde(default)]
    edns: super::edns::RawEdns,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRrl {
    responses_per_second: u32,
    #[serde(default = "default_slip")]
    slip: u32,
    #[serde(default = "default_v4_prefix")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6_prefix")]
    ipv6_prefix: u8,
    #[serde(default = "default_rrl_networks")]
    max_tracked_networks: u64,
}

fn default_slip() -> u32 {
    2
}
fn default_v4_prefix() -> u8 {
    24
}
fn default_v6_prefix() -> u8 {
    56
}
fn default_rrl_networks() -> u64 {
    100_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Vec<SocketAddr>,
    control: Option<SocketAddr>,
    #[serde(default)]
    workers: usize,
    tcp_idle_timeout: Option<ConfigDuration>,
    max_tcp_connections: Option<usize>,
    max_udp_payload: Option<u16>,
    log_level: Option<String>,
    /// Log queries to a file ("-" = stdout), one line each, sampled.
    query_log: Option<PathBuf>,
    /// Fraction of queries logged, 0..1 (default 1 when query_log is set).
    query_log_sample: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoip {
    database: Spanned<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_fall")]
    fall: u32,
    report_key_file: Option<Spanned<PathBuf>>,
    report_interval: Option<ConfigDuration>,
    stale_after: Option<ConfigDuration>,
    max_clock_skew: Option<ConfigDuration>,
    admin_token_file: Option<Spanned<PathBuf>>,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            rise: default_rise(),
            fall: default_fall(),
            report_key_file: None,
            report_interval: None,
            stale_after: None,
            max_clock_skew: None,
            admin_token_file: None,
        }
    }
}

fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    2
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    origin: Spanned<String>,
    file: Spanned<PathBuf>,
    #[serde(default)]
    steered: Vec<RawSteered>,
    dnssec: Option<super::dnssec::RawDnssec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSteered {
    name: Spanned<String>,
    #[serde(default = "default_steered_ttl")]
    ttl: u32,
    #[serde(default = "default_answers")]
    answers: usize,
    /// Stream services (`[[streams]]` names) a node must report up to be answered.
    #[serde(default)]
    services: Vec<String>,
    /// Answer HTTPS queries (RFC 9460) for the name too.
    https: Option<RawHttps>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttps {
    #[serde(default = "default_alpn")]
    alpn: Vec<String>,
    port: Option<u16>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

fn default_steered_ttl() -> u32 {
    30
}
fn default_answers() -> usize {
    2
}

/// Response rate limiting (`[rrl]`), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RrlConfig {
    pub responses_per_second: u32,
    /// Every n-th limited answer is sent truncated (TC=1); 0 never slips.
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_tracked_networks: u64,
}

/// A validated `geoedge dns` config.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub path: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub control: Option<SocketAddr>,
    /// Runtime threads; 0 means one per core.
    pub workers: usize,
    pub tcp_idle_timeout: Duration,
    /// Concurrent TCP connections; more are closed at once.
    pub max_tcp_connections: usize,
    /// The largest UDP answer we send, whatever the client advertises (RFC 6891 §6.2.5;
    /// 1232 is the DNS flag day 2020 figure that avoids IP fragmentation).
    pub max_udp_payload: u16,
    pub geoip_database: PathBuf,
    pub zones: Vec<ZoneConfig>,
    pub regions: Vec<RegionConfig>,
    pub default_order: Vec<String>,
    pub overrides: Vec<OverrideConfig>,
    pub all_down: AllDown,
    pub fallback_region: Option<String>,
    pub rise: u32,
    pub fall: u32,
    /// Set when nodes must send signed reports to be answered.
    pub report_key_file: Option<PathBuf>,
    pub report_interval: Duration,
    pub stale_after: Duration,
    pub max_clock_skew: Duration,
    /// Token for the control listener's admin endpoints (overrides); unset = disabled.
    pub admin_token_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub query_log: Option<(PathBuf, f64)>,
    pub rrl: Option<RrlConfig>,
    /// NSID and DNS cookies.
    pub edns: EdnsConfig,
}

#[derive(Debug, Clone)]
pub struct ZoneConfig {
    pub origin: Name,
    pub file: PathBuf,
    pub steered: Vec<SteeredConfig>,
    /// Online signing of the zone's answers, when configured.
    pub dnssec: Option<DnssecConfig>,
}

#[derive(Debug, Clone)]
pub struct SteeredConfig {
    pub name: Name,
    pub ttl: u32,
    /// How many node addresses one answer carries at most.
    pub answers: usize,
    /// Stream services every answered node must report up (`services` in reports).
    pub services: Vec<String>,
    /// HTTPS answers (ServiceMode, the chosen region's addresses as hints).
    pub https: Option<HttpsConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsConfig {
    pub alpn: Vec<String>,
    pub port: Option<u16>,
}

impl DnsConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let source = Source::read(path)?;
        Self::from_source(&source)
    }

    pub fn from_source(source: &Source) -> Result<Self, ConfigError> {
        let raw: RawDnsConfig = source.parse()?;
        validate(source, raw)
    }
}

fn validate(src: &Source, raw: RawDnsConfig) -> Result<DnsConfig, ConfigError> {
    if raw.server.listen.is_empty() {
        return Err(src.error(
            "server.listen",
            None,
            "at least one listen address is needed",
        ));
    }
    let max_udp_payload = raw.server.max_udp_payload.unwrap_or(1232);
    if max_udp_payload < 512 {
        return Err(src.error(
            "server.max_udp_payload",
            None,
            "must be at least 512 (RFC 1035)",
        ));
    }
    if raw.health.rise == 0 || raw.health.fall == 0 {
        return Err(src.error("health", None, "rise and fall must be at least 1"));
    }

    let existing_file =
        |key: &str, p: &Option<Spanned<PathBuf>>| -> Result<Option<PathBuf>, ConfigError> {
            match p {
                None => Ok(None),
                Some(p) => {
                    let resolved = src.resolve(p.get_ref());
                    if resolved.is_file() {
                        Ok(Some(resolved))
                    } else {
                        Err(src.error(
                            key,
                            Some(p.span()),
                            format!("{} does not exist", resolved.display()),
                        ))
                    }
                }
            }
        };
    let report_key_file = existing_file("health.report_key_file", &raw.health.report_key_file)?;
    let admin_token_file = existing_file("health.admin_token_file", &raw.health.admin_token_file)?;
    let report_interval = raw
        .health
        .report_interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_millis(250));
    if report_interval < Duration::from_millis(10) {
        return Err(src.error("health.report_interval", None, "must be at least 10ms"));
    }
    let stale_after = raw
        .health
        .stale_after
        .map(|d| d.0)
        .unwrap_or(report_interval * 3);
    if stale_after <= report_interval {
        return Err(src.error(
            "health.stale_after",
            None,
            "must be longer than report_interval, or every node flaps",
        ));
    }

    let sample = raw.server.query_log_sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        return Err(src.error("server.query_log_sample", None, "must be between 0 and 1"));
    }
    let query_log = raw.server.query_log.map(|p| {
        let path = if p.as_os_str() == "-" {
            p
        } else {
            src.resolve(&p)
        };
        (path, sample)
    });

    let geoip_database = src.resolve(raw.geoip.database.get_ref());
    if !geoip_database.is_file() {
        return Err(src.error(
            "geoip.database",
            Some(raw.geoip.database.span()),
            format!("GeoIP database {} does not exist", geoip_database.display()),
        ));
    }

    let rrl = match raw.rrl {
        None => None,
        Some(r) => {
            if r.responses_per_second == 0 || r.ipv4_prefix > 32 || r.ipv6_prefix > 128 {
                return Err(src.error(
                    "rrl",
                    None,
                    "responses_per_second >= 1, ipv4_prefix <= 32, ipv6_prefix <= 128",
                ));
            }
            Some(RrlConfig {
                responses_per_second: r.responses_per_second,
                slip: r.slip,
                ipv4_prefix: r.ipv4_prefix,
                ipv6_prefix: r.ipv6_prefix,
                max_tracked_networks: r.max_tracked_networks,
            })
        }
    };
    let regions = validate_regions(src, raw.regions)?;
    let Steering {
        default_order,
        overrides,
        all_down,
        fallback_region,
    } = super::steering::validate(src, raw.steering, &regions)?;

    let zones = validate_zones(src, raw.zones)?;
    let edns = super::edns::validate(src, raw.edns)?;
    if zones.iter().any(|z| !z.steered.is_empty()) && regions.is_empty() {
        return Err(src.error("regions", None, "steered names need at least one region"));
    }

    Ok(DnsConfig {
        path: src.path.clone(),
        listen: raw.server.listen,
        control: raw.server.control,
        workers: raw.server.workers,
        tcp_idle_timeout: raw
            .server
            .tcp_idle_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        max_udp_payload,
        max_tcp_connections: raw.server.max_tcp_connections.unwrap_or(1000).max(1),
        geoip_database,
        zones,
        regions,
        default_order,
        overrides,
        all_down,
        fallback_region,
        rise: raw.health.rise,
        fall: raw.health.fall,
        report_key_file,
        report_interval,
        stale_after,
        max_clock_skew: raw
            .health
            .max_clock_skew
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(5)),
        admin_token_file,
        log_level: raw.server.log_level,
        edns,
        query_log,
        rrl,
    })
}

fn validate_zones(src: &Source, raw: Vec<RawZone>) -> Result<Vec<ZoneConfig>, ConfigError> {
    let mut zones: Vec<ZoneConfig> = Vec::new();
    let mut steered_names: HashSet<LowerName> = HashSet::new();
    for (i, z) in raw.into_iter().enumerate() {
        let key = format!("zones[{i}]");
        let origin = parse_fqdn(z.origin.get_ref(), None)
            .map_err(|e| src.error(format!("{key}.origin"), Some(z.origin.span()), e))?;
        let lower = LowerName::new(&origin);
        if zones
            .iter()
            .any(|other| LowerName::new(&other.origin) == lower)
        {
            return Err(src.error(
                format!("{key}.origin"),
                Some(z.origin.span()),
                format!("zone {origin} is defined twice"),
            ));
        }
        let file = src.resolve(z.file.get_ref());
        if !file.is_file() {
            return Err(src.error(
                format!("{key}.file"),
                Some(z.file.span()),
                format!("zone file {} does not exist", file.display()),
            ));
        }
        let mut steered = Vec::new();
        for (j, s) in z.steered.into_iter().enumerate() {
            let skey = format!("{key}.steered[{j}]");
            let name = parse_fqdn(s.name.get_ref(), Some(&origin))
                .map_err(|e| src.error(format!("{skey}.name"), Some(s.name.span()), e))?;
            if !LowerName::new(&origin).zone_of(&LowerName::new(&name)) {
                return Err(src.error(
                    format!("{skey}.name"),
                    Some(s.name.span()),
                    format!("{name} is not inside zone {origin}"),
                ));
            }
            if !steered_names.insert(LowerName::new(&name)) {
                return Err(src.error(
                    format!("{skey}.name"),
                    Some(s.name.span()),
                    format!("steered name {name} is defined twice"),
                ));
            }
            if s.answers == 0 || s.answers > 16 {
                return Err(src.error(
                    format!("{skey}.answers"),
                    Some(s.name.span()),
                    "answers must be between 1 and 16",
                ));
            }
            if let Some(bad) = s.services.iter().find(|v| v.trim().is_empty()) {
                return Err(src.error(
                    format!("{skey}.services"),
                    Some(s.name.span()),
                    format!("`{bad}` is not a service name: name [[streams]] of the proxies"),
                ));
            }
            let https = match s.https {
                None => None,
                Some(h) => {
                    let bad = h
                        .alpn
                        .iter()
                        .find(|a| a.is_empty() || a.len() > 255 || a.contains(','));
                    if h.alpn.is_empty() || bad.is_some() {
                        return Err(src.error(
                            format!("{skey}.https.alpn"),
                            Some(s.name.span()),
                            "list ALPN protocol ids such as \"h2\" and \"http/1.1\" (1-255 bytes, no commas)",
                        ));
                    }
                    Some(HttpsConfig {
                        alpn: h.alpn,
                        port: h.port,
                    })
                }
            };
            steered.push(SteeredConfig {
                name,
                ttl: s.ttl,
                answers: s.answers,
                services: s.services,
                https,
            });
        }
        let dnssec = z
            .dnssec
            .map(|d| super::dnssec::validate(src, &format!("{key}.dnssec"), d))
            .transpose()?;
        zones.push(ZoneConfig {
            origin,
            file,
            steered,
            dnssec,
        });
    }
    if zones.is_empty() {
        return Err(src.error("zones", None, "at least one zone is needed"));
    }
    Ok(zones)
}

/// A name written in config: absolute when it ends with a dot, else relative to `origin`.
#[cfg(test)]
mod tests {
    use super::*;

    fn write_fixture(dir: &Path) {
        std::fs::write(dir.join("geo.mmdb"), b"placeholder").unwrap();
        std::fs::write(dir.join("zone.txt"), b"").unwrap();
    }

    fn good() -> String {
        r#"
[server]
listen = ["127.0.0.1:5353"]

[geoip]
database = "geo.mmdb"

[[zones]]
origin = "example.test."
file = "zone.txt"
[[zones.steered]]
name = "www"

[[regions]]
name = "eu"
latitude = 50.1
longitude = 8.7
[[regions.nodes]]
name = "eu-1"
ipv4 = "127.0.0.11"
"#
        .to_string()
    }

    fn load(text: &str) -> Result<DnsConfig, ConfigError> {
        // Removed when this returns: the config is loaded by then.
        let dir = tempfile::tempdir().unwrap();
        write_fixture(dir.path());
        let src = Source::from_text(dir.path().join("dns.toml"), text);
        DnsConfig::from_source(&src)
    }

    #[test]
    fn a_good_config_loads_with_relative_names_made_absolute() {
        let cfg = load(&good()).unwrap();
        assert_eq!(
            cfg.zones[0].steered[0].name.to_string(),
            "www.example.test."
        );
        assert_eq!(cfg.max_udp_payload, 1232);
        assert_eq!((cfg.rise, cfg.fall), (2, 2));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let text = good().replace("[server]\n", "[server]\nlisen = 1\n");
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("lisen"), "{err}");
        assert_eq!(err.line, Some(3), "{err}");
    }

    #[test]
    fn bad_address_is_an_error_with_line() {
        let text = good().replace("127.0.0.11", "127.0.0.300");
        let err = load(&text).unwrap_err();
        assert!(err.line.is_some(), "{err}");
        assert!(err.to_string().contains("dns.toml"), "{err}");
    }

    #[test]
    fn overlapping_steered_names_are_rejected() {
        let text = good().replace(
            "name = \"www\"\n",
            "name = \"www\"\n[[zones.steered]]\nname = \"WWW.example.test.\"\n",
        );
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("defined twice"), "{err}");
        assert_eq!(err.key.as_deref(), Some("zones[0].steered[1].name"));
    }

    #[test]
    fn missing_database_is_named() {
        let text = good().replace("geo.mmdb", "nope.mmdb");
        let err = load(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("geoip.database"));
        assert!(err.message.contains("nope.mmdb"), "{err}");
    }

    #[test]
    fn override_must_name_known_region() {
        let text = good()
            + "\n[steering]\n[[steering.overrides]]\ncountry = \"JP\"\nregions = [\"mars\"]\n";
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("mars"), "{err}");
    }

    #[test]
    fn node_without_address_is_rejected() {
        let text = good().replace("ipv4 = \"127.0.0.11\"\n", "");
        let err = load(&text).unwrap_err();
        assert!(err.message.contains("needs an ipv4 or ipv6"), "{err}");
    }
}
