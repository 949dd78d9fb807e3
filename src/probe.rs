//! One HTTP health probe: a fresh connection (so it tests what a new client would meet),
//! a GET of a path, and the expected status, all within a timeout. Used by the proxy for
//! its origins and by the DNS server for the nodes.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Sent with every probe so operators can tell checks from traffic in their logs.
pub const USER_AGENT: &str = concat!("geoedge-health-check/", env!("CARGO_PKG_VERSION"));

pub async fn http_probe(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    expect_status: u16,
) -> Result<(), String> {
    let connect = async {
        TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))
    };
    probe(connect, host, path, timeout, expect_status, false, false).await
}

/// A probe over a connection `connect` opens (TCP, or TLS on top): HTTP/1.1, or HTTP/2
/// when `http2` (by prior knowledge on a plain stream, as agreed by ALPN over TLS); `tls`
/// says which scheme the request names.
pub async fn probe<S>(
    connect: impl Future<Output = Result<S, String>>,
    host: &str,
    path: &str,
    timeout: Duration,
    expect_status: u16,
    http2: bool,
    tls: bool,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let attempt = async {
        let stream = connect.await?;
        let io = TokioIo::new(stream);
        let request = Request::get(path).header(http::header::USER_AGENT, USER_AGENT);
        let (status, conn_task) = match http2 {
            false => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                let conn_task = tokio::spawn(conn);
                let req = request
                    .header(http::header::HOST, host)
                    .header(http::header::CONNECTION, "close")
                    .body(Empty::<bytes::Bytes>::new())
                    .map_err(|e| format!("request: {e}"))?;
                let resp = sender.send_request(req).await;
                (
                    resp.map_err(|e| format!("request: {e}"))?.status(),
                    conn_task,
                )
            }
            true => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                let conn_task = tokio::spawn(conn);
                let req = request
                    .uri(format!(
                        "{}://{host}{path}",
                        if tls { "https" } else { "http" }
                    ))
                    .version(http::Version::HTTP_2)
                    .body(Empty::<bytes::Bytes>::new())
                    .map_err(|e| format!("request: {e}"))?;
                let resp = sender.send_request(req).await;
                (
                    resp.map_err(|e| format!("request: {e}"))?.status(),
                    conn_task,
                )
            }
        };
        conn_task.abort();
        let want = StatusCode::from_u16(expect_status).unwrap_or(StatusCode::OK);
        if status == want {
            Ok(())
        } else {
            Err(format!(
                "status {} (want {})",
                status.as_u16(),
                want.as_u16()
            ))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use http_body_util::Full;
    use hyper::service::service_fn;

    /// A server that speaks only HTTP/2 by prior knowledge, as gRPC servers do.
    async fn h2_only_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let status = if req.uri().path() == "/healthz" {
                        200
                    } else {
                        404
                    };
                    let mut resp = Response::new(Full::new(bytes::Bytes::new()));
                    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_http2_only_origin_is_checked_over_h2c() {
        let addr = h2_only_server().await;
        let t = Duration::from_secs(2);
        let connect = || async {
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))
        };
        let h2 = |path| probe(connect(), "origin", path, t, 200, true, false);
        assert_eq!(h2("/healthz").await, Ok(()));
        let e = h2("/missing").await.unwrap_err();
        assert!(e.contains("status 404"), "{e}");
        // The HTTP/1.1 probe cannot talk to it: the reason of a failed check says so.
        let e = http_probe(addr, "origin", "/healthz", t, 200)
            .await
            .unwrap_err();
        assert!(!e.is_empty());
    }
}
