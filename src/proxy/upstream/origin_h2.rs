//! HTTP/2 to origins, for upstreams with `protocol = "h2c"` (without TLS, by prior
//! knowledge, RFC 9113 §3.3) or `"h2"` (over TLS, agreed by ALPN): gRPC services and
//! other origins that speak only HTTP/2.
//!
//! One connection per origin carries every request to it, each on its own stream, as
//! nginx's `grpc_pass` and HAProxy's `proto h2` do. It is opened by the first request
//! that needs it and again after the origin closes it (GOAWAY, reset, its idle timeout).
//! Nothing goes back to a pool: a stream ends with its response body.
//!
//! Response trailers (gRPC's status lives there) come through as trailer frames and reach
//! HTTP/2 clients; an HTTP/1.1 client gets the body without them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, HOST, TE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::header_lines::HeaderLines;
use crate::proxy::upstream::connect::{self, ConnectError, TlsTo};
use crate::proxy::upstream::meter::CountsTraffic;
use crate::proxy::upstream::origin_wire::{Framing, ResponseHead};

/// Pings on a quiet connection find an origin that vanished without a FIN (a host down, a
/// firewall that forgot the flow) before a request does.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// An origin's HTTP/2 connection, if one is open. Kept with the origin's state, so a
/// config reload keeps using it.
#[derive(Default)]
pub struct H2Session {
    /// A tokio lock: requests that arrive while the connection is being opened wait for
    /// it and share it, instead of each opening its own.
    sender: tokio::sync::Mutex<Option<SendRequest<ProxyBody>>>,
}

impl H2Session {
    /// The origin's connection: the open one (flag true), or a new one made within
    /// `timeout` when there is none or the last one closed.
    pub async fn sender(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<TlsTo<'_>>,
    ) -> Result<(SendRequest<ProxyBody>, bool), ConnectError> {
        let mut slot = self.sender.lock().await;
        if let Some(open) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok((open.clone(), true));
        }
        *slot = None;
        let sender = connect(addr, timeout, tls).await?;
        *slot = Some(sender.clone());
        Ok((sender, false))
    }

    /// Forgets the connection after a request failed on it, so the next request opens a
    /// new one rather than meet the same broken one (a closed connection is noticed by
    /// itself; one that stopped answering is not).
    pub async fn forget(&self) {
        *self.sender.lock().await = None;
    }
}

async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<TlsTo<'_>>,
) -> Result<SendRequest<ProxyBody>, ConnectError> {
    let stream = connect::open(addr, timeout, tls, None).await?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let handshake = builder.handshake::<_, ProxyBody>(TokioIo::new(stream));
    let (sender, conn) = connect::within(addr, timeout, async {
        handshake.await.map_err(std::io::Error::other)
    })
    .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(origin = %addr, error = %e, "h2c origin connection ended");
        }
    });
    Ok(sender)
}

/// The request as it goes to an HTTP/2 origin: the target in `:scheme`, `:authority` and
/// `:path`, the client's `Host` moved into `:authority` (RFC 9113 §8.3.1), and
/// `TE: trailers`, which gRPC servers expect and the only TE that HTTP/2 allows (nginx's
/// `grpc_pass` sends it on every request too).
pub fn request(
    parts: &http::request::Parts,
    body: ProxyBody,
    origin: &Authority,
    tls: bool,
) -> Result<Request<ProxyBody>, http::Error> {
    let authority = parts
        .headers
        .get(HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| origin.clone());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    uri.authority = Some(authority);
    uri.path_and_query = parts.uri.path_and_query().cloned();
    let mut headers = parts.headers.clone();
    headers.remove(HOST);
    headers.insert(TE, HeaderValue::from_static("trailers"));
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(Uri::from_parts(uri)?)
        .version(Version::HTTP_2)
        .body(body)?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Whether a failed request never reached the origin's application, so that sending it
/// again is safe whatever its method: the connection was gone before it was sent, or the
/// origin refused the stream (REFUSED_STREAM, or a GOAWAY that did not cover it; RFC 9113
/// §8.7).
pub fn never_processed(e: &hyper::Error) -> bool {
    if e.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

/// The response head as the rest of the proxy takes it from any origin.
pub fn response_head(head: &http::response::Parts) -> ResponseHead {
    ResponseHead {
        status: head.status,
        version: Version::HTTP_2,
        headers: header_lines(&head.headers),
        // HTTP/2 frames the body itself; an HTTP/2 head's framing is never read.
        framing: Framing::Close,
    }
}

/// Field lines for the origin's response header fields, so they take the same way to the
/// client as an HTTP/1.1 origin's.
pub fn header_lines(headers: &HeaderMap) -> HeaderLines {
    let mut head = BytesMut::new();
    let mut spans = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let ns = head.len();
        head.put_slice(name.as_str().as_bytes());
        let ne = head.len();
        head.put_slice(b": ");
        let vs = head.len();
        head.put_slice(value.as_bytes());
        let ve = head.len();
        head.put_slice(b"\r\n");
        // A head past 4 GiB cannot come from hyper's decoder (its header list is capped).
        let span = [ns, ne, vs, ve].map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        if span[3] == u32::MAX {
            break;
        }
        spans.push(span);
    }
    HeaderLines::new(head.freeze(), spans)
}

/// An HTTP/2 origin's response body, holding `held` (the request's in-flight count at the
/// origin) until it ends or the client leaves.
pub struct H2Body<Held> {
    inner: Incoming,
    _held: Held,
}

impl<Held> H2Body<Held> {
    pub fn new(inner: Incoming, held: Held) -> Self {
        Self { inner, _held: held }
    }
}

impl<Held: CountsTraffic + Unpin> Body for H2Body<Held> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self._held.moved(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
#[path = "origin_h2_tests.rs"]
mod tests;
