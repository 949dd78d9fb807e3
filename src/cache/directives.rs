//! Cache-Control (RFC 9111 §5.2), parsed once per message into what the rules need.

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// Response directives a shared cache acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseDirectives {
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub no_store: bool,
    /// `no-cache` without field names: store, but validate before every use.
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub no_transform: bool,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

/// Request directives (RFC 9111 §5.2.1).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestDirectives {
    pub max_age: Option<u64>,
    /// `Some(None)`: any staleness accepted; `Some(Some(n))`: up to n seconds.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub no_cache: bool,
    pub no_store: bool,
    pub only_if_cached: bool,
    pub no_transform: bool,
}

/// Splits a Cache-Control value list into (name, value) pairs, names lower-cased, quotes
/// removed. Commas inside quoted strings do not split.
fn pairs(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        let mut items = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        for c in text.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    current.push(c);
                }
                ',' if !quoted => items.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        items.push(current);
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"').to_string())),
                None => (item, None),
            };
            out.push((name.to_ascii_lowercase(), value));
        }
    }
    out
}

/// Delta-seconds (RFC 9111 §1.2.2): a non-negative integer; too large saturates; anything
/// else is invalid (and the directive is then treated as the RFC says per directive).
fn seconds(v: &Option<String>) -> Option<u64> {
    let v = v.as_deref()?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::from(u32::MAX)))
}

impl ResponseDirectives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in pairs(headers) {
            match name.as_str() {
                // An invalid max-age makes the response stale (§4.2.1): 0.
                "max-age" => d.max_age = Some(seconds(&value).unwrap_or(0)),
                "s-maxage" => d.s_maxage = Some(seconds(&value).unwrap_or(0)),
                "no-store" => d.no_store = true,
                // no-cache="field": only those fields need revalidation; we treat the
                // response as a whole, which is the conservative reading.
                "no-cache" => d.no_cache = true,
                // private="field" lets a shared cache store the rest; we do not split
                // responses, so any private means not for us.
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" => d.must_revalidate = true,
                "proxy-revalidate" => d.proxy_revalidate = true,
                "no-transform" => d.no_transform = true,
                "stale-while-revalidate" => d.stale_while_revalidate = seconds(&value),
                "stale-if-error" => d.stale_if_error = seconds(&value),
                _ => {}
            }
        }
        d
    }

    /// May this stale response be served at all without the origin's word?
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

impl RequestDirectives {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        let list = pairs(headers);
        for (name, value) in &list {
            match name.as_str() {
                "max-age" => d.max_age = Some(seconds(value).unwrap_or(0)),
                "max-stale" => d.max_stale = Some(seconds(value)),
                "min-fresh" => d.min_fresh = Some(seconds(value).unwrap_or(0)),
                "no-cache" => d.no_cache = true,
                "no-store" => d.no_store = true,
                "only-if-cached" => d.only_if_cached = true,
                "no-transform" => d.no_transform = true,
                _ => {}
            }
        }
        // Pragma: no-cache means no-cache only when Cache-Control is absent (§5.4).
        if !headers.contains_key(CACHE_CONTROL) {
            let pragma_no_cache = headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                });
            d.no_cache |= pragma_no_cache;
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::test_support::header_map(pairs)
    }

    #[test]
    fn response_directives_parse_with_quotes_and_case() {
        let d = ResponseDirectives::parse(&headers(&[
            ("cache-control", "Public, MAX-AGE=60, s-maxage=\"120\""),
            (
                "cache-control",
                "stale-while-revalidate=30, no-cache=\"set-cookie, x\"",
            ),
        ]));
        assert!(d.public);
        assert_eq!(d.max_age, Some(60));
        assert_eq!(d.s_maxage, Some(120));
        assert_eq!(d.stale_while_revalidate, Some(30));
        assert!(d.no_cache);
    }

    #[test]
    fn invalid_max_age_means_stale() {
        let d = ResponseDirectives::parse(&headers(&[("cache-control", "max-age=soon")]));
        assert_eq!(d.max_age, Some(0));
        let d = ResponseDirectives::parse(&headers(&[("cache-control", "max-age=-5")]));
        assert_eq!(d.max_age, Some(0));
    }

    #[test]
    fn request_directives_and_pragma() {
        let d = RequestDirectives::parse(&headers(&[(
            "cache-control",
            "max-stale, min-fresh=5, only-if-cached",
        )]));
        assert_eq!(d.max_stale, Some(None));
        assert_eq!(d.min_fresh, Some(5));
        assert!(d.only_if_cached);
        let d = RequestDirectives::parse(&headers(&[("pragma", "no-cache")]));
        assert!(d.no_cache);
        let d = RequestDirectives::parse(&headers(&[
            ("pragma", "no-cache"),
            ("cache-control", "max-age=5"),
        ]));
        assert!(!d.no_cache, "Cache-Control present: Pragma ignored");
    }
}
