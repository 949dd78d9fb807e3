//! The `[upstreams]` part of the proxy config: origin groups with their balancing,
//! sticky cookie, timeouts, active health checks and passive failure detection.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

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
}

/// How the proxy speaks to an upstream's origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginProtocol {
    /// HTTP/1.1 with a pool of keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 without TLS, by prior knowledge (RFC 9113 §3.3): one multiplexed connection
    /// per origin. What gRPC services and other HTTP/2-only origins speak.
    H2c,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin {
    name: String,
    addr: SocketAddr,
    #[serde(default = "d_weight")]
    weight: u32,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct OriginConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
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
            origins.push(OriginConfig {
                name: o.name,
                addr: o.addr,
                weight: o.weight,
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
                    interval: h.interval.0,
                    timeout: h.timeout.0,
                    expect_status: h.expect_status,
                    rise: h.rise.max(1),
                    fall: h.fall.max(1),
                })
            }
            None => None,
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
        });
    }
    Ok(upstreams)
}
