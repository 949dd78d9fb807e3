//! The regions of the `geoedge dns` config: where each is, its nodes, and how they are
//! probed.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::names::is_label;
use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegion {
    name: Spanned<String>,
    latitude: f64,
    longitude: f64,
    #[serde(default)]
    nodes: Vec<RawNode>,
    probe: Option<RawProbe>,
    /// Accept signed reports from nodes not listed here, and answer with them.
    #[serde(default)]
    dynamic_nodes: bool,
    /// Utilisation where shedding starts, and where all of the region's clients go
    /// elsewhere.
    low_watermark: Option<f64>,
    high_watermark: Option<f64>,
    /// Nodes (1, 2, ...) or a fraction of them (0.5) that must be up for the region to
    /// count as up.
    min_healthy: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    port: u16,
    #[serde(default = "default_probe_path")]
    path: String,
    interval: Option<ConfigDuration>,
    timeout: Option<ConfigDuration>,
    #[serde(default = "default_probe_status")]
    expect_status: u16,
}

fn default_probe_path() -> String {
    "/healthz".into()
}
fn default_probe_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    #[serde(default = "default_initial")]
    initial: InitialState,
}

fn default_initial() -> InitialState {
    InitialState::Up
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitialState {
    Up,
    Down,
}

/// Active probe of every node of a region: GET http://NODE:port/path.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub port: u16,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub expect_status: u16,
}

#[derive(Debug, Clone)]
pub struct RegionConfig {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
    pub nodes: Vec<NodeConfig>,
    pub probe: Option<ProbeConfig>,
    pub dynamic_nodes: bool,
    /// (low, high) utilisation watermarks: shedding is on for this region.
    pub watermarks: Option<(f64, f64)>,
    /// `min_healthy` as given: a node count (>= 1) or a fraction (< 1).
    pub min_healthy: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub initial: InitialState,
}

pub(super) fn validate_regions(
    src: &Source,
    raw: Vec<RawRegion>,
) -> Result<Vec<RegionConfig>, ConfigError> {
    let mut regions: Vec<RegionConfig> = Vec::new();
    let mut node_names = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("regions[{i}]");
        let name = r.name.get_ref().clone();
        if !is_label(&name) {
            return Err(src.error(
                format!("{key}.name"),
                Some(r.name.span()),
                format!("`{name}` is not a valid region name (letters, digits, - and _)"),
            ));
        }
        if regions.iter().any(|other| other.name == name) {
            return Err(src.error(
                format!("{key}.name"),
                Some(r.name.span()),
                format!("region `{name}` is defined twice"),
            ));
        }
        if !(-90.0..=90.0).contains(&r.latitude) {
            return Err(src.error(
                format!("{key}.latitude"),
                None,
                format!("{} is outside -90..90", r.latitude),
            ));
        }
        if !(-180.0..=180.0).contains(&r.longitude) {
            return Err(src.error(
                format!("{key}.longitude"),
                None,
                format!("{} is outside -180..180", r.longitude),
            ));
        }
        if r.nodes.is_empty() && !r.dynamic_nodes {
            return Err(src.error(
                format!("{key}.nodes"),
                Some(r.name.span()),
                format!("region `{name}` has no nodes"),
            ));
        }
        let mut nodes = Vec::new();
        for (j, n) in r.nodes.into_iter().enumerate() {
            let nkey = format!("{key}.nodes[{j}]");
            let node_name = n.name.get_ref().clone();
            if !is_label(&node_name) {
                return Err(src.error(
                    format!("{nkey}.name"),
                    Some(n.name.span()),
                    format!("`{node_name}` is not a valid node name"),
                ));
            }
            if !node_names.insert(node_name.clone()) {
                return Err(src.error(
                    format!("{nkey}.name"),
                    Some(n.name.span()),
                    format!("node `{node_name}` is defined twice"),
                ));
            }
            if n.ipv4.is_none() && n.ipv6.is_none() {
                return Err(src.error(
                    nkey,
                    Some(n.name.span()),
                    format!("node `{node_name}` needs an ipv4 or ipv6 address"),
                ));
            }
            nodes.push(NodeConfig {
                name: node_name,
                ipv4: n.ipv4,
                ipv6: n.ipv6,
                initial: n.initial,
            });
        }
        let probe = match r.probe {
            None => None,
            Some(p) => {
                let interval = p
                    .interval
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_millis(250));
                let timeout = p.timeout.map(|d| d.0).unwrap_or(interval.mul_f64(0.8));
                if interval < Duration::from_millis(50)
                    || timeout > interval
                    || !p.path.starts_with('/')
                {
                    return Err(src.error(
                        format!("{key}.probe"),
                        None,
                        "probe needs interval >= 50ms, timeout <= interval and a path starting with /",
                    ));
                }
                Some(ProbeConfig {
                    port: p.port,
                    path: p.path,
                    interval,
                    timeout,
                    expect_status: p.expect_status,
                })
            }
        };
        let watermarks = match (r.low_watermark, r.high_watermark) {
            (None, None) => None,
            (Some(low), Some(high)) if 0.0 <= low && low < high && high <= 10.0 => {
                Some((low, high))
            }
            _ => {
                return Err(src.error(
                    format!("{key}.high_watermark"),
                    Some(r.name.span()),
                    "give low_watermark and high_watermark together, 0 <= low < high (utilisation fractions: 0.7 and 0.9)",
                ))
            }
        };
        if let Some(m) = r.min_healthy {
            let whole = m >= 1.0 && m.fract() == 0.0;
            if !(m.is_finite() && (whole || (m > 0.0 && m < 1.0))) {
                return Err(src.error(
                    format!("{key}.min_healthy"),
                    Some(r.name.span()),
                    "a node count (1, 2, ...) or a fraction of the nodes between 0 and 1 (0.5)",
                ));
            }
        }
        regions.push(RegionConfig {
            min_healthy: r.min_healthy,
            name,
            latitude: r.latitude,
            longitude: r.longitude,
            nodes,
            probe,
            dynamic_nodes: r.dynamic_nodes,
            watermarks,
        });
    }
    Ok(regions)
}
