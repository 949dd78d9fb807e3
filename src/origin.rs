//! `geoedge origin`: a small origin server for the demo and the tests. It says which origin
//! answered, counts what it serves, and can be made slow, failing or cacheable on demand.
//!
//! - `GET /anything?status=503&delay_ms=200&size=1024&cache=max-age%3D60` shapes one answer;
//!   `h_NAME=VALUE` adds any response header (`h_etag=%22v1%22`, `h_vary=accept-language`);
//!   with an ETag or Last-Modified set, a matching conditional request gets 304;
//!   `t_NAME=VALUE` adds a response trailer (`t_grpc-status=0`), sent where the protocol
//!   carries trailers (HTTP/2);
//! - `GET /_origin/echo` returns the request head as it arrived (forwarding tests);
//! - `GET /_origin/upgrade` with `Connection: upgrade` switches to the protocol the request
//!   names in `Upgrade` and echoes every byte back (WebSocket tunnel tests); without an
//!   Upgrade it answers 426;
//! - `GET /_origin/count` returns how many requests were served (`?path=/x`: for one path);
//! - `POST /_origin/status?code=500` makes every answer that status (0 to stop);
//! - `POST /_origin/health?status=503` changes what `/healthz` answers;
//! - `POST /_origin/delay?ms=300` adds latency to every answer.
//!
//! With `--tls-cert` and `--tls-key` it speaks HTTPS (HTTP/1.1 and h2 by ALPN), and with
//! `--client-ca` too it demands a client certificate: the origins of TLS upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::control::percent_decode;

pub struct Origin {
    pub name: String,
    served: AtomicU64,
    by_path: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    health_status: AtomicU16,
    forced_status: AtomicU16,
    delay_ms: AtomicU64,
}

impl Origin {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            served: AtomicU64::new(0),
            by_path: std::sync::Mutex::new(std::collections::HashMap::new()),
            health_status: AtomicU16::new(200),
            forced_status: AtomicU16::new(0),
            delay_ms: AtomicU64::new(0),
        })
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    async fn answer(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let param = |key: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| percent_decode(v))
        };
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                let status = self.health_status.load(Ordering::Relaxed);
                return reply(status, format!("{} health {status}\n", self.name));
            }
            (&Method::GET, "/_origin/count") => {
                let n = match param("path") {
                    Some(p) => self
                        .by_path
                        .lock()
                        .map(|m| m.get(&p).copied().unwrap_or(0))
                        .unwrap_or(0),
                    None => self.served(),
                };
                return reply(200, format!("{n}\n"));
            }
            (&Method::POST, "/_origin/status") => {
                let code = param("code").and_then(|s| s.parse().ok()).unwrap_or(0);
                self.forced_status.store(code, Ordering::Relaxed);
                return reply(200, format!("status now {code}\n"));
            }
            (&Method::POST, "/_origin/health") => {
                let status = param("status").and_then(|s| s.parse().ok()).unwrap_or(200);
                self.health_status.store(status, Ordering::Relaxed);
                return reply(200, format!("health now {status}\n"));
            }
            (&Method::GET, "/_origin/upgrade") => {
                let resp = switch_to_echo(&mut req);
                return with_identity(resp, &self.name);
            }
            (&Method::POST, "/_origin/delay") => {
                let ms = param("ms").and_then(|s| s.parse().ok()).unwrap_or(0);
                self.delay_ms.store(ms, Ordering::Relaxed);
                return reply(200, format!("delay now {ms} ms\n"));
            }
            _ => {}
        }
        let seq = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut m) = self.by_path.lock() {
            *m.entry(path.clone()).or_insert(0) += 1;
        }
        let delay = param("delay_ms")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
            .max(self.delay_ms.load(Ordering::Relaxed));
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
        }
        if path == "/_origin/echo" {
            let mut head = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (k, v) in req.headers() {
                head.push_str(&format!(
                    "{}: {}\n",
                    k,
                    String::from_utf8_lossy(v.as_bytes())
                ));
            }
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            head.push_str(&format!("body-bytes: {}\n", body.len()));
            return with_identity(reply(200, head), &self.name);
        }
        let method = req.method().clone();
        let req_headers = req.headers().clone();
        // Read (and count) any request body, so uploads complete.
        let received = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let forced = self.forced_status.load(Ordering::Relaxed);
        let status = if forced != 0 {
            forced
        } else {
            param("status").and_then(|s| s.parse().ok()).unwrap_or(200)
        };
        let extra: Vec<(http::HeaderName, http::HeaderValue)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| {
                let name = http::HeaderName::from_bytes(k.strip_prefix("h_")?.as_bytes()).ok()?;
                let value = http::HeaderValue::from_str(&percent_decode(v)).ok()?;
                Some((name, value))
            })
            .collect();
        let etag = extra
            .iter()
            .find(|(k, _)| k == http::header::ETAG)
            .map(|(_, v)| v.clone());
        let inm = req_headers.get(http::header::IF_NONE_MATCH).cloned();
        if let (Some(etag), Some(inm)) = (&etag, &inm) {
            if status == 200 && inm.as_bytes() == etag.as_bytes() {
                let mut resp = with_identity(reply(304, String::new()), &self.name);
                if let Some(cc) = param("cache").and_then(|c| http::HeaderValue::from_str(&c).ok())
                {
                    resp.headers_mut().insert(http::header::CACHE_CONTROL, cc);
                }
                for (k, v) in &extra {
                    resp.headers_mut().insert(k.clone(), v.clone());
                }
                resp.headers_mut()
                    .insert("x-origin-seq", http::HeaderValue::from(seq));
                return resp;
            }
        }
        let body = match param("size").and_then(|s| s.parse::<usize>().ok()) {
            Some(n) => Bytes::from(
                (0..n.min(64 * 1024 * 1024))
                    .map(|i| b'0' + (i % 10) as u8)
                    .collect::<Vec<u8>>(),
            ),
            None => Bytes::from(format!(
                "served by {} for {method} {path} ({received} bytes in)\n",
                self.name
            )),
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        if let Some(cc) = param("cache").and_then(|c| http::HeaderValue::from_str(&c).ok()) {
            resp.headers_mut().insert(http::header::CACHE_CONTROL, cc);
        }
        let mut resp = with_identity(resp, &self.name);
        for (k, v) in extra {
            resp.headers_mut().insert(k, v);
        }
        resp.headers_mut()
            .insert("x-origin-seq", http::HeaderValue::from(seq));
        resp
    }
}

/// Answers an upgrade request with 101 and echoes the upgraded connection's bytes.
fn switch_to_echo(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let asked = req
        .headers()
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    let Some(protocol) = req.headers().get(http::header::UPGRADE).cloned() else {
        let mut resp = reply(426, "upgrade required\n".into());
        resp.headers_mut().insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        return resp;
    };
    if !asked {
        return reply(400, "Upgrade without Connection: upgrade\n".into());
    }
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(http::header::UPGRADE, protocol);
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    resp
}

fn reply(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp
}

/// Headers a real origin would leak, so tests can see the proxy hide them.
fn with_identity(mut resp: Response<Full<Bytes>>, name: &str) -> Response<Full<Bytes>> {
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(name) {
        h.insert("x-origin", v);
    }
    h.insert(
        http::header::SERVER,
        http::HeaderValue::from_static("geoedge-origin/1.0"),
    );
    h.insert(
        "x-powered-by",
        http::HeaderValue::from_static("geoedge-origin"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The trailers a request's `t_NAME=VALUE` parameters ask for; None when there are none.
fn asked_trailers(query: Option<&str>) -> Option<http::HeaderMap> {
    let mut trailers = http::HeaderMap::new();
    for (k, v) in query?.split('&').filter_map(|kv| kv.split_once('=')) {
        let Some(name) = k.strip_prefix("t_") else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(&percent_decode(v)),
        ) {
            trailers.append(n, v);
        }
    }
    (!trailers.is_empty()).then_some(trailers)
}

/// Serves the origin on a bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, origin: Arc<Origin>) {
    serve_with(listener, origin, None).await
}

/// Serves in the clear, or over TLS with `tls` (ALPN h2 and http/1.1).
pub async fn serve_with(listener: TcpListener, origin: Arc<Origin>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let origin = origin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), origin).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(TokioIo::new(stream), origin).await,
                    Err(e) => tracing::debug!(error = %e, "origin TLS handshake failed"),
                },
            }
        });
    }
}

async fn serve_connection<I>(io: TokioIo<I>, origin: Arc<Origin>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let origin = origin.clone();
        let trailers = asked_trailers(req.uri().query());
        async move {
            let resp = origin.answer(req).await;
            Ok::<_, Infallible>(resp.map(|body| match trailers {
                Some(t) => body.with_trailers(async move { Some(Ok(t)) }).boxed(),
                None => body.boxed(),
            }))
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = builder.serve_connection_with_upgrades(io, service).await;
}

/// A TLS acceptor from PEM files, for an origin that speaks HTTPS; with `client_ca`, it
/// demands a client certificate signed by one of those CAs (an origin behind mTLS).
pub fn tls_acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<TlsAcceptor, String> {
    let read_certs = |path: &Path| {
        CertificateDer::pem_file_iter(path)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(read_certs(ca)?);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
