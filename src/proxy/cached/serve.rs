//! The cache on the request path: look up, decide with the RFC 9111 rules, answer from
//! the store (see `cache_answer`), or fetch, coalesced, and store; compression of stored
//! variants and invalidation by unsafe methods.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, AGE, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_LOCATION, ETAG, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, LOCATION,
    RANGE, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;

use crate::cache::body_file::BodyFile;
use crate::cache::coalesce::{self, Coalescer, Outcome, Role};
use crate::cache::directives::RequestDirectives;
use crate::cache::rules::{self, Freshness, StaleDefaults, Use};
use crate::cache::store::{self, Coding, Store, Variant};
use crate::cache::{compress, key};
use crate::config::proxy::CacheConfig;
use crate::proxy::body::{empty, ProxyBody};
use crate::proxy::cached::respond::{gateway_timeout, pass_through, respond, CACHE_STATUS};
use crate::proxy::error::ProxyError;
use crate::proxy::upstream::exchange::Origin;

/// The cache's state in a proxy process; it outlives config reloads.
pub struct CacheRuntime {
    pub store: Store,
    fills: Coalescer,
    refreshes: Coalescer,
    pub config: CacheConfig,
    pub purge_token: Option<Vec<u8>>,
}

impl CacheRuntime {
    pub fn new(config: &CacheConfig) -> anyhow::Result<Self> {
        let purge_token = config
            .purge_token_file
            .as_deref()
            .map(|p| std::fs::read(p).map(|t| t.trim_ascii().to_vec()))
            .transpose()?;
        Ok(Self {
            store: Store::new(config.max_bytes, config.max_object_bytes),
            fills: Coalescer::default(),
            refreshes: Coalescer::default(),
            config: config.clone(),
            purge_token,
        })
    }

    fn defaults(&self) -> StaleDefaults {
        StaleDefaults {
            while_revalidate: self.config.stale_while_revalidate.as_secs(),
            if_error: self.config.stale_if_error.as_secs(),
        }
    }
}

fn now() -> u64 {
    crate::process::clock::unix_ms() / 1000
}

/// GET or HEAD on a caching route.
pub async fn serve(
    origin: &Origin,
    scheme: &str,
    host: &str,
    parts: Parts,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The paths that go to the origin are boxed (see forward::Prepared::forward).
    let Some(cache) = origin.shared.cache.as_ref() else {
        let fetch = Box::pin(origin.fetch(parts, empty(), true));
        return fetch.await;
    };
    let key = key(
        scheme,
        host,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    let req = RequestDirectives::parse(&parts.headers);
    let m = &origin.shared.metrics;
    let compress = origin.state.routes[origin.route].compress;

    if let Some(identity) = lookup_identity(&cache.store, &key, &parts.headers) {
        let t = now();
        match rules::usable(&identity.freshness, &req, t, cache.defaults()) {
            Use::Serve => {
                m.cache_hit.inc();
                let stale = identity.freshness.ttl(t) < 0;
                if stale {
                    m.cache_stale_max_stale.inc();
                }
                let v = encoded(cache, &key, &identity, &parts.headers, &req, compress).await;
                return Ok(respond(&v, &parts, t, "hit", compress));
            }
            Use::ServeStaleAndRefresh => {
                m.cache_stale_while_revalidate.inc();
                refresh_in_background(origin, &key, &parts, &identity);
                let v = encoded(cache, &key, &identity, &parts.headers, &req, compress).await;
                return Ok(respond(
                    &v,
                    &parts,
                    t,
                    "hit; detail=stale-while-revalidate",
                    compress,
                ));
            }
            Use::Revalidate => {
                if req.only_if_cached {
                    return Ok(gateway_timeout());
                }
                let revalidation = Box::pin(revalidate(
                    origin, cache, &key, parts, identity, &req, compress,
                ));
                return revalidation.await;
            }
        }
    }
    if req.only_if_cached {
        m.cache_miss.inc();
        return Ok(gateway_timeout());
    }
    let filling = Box::pin(fill(origin, cache, &key, parts, &req, compress));
    filling.await
}

/// Unsafe methods on a caching route: forwarded, and a success invalidates what they
/// changed (RFC 9111 §4.4): the target, and Location / Content-Location on the same host.
pub async fn pass_unsafe(
    origin: &Origin,
    scheme: &str,
    host: &str,
    parts: Parts,
    body: ProxyBody,
    bodyless: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let unsafe_method = !matches!(parts.method, Method::OPTIONS | Method::TRACE);
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let mut resp = origin.fetch(parts, body, bodyless).await?;
    if let Some(cache) = origin.shared.cache.as_ref() {
        let s = resp.status();
        if unsafe_method && (s.is_success() || s.is_redirection()) {
            let mut targets = vec![target];
            for h in [LOCATION, CONTENT_LOCATION] {
                if let Some(t) = resp
                    .headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| same_host_target(v, host))
                {
                    targets.push(t);
                }
            }
            for t in targets {
                // Both schemes: it is the same resource behind either listener.
                for sch in ["http", "https"] {
                    cache.store.purge(&key(sch, host, &t));
                }
            }
        }
        let _ = scheme;
        resp.headers_mut().insert(
            CACHE_STATUS.clone(),
            HeaderValue::from_static("geoedge; fwd=method"),
        );
    }
    Ok(resp)
}

/// A Location or Content-Location value as a target on `host`, if it is one.
fn same_host_target(value: &str, host: &str) -> Option<String> {
    if value.starts_with('/') {
        return Some(value.to_string());
    }
    let uri: http::Uri = value.parse().ok()?;
    if uri.host()?.eq_ignore_ascii_case(host) {
        return uri.path_and_query().map(|p| p.as_str().to_string());
    }
    None
}

fn lookup_identity(store: &Store, key: &str, headers: &HeaderMap) -> Option<Arc<Variant>> {
    store.variant(key, headers, Coding::Identity)
}

/// The variant to send this client: a compressed copy of the identity response when the
/// route compresses, the client accepts it and the response qualifies (compressed once,
/// then cached beside the identity copy).
async fn encoded(
    cache: &CacheRuntime,
    key: &str,
    identity: &Arc<Variant>,
    request: &HeaderMap,
    req: &RequestDirectives,
    compress: bool,
) -> Arc<Variant> {
    match stored_encoding(cache, key, identity, request, req, compress) {
        Ok(variant) => variant,
        Err(want) => {
            // Boxed: compressing happens once per object, and its future is large.
            let compressing = Box::pin(compress_variant(cache, key, identity, request, want));
            compressing.await
        }
    }
}

/// The variant to send when it is already at hand (identity, or a compressed copy in the
/// cache); otherwise the coding to compress to.
fn stored_encoding(
    cache: &CacheRuntime,
    key: &str,
    identity: &Arc<Variant>,
    request: &HeaderMap,
    req: &RequestDirectives,
    compress: bool,
) -> Result<Arc<Variant>, Coding> {
    if !compress || identity.status != StatusCode::OK {
        return Ok(identity.clone());
    }
    let want = store::preferred_coding(request);
    if want == Coding::Identity
        || !compress::eligible(
            &identity.headers,
            identity.body.len(),
            cache.config.compress_min_bytes,
            &identity.freshness.directives,
            req.no_transform,
        )
    {
        return Ok(identity.clone());
    }
    match cache.store.variant(key, request, want) {
        Some(v) if v.vary_values == identity.vary_values => Ok(v),
        _ => Err(want),
    }
}

/// Compresses the identity variant to `want`, stores the result beside it and returns it
/// (the identity variant if compression fails).
async fn compress_variant(
    cache: &CacheRuntime,
    key: &str,
    identity: &Arc<Variant>,
    request: &HeaderMap,
    want: Coding,
) -> Arc<Variant> {
    let Ok(body) = compress::encode(want, &identity.body).await else {
        return identity.clone();
    };
    let variant = Variant {
        vary_values: identity.vary_values.clone(),
        coding: want,
        status: identity.status,
        headers: identity.headers.clone(),
        body,
        file: None,
        freshness: identity.freshness.clone(),
        served: std::sync::OnceLock::new(),
    };
    let vary = cache
        .store
        .lookup(key, request)
        .map(|(e, _)| e.vary.clone())
        .unwrap_or_default();
    let variant = Arc::new(variant);
    cache.store.insert(key, vary, clone_variant(&variant));
    variant
}

fn clone_variant(v: &Variant) -> Variant {
    Variant {
        vary_values: v.vary_values.clone(),
        coding: v.coding,
        status: v.status,
        headers: v.headers.clone(),
        body: v.body.clone(),
        file: v.file.clone(),
        freshness: v.freshness.clone(),
        served: std::sync::OnceLock::new(),
    }
}

/// The request we send the origin to fill or refresh the cache: always GET (a HEAD is
/// answered from the stored GET), without the client's own conditionals and ranges (we
/// want the whole representation), with our validators when revalidating.
fn origin_request(parts: &Parts, validators: Option<&HeaderMap>) -> Parts {
    let mut p = parts.clone();
    p.method = Method::GET;
    for h in [
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_RANGE,
        RANGE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
    ] {
        p.headers.remove(h);
    }
    if let Some(stored) = validators {
        if let Some(etag) = stored.get(ETAG) {
            p.headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = stored.get(LAST_MODIFIED) {
            p.headers.insert(IF_MODIFIED_SINCE, lm.clone());
        }
    }
    p
}

/// What a body turned out to be when read up to the object limit.
enum Collected {
    Whole(Bytes),
    /// Longer than the limit: what was read, and the rest still streaming.
    TooBig(Bytes, ProxyBody),
}

async fn collect_up_to(mut body: ProxyBody, limit: u64) -> Result<Collected, String> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > limit {
                return Ok(Collected::TooBig(buf.freeze(), body));
            }
        }
    }
    Ok(Collected::Whole(buf.freeze()))
}

/// A miss: fetch once for everyone asking at the same time, store if allowed, answer.
async fn fill(
    origin: &Origin,
    cache: &CacheRuntime,
    key: &str,
    parts: Parts,
    req: &RequestDirectives,
    compress: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let m = &origin.shared.metrics;
    match cache.fills.join(key) {
        Role::Follower(rx) => {
            m.cache_coalesced.inc();
            if coalesce::wait(rx, cache.config.coalesce_timeout).await == Outcome::Stored {
                if let Some(identity) = lookup_identity(&cache.store, key, &parts.headers) {
                    m.cache_hit.inc();
                    let v = encoded(cache, key, &identity, &parts.headers, req, compress).await;
                    return Ok(respond(&v, &parts, now(), "hit; collapsed", compress));
                }
            }
            // Not stored (or timed out): go to the origin ourselves, uncoalesced.
            m.cache_miss.inc();
            let resp = origin
                .fetch(origin_request(&parts, None), empty(), true)
                .await?;
            Ok(pass_through(resp, &parts, "fwd=miss; detail=not-stored"))
        }
        Role::Leader(leader) => {
            m.cache_miss.inc();
            let request_time = now();
            let resp = origin
                .fetch(origin_request(&parts, None), empty(), true)
                .await?;
            let (outcome, response) = store_or_pass(
                origin,
                cache,
                key,
                &parts,
                req,
                resp,
                request_time,
                "fwd=uri-miss",
                compress,
            )
            .await?;
            leader.finish(outcome);
            Ok(response)
        }
    }
}

/// Stores an origin response when RFC 9111 allows and it fits, then answers from the
/// stored copy; otherwise passes it through.
#[allow(clippy::too_many_arguments)]
async fn store_or_pass(
    origin: &Origin,
    cache: &CacheRuntime,
    key: &str,
    parts: &Parts,
    req: &RequestDirectives,
    resp: Response<ProxyBody>,
    request_time: u64,
    fwd: &str,
    compress: bool,
) -> Result<(Outcome, Response<ProxyBody>), ProxyError> {
    let m = &origin.shared.metrics;
    let response_time = now();
    let (mut head, body) = resp.into_parts();
    let freshness =
        Freshness::from_response(head.status, &head.headers, request_time, response_time);
    let verdict = rules::storable(
        &Method::GET,
        &parts.headers,
        req,
        head.status,
        &head.headers,
        &freshness,
    );
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_big = declared.is_some_and(|n| n > cache.config.max_object_bytes);
    let (Ok(()), false) = (verdict, too_big) else {
        m.cache_uncacheable.inc();
        let detail = match verdict {
            Err(reason) => reason.replace(' ', "-"),
            Ok(()) => "too-large".to_string(),
        };
        let resp = Response::from_parts(head, body);
        return Ok((
            Outcome::NotStored,
            pass_through(resp, parts, &format!("{fwd}; detail={detail}")),
        ));
    };
    let collected = collect_up_to(body, cache.config.max_object_bytes)
        .await
        .map_err(|message| ProxyError::Upstream {
            origin: origin.upstream.name.clone(),
            message,
        })?;
    match collected {
        Collected::TooBig(prefix, rest) => {
            m.cache_uncacheable.inc();
            let resp = Response::from_parts(
                head,
                crate::proxy::body::PrefixedBody::new(prefix, rest).boxed_unsync(),
            );
            Ok((
                Outcome::NotStored,
                pass_through(resp, parts, &format!("{fwd}; detail=too-large")),
            ))
        }
        Collected::Whole(bytes) => {
            head.headers.remove(AGE);
            head.headers.remove(TRANSFER_ENCODING);
            head.headers.remove(CONTENT_LENGTH);
            let vary = rules::vary_names(&head.headers).unwrap_or_default();
            let (body, file) = match BodyFile::store(&bytes) {
                Some((mapped, file)) => (mapped, Some(file)),
                None => (bytes, None),
            };
            let variant = Variant {
                vary_values: store::vary_values(&vary, &parts.headers),
                coding: Coding::Identity,
                status: head.status,
                headers: head.headers,
                body,
                file,
                freshness,
                served: std::sync::OnceLock::new(),
            };
            let stored = cache.store.insert(key, vary, clone_variant(&variant));
            let variant = Arc::new(variant);
            let v = encoded(cache, key, &variant, &parts.headers, req, compress).await;
            let outcome = if stored {
                Outcome::Stored
            } else {
                Outcome::NotStored
            };
            let status = if stored {
                format!("{fwd}; stored")
            } else {
                fwd.to_string()
            };
            Ok((
                outcome,
                respond(&v, parts, response_time, &status, compress),
            ))
        }
    }
}

/// A stored response no longer fresh enough: ask the origin with our validators.
async fn revalidate(
    origin: &Origin,
    cache: &CacheRuntime,
    key: &str,
    parts: Parts,
    stored: Arc<Variant>,
    req: &RequestDirectives,
    compress: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let m = &origin.shared.metrics;
    let leader = match cache.fills.join(key) {
        Role::Leader(l) => Some(l),
        Role::Follower(rx) => {
            m.cache_coalesced.inc();
            if coalesce::wait(rx, cache.config.coalesce_timeout).await == Outcome::Stored {
                if let Some(fresh) = lookup_identity(&cache.store, key, &parts.headers) {
                    if rules::usable(&fresh.freshness, req, now(), cache.defaults()) == Use::Serve {
                        m.cache_hit.inc();
                        let v = encoded(cache, key, &fresh, &parts.headers, req, compress).await;
                        return Ok(respond(&v, &parts, now(), "hit; collapsed", compress));
                    }
                }
            }
            None
        }
    };
    let (outcome, response) = refresh(origin, cache, key, &parts, &stored, req, compress).await?;
    if let Some(l) = leader {
        l.finish(outcome);
    }
    Ok(response)
}

/// The conditional request and what follows from its answer.
async fn refresh(
    origin: &Origin,
    cache: &CacheRuntime,
    key: &str,
    parts: &Parts,
    stored: &Arc<Variant>,
    req: &RequestDirectives,
    compress: bool,
) -> Result<(Outcome, Response<ProxyBody>), ProxyError> {
    let m = &origin.shared.metrics;
    let request_time = now();
    let fetched = origin
        .fetch(origin_request(parts, Some(&stored.headers)), empty(), true)
        .await;
    let t = now();
    let stale_ok = rules::stale_if_error(&stored.freshness, t, cache.defaults());
    match fetched {
        Ok(resp) if resp.status() == StatusCode::NOT_MODIFIED => {
            m.cache_revalidated_not_modified.inc();
            // RFC 9111 §4.3.4: the 304's headers replace the stored ones; the body stays.
            let mut headers = stored.headers.clone();
            for (name, value) in resp.headers() {
                if name != CONTENT_LENGTH && name != TRANSFER_ENCODING && name != CONTENT_ENCODING {
                    headers.insert(name.clone(), value.clone());
                }
            }
            headers.remove(AGE);
            let freshness = Freshness::from_response(stored.status, &headers, request_time, t);
            let vary = rules::vary_names(&headers).unwrap_or_default();
            let updated = Variant {
                vary_values: stored.vary_values.clone(),
                coding: Coding::Identity,
                status: stored.status,
                headers,
                body: stored.body.clone(),
                file: stored.file.clone(),
                freshness,
                served: std::sync::OnceLock::new(),
            };
            cache.store.insert(key, vary, clone_variant(&updated));
            let updated = Arc::new(updated);
            let v = encoded(cache, key, &updated, &parts.headers, req, compress).await;
            Ok((
                Outcome::Stored,
                respond(&v, parts, t, "fwd=stale; fwd-status=304", compress),
            ))
        }
        Ok(resp) if resp.status().is_server_error() && stale_ok => {
            m.cache_stale_if_error.inc();
            let code = resp.status().as_u16();
            let v = encoded(cache, key, stored, &parts.headers, req, compress).await;
            let status = format!("fwd=stale; fwd-status={code}; detail=stale-if-error");
            Ok((Outcome::NotStored, respond(&v, parts, t, &status, compress)))
        }
        Ok(resp) => {
            m.cache_revalidated_modified.inc();
            store_or_pass(
                origin,
                cache,
                key,
                parts,
                req,
                resp,
                request_time,
                "fwd=stale",
                compress,
            )
            .await
        }
        Err(_) if stale_ok => {
            m.cache_stale_if_error.inc();
            let v = encoded(cache, key, stored, &parts.headers, req, compress).await;
            Ok((
                Outcome::NotStored,
                respond(&v, parts, t, "fwd=stale; detail=stale-if-error", compress),
            ))
        }
        Err(e) => {
            m.cache_revalidation_failed.inc();
            Err(e)
        }
    }
}

/// stale-while-revalidate: one refresh per key at a time, off the request path.
fn refresh_in_background(origin: &Origin, key: &str, parts: &Parts, stored: &Arc<Variant>) {
    let Some(cache) = origin.shared.cache.as_ref() else {
        return;
    };
    let Role::Leader(leader) = cache.refreshes.join(key) else {
        return;
    };
    let origin = origin.clone();
    let key = key.to_string();
    let parts = parts.clone();
    let stored = stored.clone();
    tokio::spawn(async move {
        let Some(cache) = origin.shared.cache.as_ref() else {
            return;
        };
        let req = RequestDirectives::default();
        let outcome = match refresh(&origin, cache, &key, &parts, &stored, &req, false).await {
            Ok((outcome, _response)) => outcome,
            Err(e) => {
                tracing::debug!(key = %key, error = %e, "background refresh failed");
                Outcome::NotStored
            }
        };
        leader.finish(outcome);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_targets_on_the_same_host_only() {
        assert_eq!(
            same_host_target("/a?b", "www.example.test").as_deref(),
            Some("/a?b")
        );
        assert_eq!(
            same_host_target("https://WWW.example.test/x", "www.example.test").as_deref(),
            Some("/x")
        );
        assert_eq!(
            same_host_target("https://other.test/x", "www.example.test"),
            None
        );
    }
}
