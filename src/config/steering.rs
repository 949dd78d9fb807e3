//! The `[steering]` part of the DNS config: the default order for clients the database
//! cannot place, operator overrides (by network, country or continent, optionally
//! geofenced) and what to answer when every region is down.

use std::collections::HashSet;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::regions::RegionConfig;
use super::{ConfigError, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSteering {
    #[serde(default)]
    default_order: Vec<Spanned<String>>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
    #[serde(default)]
    all_down: AllDown,
    fallback_region: Option<Spanned<String>>,
}

/// What steered names answer when every region is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllDown {
    /// Answer as if every region were up (nearest first): a health-check failure of our
    /// own must not take the service off the internet.
    #[default]
    FailOpen,
    /// The nodes of `fallback_region`, unchecked (Cloudflare's fallback pool).
    Fallback,
    /// SERVFAIL: resolvers try other servers and keep their cached answers.
    Servfail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    country: Option<Spanned<String>>,
    continent: Option<Spanned<String>>,
    cidr: Option<IpNet>,
    regions: Vec<Spanned<String>>,
    /// Keep these clients in the override's first region even when it is down.
    #[serde(default)]
    geofence: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OverrideMatch {
    Country(String),
    Continent(String),
    Cidr(IpNet),
}

#[derive(Debug, Clone)]
pub struct OverrideConfig {
    pub matcher: OverrideMatch,
    pub regions: Vec<String>,
    /// Clients matched stay in the first region, up or down (data residency).
    pub geofence: bool,
}

const CONTINENT_CODES: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// `[steering]`, validated against the regions.
pub(super) struct Steering {
    pub default_order: Vec<String>,
    pub overrides: Vec<OverrideConfig>,
    pub all_down: AllDown,
    pub fallback_region: Option<String>,
}

pub(super) fn validate(
    src: &Source,
    raw: RawSteering,
    regions: &[RegionConfig],
) -> Result<Steering, ConfigError> {
    let region_names: HashSet<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    let known_region = |key: String, name: &Spanned<String>| -> Result<String, ConfigError> {
        if region_names.contains(name.get_ref().as_str()) {
            Ok(name.get_ref().clone())
        } else {
            Err(src.error(
                key,
                Some(name.span()),
                format!("no region is named `{}`", name.get_ref()),
            ))
        }
    };

    let mut default_order = Vec::new();
    for (i, name) in raw.default_order.iter().enumerate() {
        let name = known_region(format!("steering.default_order[{i}]"), name)?;
        if default_order.contains(&name) {
            return Err(src.error(
                format!("steering.default_order[{i}]"),
                None,
                format!("region `{name}` is listed twice"),
            ));
        }
        default_order.push(name);
    }

    let mut overrides = Vec::new();
    for (i, o) in raw.overrides.into_iter().enumerate() {
        let key = format!("steering.overrides[{i}]");
        let matcher = match (o.country, o.continent, o.cidr) {
            (Some(c), None, None) => {
                let code = c.get_ref().to_ascii_uppercase();
                if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(src.error(
                        format!("{key}.country"),
                        Some(c.span()),
                        format!("`{}` is not an ISO 3166 two-letter code", c.get_ref()),
                    ));
                }
                OverrideMatch::Country(code)
            }
            (None, Some(c), None) => {
                let code = c.get_ref().to_ascii_uppercase();
                if !CONTINENT_CODES.contains(&code.as_str()) {
                    return Err(src.error(
                        format!("{key}.continent"),
                        Some(c.span()),
                        format!(
                            "`{}` is not a continent code (one of {})",
                            c.get_ref(),
                            CONTINENT_CODES.join(", ")
                        ),
                    ));
                }
                OverrideMatch::Continent(code)
            }
            (None, None, Some(net)) => OverrideMatch::Cidr(net.trunc()),
            _ => {
                return Err(src.error(
                    key,
                    None,
                    "an override matches exactly one of `country`, `continent` or `cidr`",
                ))
            }
        };
        if o.regions.is_empty() {
            return Err(src.error(
                format!("{key}.regions"),
                None,
                "an override needs at least one region",
            ));
        }
        let mut regions = Vec::new();
        for (j, r) in o.regions.iter().enumerate() {
            regions.push(known_region(format!("{key}.regions[{j}]"), r)?);
        }
        overrides.push(OverrideConfig {
            matcher,
            regions,
            geofence: o.geofence,
        });
    }

    let all_down = raw.all_down;
    let fallback_region = match (&raw.fallback_region, all_down) {
        (Some(r), AllDown::Fallback) => Some(known_region("steering.fallback_region".into(), r)?),
        (None, AllDown::Fallback) => {
            return Err(src.error(
                "steering.fallback_region",
                None,
                "all_down = \"fallback\" needs the region to answer with",
            ))
        }
        (Some(r), _) => {
            return Err(src.error(
                "steering.fallback_region",
                Some(r.span()),
                "a fallback region is used only with all_down = \"fallback\"",
            ))
        }
        (None, _) => None,
    };

    Ok(Steering {
        default_order,
        overrides,
        all_down,
        fallback_region,
    })
}
