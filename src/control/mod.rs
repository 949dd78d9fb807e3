//! The HTTP side of a process that is not the proxy's data path: `/metrics` and
//! `/healthz` now, health reports and `/status` as they come.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::Registry;
use tokio::net::TcpListener;

pub type Body = Full<Bytes>;

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
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
}

/// Admin for a process whose only state is a metrics registry.
pub struct RegistryAdmin(pub Registry);

impl Admin for RegistryAdmin {
    fn metrics(&self) -> String {
        crate::metrics::render(&self.0)
    }
}

async fn route<A: Admin + ?Sized>(admin: &A, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, admin.metrics());
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
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
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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
