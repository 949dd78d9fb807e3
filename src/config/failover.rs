//! `[failover]` of the proxy config: the other regions' proxies a request goes to when this
//! region has no origin for it, nearest first, and the shared key that marks a forwarded
//! request as one hop (so it is never forwarded again).
//!
//! Each peer becomes an upstream of its own (`failover-REGION`, one origin) with an active
//! check of the peer's admin `/healthz`, so its health, connections and TLS work as every
//! other upstream's do.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::upstreams::{
    origin_tls, Balance, HealthCheckConfig, OriginConfig, OriginProtocol, RawOriginTls,
    UpstreamConfig,
};
use super::{ConfigDuration, ConfigError, Source};

/// The header a forwarding proxy sets and a peer trusts once its MAC checks.
pub const HOP_HEADER: &str = "geoedge-failover";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFailover {
    key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "d_check_interval")]
    check_interval: ConfigDuration,
    #[serde(default = "d_timeout")]
    connect_timeout: ConfigDuration,
    #[serde(default = "d_response_timeout")]
    response_timeout: ConfigDuration,
    peers: Vec<RawPeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    region: String,
    addr: SocketAddr,
    health: SocketAddr,
    tls: Option<RawOriginTls>,
}

fn d_check_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(500))
}
fn d_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn d_response_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// The shared secret whose HMAC marks a forwarded request as a hop.
    pub key_file: PathBuf,
    /// Peer regions in order of preference, each with the name of its upstream.
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub region: String,
    pub upstream: String,
}

/// Validates `[failover]`; the peers' upstreams are returned apart, for the caller to add
/// to the config's upstreams.
pub(super) fn validate(
    src: &Source,
    raw: RawFailover,
    own_region: &str,
    reports_key: Option<&PathBuf>,
) -> Result<(FailoverConfig, Vec<UpstreamConfig>), ConfigError> {
    let key_file = match (&raw.key_file, reports_key) {
        (Some(k), _) => src.existing_file("failover.key_file", k)?,
        (None, Some(k)) => k.clone(),
        (None, None) => {
            return Err(src.error(
                "failover.key_file",
                None,
                "give a key file shared by the regions' proxies (or configure [reports], whose key is used)",
            ))
        }
    };
    if raw.peers.is_empty() {
        return Err(src.error("failover.peers", None, "list at least one peer region"));
    }
    if raw.check_interval.0 < Duration::from_millis(50) {
        return Err(src.error("failover.check_interval", None, "must be at least 50ms"));
    }
    let mut peers = Vec::new();
    let mut upstreams = Vec::new();
    for (i, p) in raw.peers.into_iter().enumerate() {
        let key = format!("failover.peers[{i}]");
        if p.region == own_region {
            return Err(src.error(
                format!("{key}.region"),
                None,
                format!("`{}` is this node's own region", p.region),
            ));
        }
        if peers.iter().any(|q: &PeerConfig| q.region == p.region) {
            return Err(src.error(
                format!("{key}.region"),
                None,
                format!("region `{}` is listed twice", p.region),
            ));
        }
        let (protocol, tls) = match p.tls {
            Some(t) => (OriginProtocol::Https, Some(origin_tls(src, &key, Some(t))?)),
            None => (OriginProtocol::Http1, None),
        };
        upstreams.push(peer_upstream(
            &p.region,
            p.addr,
            p.health,
            protocol,
            tls,
            PeerTiming {
                check_interval: raw.check_interval.0,
                connect_timeout: raw.connect_timeout.0,
                response_timeout: raw.response_timeout.0,
            },
        ));
        peers.push(PeerConfig {
            upstream: format!("failover-{}", p.region),
            region: p.region,
        });
    }
    Ok((FailoverConfig { key_file, peers }, upstreams))
}

/// How often a peer is checked and how long it may take: `[failover]`'s defaults unless
/// the config says otherwise.
#[derive(Debug, Clone, Copy)]
pub struct PeerTiming {
    pub check_interval: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl Default for PeerTiming {
    fn default() -> Self {
        Self {
            check_interval: d_check_interval().0,
            connect_timeout: d_timeout().0,
            response_timeout: d_response_timeout().0,
        }
    }
}

/// The upstream `failover-REGION` through which requests reach a peer region's proxy: one
/// origin, checked at the peer's admin `/healthz` (rise and fall 1, so a peer that goes
/// down stops taking requests within one check).
pub fn peer_upstream(
    region: &str,
    addr: SocketAddr,
    health: SocketAddr,
    protocol: OriginProtocol,
    tls: Option<super::upstreams::OriginTlsConfig>,
    timing: PeerTiming,
) -> UpstreamConfig {
    let name = format!("failover-{region}");
    UpstreamConfig {
        name: name.clone(),
        balance: Balance::RoundRobin,
        sticky_cookie: None,
        connect_timeout: timing.connect_timeout,
        response_timeout: timing.response_timeout,
        origins: vec![OriginConfig {
            name,
            addr,
            weight: 1,
            server_name: None,
        }],
        health_check: Some(HealthCheckConfig {
            path: "/healthz".into(),
            addr: Some(health),
            interval: timing.check_interval,
            timeout: timing.check_interval.min(Duration::from_millis(500)),
            expect_status: 200,
            rise: 1,
            fall: 1,
        }),
        passive_failures: 3,
        passive_cooldown: Duration::from_secs(2),
        protocol,
        tls,
        send_proxy: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        failover: RawFailover,
    }

    fn load(text: &str) -> Result<(FailoverConfig, Vec<UpstreamConfig>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shared.key"), "0123456789abcdef0123").unwrap();
        let src = Source::from_text(dir.path().join("eu.toml"), text);
        let raw: Wrapper =
            toml::from_str(text).map_err(|e| src.error("failover", None, e.to_string()))?;
        validate(&src, raw.failover, "eu", None)
    }

    const PEERS: &str = r#"
[[failover.peers]]
region = "us"
addr = "127.0.0.3:80"
health = "127.0.0.3:9100"
[[failover.peers]]
region = "ap"
addr = "127.0.0.4:443"
health = "127.0.0.4:9100"
tls = { server_name = "edge.example.test" }
"#;

    #[test]
    fn peers_become_checked_upstreams_in_their_order() {
        let (f, upstreams) =
            load(&format!("[failover]\nkey_file = \"shared.key\"\n{PEERS}")).unwrap();
        let regions: Vec<_> = f.peers.iter().map(|p| p.region.as_str()).collect();
        assert_eq!(regions, ["us", "ap"]);
        let ap = upstreams.iter().find(|u| u.name == "failover-ap").unwrap();
        assert!(ap.protocol.is_tls());
        let hc = ap.health_check.as_ref().unwrap();
        assert_eq!(hc.path, "/healthz");
        assert_eq!(hc.addr, Some("127.0.0.4:9100".parse().unwrap()));
        assert_eq!(ap.origins[0].addr, "127.0.0.4:443".parse().unwrap());
    }

    #[test]
    fn bad_failover_settings_are_named() {
        let key = "[failover]\nkey_file = \"shared.key\"\n";
        let cases = [
            (format!("[failover]\n{PEERS}"), "failover.key_file"),
            (
                format!("[failover]\nkey_file = \"missing.key\"\n{PEERS}"),
                "failover.key_file",
            ),
            (format!("{key}peers = []\n"), "failover.peers"),
            (
                format!("{key}[[failover.peers]]\nregion = \"eu\"\naddr = \"127.0.0.3:80\"\nhealth = \"127.0.0.3:9\"\n"),
                "failover.peers[0].region",
            ),
            (
                format!("{key}check_interval = \"1ms\"\n{PEERS}"),
                "failover.check_interval",
            ),
        ];
        for (text, want) in cases {
            let err = load(&text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(want), "{text}: {err}");
        }
        let us_again = PEERS
            .split("[[failover.peers]]\nregion = \"ap\"")
            .next()
            .unwrap();
        let err = load(&format!("{key}{PEERS}{us_again}")).unwrap_err();
        assert!(err.message.contains("twice"), "{err}");
    }
}
