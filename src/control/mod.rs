//! The HTTP side of a process that is not the proxy's data path: `/metrics` and
//! `/healthz` for every process, plus what each face adds through `Admin::route` (the
//! DNS server's reports, `/status` and overrides in `dns::admin`; the proxy's admin in
//! `proxy::admin`). It knows neither face: both build on it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use tokio::net::TcpListener;

pub type Body = Full<Bytes>;

/// Control requests are small; bigger bodies are refused unread.
const MAX_BODY: usize = 64 * 1024;

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body, "text/plain; charset=utf-8")
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body, "application/json")
}

fn with_type(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// A control request, read whole (bodies are bounded).
pub struct ControlRequest {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl ControlRequest {
    /// A query parameter's value (no percent-decoding: control values are plain words).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A query parameter, percent-decoded (for values that are themselves URLs).
    pub fn param_decoded(&self, key: &str) -> Option<String> {
        self.param(key).map(percent_decode)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a process exposes on its control/admin listener. The DNS server and the proxy
/// each implement it; the HTTP plumbing here is shared.
pub trait Admin: Send + Sync + 'static {
    /// The Prometheus text page.
    fn metrics(&self) -> String;
    /// Whether this process can serve, and a human-readable reason.
    fn healthz(&self) -> (bool, String) {
        (true, "ok\n".into())
    }
    /// Routes beyond /metrics and /healthz; None means 404.
    fn route(&self, _req: &ControlRequest) -> Option<Response<Body>> {
        None
    }
}

/// Admin for a process whose only state is a metrics registry.
pub struct RegistryAdmin(pub Registry);

impl Admin for RegistryAdmin {
    fn metrics(&self) -> String {
        crate::metrics::render(&self.0)
    }
}

async fn route<A: Admin + ?Sized>(admin: &A, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or unreadable\n",
            )
        }
    };
    let req = ControlRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts.headers,
        body,
    };
    match (&req.method, req.path.as_str()) {
        (&Method::GET, "/metrics") => with_type(
            StatusCode::OK,
            admin.metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (&Method::GET | &Method::HEAD, "/healthz") => {
            let (ok, reason) = admin.healthz();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, reason)
        }
        (_, "/metrics" | "/healthz") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => admin
            .route(&req)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n")),
    }
}

/// Serves the control routes until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<dyn Admin>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "control listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&*admin, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

/// Decodes `%XX` escapes and `+` (as a space) in a query value; invalid escapes are kept
/// as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Compares a presented bearer token with the configured one in constant time.
pub fn token_matches(presented: Option<&str>, expected: &[u8]) -> bool {
    let Some(presented) = presented.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    // HMAC both under a throwaway key and let ring compare the tags in constant time:
    // neither the token's content nor its length leaks through timing.
    let Ok(key) =
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
    else {
        return false;
    };
    let expected_tag = ring::hmac::sign(&key, expected);
    ring::hmac::verify(&key, presented.trim().as_bytes(), expected_tag.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("max-age%3D60"), "max-age=60");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn bearer_tokens_compare_exactly() {
        let expected = b"a-token-of-enough-length";
        assert!(token_matches(
            Some("Bearer a-token-of-enough-length"),
            expected
        ));
        assert!(!token_matches(
            Some("Bearer a-token-of-enough-lengtx"),
            expected
        ));
        assert!(!token_matches(Some("a-token-of-enough-length"), expected));
        assert!(!token_matches(None, expected));
    }
}
