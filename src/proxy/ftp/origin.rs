//! The gateway's control connection to an origin: connect through the upstream's
//! balancer, read the banner (never shown to the client), and for `ftps` upstreams secure
//! it with `AUTH TLS`, `PBSZ 0` and `PROT P`; reading whole replies within a deadline.
//! The health check uses the same steps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::proxy::OriginProtocol;
use crate::proxy::ftp::control::{Line, LineConn};
use crate::proxy::ftp::reply::{Assembler, Reply};
use crate::proxy::state::ProxyState;
use crate::proxy::stream::origin;
use crate::proxy::upstream::connect::OriginStream;
use crate::proxy::upstream::group::{InFlight, Upstream};

/// Reply lines from origins longer than this end the session (multi-line replies are
/// read a line at a time; no real reply line comes close).
pub const MAX_REPLY_LINE: usize = 8192;

pub struct OpenedOrigin {
    pub conn: LineConn<OriginStream>,
    pub addr: SocketAddr,
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub index: usize,
    pub in_flight: InFlight,
}

/// Connects to an origin, reads its banner and, for `ftps` upstreams, secures the control
/// connection (`AUTH TLS`, `PBSZ 0`, `PROT P`) before the client says anything.
pub async fn open_origin(
    state: &ProxyState,
    upstream: &str,
    preface: Option<&[u8]>,
) -> Result<OpenedOrigin, String> {
    let connected = origin::connect(state, upstream, preface).await?;
    let addr = connected.upstream.origins[connected.index].addr;
    let name = connected.origin_name().to_string();
    let wait = connected.upstream.response_timeout;
    let mut conn = LineConn::new(connected.stream, MAX_REPLY_LINE);
    let mut replies = Assembler::default();
    let banner = read_reply(&mut conn, &mut replies, wait).await?;
    if banner.code != 220 {
        return Err(format!("origin {name} greeted with {}", banner.code));
    }
    if connected.upstream.protocol == OriginProtocol::Ftps {
        conn = secure_origin(
            conn,
            &mut replies,
            &connected.upstream,
            connected.index,
            wait,
        )
        .await?;
    }
    Ok(OpenedOrigin {
        conn,
        addr,
        name,
        upstream: connected.upstream,
        index: connected.index,
        in_flight: connected.in_flight,
    })
}

/// Explicit FTPS on the origin's control connection: `AUTH TLS`, the handshake, `PBSZ 0`
/// and `PROT P` (the gateway's data connections to an `ftps` origin are always private).
pub async fn secure_origin(
    mut conn: LineConn<OriginStream>,
    replies: &mut Assembler,
    upstream: &Upstream,
    index: usize,
    wait: Duration,
) -> Result<LineConn<OriginStream>, String> {
    let auth = exchange(&mut conn, replies, b"AUTH TLS\r\n", wait).await?;
    if auth.code != 234 {
        return Err(format!(
            "origin refused AUTH TLS: {} {}",
            auth.code,
            auth.text()
        ));
    }
    let max = conn.max_line();
    let Ok(OriginStream::Plain(tcp)) = conn.into_stream() else {
        return Err("origin sent more after its AUTH TLS reply".into());
    };
    let Some(to) = upstream.tls_to(index) else {
        return Err("ftps upstream without TLS settings".into());
    };
    let handshake = to.tls.connector.connect(to.name.clone(), tcp);
    let secured = match tokio::time::timeout(wait, handshake).await {
        Ok(Ok(t)) => OriginStream::Tls(Box::new(t)),
        Ok(Err(e)) => return Err(format!("TLS with the origin: {e}")),
        Err(_) => return Err("TLS handshake with the origin timed out".into()),
    };
    let mut conn = LineConn::new(secured, max);
    for (line, want) in [(&b"PBSZ 0\r\n"[..], 200), (&b"PROT P\r\n"[..], 200)] {
        let r = exchange(&mut conn, replies, line, wait).await?;
        if r.code != want {
            return Err(format!(
                "origin answered {} to {}",
                r.code,
                String::from_utf8_lossy(line).trim()
            ));
        }
    }
    Ok(conn)
}

async fn exchange(
    conn: &mut LineConn<OriginStream>,
    replies: &mut Assembler,
    line: &[u8],
    wait: Duration,
) -> Result<Reply, String> {
    conn.send(line)
        .await
        .map_err(|e| format!("writing to the origin: {e}"))?;
    read_reply(conn, replies, wait).await
}

/// The next whole reply from the origin, within `wait`.
pub async fn read_reply<S>(
    conn: &mut LineConn<S>,
    replies: &mut Assembler,
    wait: Duration,
) -> Result<Reply, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reading = async {
        loop {
            match conn.read_line().await {
                Ok(Line::Text(line)) => match replies.feed(&line) {
                    Ok(Some(reply)) => return Ok(reply),
                    Ok(None) => {}
                    Err(bad) => return Err(format!("not an FTP reply: {:?}", bad.0)),
                },
                Ok(Line::TooLong) => return Err("reply line too long".into()),
                Ok(Line::Closed) => return Err("the origin closed the control connection".into()),
                Err(e) => return Err(format!("reading from the origin: {e}")),
            }
        }
    };
    tokio::time::timeout(wait, reading)
        .await
        .map_err(|_| format!("no reply from the origin within {wait:?}"))?
}
