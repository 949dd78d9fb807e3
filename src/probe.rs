//! One HTTP health probe: a fresh connection (so it tests what a new client would meet),
//! a GET of a path, and the expected status, all within a timeout. Used by the proxy for
//! its origins and by the DNS server for the nodes.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
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
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let conn_task = tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        conn_task.abort();
        let want = StatusCode::from_u16(expect_status).unwrap_or(StatusCode::OK);
        if resp.status() == want {
            Ok(())
        } else {
            Err(format!(
                "status {} (want {})",
                resp.status().as_u16(),
                want.as_u16()
            ))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
