//! `geoedge origin`: a small origin server for the demo and the tests. It says which origin
//! answered, counts what it serves, and can be made slow, failing or cacheable on demand.
//!
//! - `GET /anything?status=503&delay_ms=200&size=1024&cache=max-age%3D60` shapes one answer;
//! - `GET /_origin/echo` returns the request head as it arrived (forwarding tests);
//! - `GET /_origin/count` returns how many requests were served (cache tests);
//! - `POST /_origin/health?status=503` changes what `/healthz` answers;
//! - `POST /_origin/delay?ms=300` adds latency to every answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub struct Origin {
    pub name: String,
    served: AtomicU64,
    health_status: AtomicU16,
    delay_ms: AtomicU64,
}

impl Origin {
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            served: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
        })
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
            (&Method::GET, "/_origin/count") => return reply(200, format!("{}\n", self.served())),
            (&Method::POST, "/_origin/health") => {
                let status = param("status").and_then(|s| s.parse().ok()).unwrap_or(200);
                self.health_status.store(status, Ordering::Relaxed);
                return reply(200, format!("health now {status}\n"));
            }
            (&Method::POST, "/_origin/delay") => {
                let ms = param("ms").and_then(|s| s.parse().ok()).unwrap_or(0);
                self.delay_ms.store(ms, Ordering::Relaxed);
                return reply(200, format!("delay now {ms} ms\n"));
            }
            _ => {}
        }
        self.served.fetch_add(1, Ordering::Relaxed);
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
        // Read (and count) any request body, so uploads complete.
        let received = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(0);
        let status = param("status").and_then(|s| s.parse().ok()).unwrap_or(200);
        let body = match param("size").and_then(|s| s.parse::<usize>().ok()) {
            Some(n) => Bytes::from(vec![b'x'; n.min(64 * 1024 * 1024)]),
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
        with_identity(resp, &self.name)
    }
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

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
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

/// Serves the origin on a bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, origin: Arc<Origin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let origin = origin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let origin = origin.clone();
                async move { Ok::<_, Infallible>(origin.answer(req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
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
    }
}
