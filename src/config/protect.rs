//! Config of the proxy's protections: rate limits, request rules and Basic auth. Apart
//! from the rest of the proxy config because each has its own validation.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained requests per second.
    pub rps: u32,
    /// Requests allowed at once above the sustained rate (at least rps).
    #[serde(default)]
    pub burst: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) per_client: Option<RateConfig>,
    pub(super) global: Option<RateConfig>,
    pub(super) max_tracked_clients: Option<usize>,
    pub(super) max_connections_per_client: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub per_client: Option<RateConfig>,
    pub global: Option<RateConfig>,
    /// Distinct clients remembered at once (memory bound of the per-client limiter).
    pub max_tracked_clients: usize,
    pub max_connections_per_client: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: String,
    pub(super) action: RuleAction,
    /// Status for `deny` (default 403).
    pub(super) status: Option<u16>,
    #[serde(default)]
    pub(super) methods: Vec<String>,
    pub(super) path_prefix: Option<String>,
    pub(super) path_exact: Option<String>,
    pub(super) path_regex: Option<String>,
    pub(super) header: Option<String>,
    pub(super) header_regex: Option<String>,
    pub(super) query_regex: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Deny,
    Allow,
    Tag,
}

/// A request rule as written; compiled by `proxy::rules`.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    pub action: RuleAction,
    pub status: u16,
    pub methods: Vec<String>,
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub path_regex: Option<String>,
    pub header: Option<String>,
    pub header_regex: Option<String>,
    pub query_regex: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) realm: String,
    pub(super) users_file: Spanned<PathBuf>,
    #[serde(default)]
    pub(super) forward_authorization: bool,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub realm: String,
    pub users_file: PathBuf,
    /// Pass the client's Authorization header on to the origin (default: removed).
    pub forward_authorization: bool,
}

pub(super) fn rate_limit(src: &Source, rl: RawRateLimit) -> Result<RateLimitConfig, ConfigError> {
    for (k, q) in [
        ("rate_limit.per_client", &rl.per_client),
        ("rate_limit.global", &rl.global),
    ] {
        if q.is_some_and(|q| q.rps == 0) {
            return Err(src.error(format!("{k}.rps"), None, "must be at least 1"));
        }
    }
    let rate_limit = RateLimitConfig {
        per_client: rl.per_client,
        global: rl.global,
        max_tracked_clients: rl.max_tracked_clients.unwrap_or(100_000).max(1),
        max_connections_per_client: rl.max_connections_per_client,
    };
    Ok(rate_limit)
}

pub(super) fn rules(src: &Source, raw: Vec<RawRule>) -> Result<Vec<RuleConfig>, ConfigError> {
    let mut rules = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = format!("rules[{i}]");
        for (what, pattern) in [
            ("path_regex", &r.path_regex),
            ("header_regex", &r.header_regex),
            ("query_regex", &r.query_regex),
        ] {
            if let Some(p) = pattern {
                if let Err(e) = regex::Regex::new(p) {
                    return Err(src.error(
                        format!("{key}.{what}"),
                        None,
                        format!("bad regular expression: {e}"),
                    ));
                }
            }
        }
        if r.header_regex.is_some() && r.header.is_none() {
            return Err(src.error(
                format!("{key}.header_regex"),
                None,
                "needs `header` (the name)",
            ));
        }
        let status = r.status.unwrap_or(403);
        if !(400..=599).contains(&status) {
            return Err(src.error(format!("{key}.status"), None, "a deny status is 4xx or 5xx"));
        }
        rules.push(RuleConfig {
            name: r.name,
            action: r.action,
            status,
            methods: r.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            path_prefix: r.path_prefix,
            path_exact: r.path_exact,
            path_regex: r.path_regex,
            header: r.header.map(|h| h.to_ascii_lowercase()),
            header_regex: r.header_regex,
            query_regex: r.query_regex,
        });
    }

    Ok(rules)
}

/// A route's `auth`; `key` is the route's key path, for errors.
pub(super) fn auth(src: &Source, key: &str, a: RawAuth) -> Result<AuthConfig, ConfigError> {
    let users_file = src.resolve(a.users_file.get_ref());
    if !users_file.is_file() {
        return Err(src.error(
            format!("{key}.auth.users_file"),
            Some(a.users_file.span()),
            format!("{} does not exist", users_file.display()),
        ));
    }
    if a.realm.contains('"') || a.realm.is_empty() {
        return Err(src.error(
            format!("{key}.auth.realm"),
            None,
            "a non-empty realm without quotes",
        ));
    }
    Ok(AuthConfig {
        realm: a.realm,
        users_file,
        forward_authorization: a.forward_authorization,
    })
}
