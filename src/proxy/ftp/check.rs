//! The active health check of FTP origins: connect, expect the `220` banner (and, for
//! `ftps` upstreams, a working `AUTH TLS` handshake, so an expired certificate shows as
//! down), then `QUIT`.

use std::time::Duration;

use crate::config::proxy::OriginProtocol;
use crate::proxy::ftp::control::LineConn;
use crate::proxy::ftp::origin::{read_reply, secure_origin};
use crate::proxy::ftp::reply::Assembler;
use crate::proxy::upstream::connect::{self, OriginStream};
use crate::proxy::upstream::group::Upstream;

pub async fn check(upstream: &Upstream, index: usize, timeout: Duration) -> Result<(), String> {
    let addr = upstream.origins[index].addr;
    let tcp = connect::within(addr, timeout, connect::tcp(addr))
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = LineConn::new(OriginStream::Plain(tcp), 8192);
    let mut replies = Assembler::default();
    let banner = read_reply(&mut conn, &mut replies, timeout).await?;
    if banner.code != 220 {
        return Err(format!("banner {} {}", banner.code, banner.text()));
    }
    if upstream.protocol == OriginProtocol::Ftps {
        conn = secure_origin(conn, &mut replies, upstream, index, timeout).await?;
    }
    let _ = conn.send(b"QUIT\r\n").await;
    Ok(())
}
