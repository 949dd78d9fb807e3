//! One request's exchange with a route's upstream: pick an origin, get a connection,
//! send, and turn the origin's response head into the answer the client gets.
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

use std::sync::Arc;

use http::header::{HeaderValue, CONNECTION, SET_COOKIE, UPGRADE, VIA};
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;

use crate::config::proxy::Balance;
use crate::proxy::admin::access_log::ServedBy;
use crate::proxy::answer::Answer;
use crate::proxy::body::{empty, ProxyBody};
use crate::proxy::error::ProxyError;
use crate::proxy::http::headers::{self, ForwardContext};
use crate::proxy::upstream::group::{InFlight, OriginBody, Upstream};
use crate::proxy::upstream::origin_conn::{OriginConn, ResponseHead, SendError};
use crate::proxy::upstream::origin_h2::{self, H2Body};
use crate::proxy::upstream::tunnel::{self, Tunnel, TunnelSlot};
use crate::proxy::{ProxyState, Shared};

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
    /// The client's connection (address and port) and the listener address it reached:
    /// what a `send_proxy` upstream's PROXY header says.
    pub peer: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
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
        if self.upstream.protocol.is_http2() {
            // An HTTP/2 origin would need RFC 8441's extended CONNECT; nginx's
            // `grpc_pass` does not tunnel either.
            return Err(ProxyError::Upstream {
                origin: self.upstream.name.clone(),
                message: "WebSocket needs an upstream with protocol http1 or https".into(),
            });
        }
        tunnel::ask_for_websocket(&mut parts.headers);
        let exchanged = self.exchange(parts, empty(), true).await?;
        if exchanged.head.status != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.client_answer(exchanged).into_response());
        }
        let Exchanged {
            head,
            wire,
            index,
            in_flight,
            peer,
        } = exchanged;
        let Wire::H1(conn) = wire else {
            return Err(ProxyError::Upstream {
                origin: self.upstream_of(peer).origins[index].name.clone(),
                message: "101 over HTTP/2".into(),
            });
        };
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
        let mut response = self.answer(head, index, peer, empty()).into_response();
        if let Some(u) = upgrade {
            response.headers_mut().insert(UPGRADE, u);
        }
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        Ok(response)
    }

    /// One exchange with an origin: a connection, the request, the response head; when
    /// this region has no origin that could take it, with a peer region's proxy
    /// (`[failover]`, `peer_failover`).
    async fn exchange(
        &self,
        mut parts: http::request::Parts,
        body: ProxyBody,
        bodyless: bool,
    ) -> Result<Exchanged, ProxyError> {
        let state = &*self.state;
        let hop = self.take_hop_mark(&mut parts.headers);
        // Forwarding headers are set here, not on arrival: a cache hit never needs them. A
        // peer's proxy that forwarded the request wrote them, so they are kept.
        let trusted = hop.is_some()
            || headers::is_trusted(self.client, &state.config.forwarding.trusted_proxies);
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
        let mut body = Some(body);
        let route_upstream = state.routes[self.route].upstream;
        let local = self
            .exchange_with(
                &self.upstream,
                route_upstream,
                self.sticky.as_deref(),
                &parts,
                &mut body,
                bodyless,
            )
            .await;
        match local {
            Err(error)
                if state.failover.is_some() && Self::unserved(&error, &body, &parts, bodyless) =>
            {
                // Boxed: the rare path, kept out of every request's future.
                Box::pin(self.fail_over(error, hop, parts, body, bodyless)).await
            }
            other => other,
        }
    }

    /// The exchange with one upstream (`upstream_index` in the state's list) under the
    /// retry rule; `body` is left in place while no origin has taken it.
    pub(super) async fn exchange_with(
        &self,
        upstream: &Upstream,
        upstream_index: usize,
        sticky: Option<&str>,
        parts: &http::request::Parts,
        body: &mut Option<ProxyBody>,
        bodyless: bool,
    ) -> Result<Exchanged, ProxyError> {
        let (shared, state) = (&*self.shared, &*self.state);
        let limit = state.config.limits.max_body_bytes;
        let replayable = bodyless && is_idempotent(&parts.method);
        let mut exclude = None;
        let mut plan = Attempts::default();
        // Why the first origin failed, while the request looks for another: with none to
        // be had, that is the client's answer (502, 504), not "no healthy origin" (503).
        let mut failed_over_from = None;

        loop {
            let (index, fresh) = match plan.again_on.take() {
                Some(index) => (index, true),
                None => match upstream.choose(sticky, exclude) {
                    Some(index) => (index, false),
                    None => {
                        return Err(failed_over_from
                            .unwrap_or_else(|| ProxyError::NoHealthyOrigin(upstream.name.clone())))
                    }
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
                .get(upstream_index)
                .and_then(|g| g.get(index))
                .cloned();
            let in_flight = InFlight::new(origin.state.clone(), gauge);
            if upstream.protocol.is_http2() {
                // Boxed: its future would otherwise enlarge every HTTP/1.1 request's.
                let attempt = Box::pin(
                    self.attempt_h2(upstream, index, fresh, parts, body, replayable, in_flight),
                );
                match attempt.await {
                    H2Attempt::Done(exchanged) => return Ok(exchanged),
                    H2Attempt::AgainOnNewConnection => plan.again_on = Some(index),
                    H2Attempt::Failed { error, retry } => {
                        exclude = Some(index);
                        if retry && plan.take_failover() {
                            failed_over_from = Some(error);
                            continue;
                        }
                        return Err(error);
                    }
                }
                continue;
            }
            let connected = match upstream.pooled(index, fresh, self.peer) {
                Some(conn) => Ok((conn, true)),
                None => {
                    // Boxed: a new connection is the rare case, and its future (a connect
                    // and a timer) would otherwise enlarge every request's.
                    let connect = Box::pin(upstream.connect(index, self.peer, self.local));
                    let connected = connect.await;
                    if connected.is_ok() {
                        count_connection(shared, upstream);
                    }
                    connected.map(|conn| (conn, false))
                }
            };
            let (mut conn, reused) = match connected {
                Ok(c) => c,
                Err(e) => {
                    count_failure(shared, upstream, index, e.kind());
                    exclude = Some(index);
                    let error = ProxyError::Connect {
                        origin: origin.name.clone(),
                        message: e.to_string(),
                    };
                    if plan.take_failover() {
                        failed_over_from = Some(error);
                        continue;
                    }
                    return Err(error);
                }
            };
            // A replay only ever happens without a body.
            let Some(body) = body.take().or_else(|| replayable.then(empty)) else {
                return Err(ProxyError::Upstream {
                    origin: origin.name.clone(),
                    message: "request body already sent; not retried".into(),
                });
            };
            let body = metered(upstream, body, &in_flight);
            let started = std::time::Instant::now();
            let sent = conn
                .send_within(upstream.response_timeout, parts, body, bodyless)
                .await;
            if let Ok(head) = &sent {
                if !head.status.is_server_error() {
                    observe_latency(upstream, &in_flight, started);
                }
            }
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
                        wire: Wire::H1(conn),
                        index,
                        in_flight,
                        peer: None,
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
                    let error = ProxyError::Upstream {
                        origin: origin.name.clone(),
                        message: e.to_string(),
                    };
                    if replayable && plan.take_failover() {
                        failed_over_from = Some(error);
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One attempt at an HTTP/2 upstream's origin, sorted by the retry rule at the top of
    /// this file. A stream the origin refused unprocessed (a GOAWAY met the request, or
    /// REFUSED_STREAM) counts as a stale keep-alive connection does.
    #[allow(clippy::too_many_arguments)]
    async fn attempt_h2(
        &self,
        upstream: &Upstream,
        index: usize,
        fresh: bool,
        parts: &http::request::Parts,
        body: &mut Option<ProxyBody>,
        replayable: bool,
        in_flight: InFlight,
    ) -> H2Attempt {
        let shared = &*self.shared;
        let origin = &upstream.origins[index];
        let session = &origin.state.h2;
        if fresh {
            session.forget().await;
        }
        let failed = |message: String| ProxyError::Upstream {
            origin: origin.name.clone(),
            message,
        };
        let opened = session
            .sender(
                origin.addr,
                upstream.connect_timeout,
                upstream.tls_to(index),
            )
            .await;
        let (mut sender, reused) = match opened {
            Ok((sender, reused)) => {
                if !reused {
                    count_connection(shared, upstream);
                }
                (sender, reused)
            }
            Err(e) => {
                count_failure(shared, upstream, index, e.kind());
                return H2Attempt::Failed {
                    error: ProxyError::Connect {
                        origin: origin.name.clone(),
                        message: e.to_string(),
                    },
                    retry: true,
                };
            }
        };
        let Some(body) = body.take().or_else(|| replayable.then(empty)) else {
            return H2Attempt::Failed {
                error: failed("request body already sent; not retried".into()),
                retry: false,
            };
        };
        let body = metered(upstream, body, &in_flight);
        let started = std::time::Instant::now();
        let request =
            match origin_h2::request(parts, body, &origin.authority, upstream.tls.is_some()) {
                Ok(r) => r,
                Err(e) => {
                    return H2Attempt::Failed {
                        error: failed(format!("request not representable in HTTP/2: {e}")),
                        retry: false,
                    }
                }
            };
        let sent = tokio::time::timeout(upstream.response_timeout, sender.send_request(request));
        match sent.await {
            Ok(Ok(response)) => {
                let (head, body) = response.into_parts();
                if head.status.is_server_error() {
                    count_failure(shared, upstream, index, "5xx");
                } else {
                    origin.state.record_success();
                    observe_latency(upstream, &in_flight, started);
                }
                H2Attempt::Done(Exchanged {
                    head: origin_h2::response_head(&head),
                    wire: Wire::H2(body),
                    index,
                    in_flight,
                    peer: None,
                })
            }
            Err(_) => {
                count_failure(shared, upstream, index, "timeout");
                H2Attempt::Failed {
                    error: ProxyError::Timeout {
                        origin: origin.name.clone(),
                        seconds: upstream.response_timeout.as_secs_f64(),
                    },
                    retry: false,
                }
            }
            Ok(Err(e)) if reused && replayable && origin_h2::never_processed(&e) => {
                H2Attempt::AgainOnNewConnection
            }
            Ok(Err(e)) => {
                count_failure(shared, upstream, index, "reset");
                H2Attempt::Failed {
                    error: failed(e.to_string()),
                    retry: replayable,
                }
            }
        }
    }

    fn client_answer(&self, exchanged: Exchanged) -> Answer {
        let Exchanged {
            head,
            wire,
            index,
            in_flight,
            peer,
        } = exchanged;
        let origin = &self.upstream_of(peer).origins[index];
        let body = match wire {
            Wire::H1(conn) => OriginBody::new(
                conn.into_body(head.framing),
                origin.state.clone(),
                in_flight,
            )
            .boxed_unsync(),
            Wire::H2(body) => H2Body::new(body, in_flight).boxed_unsync(),
        };
        self.answer(head, index, peer, body)
    }

    /// The route's upstream, or the peer's that answered instead.
    fn upstream_of(&self, peer: Option<u16>) -> &Upstream {
        peer.and_then(|i| self.state.upstreams.get(usize::from(i)))
            .map(|u| &**u)
            .unwrap_or(&self.upstream)
    }

    /// What every response from an origin loses and gains on its way to the client: the
    /// origin's fields less hop-by-hop and hidden ones, then ours.
    fn answer(
        &self,
        head: ResponseHead,
        index: usize,
        peer: Option<u16>,
        body: ProxyBody,
    ) -> Answer {
        let (state, upstream) = (&*self.state, self.upstream_of(peer));
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

/// What one attempt at an `h2c` origin came to.
enum H2Attempt {
    Done(Exchanged),
    /// Sent on an open connection that turned out to be going away, and never processed:
    /// the same origin again, on a new connection.
    AgainOnNewConnection,
    /// `retry`: whether the request may go to another origin.
    Failed {
        error: ProxyError,
        retry: bool,
    },
}

/// The connection a response head came on, which its body comes on too.
enum Wire {
    H1(OriginConn),
    H2(hyper::body::Incoming),
}

/// A response head from an origin, and what it came with.
pub(super) struct Exchanged {
    head: ResponseHead,
    wire: Wire,
    /// The origin's index in its upstream.
    pub(super) index: usize,
    in_flight: InFlight,
    /// Set when a peer region's proxy answered: the index of its upstream in the state.
    pub(super) peer: Option<u16>,
}

/// For `least_traffic`, the request body counts as it goes to the origin (the response
/// counts in `OriginBody` for every upstream; the request only where it is used, as the
/// counting costs a box).
fn metered(upstream: &Upstream, body: ProxyBody, in_flight: &InFlight) -> ProxyBody {
    if upstream.balance != Balance::LeastTraffic {
        return body;
    }
    let state = in_flight.shared_origin();
    body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            state.traffic.add(data.len() as u64);
        }
        frame
    })
    .boxed_unsync()
}

/// Time to the response head, for `peak_ewma`. Error answers do not count: a fast 5xx is
/// not a fast origin, and passive detection deals with those.
fn observe_latency(upstream: &Upstream, in_flight: &InFlight, started: std::time::Instant) {
    if upstream.balance == Balance::PeakEwma {
        let us = started.elapsed().as_secs_f64() * 1e6;
        in_flight
            .origin()
            .latency
            .observe(us, crate::process::clock::now_ms());
    }
}

fn count_connection(shared: &Shared, upstream: &Upstream) {
    shared
        .metrics
        .upstream_connections
        .with_label_values(&[&upstream.name])
        .inc();
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

pub(super) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
