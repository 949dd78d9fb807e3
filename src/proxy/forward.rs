//! The proxied request path, top to bottom: check framing, route, pick an origin, forward
//! (retrying once where that is safe), and pass the response back.
//!
//! Retry rule (written down, as Pingora's failover guide does):
//! - a request that never reached the origin (connect error or timeout) is retried once on
//!   another origin, whatever its method: it is still whole;
//! - an idempotent request without a body whose connection broke before response headers
//!   is retried once on another origin (its head is kept for that);
//! - when the connection that broke was a pooled keep-alive one that the origin closed
//!   before answering (or answered with 408 and a close: its idle timeout met our request),
//!   the origin is not at fault: the request goes to it again on a new connection, and
//!   the retry on another origin is still to be had;
//! - nothing else is retried: a request whose body was sent may have had its effect.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, COOKIE, HOST, LOCATION, SET_COOKIE, TRANSFER_ENCODING,
    UPGRADE, VIA,
};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;

use super::access_log::ServedBy;
use super::answer::Answer;
use super::body::{empty, full, OriginBody, ProxyBody};
use super::error::ProxyError;
use super::headers::{self, ForwardContext};
use super::origin_conn::{OriginConn, ResponseHead, SendError};
use super::router::RouteMatch;
use super::tunnel::{self, Tunnel, TunnelSlot};
use super::upstream::{InFlight, Upstream};
use super::{ProxyState, Shared};
use crate::metrics::{method_index, status_index};

/// What we know of the client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// A request body as a client sends it: hyper's, or none (`fast_h1` serves only
/// requests without one).
pub trait ClientBody:
    Body<Data = Bytes, Error: Into<super::body::BoxError>> + Send + 'static
{
}

impl<B> ClientBody for B where
    B: Body<Data = Bytes, Error: Into<super::body::BoxError>> + Send + 'static
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
        .map(|_| super::access_log::LoggedRequest::of(&req));
    let step = prepare(shared, &state, conn, req);
    async move {
        let outcome = match step {
            Ok(Step::Answered(outcome)) => Ok(outcome),
            Ok(Step::Forward(prepared)) => prepared.forward(tunnel).await,
            Err(failed) => Err(failed),
        };
        let (answer, route) = match outcome {
            Ok(outcome) => outcome,
            Err((e, route)) => {
                tracing::debug!(error = %e, client = %conn.peer, "request failed");
                (error_response(&e).into(), route)
            }
        };
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

/// What a request needs after its preparation.
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
    conn: ClientConn,
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
    super::guard::admit(shared, state, route_index, client, &mut req).map_err(fail)?;
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
            .map_err(|e| e as super::body::BoxError)
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
            OriginPath::Cached => super::cached::serve(origin, scheme, host, self.parts)
                .await
                .map(Answer::from),
            OriginPath::PassUnsafe => {
                let pass = Box::pin(super::cached::pass_unsafe(
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

/// How far the retry rule has gone for one request. A stale keep-alive connection costs no
/// failover: the next attempt goes to the same origin on a new connection, which is never
/// stale, so the attempts stay bounded (at most four: a stale connection and a new one, at
/// each of two origins).
#[derive(Default)]
struct Attempts {
    attempts: u32,
    failed_over: bool,
    /// The origin whose pooled connection was stale: the next attempt opens a new one to it.
    again_on: Option<usize>,
}

impl Attempts {
    /// Whether the one retry on another origin is still to be had (and takes it).
    fn take_failover(&mut self) -> bool {
        !std::mem::replace(&mut self.failed_over, true)
    }
}

/// A 408 that closes the connection: the origin's answer to a request that reached a
/// keep-alive connection as it was timed out, not to the request itself.
fn idle_timed_out(head: &ResponseHead, conn: &OriginConn) -> bool {
    head.status == StatusCode::REQUEST_TIMEOUT && !conn.is_reusable()
}

/// Everything needed to send one request to a route's upstream; cheap to clone (a cache
/// refresh in the background takes its own copy).
#[derive(Clone)]
pub struct Origin {
    pub shared: Arc<Shared>,
    pub state: Arc<ProxyState>,
    pub route: usize,
    pub upstream: Arc<Upstream>,
    pub sticky: Option<String>,
    pub client_version: Version,
    pub client: std::net::IpAddr,
    pub tls: bool,
    pub host: Option<String>,
}

impl Origin {
    /// Sends a prepared request (origin-form) to an origin of the upstream, retrying by
    /// the rule at the top of this file, and passes its response on, its fields as the
    /// origin sent them (less those the proxy removes).
    pub async fn pass(
        &self,
        parts: http::request::Parts,
        body: ProxyBody,
        bodyless: bool,
    ) -> Result<Answer, ProxyError> {
        let exchanged = self.exchange(parts, body, bodyless).await?;
        Ok(self.client_answer(exchanged))
    }

    /// As `pass`, with the response whole, for those who read or keep its headers.
    pub async fn fetch(
        &self,
        parts: http::request::Parts,
        body: ProxyBody,
        bodyless: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        Ok(self.pass(parts, body, bodyless).await?.into_response())
    }

    /// A WebSocket handshake: on the origin's 101 the tunnel is left in `slot` for the
    /// connection's task, and the 101 goes to the client; any other answer is passed on
    /// like a response to a plain GET.
    pub async fn upgrade(
        &self,
        mut parts: http::request::Parts,
        client: hyper::upgrade::OnUpgrade,
        slot: &TunnelSlot,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        tunnel::ask_for_websocket(&mut parts.headers);
        let exchanged = self.exchange(parts, empty(), true).await?;
        if exchanged.head.status != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.client_answer(exchanged).into_response());
        }
        let Exchanged {
            head,
            conn,
            index,
            in_flight,
        } = exchanged;
        let (origin, early) = conn.into_tunnel();
        slot.put(Tunnel {
            client,
            origin,
            early,
            in_flight,
        });
        // The origin's Upgrade names the protocol it switched to; Connection goes with it.
        let upgrade = head
            .headers
            .get("upgrade")
            .and_then(|u| HeaderValue::from_bytes(u).ok());
        let mut response = self.answer(head, index, empty()).into_response();
        if let Some(u) = upgrade {
            response.headers_mut().insert(UPGRADE, u);
        }
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        Ok(response)
    }

    /// One exchange with an origin: a connection, the request, the response head.
    async fn exchange(
        &self,
        mut parts: http::request::Parts,
        body: ProxyBody,
        bodyless: bool,
    ) -> Result<Exchanged, ProxyError> {
        let (shared, state, upstream) = (&*self.shared, &*self.state, &self.upstream);
        // Forwarding headers are set here, not on arrival: a cache hit never needs them.
        let trusted = headers::is_trusted(self.client, &state.config.forwarding.trusted_proxies);
        headers::set_forwarding(
            &mut parts.headers,
            &ForwardContext {
                set: state.config.forwarding.request_headers,
                client: self.client,
                proto: if self.tls { "https" } else { "http" },
                host: self.host.as_deref(),
                version: self.client_version,
                via: &state.config.forwarding.via,
            },
            trusted,
        );
        let route = &state.routes[self.route];
        let limit = state.config.limits.max_body_bytes;
        let replayable = bodyless && is_idempotent(&parts.method);
        let mut body = Some(body);
        let mut exclude = None;
        let mut plan = Attempts::default();

        loop {
            let (index, fresh) = match plan.again_on.take() {
                Some(index) => (index, true),
                None => match upstream.choose(self.sticky.as_deref(), exclude) {
                    Some(index) => (index, false),
                    None => return Err(ProxyError::NoHealthyOrigin(upstream.name.clone())),
                },
            };
            if plan.attempts > 0 {
                shared
                    .metrics
                    .retries
                    .with_label_values(&[&upstream.name])
                    .inc();
            }
            plan.attempts += 1;
            let origin = &upstream.origins[index];
            let gauge = state
                .in_flight_gauges
                .get(route.upstream)
                .and_then(|g| g.get(index))
                .cloned();
            let in_flight = InFlight::new(origin.state.clone(), gauge);
            let connected = match upstream.pooled(index, fresh) {
                Some(conn) => Ok((conn, true)),
                None => {
                    // Boxed: a new connection is the rare case, and its future (a connect
                    // and a timer) would otherwise enlarge every request's.
                    let connect = Box::pin(upstream.connect(index));
                    connect.await.map(|conn| (conn, false))
                }
            };
            let (mut conn, reused) = match connected {
                Ok(c) => c,
                Err(e) => {
                    count_failure(shared, upstream, index, "connect");
                    exclude = Some(index);
                    if plan.take_failover() {
                        continue;
                    }
                    return Err(ProxyError::Connect {
                        origin: origin.name.clone(),
                        message: e.to_string(),
                    });
                }
            };
            // A replay only ever happens without a body.
            let Some(body) = body.take().or_else(|| replayable.then(empty)) else {
                return Err(ProxyError::Upstream {
                    origin: origin.name.clone(),
                    message: "request body already sent; not retried".into(),
                });
            };
            let sent = conn
                .send_within(upstream.response_timeout, &parts, body, bodyless)
                .await;
            match sent {
                Ok(head) if reused && replayable && idle_timed_out(&head, &conn) => {
                    // The origin timed out the idle connection just as the request came:
                    // the same race as a close, told with a 408 (RFC 9110 §15.5.9 lets
                    // the client repeat the request). Not the origin's fault either.
                    plan.again_on = Some(index);
                }
                Ok(head) => {
                    if head.status.is_server_error() {
                        count_failure(shared, upstream, index, "5xx");
                    } else {
                        origin.state.record_success();
                    }
                    return Ok(Exchanged {
                        head,
                        conn,
                        index,
                        in_flight,
                    });
                }
                Err(SendError::ClientBody(e)) => {
                    if e.is::<http_body_util::LengthLimitError>() {
                        return Err(ProxyError::BodyTooLarge { limit });
                    }
                    return Err(ProxyError::ClientBody(e.to_string()));
                }
                Err(SendError::TimedOut(_)) => {
                    count_failure(shared, upstream, index, "timeout");
                    return Err(ProxyError::Timeout {
                        origin: origin.name.clone(),
                        seconds: upstream.response_timeout.as_secs_f64(),
                    });
                }
                Err(e) if reused && e.is_closed() => {
                    // A keep-alive connection the origin had just closed is not the
                    // origin's fault: a replayable request goes to it again on a new
                    // connection (as nginx does), which a single-origin upstream needs.
                    if !replayable {
                        return Err(ProxyError::Upstream {
                            origin: origin.name.clone(),
                            message: e.to_string(),
                        });
                    }
                    plan.again_on = Some(index);
                }
                Err(e) => {
                    let kind = match e {
                        SendError::Malformed(_) => "bad_response",
                        _ => "reset",
                    };
                    count_failure(shared, upstream, index, kind);
                    exclude = Some(index);
                    if replayable && plan.take_failover() {
                        continue;
                    }
                    return Err(ProxyError::Upstream {
                        origin: origin.name.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
    }

    fn client_answer(&self, exchanged: Exchanged) -> Answer {
        let Exchanged {
            head,
            conn,
            index,
            in_flight,
        } = exchanged;
        let origin = &self.upstream.origins[index];
        let body = OriginBody::new(
            conn.into_body(head.framing),
            origin.state.clone(),
            in_flight,
        )
        .boxed_unsync();
        self.answer(head, index, body)
    }

    /// What every response from an origin loses and gains on its way to the client: the
    /// origin's fields less hop-by-hop and hidden ones, then ours.
    fn answer(&self, head: ResponseHead, index: usize, body: ProxyBody) -> Answer {
        let (state, upstream) = (&*self.state, &*self.upstream);
        let ResponseHead {
            status,
            version: received,
            headers: mut passed,
            ..
        } = head;
        headers::clean_origin_fields(&mut passed, &state.config.forwarding.hide_response_headers);
        let mut response = Response::new(body);
        *response.status_mut() = status;
        // An HTTP/1.0 client still gets a 1.1 response head from us: hyper then writes it as
        // 1.0 and keeps the connection alive when the client asked (`Connection:
        // keep-alive`, as `ab -k` sends); a 1.0 head would make hyper close it.
        *response.version_mut() = match self.client_version {
            Version::HTTP_2 => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let ours = response.headers_mut();
        if state.config.forwarding.request_headers.via {
            // After the origin's own Via fields, if any: together they list the hops in
            // order (RFC 9110 §7.6.3, §5.3).
            ours.insert(VIA, state.config.forwarding.via.value(received).clone());
        }
        if let Some(cookie) = &upstream.sticky_cookie {
            let value = &upstream.origins[index].sticky;
            if self.sticky.as_deref() != Some(value.as_str()) {
                if let Ok(v) = HeaderValue::from_str(&format!(
                    "{cookie}={value}; Path=/; HttpOnly; SameSite=Lax"
                )) {
                    ours.append(SET_COOKIE, v);
                }
            }
        }
        if self.shared.access_log.is_some() {
            // Only for the access log: a first extension allocates a map.
            response
                .extensions_mut()
                .insert(ServedBy(upstream.origins[index].name_arc.clone()));
        }
        Answer { response, passed }
    }
}

/// A response head from an origin, and what it came with.
struct Exchanged {
    head: ResponseHead,
    conn: OriginConn,
    /// The origin's index in its upstream.
    index: usize,
    in_flight: InFlight,
}

fn count_failure(shared: &Shared, upstream: &Upstream, index: usize, kind: &str) {
    let origin = &upstream.origins[index];
    shared
        .metrics
        .upstream_errors
        .with_label_values(&[&upstream.name, kind])
        .inc();
    if origin
        .state
        .record_failure(upstream.passive_failures, upstream.passive_cooldown)
    {
        tracing::warn!(upstream = %upstream.name, origin = %origin.name, kind, "origin marked down for {:?} after repeated failures", upstream.passive_cooldown);
    }
}

/// HTTP/1.1 framing that different parsers could read differently is refused before
/// anything is forwarded (RFC 9112 §6.3): both Content-Length and Transfer-Encoding, or
/// several Content-Length values.
pub(super) fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
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

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
            if let Ok(v) = HeaderValue::from_str(&super::auth::challenge(realm)) {
                resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
        _ => {}
    }
    resp
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

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
