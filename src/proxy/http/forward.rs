//! The proxied request path, top to bottom: check framing, route, admit, rewrite the
//! request for its origin, and take the path it calls for (the cache, a WebSocket
//! tunnel, or `exchange` with an origin); then count and log the answer.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, COOKIE, HOST, LOCATION, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;

use crate::metrics::{method_index, status_index};
use crate::proxy::answer::Answer;
use crate::proxy::body::{empty, full, ProxyBody};
use crate::proxy::error::ProxyError;
use crate::proxy::http::headers;
use crate::proxy::listen::tls::ClientIdentity;
use crate::proxy::route::router::RouteMatch;
use crate::proxy::upstream::exchange::Origin;
use crate::proxy::upstream::tunnel::{self, TunnelSlot};
use crate::proxy::{ProxyState, Shared};

/// What we know of the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub peer: SocketAddr,
    /// The listener's address (what the client connected to).
    pub local: SocketAddr,
    pub tls: bool,
    /// The client certificate that verified in the TLS handshake, if one was asked for
    /// and given.
    pub identity: Option<Arc<ClientIdentity>>,
}

/// A request body as a client sends it: hyper's, or none (`fast_h1` serves only
/// requests without one).
pub trait ClientBody:
    Body<Data = Bytes, Error: Into<crate::proxy::body::BoxError>> + Send + 'static
{
}

impl<B> ClientBody for B where
    B: Body<Data = Bytes, Error: Into<crate::proxy::body::BoxError>> + Send + 'static
{
}

/// Answers one client request. Everything up to the choice of path (routing, guards,
/// the request's rewriting) is done before the returned future is made, so that the
/// future holds only what crosses an await: the client's request is not carried in it,
/// and the future, which every request moves, stays small.
pub fn handle<'a, B: ClientBody>(
    shared: &'a Arc<Shared>,
    conn: ClientConn,
    tunnel: &'a TunnelSlot,
    req: Request<B>,
) -> impl Future<Output = Answer> + Send + 'a {
    let started = Instant::now();
    let state = shared.state.load_full();
    let method = method_index(req.method());
    // Only copied when someone will read it.
    let logged = shared
        .access_log
        .as_ref()
        .map(|_| crate::proxy::admin::access_log::LoggedRequest::of(&req));
    let step = prepare(shared, &state, &conn, req);
    async move {
        let outcome = match step {
            Ok(Step::Answered(outcome)) => Ok(outcome),
            Ok(Step::Forward(prepared)) => prepared.forward(tunnel).await,
            Err(failed) => Err(failed),
        };
        let (mut answer, route) = match outcome {
            Ok(outcome) => outcome,
            Err((e, route)) => {
                tracing::debug!(error = %e, client = %conn.peer, "request failed");
                (error_response(&e).into(), route)
            }
        };
        if conn.tls {
            if let Some(hsts) = route.and_then(|r| state.routes.get(r)?.hsts.as_ref()) {
                // Ours, not the origin's: a browser heeds only the first one it sees.
                answer.passed.remove("strict-transport-security");
                answer
                    .response
                    .headers_mut()
                    .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        let metrics = match route.and_then(|r| state.routes.get(r)) {
            Some(route) => &route.metrics,
            None => &shared.metrics.unrouted,
        };
        metrics
            .request(method, status_index(answer.response.status().as_u16()))
            .inc();
        metrics.duration.observe(started.elapsed().as_secs_f64());
        if let (Some((log, format)), Some(r)) = (&shared.access_log, logged) {
            let line = r.line(&answer, conn.peer.ip(), started, *format);
            log.write(line);
        }
        answer
    }
}

type Outcome = (Answer, Option<usize>);
type Failed = (ProxyError, Option<usize>);

/// What a request needs after its preparation. Not boxed although `Forward` is the
/// larger: it lives on the stack for one call, and a box would be an allocation per
/// request.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// Answered without an origin: `OPTIONS *`, a redirect to HTTPS.
    Answered(Outcome),
    Forward(Prepared),
}

/// A request routed, admitted and rewritten for its origin.
struct Prepared {
    origin: Origin,
    parts: http::request::Parts,
    body: ProxyBody,
    bodyless: bool,
    path: OriginPath,
}

/// How a prepared request reaches its origin.
enum OriginPath {
    WebSocket(hyper::upgrade::OnUpgrade),
    /// A GET or HEAD on a caching route.
    Cached,
    /// Any other method on a caching route.
    PassUnsafe,
    Pass,
}

fn prepare<B: ClientBody>(
    shared: &Arc<Shared>,
    state: &Arc<ProxyState>,
    conn: &ClientConn,
    mut req: Request<B>,
) -> Result<Step, Failed> {
    check_framing(&req).map_err(|e| (e, None))?;
    if req.method() == Method::OPTIONS && req.uri() == "*" {
        // RFC 9110 §9.3.7: a question about the server itself, in effect a ping. We are
        // the server the client addressed, so we answer; routing "*" would say 404.
        return Ok(Step::Answered((server_options().into(), None)));
    }
    let host = headers::request_host(req.uri(), req.headers()).map(str::to_ascii_lowercase);
    let route_index = match state.router.route(host.as_deref(), req.uri().path()) {
        RouteMatch::Route(i) => i,
        RouteMatch::UnknownHost => return Err((ProxyError::UnknownHost(host), None)),
        RouteMatch::NoPath => return Err((ProxyError::NoRoute, None)),
    };
    let fail = |e| (e, Some(route_index));
    let route = &state.routes[route_index];
    let client = headers::effective_client(
        conn.peer.ip(),
        req.headers(),
        &state.config.forwarding.trusted_proxies,
    );
    crate::proxy::route::guard::admit(shared, state, route_index, client, &mut req)
        .map_err(fail)?;
    if let Some(auth) = &state.config.tls.client_auth {
        client_certificate_headers(req.headers_mut(), auth, conn.identity.as_deref());
    }
    if route.require_client_cert && conn.identity.is_none() {
        return Err(fail(ProxyError::ClientCertRequired));
    }
    if route.redirect_https && !conn.tls {
        let answer = redirect_to_https(host.as_deref().unwrap_or(""), req.uri()).into();
        return Ok(Step::Answered((answer, Some(route_index))));
    }
    let limit = state.config.limits.max_body_bytes;
    if let Some(len) = declared_length(&req) {
        if len > limit {
            return Err(fail(ProxyError::BodyTooLarge { limit }));
        }
    }
    let upstream = state.upstreams[route.upstream].clone();
    let sticky = upstream
        .sticky_cookie
        .as_deref()
        .and_then(|name| cookie_value(req.headers(), name).map(str::to_string));

    // Taken before the request is split: hyper finds the upgrade in its extensions.
    let websocket = tunnel::wants_websocket(req.version(), req.method(), req.headers())
        .then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let version = parts.version;
    headers::remove_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(HOST) {
        // HTTP/2 clients send :authority, HTTP/1.1 origins need Host.
        if let Some(h) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(HOST, h);
        }
    }
    parts.uri = origin_form(&parts.uri);
    parts.version = Version::HTTP_11;

    let bodyless = body.is_end_stream();
    let body: ProxyBody = if bodyless {
        empty()
    } else {
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .map_err(|e| e as crate::proxy::body::BoxError)
            .boxed_unsync()
    };
    let path = match websocket {
        Some(client) => OriginPath::WebSocket(client),
        None if route.cache && (parts.method == Method::GET || parts.method == Method::HEAD) => {
            OriginPath::Cached
        }
        None if route.cache => OriginPath::PassUnsafe,
        None => OriginPath::Pass,
    };
    let origin = Origin {
        shared: shared.clone(),
        state: state.clone(),
        route: route_index,
        upstream,
        sticky,
        client_version: version,
        client: conn.peer.ip(),
        peer: conn.peer,
        local: conn.local,
        tls: conn.tls,
        host,
    };
    Ok(Step::Forward(Prepared {
        origin,
        parts,
        body,
        bodyless,
        path,
    }))
}

impl Prepared {
    // Fields are used where they lie (not moved out into locals first): the future keeps
    // `self` whole, and locals would be a second copy.
    async fn forward(self, tunnel: &TunnelSlot) -> Result<Outcome, Failed> {
        let origin = &self.origin;
        let scheme = if origin.tls { "https" } else { "http" };
        let host = origin.host.as_deref().unwrap_or("");
        // The paths to the origin are boxed, each in a statement of its own (a temporary
        // in the awaiting statement would keep its unboxed size in this future): a cache
        // hit should not carry, and move, the state of a fetch.
        let answer = match self.path {
            OriginPath::WebSocket(client) => {
                let upgrade = Box::pin(origin.upgrade(self.parts, client, tunnel));
                upgrade.await.map(Answer::from)
            }
            OriginPath::Cached => {
                crate::proxy::cached::serve::serve(origin, scheme, host, self.parts)
                    .await
                    .map(Answer::from)
            }
            OriginPath::PassUnsafe => {
                let pass = Box::pin(crate::proxy::cached::serve::pass_unsafe(
                    origin,
                    scheme,
                    host,
                    self.parts,
                    self.body,
                    self.bodyless,
                ));
                pass.await.map(Answer::from)
            }
            OriginPath::Pass => {
                let pass = Box::pin(origin.pass(self.parts, self.body, self.bodyless));
                pass.await
            }
        };
        let route = Some(origin.route);
        answer.map(|a| (a, route)).map_err(|e| (e, route))
    }
}

/// HTTP/1.1 framing that different parsers could read differently is refused before
/// anything is forwarded (RFC 9112 §6.3): both Content-Length and Transfer-Encoding, or
/// several Content-Length values.
pub(crate) fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let h = req.headers();
    if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        return Err(ProxyError::BadFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if h.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return Err(ProxyError::BadFraming("several Content-Length headers"));
    }
    if let Some(te) = h.get(TRANSFER_ENCODING) {
        let chunked_last = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_last {
            return Err(ProxyError::BadFraming(
                "Transfer-Encoding without final chunked",
            ));
        }
    }
    Ok(())
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The path and query only: origins get origin-form request targets.
fn origin_form(uri: &Uri) -> Uri {
    // What HTTP/1.1 clients send already: nothing to rebuild.
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() {
        return uri.clone();
    }
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

pub fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The answer to `OPTIONS *`: what any route may be asked.
fn server_options() -> Response<ProxyBody> {
    let mut resp = Response::new(empty());
    resp.headers_mut().insert(
        http::header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    resp
}

fn redirect_to_https(host: &str, uri: &Uri) -> Response<ProxyBody> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut resp = Response::new(empty());
    // 308 keeps the method and body, unlike 301/302.
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{host}{pq}")) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

pub fn error_response(e: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from_static(e.public_message().as_bytes())));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match e {
        ProxyError::RateLimited {
            retry_after_secs, ..
        } => {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(*retry_after_secs),
            );
        }
        ProxyError::Unauthorized { realm } => {
            if let Ok(v) = HeaderValue::from_str(&crate::proxy::route::auth::challenge(realm)) {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
        _ => {}
    }
    resp
}

/// The verified client certificate, told to the origin in the configured headers; any
/// such header the client sent itself is removed first, so none can be claimed.
fn client_certificate_headers(
    headers: &mut http::HeaderMap,
    auth: &crate::config::proxy::ClientAuth,
    identity: Option<&ClientIdentity>,
) {
    headers.remove(auth.subject_header.as_str());
    headers.remove(auth.fingerprint_header.as_str());
    let Some(id) = identity else {
        return;
    };
    for (name, value) in [
        (&auth.subject_header, &id.subject),
        (&auth.fingerprint_header, &id.sha256),
    ] {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert!(check_framing(&req(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
        assert!(check_framing(&req(&[("content-length", "5"), ("content-length", "5")])).is_err());
        assert!(check_framing(&req(&[("transfer-encoding", "chunked, gzip")])).is_err());
        assert!(check_framing(&req(&[("transfer-encoding", "gzip, chunked")])).is_ok());
        assert!(check_framing(&req(&[("content-length", "5")])).is_ok());
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = req(&[("cookie", "a=1; geoedge_sticky=abc; b=2")]);
        assert_eq!(cookie_value(h.headers(), "geoedge_sticky"), Some("abc"));
        assert_eq!(cookie_value(h.headers(), "nope"), None);
    }

    #[test]
    fn origin_form_drops_scheme_and_authority() {
        let u: Uri = "https://www.example.test/a/b?c=d".parse().unwrap();
        assert_eq!(origin_form(&u), "/a/b?c=d");
        let u: Uri = "/".parse().unwrap();
        assert_eq!(origin_form(&u), "/");
    }
}
