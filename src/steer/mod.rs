//! The steering decision, pure: given where a client is, the regions and which of them are
//! up, which region answers. No I/O, no clocks; the DNS handler and `geoedge geo lookup`
//! both call it, so what an operator sees is what clients get.

pub mod scope;
pub mod shed;

use std::net::IpAddr;
use std::ops::Range;

use ipnet::IpNet;

use crate::config::dns::{DnsConfig, InitialState, OverrideMatch};
use crate::geo::{great_circle_km, Code, Location};
use crate::health::NodeId;

pub type RegionId = usize;

#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Ids of this region's nodes (contiguous in the node list).
    pub nodes: Range<NodeId>,
    /// Up nodes needed for the region to count as up (Envoy's panic threshold, applied
    /// to regions): at least 1.
    pub min_healthy: usize,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub region: RegionId,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub initially_up: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Cidr(IpNet),
    Country(Code),
    Continent(Code),
}

#[derive(Debug, Clone)]
pub struct Override {
    pub rule: Rule,
    pub regions: Vec<RegionId>,
    /// Matched clients stay in the first region, up or down.
    pub geofence: bool,
}

/// What to answer when no region is up.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum AllDown {
    /// The best region regardless of health.
    #[default]
    FailOpen,
    /// This region's nodes, unchecked.
    Fallback(RegionId),
    /// No answer (SERVFAIL).
    Servfail,
}

/// Regions, their nodes and the steering rules, indexed for the query path.
#[derive(Debug, Clone, Default)]
pub struct RegionTable {
    pub regions: Vec<Region>,
    pub nodes: Vec<Node>,
    /// Order for clients without coordinates: the configured default order, then the
    /// remaining regions in config order.
    pub default_order: Vec<RegionId>,
    pub overrides: Vec<Override>,
    pub all_down: AllDown,
}

/// Why a region was chosen (or ranked where it is).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Basis {
    /// An override rule (its index in the table) put this region first.
    Override(usize),
    /// Nearest by great-circle distance, in km.
    Distance(f64),
    /// The client has no coordinates; the default order decided.
    DefaultOrder,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    pub region: RegionId,
    pub basis: Basis,
    /// True when every region was down and we answered as if all were up.
    pub fail_open: bool,
}

impl RegionTable {
    pub fn from_config(cfg: &DnsConfig) -> Self {
        let mut regions = Vec::new();
        let mut nodes = Vec::new();
        for (rid, r) in cfg.regions.iter().enumerate() {
            let start = nodes.len();
            for n in &r.nodes {
                nodes.push(Node {
                    name: n.name.clone(),
                    region: rid,
                    ipv4: n.ipv4,
                    ipv6: n.ipv6,
                    initially_up: n.initial == InitialState::Up,
                });
            }
            let count = nodes.len() - start;
            let min_healthy = match r.min_healthy {
                None => 1,
                Some(m) if m < 1.0 => (m * count as f64).ceil() as usize,
                Some(m) => m as usize,
            };
            regions.push(Region {
                name: r.name.clone(),
                latitude: r.latitude,
                longitude: r.longitude,
                nodes: start..nodes.len(),
                min_healthy: min_healthy.max(1),
            });
        }
        let id_of = |name: &str| regions.iter().position(|r| r.name == name);
        let mut default_order: Vec<RegionId> =
            cfg.default_order.iter().filter_map(|n| id_of(n)).collect();
        for rid in 0..regions.len() {
            if !default_order.contains(&rid) {
                default_order.push(rid);
            }
        }
        let overrides = cfg
            .overrides
            .iter()
            .filter_map(|o| {
                let rule = match &o.matcher {
                    OverrideMatch::Cidr(net) => Rule::Cidr(*net),
                    OverrideMatch::Country(c) => Rule::Country(Code::parse(c)?),
                    OverrideMatch::Continent(c) => Rule::Continent(Code::parse(c)?),
                };
                Some(Override {
                    rule,
                    regions: o.regions.iter().filter_map(|n| id_of(n)).collect(),
                    geofence: o.geofence,
                })
            })
            .collect();
        let all_down = match (cfg.all_down, cfg.fallback_region.as_deref().and_then(id_of)) {
            (crate::config::dns::AllDown::Servfail, _) => AllDown::Servfail,
            (crate::config::dns::AllDown::Fallback, Some(r)) => AllDown::Fallback(r),
            _ => AllDown::FailOpen,
        };
        Self {
            regions,
            nodes,
            default_order,
            overrides,
            all_down,
        }
    }

    /// Whether region `r` counts as up: at least `min_healthy` of its nodes are.
    pub fn region_is_up(&self, r: RegionId, node_up: impl Fn(NodeId) -> bool) -> bool {
        let Some(region) = self.regions.get(r) else {
            return false;
        };
        let mut up = 0;
        for n in region.nodes.clone() {
            if node_up(n) {
                up += 1;
                if up >= region.min_healthy {
                    return true;
                }
            }
        }
        false
    }

    pub fn region_by_name(&self, name: &str) -> Option<RegionId> {
        self.regions.iter().position(|r| r.name == name)
    }

    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The override that applies to a client: the longest matching CIDR first, then the
    /// country, then the continent (most specific wins).
    pub fn matching_override(&self, ip: IpAddr, location: Option<&Location>) -> Option<usize> {
        let mut best_cidr: Option<(usize, u8)> = None;
        for (i, o) in self.overrides.iter().enumerate() {
            if let Rule::Cidr(net) = o.rule {
                if net.contains(&ip) && best_cidr.is_none_or(|(_, len)| net.prefix_len() > len) {
                    best_cidr = Some((i, net.prefix_len()));
                }
            }
        }
        if let Some((i, _)) = best_cidr {
            return Some(i);
        }
        self.location_override(location)
    }

    /// The country (then continent) override for a location, CIDR rules aside.
    fn location_override(&self, location: Option<&Location>) -> Option<usize> {
        let location = location?;
        let find = |want: &dyn Fn(&Rule) -> bool| self.overrides.iter().position(|o| want(&o.rule));
        if let Some(country) = location.country {
            if let Some(i) = find(&|r| *r == Rule::Country(country)) {
                return Some(i);
            }
        }
        let continent = location.continent?;
        find(&|r| *r == Rule::Continent(continent))
    }

    /// The sort key of a region for a client: lower is better. Override regions come
    /// first in their listed order, then the rest by distance, or by the default order
    /// when the client has no coordinates.
    fn rank_key(
        &self,
        region: RegionId,
        rule: Option<usize>,
        coords: Option<(f64, f64)>,
    ) -> (u8, f64, Basis) {
        if let Some(rule) = rule {
            if let Some(pos) = self.overrides[rule]
                .regions
                .iter()
                .position(|&r| r == region)
            {
                return (0, pos as f64, Basis::Override(rule));
            }
        }
        match coords {
            Some(c) => {
                let r = &self.regions[region];
                let km = great_circle_km(c, (r.latitude, r.longitude));
                (1, km, Basis::Distance(km))
            }
            None => {
                let pos = self
                    .default_order
                    .iter()
                    .position(|&r| r == region)
                    .unwrap_or(usize::MAX);
                (1, pos as f64, Basis::DefaultOrder)
            }
        }
    }

    /// Every region, best first, with the reason for its place.
    pub fn rank(&self, ip: IpAddr, location: Option<&Location>) -> Vec<(RegionId, Basis)> {
        let rule = self.matching_override(ip, location);
        let coords = location.and_then(Location::coordinates);
        let mut keyed: Vec<_> = (0..self.regions.len())
            .map(|r| (r, self.rank_key(r, rule, coords)))
            .collect();
        // Ties (equal distance) keep config order: sort_by is stable.
        keyed.sort_by(|a, b| {
            (a.1 .0, a.1 .1)
                .partial_cmp(&(b.1 .0, b.1 .1))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        keyed
            .into_iter()
            .map(|(r, (_, _, basis))| (r, basis))
            .collect()
    }

    /// The best region that is up; if none is up, the best region regardless (fail open).
    /// Allocates nothing: it is on the query path.
    pub fn choose(
        &self,
        ip: IpAddr,
        location: Option<&Location>,
        region_up: impl Fn(RegionId) -> bool,
    ) -> Option<Choice> {
        let rule = self.matching_override(ip, location);
        let coords = location.and_then(Location::coordinates);
        let best = |only_up: bool| {
            let mut best: Option<(RegionId, (u8, f64, Basis))> = None;
            for r in 0..self.regions.len() {
                if only_up && !region_up(r) {
                    continue;
                }
                let key = self.rank_key(r, rule, coords);
                let better = match &best {
                    None => true,
                    Some((_, k)) => (key.0, key.1) < (k.0, k.1),
                };
                if better {
                    best = Some((r, key));
                }
            }
            best
        };
        if let Some(rule) = rule.filter(|&i| self.overrides[i].geofence) {
            // Data residency: these clients get their region's nodes, up or not.
            if let Some(&region) = self.overrides[rule].regions.first() {
                return Some(Choice {
                    region,
                    basis: Basis::Override(rule),
                    fail_open: !region_up(region),
                });
            }
        }
        if let Some((region, (_, _, basis))) = best(true) {
            return Some(Choice {
                region,
                basis,
                fail_open: false,
            });
        }
        match self.all_down {
            AllDown::Servfail => None,
            AllDown::Fallback(region) => Some(Choice {
                region,
                basis: Basis::DefaultOrder,
                fail_open: true,
            }),
            AllDown::FailOpen => best(false).map(|(region, (_, _, basis))| Choice {
                region,
                basis,
                fail_open: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(lat: f64, lon: f64, country: &str, continent: &str) -> Location {
        Location {
            latitude: Some(lat),
            longitude: Some(lon),
            country: Code::parse(country),
            continent: Code::parse(continent),
        }
    }

    fn table() -> RegionTable {
        let region = |name: &str, lat, lon, id: usize| Region {
            name: name.into(),
            latitude: lat,
            longitude: lon,
            nodes: id..id + 1,
            min_healthy: 1,
        };
        let node = |name: &str, region| Node {
            name: name.into(),
            region,
            ipv4: None,
            ipv6: None,
            initially_up: true,
        };
        RegionTable {
            regions: vec![
                region("eu", 50.11, 8.68, 0),
                region("us", 39.04, -77.49, 1),
                region("ap", 1.35, 103.82, 2),
            ],
            nodes: vec![node("eu-1", 0), node("us-1", 1), node("ap-1", 2)],
            default_order: vec![1, 0, 2],
            overrides: vec![
                Override {
                    rule: Rule::Country(Code::parse("RU").unwrap()),
                    regions: vec![2],
                    geofence: false,
                },
                Override {
                    rule: Rule::Continent(Code::parse("EU").unwrap()),
                    regions: vec![0],
                    geofence: false,
                },
                Override {
                    rule: Rule::Cidr("10.9.0.0/16".parse().unwrap()),
                    regions: vec![1, 2],
                    geofence: false,
                },
            ],
            all_down: AllDown::FailOpen,
        }
    }

    #[test]
    fn a_region_below_min_healthy_counts_as_down() {
        let mut t = table();
        t.nodes.push(Node {
            name: "eu-2".into(),
            region: 0,
            ipv4: None,
            ipv6: None,
            initially_up: true,
        });
        // eu's range now covers nodes 0 and 1: two nodes, both needed.
        t.regions[0].nodes = 0..2;
        t.regions[0].min_healthy = 2;
        assert!(t.region_is_up(0, |_| true));
        assert!(!t.region_is_up(0, |n| n == 0), "one of two up, two needed");
        let frankfurt = loc(50.11, 8.68, "DE", "EU");
        let c = t
            .choose(ip(ANY_IP), Some(&frankfurt), |r| {
                t.region_is_up(r, |n| n != 1)
            })
            .unwrap();
        assert_ne!(t.regions[c.region].name, "eu");
    }

    #[test]
    fn every_region_down_answers_by_the_configured_policy() {
        let mut t = table();
        let sydney = loc(-33.87, 151.21, "AU", "OC");
        let open = t.choose(ip(ANY_IP), Some(&sydney), |_| false).unwrap();
        assert!(open.fail_open);
        assert_eq!(t.regions[open.region].name, "ap", "fail open: the nearest");
        t.all_down = AllDown::Fallback(1);
        let fallback = t.choose(ip(ANY_IP), Some(&sydney), |_| false).unwrap();
        assert!(fallback.fail_open);
        assert_eq!(t.regions[fallback.region].name, "us");
        t.all_down = AllDown::Servfail;
        assert!(t.choose(ip(ANY_IP), Some(&sydney), |_| false).is_none());
        // With a region up, the policy does not matter.
        assert!(t.choose(ip(ANY_IP), Some(&sydney), |r| r == 0).is_some());
    }

    #[test]
    fn a_geofenced_override_keeps_its_clients_home_even_when_home_is_down() {
        let mut t = table();
        t.overrides[1].geofence = true; // continent EU -> eu
        let paris = loc(48.85, 2.35, "FR", "EU");
        let c = t.choose(ip(ANY_IP), Some(&paris), |r| r != 0).unwrap();
        assert_eq!(t.regions[c.region].name, "eu");
        assert!(c.fail_open, "answered unchecked: eu is down");
        let up = t.choose(ip(ANY_IP), Some(&paris), |_| true).unwrap();
        assert!(!up.fail_open);
        // Without the fence the same client leaves.
        t.overrides[1].geofence = false;
        let c = t.choose(ip(ANY_IP), Some(&paris), |r| r != 0).unwrap();
        assert_ne!(t.regions[c.region].name, "eu");
    }

    const ANY_IP: &str = "192.0.2.1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nearest_region_wins_by_distance() {
        let t = table();
        let sao_paulo = loc(-23.55, -46.63, "BR", "SA");
        let c = t.choose(ip(ANY_IP), Some(&sao_paulo), |_| true).unwrap();
        assert_eq!(t.regions[c.region].name, "us");
        let sydney = loc(-33.87, 151.21, "AU", "OC");
        let c = t.choose(ip(ANY_IP), Some(&sydney), |_| true).unwrap();
        assert_eq!(t.regions[c.region].name, "ap");
        assert!(matches!(c.basis, Basis::Distance(km) if km > 5000.0 && km < 7000.0));
    }

    #[test]
    fn steers_to_next_region_when_nearest_is_down() {
        let t = table();
        let paris = loc(48.85, 2.35, "FR", "EU");
        // Paris matches the EU continent override (eu only); with eu down, the rest rank by
        // distance: us is nearer than ap.
        let c = t.choose(ip(ANY_IP), Some(&paris), |r| r != 0).unwrap();
        assert_eq!(t.regions[c.region].name, "us");
        assert!(!c.fail_open);
    }

    #[test]
    fn all_down_fails_open_to_the_best() {
        let t = table();
        let tokyo = loc(35.68, 139.69, "JP", "AS");
        let c = t.choose(ip(ANY_IP), Some(&tokyo), |_| false).unwrap();
        assert_eq!(t.regions[c.region].name, "ap");
        assert!(c.fail_open);
    }

    #[test]
    fn country_override_beats_distance() {
        let t = table();
        let moscow = loc(55.75, 37.62, "RU", "EU");
        let c = t.choose(ip(ANY_IP), Some(&moscow), |_| true).unwrap();
        assert_eq!(t.regions[c.region].name, "ap");
        assert_eq!(c.basis, Basis::Override(0));
    }

    #[test]
    fn cidr_override_beats_country_and_applies_without_location() {
        let t = table();
        let moscow = loc(55.75, 37.62, "RU", "EU");
        let c = t.choose(ip("10.9.3.4"), Some(&moscow), |_| true).unwrap();
        assert_eq!(t.regions[c.region].name, "us");
        let c = t.choose(ip("10.9.3.4"), None, |r| r != 1).unwrap();
        assert_eq!(t.regions[c.region].name, "ap", "second region of the rule");
    }

    #[test]
    fn no_location_uses_default_order() {
        let t = table();
        let c = t.choose(ip("8.8.8.8"), None, |_| true).unwrap();
        assert_eq!(t.regions[c.region].name, "us");
        assert_eq!(c.basis, Basis::DefaultOrder);
        let c = t.choose(ip("8.8.8.8"), None, |r| r != 1).unwrap();
        assert_eq!(t.regions[c.region].name, "eu");
    }

    #[test]
    fn rank_agrees_with_choose() {
        let t = table();
        let clients = [
            loc(-23.55, -46.63, "BR", "SA"),
            loc(35.68, 139.69, "JP", "AS"),
            loc(48.85, 2.35, "FR", "EU"),
            loc(55.75, 37.62, "RU", "EU"),
        ];
        for l in &clients {
            for down in 0..3 {
                let ranked = t.rank(ip(ANY_IP), Some(l));
                let first_up = ranked.iter().find(|(r, _)| *r != down).unwrap().0;
                let chosen = t.choose(ip(ANY_IP), Some(l), |r| r != down).unwrap().region;
                assert_eq!(first_up, chosen, "{l:?} with region {down} down");
            }
        }
    }

    #[test]
    fn empty_table_chooses_nothing() {
        let t = RegionTable::default();
        assert_eq!(t.choose(ip(ANY_IP), None, |_| true), None);
    }
}
