//! RFC 9111 as pure functions: may a response be stored, how old is it, is it fresh enough
//! for this request, and the conditional and range rules of RFC 9110 for answering from a
//! stored response. Times are seconds since the Unix epoch, passed in.

use http::header::{AUTHORIZATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, SET_COOKIE, VARY};
use http::{HeaderMap, Method, StatusCode};

use super::directives::{RequestDirectives, ResponseDirectives};

/// Heuristic freshness is a fraction of the time since Last-Modified (RFC 9111 §4.2.2
/// suggests 10%), never more than a day.
const HEURISTIC_FRACTION: f64 = 0.1;
const HEURISTIC_MAX: u64 = 86_400;

/// Statuses cacheable by default, so heuristic freshness may apply (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

pub fn http_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// What the cache keeps about a stored response to judge its freshness later.
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    /// When we sent the request and got the response (our clock).
    pub request_time: u64,
    pub response_time: u64,
    pub date: Option<u64>,
    pub age_header: u64,
    pub expires: Option<u64>,
    /// `Expires` was present but not a valid date: already expired (§5.3).
    pub expires_invalid: bool,
    pub last_modified: Option<u64>,
    pub directives: ResponseDirectives,
    pub status: StatusCode,
}

impl Freshness {
    pub fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        request_time: u64,
        response_time: u64,
    ) -> Self {
        let expires_present = headers.contains_key(EXPIRES);
        let expires = http_date(headers, EXPIRES);
        Self {
            request_time,
            response_time,
            date: http_date(headers, DATE),
            age_header: headers
                .get(http::header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            expires,
            expires_invalid: expires_present && expires.is_none(),
            last_modified: http_date(headers, LAST_MODIFIED),
            directives: ResponseDirectives::parse(headers),
            status,
        }
    }

    /// Freshness lifetime for a shared cache (§4.2.1): s-maxage, max-age, Expires - Date,
    /// else heuristic where allowed.
    pub fn lifetime(&self) -> u64 {
        let d = &self.directives;
        if let Some(s) = d.s_maxage {
            return s;
        }
        if let Some(m) = d.max_age {
            return m;
        }
        if self.expires_invalid {
            return 0;
        }
        if let Some(expires) = self.expires {
            let base = self.date.unwrap_or(self.response_time);
            return expires.saturating_sub(base);
        }
        if heuristically_cacheable(self.status) || d.public {
            if let Some(lm) = self.last_modified {
                let base = self.date.unwrap_or(self.response_time);
                let since = base.saturating_sub(lm) as f64;
                return ((since * HEURISTIC_FRACTION) as u64).min(HEURISTIC_MAX);
            }
        }
        0
    }

    fn has_explicit_expiry(&self) -> bool {
        self.directives.s_maxage.is_some()
            || self.directives.max_age.is_some()
            || self.expires.is_some()
            || self.expires_invalid
    }

    /// Current age (§4.2.3).
    pub fn age(&self, now: u64) -> u64 {
        let apparent = self
            .date
            .map(|d| self.response_time.saturating_sub(d))
            .unwrap_or(0);
        let delay = self.response_time.saturating_sub(self.request_time);
        let corrected = self.age_header + delay;
        let initial = apparent.max(corrected);
        initial + now.saturating_sub(self.response_time)
    }

    /// Seconds of freshness left (0 when stale).
    pub fn ttl(&self, now: u64) -> i64 {
        self.lifetime() as i64 - self.age(now) as i64
    }
}

/// Why a response is not stored (for Cache-Status detail and metrics).
pub type NotStored = &'static str;

/// May a shared cache store this response to this request (§3)?
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    req: &RequestDirectives,
    status: StatusCode,
    response: &HeaderMap,
    f: &Freshness,
) -> Result<(), NotStored> {
    let d = &f.directives;
    if method != Method::GET {
        return Err("method");
    }
    if req.no_store {
        return Err("request no-store");
    }
    if d.no_store {
        return Err("no-store");
    }
    if d.private {
        return Err("private");
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err("status");
    }
    if request.contains_key(AUTHORIZATION)
        && !(d.public || d.must_revalidate || d.s_maxage.is_some())
    {
        return Err("authorization");
    }
    // A response that sets a cookie is one user's: never hand it to another.
    if response.contains_key(SET_COOKIE) {
        return Err("set-cookie");
    }
    if vary_names(response).is_none() {
        return Err("vary *");
    }
    let cacheable = f.has_explicit_expiry()
        || d.public
        || d.no_cache
        || (heuristically_cacheable(status) && f.last_modified.is_some());
    if !cacheable {
        return Err("no freshness information");
    }
    Ok(())
}

/// The request header names a response varies on, lower-cased; None for `Vary: *`.
pub fn vary_names(response: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in response.get_all(VARY) {
        let Ok(text) = v.to_str() else { continue };
        for name in text.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    Some(names)
}

/// How a stored response may be used for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Fresh (or stale with the client's permission): serve it.
    Serve,
    /// Stale but within stale-while-revalidate: serve it and refresh in the background.
    ServeStaleAndRefresh,
    /// Ask the origin first (conditional request).
    Revalidate,
}

/// Defaults for stale-while-revalidate and stale-if-error when the response has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleDefaults {
    pub while_revalidate: u64,
    pub if_error: u64,
}

pub fn usable(f: &Freshness, req: &RequestDirectives, now: u64, defaults: StaleDefaults) -> Use {
    let d = &f.directives;
    if req.no_cache || d.no_cache {
        return Use::Revalidate;
    }
    let age = f.age(now);
    if req.max_age.is_some_and(|m| age > m) {
        return Use::Revalidate;
    }
    let lifetime = f.lifetime();
    if lifetime > age {
        let left = lifetime - age;
        if req.min_fresh.is_some_and(|m| left < m) {
            return Use::Revalidate;
        }
        return Use::Serve;
    }
    if d.forbids_stale() {
        return Use::Revalidate;
    }
    let staleness = age - lifetime;
    match req.max_stale {
        Some(None) => return Use::Serve,
        Some(Some(n)) if staleness <= n => return Use::Serve,
        _ => {}
    }
    let swr = d
        .stale_while_revalidate
        .unwrap_or(defaults.while_revalidate);
    if swr > 0 && staleness <= swr && req.max_age.is_none() {
        return Use::ServeStaleAndRefresh;
    }
    Use::Revalidate
}

/// May a stale response stand in for an origin that failed (RFC 5861 stale-if-error)?
pub fn stale_if_error(f: &Freshness, now: u64, defaults: StaleDefaults) -> bool {
    if f.directives.forbids_stale() {
        return false;
    }
    let staleness = f.age(now).saturating_sub(f.lifetime());
    let window = f.directives.stale_if_error.unwrap_or(defaults.if_error);
    window > 0 && staleness <= window
}

/// RFC 9110 §8.8.3.2 weak comparison.
fn weak_eq(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim().trim_start_matches("W/").to_string();
    strip(a) == strip(b)
}

/// Whether a client's conditional GET/HEAD is answered 304 by a stored response (§13.2.2:
/// If-None-Match first; If-Modified-Since only without it).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if let Some(inm) = request
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = stored.get(ETAG).and_then(|v| v.to_str().ok()) else {
            return inm.trim() == "*";
        };
        return inm.split(',').any(|t| t.trim() == "*" || weak_eq(t, etag));
    }
    // Most requests carry no condition: do not parse the stored date for nothing.
    let Some(ims) = http_date(request, http::header::IF_MODIFIED_SINCE) else {
        return false;
    };
    matches!(http_date(stored, LAST_MODIFIED), Some(lm) if lm <= ims)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable Range: send the whole representation.
    Full,
    /// Inclusive byte range.
    Partial(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range against a stored representation of `len` bytes. Several
/// ranges are answered with the whole body (allowed by RFC 9110 §14.2).
pub fn range(request: &HeaderMap, stored: &HeaderMap, len: u64) -> RangeAnswer {
    let Some(spec) = request
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return RangeAnswer::Full;
    };
    // If-Range: only a strong ETag match (or an exact date) lets the range through.
    if let Some(if_range) = request
        .get(http::header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        let etag = stored.get(ETAG).and_then(|v| v.to_str().ok());
        let ok = if if_range.trim_start().starts_with('"') {
            etag.is_some_and(|e| !e.starts_with("W/") && e == if_range.trim())
        } else {
            let lm = stored.get(LAST_MODIFIED).and_then(|v| v.to_str().ok());
            lm.is_some_and(|lm| lm == if_range.trim())
        };
        if !ok {
            return RangeAnswer::Full;
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if set.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), parse(first), parse(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial(len.saturating_sub(n), len - 1)
            }
        }
        (false, Some(a), last) => {
            if a >= len {
                return RangeAnswer::Unsatisfiable;
            }
            let b = match last {
                Some(b) if b < a => return RangeAnswer::Full,
                Some(b) => b.min(len - 1),
                None if last_is_empty(set) => len - 1,
                None => return RangeAnswer::Full,
            };
            RangeAnswer::Partial(a, b)
        }
        _ => RangeAnswer::Full,
    }
}

fn last_is_empty(set: &str) -> bool {
    set.trim().ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::test_support::header_map(pairs)
    }

    fn fresh(pairs: &[(&str, &str)], at: u64) -> Freshness {
        Freshness::from_response(StatusCode::OK, &h(pairs), at, at)
    }

    const T: u64 = 1_800_000_000;
    const D: &str = "Fri, 15 Jan 2027 08:00:00 GMT"; // = T

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=10")], T).lifetime(),
            10
        );
        assert_eq!(fresh(&[("cache-control", "max-age=60")], T).lifetime(), 60);
        let f = fresh(
            &[("date", D), ("expires", "Fri, 15 Jan 2027 08:01:40 GMT")],
            T,
        );
        assert_eq!(f.lifetime(), 100);
        assert_eq!(
            fresh(&[("expires", "0")], T).lifetime(),
            0,
            "invalid Expires is expired"
        );
    }

    #[test]
    fn heuristic_freshness_is_a_tenth_of_last_modified_age() {
        let f = fresh(
            &[
                ("date", D),
                ("last-modified", "Fri, 15 Jan 2027 07:00:00 GMT"),
            ],
            T,
        );
        assert_eq!(f.lifetime(), 360);
    }

    #[test]
    fn age_counts_age_header_delay_and_residence() {
        let mut f = fresh(&[("age", "5")], T);
        f.request_time = T - 2;
        assert_eq!(f.age(T), 7);
        assert_eq!(f.age(T + 10), 17);
    }

    #[test]
    fn storable_rules() {
        let get = Method::GET;
        let rd = RequestDirectives::default();
        let ok = |resp: &[(&str, &str)], req: &[(&str, &str)]| {
            let rh = h(resp);
            let f = Freshness::from_response(StatusCode::OK, &rh, T, T);
            storable(
                &get,
                &h(req),
                &RequestDirectives::parse(&h(req)),
                StatusCode::OK,
                &rh,
                &f,
            )
        };
        assert_eq!(ok(&[("cache-control", "max-age=60")], &[]), Ok(()));
        assert_eq!(
            ok(&[("cache-control", "max-age=60, private")], &[]),
            Err("private")
        );
        assert_eq!(ok(&[("cache-control", "no-store")], &[]), Err("no-store"));
        assert_eq!(
            ok(
                &[("cache-control", "max-age=60")],
                &[("cache-control", "no-store")]
            ),
            Err("request no-store")
        );
        assert_eq!(
            ok(
                &[("cache-control", "max-age=60")],
                &[("authorization", "Basic x")]
            ),
            Err("authorization")
        );
        assert_eq!(
            ok(
                &[("cache-control", "max-age=60, public")],
                &[("authorization", "Basic x")]
            ),
            Ok(())
        );
        assert_eq!(
            ok(
                &[("cache-control", "s-maxage=60")],
                &[("authorization", "Basic x")]
            ),
            Ok(())
        );
        assert_eq!(
            ok(
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                &[]
            ),
            Err("set-cookie")
        );
        assert_eq!(
            ok(&[("cache-control", "max-age=60"), ("vary", "*")], &[]),
            Err("vary *")
        );
        assert_eq!(ok(&[], &[]), Err("no freshness information"));
        assert_eq!(ok(&[("last-modified", D)], &[]), Ok(()), "heuristic");
        let rh = h(&[("cache-control", "max-age=60")]);
        let f = Freshness::from_response(StatusCode::OK, &rh, T, T);
        assert_eq!(
            storable(
                &Method::POST,
                &HeaderMap::new(),
                &rd,
                StatusCode::OK,
                &rh,
                &f
            ),
            Err("method")
        );
        assert_eq!(
            storable(
                &get,
                &HeaderMap::new(),
                &rd,
                StatusCode::PARTIAL_CONTENT,
                &rh,
                &f
            ),
            Err("status")
        );
    }

    #[test]
    fn request_directives_change_what_is_usable() {
        let f = fresh(&[("cache-control", "max-age=60")], T);
        let none = RequestDirectives::default();
        let d = StaleDefaults::default();
        assert_eq!(usable(&f, &none, T + 30, d), Use::Serve);
        assert_eq!(usable(&f, &none, T + 61, d), Use::Revalidate);
        let rd = |s: &str| RequestDirectives::parse(&h(&[("cache-control", s)]));
        assert_eq!(usable(&f, &rd("max-age=10"), T + 30, d), Use::Revalidate);
        assert_eq!(usable(&f, &rd("min-fresh=40"), T + 30, d), Use::Revalidate);
        assert_eq!(usable(&f, &rd("no-cache"), T + 1, d), Use::Revalidate);
        assert_eq!(usable(&f, &rd("max-stale=20"), T + 70, d), Use::Serve);
        assert_eq!(usable(&f, &rd("max-stale=5"), T + 70, d), Use::Revalidate);
        assert_eq!(usable(&f, &rd("max-stale"), T + 7000, d), Use::Serve);
    }

    #[test]
    fn stale_while_revalidate_and_must_revalidate() {
        let none = RequestDirectives::default();
        let d = StaleDefaults::default();
        let f = fresh(
            &[("cache-control", "max-age=60, stale-while-revalidate=30")],
            T,
        );
        assert_eq!(usable(&f, &none, T + 80, d), Use::ServeStaleAndRefresh);
        assert_eq!(usable(&f, &none, T + 100, d), Use::Revalidate);
        let f = fresh(
            &[(
                "cache-control",
                "max-age=60, must-revalidate, stale-while-revalidate=30",
            )],
            T,
        );
        assert_eq!(usable(&f, &none, T + 80, d), Use::Revalidate);
        let max_stale = RequestDirectives::parse(&h(&[("cache-control", "max-stale")]));
        assert_eq!(
            usable(&f, &max_stale, T + 80, d),
            Use::Revalidate,
            "must-revalidate beats max-stale"
        );
        let f = fresh(&[("cache-control", "max-age=60")], T);
        let defaults = StaleDefaults {
            while_revalidate: 10,
            if_error: 100,
        };
        assert_eq!(
            usable(&f, &none, T + 65, defaults),
            Use::ServeStaleAndRefresh
        );
        assert!(stale_if_error(&f, T + 150, defaults));
        assert!(!stale_if_error(&f, T + 170, defaults));
        // A zero window (the default) allows nothing, even at staleness zero.
        let f = fresh(&[("cache-control", "max-age=0")], T);
        assert_eq!(
            usable(&f, &none, T, StaleDefaults::default()),
            Use::Revalidate
        );
        assert!(!stale_if_error(&f, T, StaleDefaults::default()));
    }

    #[test]
    fn conditionals() {
        let stored = h(&[("etag", "\"v1\""), ("last-modified", D)]);
        assert!(not_modified(
            &h(&[("if-none-match", "\"v0\", W/\"v1\"")]),
            &stored
        ));
        assert!(!not_modified(&h(&[("if-none-match", "\"v2\"")]), &stored));
        assert!(not_modified(&h(&[("if-modified-since", D)]), &stored));
        assert!(!not_modified(
            &h(&[("if-modified-since", "Fri, 15 Jan 2027 07:00:00 GMT")]),
            &stored
        ));
        assert!(
            !not_modified(
                &h(&[("if-none-match", "\"v2\""), ("if-modified-since", D)]),
                &stored
            ),
            "If-None-Match wins"
        );
    }

    #[test]
    fn ranges() {
        let s = h(&[("etag", "\"v1\"")]);
        let r = |v: &str| range(&h(&[("range", v)]), &s, 100);
        assert_eq!(r("bytes=0-9"), RangeAnswer::Partial(0, 9));
        assert_eq!(r("bytes=90-"), RangeAnswer::Partial(90, 99));
        assert_eq!(r("bytes=-10"), RangeAnswer::Partial(90, 99));
        assert_eq!(r("bytes=50-500"), RangeAnswer::Partial(50, 99));
        assert_eq!(r("bytes=100-"), RangeAnswer::Unsatisfiable);
        assert_eq!(r("bytes=0-1,5-6"), RangeAnswer::Full);
        assert_eq!(r("items=0-1"), RangeAnswer::Full);
        assert_eq!(range(&HeaderMap::new(), &s, 100), RangeAnswer::Full);
        let with_if_range = h(&[("range", "bytes=0-9"), ("if-range", "\"v0\"")]);
        assert_eq!(range(&with_if_range, &s, 100), RangeAnswer::Full);
        let with_if_range = h(&[("range", "bytes=0-9"), ("if-range", "\"v1\"")]);
        assert_eq!(range(&with_if_range, &s, 100), RangeAnswer::Partial(0, 9));
    }

    #[test]
    fn vary_names_are_normalised() {
        assert_eq!(
            vary_names(&h(&[("vary", "Accept-Encoding, accept-language")])),
            Some(vec!["accept-encoding".into(), "accept-language".into()])
        );
        assert_eq!(vary_names(&h(&[("vary", "x, *")])), None);
    }
}
