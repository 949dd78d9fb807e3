//! Everything the query path reads, built once per config (and swapped whole on reload):
//! zones, the region table, the GeoIP database and the precomputed steered records.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::LowerName;
use ipnet::IpNet;

use crate::config::dns::DnsConfig;
use crate::dns::query::cookie;
use crate::dns::steered::SteeredName;
use crate::dns::zone::{Zone, ZoneError};
use crate::geo::{GeoDb, GeoError};
use crate::health::{HealthSettings, HealthTable, NodeId};
use crate::steer::scope::{Builder, Rankings, ScopeMap};
use crate::steer::{RegionTable, Rule};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Zone(#[from] ZoneError),
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error("steered names need more than 64 distinct services between them")]
    TooManyServices,
    #[error(transparent)]
    Dnssec(#[from] crate::dns::dnssec::keys::KeyError),
    #[error("cookie secret file {file}: {message}")]
    CookieSecret { file: String, message: String },
}

pub struct DnsState {
    pub zones: Vec<Zone>,
    pub steered: Vec<SteeredName>,
    pub table: RegionTable,
    pub geo: Arc<GeoDb>,
    pub max_udp_payload: u16,
    /// CIDR override networks, which narrow ECS scopes.
    pub override_cidrs: Vec<IpNet>,
    /// Steered-answer counters per region, resolved once so queries only bump atomics.
    pub region_counters: Vec<prometheus::IntCounter>,
    /// Node health, numbered like `table.nodes`; kept across reloads that keep the nodes.
    pub health: Arc<HealthTable>,
    pub health_settings: HealthSettings,
    /// Precomputed answers for the common queries (see `fast.rs`).
    pub fast: crate::dns::query::fast::Table,
    /// Every stream service a steered name needs; a name's `service_mask` has bit i for
    /// `services[i]`.
    pub services: Vec<String>,
    /// Shedding shares per region; kept across reloads for regions that stay.
    pub shed: Arc<crate::dns::shed::ShedTable>,
    /// Secrets of server cookies (RFC 9018), from the config's file or this process's own.
    pub cookie_secrets: cookie::Secrets,
    /// The NSID sent to queries that ask for it.
    pub nsid: Option<Vec<u8>>,
    /// Largest UDP answer to a client without a valid server cookie (0: no limit).
    pub max_nocookie_response: u16,
    /// The widest ECS scopes: networks merged while they rank the regions alike.
    pub scopes: ScopeMap,
    /// GeoIP networks per family (IPv4, IPv6) before merging, for the metrics.
    pub geo_networks: (usize, usize),
}

/// Walks the database and merges neighbouring networks that rank the regions alike.
fn merged_scopes(geo: &GeoDb, table: &RegionTable) -> Result<(ScopeMap, (usize, usize)), GeoError> {
    let mut rankings = Rankings::default();
    let mut counts = (0, 0);
    let mut families = Vec::new();
    for v6 in [false, true] {
        let mut builder = Builder::new(v6);
        let mut count = 0;
        geo.for_each_network(v6, |net, location| {
            count += 1;
            builder.push(net, rankings.id(table.ranking(location)));
        })?;
        if v6 {
            counts.1 = count;
        } else {
            counts.0 = count;
        }
        families.push(builder);
    }
    let v6 = families.pop().unwrap_or_else(|| Builder::new(true));
    let v4 = families.pop().unwrap_or_else(|| Builder::new(false));
    Ok((ScopeMap::new(v4, v6), counts))
}

/// A process without a configured secret makes its cookies with one of its own, the same
/// across reloads so that clients' cookies stay good.
fn process_secret() -> cookie::Secret {
    static SECRET: std::sync::OnceLock<cookie::Secret> = std::sync::OnceLock::new();
    *SECRET.get_or_init(|| {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 16];
        // Without system randomness the cookies are still checked; only guessable.
        let _ = ring::rand::SystemRandom::new().fill(&mut secret);
        secret
    })
}

fn cookie_secrets(cfg: &DnsConfig) -> Result<cookie::Secrets, StateError> {
    let Some(path) = &cfg.edns.cookie_secret_file else {
        return Ok(cookie::Secrets {
            current: process_secret(),
            previous: None,
        });
    };
    let error = |message: String| StateError::CookieSecret {
        file: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    cookie::parse_secrets(&text).map_err(error)
}

impl DnsState {
    pub fn build(cfg: &DnsConfig) -> Result<Self, StateError> {
        let geo = Arc::new(GeoDb::open(&cfg.geoip_database)?);
        Self::build_with_geo(cfg, geo)
    }

    /// Builds with an already open database (a reload that keeps the database, tests).
    pub fn build_with_geo(cfg: &DnsConfig, geo: Arc<GeoDb>) -> Result<Self, StateError> {
        let table = RegionTable::from_config(cfg);
        let mut zones = Vec::new();
        let mut steered = Vec::new();
        let mut services: Vec<String> = Vec::new();
        for z in &cfg.zones {
            let mut names = Vec::new();
            for s in &z.steered {
                names.push((s.name.clone(), steered.len()));
                let mut name = SteeredName::build(&table, &s.name, s.ttl, s.answers);
                name.https = s.https.clone();
                for service in &s.services {
                    let bit = match services.iter().position(|v| v == service) {
                        Some(i) => i,
                        None => {
                            services.push(service.clone());
                            services.len() - 1
                        }
                    };
                    if bit >= 64 {
                        return Err(StateError::TooManyServices);
                    }
                    name.service_mask |= 1 << bit;
                }
                steered.push(name);
            }
            let mut zone = Zone::load(&z.origin, &z.file, &names)?;
            if let Some(dnssec) = &z.dnssec {
                let ttl = zone.soa().first().map(|r| r.ttl).unwrap_or(3600);
                zone.sign_with(crate::dns::dnssec::load(&z.origin, dnssec, ttl)?);
            }
            zones.push(zone);
        }
        // Longest origin first, so the most specific zone answers a name.
        zones.sort_by_key(|z| std::cmp::Reverse(z.origin.num_labels()));
        let override_cidrs = table
            .overrides
            .iter()
            .filter_map(|o| match o.rule {
                Rule::Cidr(net) => Some(net),
                _ => None,
            })
            .collect();
        let health_settings = HealthSettings {
            rise: cfg.rise,
            fall: cfg.fall,
            expects_reports: cfg.report_key_file.is_some(),
            stale_after_ms: cfg.stale_after.as_millis() as u64,
        };
        let nodes: Vec<(bool, bool)> = table
            .nodes
            .iter()
            .map(|n| (n.initially_up, cfg.regions[n.region].probe.is_some()))
            .collect();
        let health = Arc::new(HealthTable::new(
            &nodes,
            health_settings,
            crate::process::clock::now_ms(),
        ));
        let mut state = Self {
            zones,
            steered,
            table,
            geo,
            max_udp_payload: cfg.max_udp_payload,
            override_cidrs,
            region_counters: Vec::new(),
            health,
            health_settings,
            fast: Default::default(),
            services,
            shed: Arc::new(crate::dns::shed::ShedTable::new(cfg)),
            cookie_secrets: cookie_secrets(cfg)?,
            nsid: cfg.edns.nsid.clone(),
            max_nocookie_response: cfg.edns.max_nocookie_response,
            scopes: ScopeMap::default(),
            geo_networks: (0, 0),
        };
        (state.scopes, state.geo_networks) = merged_scopes(&state.geo, &state.table)?;
        state.fast = crate::dns::query::fast::Table::build(
            &state.zones,
            |n| state.zone_for(n),
            &state.steered,
        );
        Ok(state)
    }

    /// Keeps the previous state's health when this config has the same nodes (names,
    /// regions, order) and health settings: a reload must not forget what reports said.
    pub fn adopt_health(&mut self, previous: &DnsState) -> bool {
        self.shed.carry_over(&previous.shed);
        let same_nodes = previous.table.nodes.len() == self.table.nodes.len()
            && previous
                .table
                .nodes
                .iter()
                .zip(&self.table.nodes)
                .all(|(a, b)| {
                    a.name == b.name
                        && previous.table.regions[a.region].name
                            == self.table.regions[b.region].name
                });
        let s = (&previous.health_settings, &self.health_settings);
        let same_settings = s.0.rise == s.1.rise
            && s.0.fall == s.1.fall
            && s.0.expects_reports == s.1.expects_reports
            && s.0.stale_after_ms == s.1.stale_after_ms;
        if same_nodes && same_settings {
            self.health = previous.health.clone();
            return true;
        }
        if same_settings {
            // Renumbered (nodes added or removed): keep what we knew of each node that
            // is still there, found by region and name.
            let mapping: Vec<(NodeId, NodeId)> = self
                .table
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(new_id, n)| {
                    let region = &self.table.regions[n.region].name;
                    previous
                        .table
                        .nodes
                        .iter()
                        .position(|p| {
                            p.name == n.name && &previous.table.regions[p.region].name == region
                        })
                        .map(|old_id| (new_id, old_id))
                })
                .collect();
            self.health.carry_over(&previous.health, &mapping);
            return true;
        }
        false
    }

    pub fn attach_metrics(&mut self, metrics: &crate::metrics::DnsMetrics) {
        let names: Vec<String> = self.table.regions.iter().map(|r| r.name.clone()).collect();
        self.region_counters = metrics.steered_for(&names);
    }

    /// The zone a name belongs to, if we are authoritative for it.
    pub fn zone_for(&self, name: &LowerName) -> Option<&Zone> {
        self.zones.iter().find(|z| z.origin.zone_of(name))
    }

    pub fn deciding_network(&self, ip: IpAddr) -> Result<crate::geo::GeoMatch, GeoError> {
        self.geo.lookup(ip)
    }
}
