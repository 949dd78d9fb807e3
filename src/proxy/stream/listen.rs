//! The `[[streams]]` listeners: accept under the stream's connection cap, read a PROXY
//! header where one is expected, then by mode: pass bytes through (`tcp`), terminate TLS
//! first (`tls`), route by the ClientHello's name without terminating
//! (`tls_passthrough`), or hand the connection to the FTP gateway (`ftp`).
//!
//! A stream's settings are read from the state in force when each connection arrives,
//! so a reload changes later connections; its listen addresses are bound at start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::config::proxy::{StreamConfig, StreamMode};
use crate::metrics::{ServiceMetrics, StreamRefusal};
use crate::process::clock::now_ms;
use crate::proxy::ftp::session as ftp_session;
use crate::proxy::listen::proxy_protocol::{self, Peek as _};
use crate::proxy::listen::tls::TlsListener;
use crate::proxy::maybe_tls::ClientStream;
use crate::proxy::state::ProxyState;
use crate::proxy::stream::origin;
use crate::proxy::stream::pipe::{pipe, PipeEnd};
use crate::proxy::stream::session_log::{self, Value};
use crate::proxy::stream::sni::{self, Hello};
use crate::proxy::upstream::send_proxy;
use crate::proxy::Shared;

/// How long a client has to send its PROXY header, finish its TLS handshake or send its
/// ClientHello.
const OPENING_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds every stream's listeners (printing a "listening" line for each, labelled
/// `stream NAME`) and starts their accept loops.
pub async fn start(
    shared: &Arc<Shared>,
    tls: Option<&Arc<TlsListener>>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let state = shared.state.load_full();
    let mut tasks = Vec::new();
    for stream in &state.config.streams {
        let permits = Arc::new(Semaphore::new(stream.max_connections));
        let name: Arc<str> = Arc::from(stream.name.as_str());
        let gateway = Arc::new(ftp_session::Gateway::default());
        shared
            .stream_metrics
            .connections
            .with_label_values(&[&stream.name]);
        shared
            .stream_metrics
            .open
            .with_label_values(&[&stream.name]);
        for addr in &stream.listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding stream {} on {addr}", stream.name))?;
            crate::process::listening::announce(
                &format!("stream {}", stream.name),
                listener.local_addr()?,
            );
            tasks.push(tokio::spawn(accept_loop(
                listener,
                name.clone(),
                shared.clone(),
                tls.cloned(),
                permits.clone(),
                gateway.clone(),
            )));
        }
    }
    Ok(tasks)
}

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    shared: Arc<Shared>,
    tls: Option<Arc<TlsListener>>,
    permits: Arc<Semaphore>,
    gateway: Arc<ftp_session::Gateway>,
) {
    let accepted = shared
        .stream_metrics
        .connections
        .with_label_values(&[&name]);
    let counters = shared.stream_metrics.service(&name);
    // What the client connected to: the bound address, unless that is a wildcard and only
    // the connection itself knows (a system call each, so only then).
    let bound = listener_addr(&listener);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, stream = %name, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        accepted.inc();
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Refused at once rather than queued: a client of a file gateway retries, and
            // an operator sees the cap in the refusals.
            shared
                .stream_metrics
                .refused(&name, StreamRefusal::Capacity);
            continue;
        };
        let local = if bound.ip().is_unspecified() {
            tcp.local_addr().unwrap_or(bound)
        } else {
            bound
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        let name = name.clone();
        let gateway = gateway.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            counters.open.inc();
            let tls = tls.as_deref();
            serve(tcp, peer, local, &name, &shared, tls, &gateway, &counters).await;
            counters.open.dec();
            drop(permit);
        });
    }
}

fn listener_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    name: &str,
    shared: &Arc<Shared>,
    tls: Option<&TlsListener>,
    gateway: &ftp_session::Gateway,
    counters: &ServiceMetrics,
) {
    let state = shared.state.load_full();
    // A stream removed by a reload takes no new connections.
    let Some(stream) = state.config.streams.iter().find(|s| s.name == name) else {
        return;
    };
    let client = if stream.proxy_protocol {
        match tokio::time::timeout(OPENING_TIMEOUT, proxy_protocol::read_header(&mut tcp)).await {
            Ok(Ok(client)) => client.unwrap_or(peer),
            Ok(Err(why)) => {
                tracing::debug!(%peer, why, stream = %name, "PROXY protocol header refused");
                shared
                    .stream_metrics
                    .refused(name, StreamRefusal::ProxyHeader);
                return;
            }
            Err(_) => {
                shared
                    .stream_metrics
                    .refused(name, StreamRefusal::ProxyHeader);
                return;
            }
        }
    } else {
        peer
    };
    if stream.mode == StreamMode::Ftp {
        // Boxed: a session's state is large, and a plain stream's task should not carry it.
        Box::pin(ftp_session::serve(
            tcp, client, local, stream, &state, shared, tls, gateway,
        ))
        .await;
        return;
    }
    relay(tcp, client, local, stream, &state, shared, tls, counters).await;
}

/// The modes that carry bytes: `tcp`, `tls` and `tls_passthrough`.
#[allow(clippy::too_many_arguments)]
async fn relay(
    mut tcp: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    stream: &StreamConfig,
    state: &ProxyState,
    shared: &Shared,
    tls: Option<&TlsListener>,
    counters: &ServiceMetrics,
) {
    let started = Instant::now();
    let metrics = &shared.stream_metrics;
    let name = stream.name.as_str();
    let mut sni_name = None;
    let upstream = match stream.mode {
        StreamMode::TlsPassthrough => {
            let hello = tokio::time::timeout(OPENING_TIMEOUT, peek_hello(&mut tcp)).await;
            let hello = match hello {
                Ok(Ok(h)) => h,
                Ok(Err(why)) => {
                    tracing::debug!(%client, stream = %name, why, "no ClientHello");
                    metrics.refused(name, StreamRefusal::Sni);
                    return;
                }
                Err(_) => {
                    metrics.refused(name, StreamRefusal::Sni);
                    return;
                }
            };
            sni_name = hello;
            match sni::route(&stream.sni, stream.upstream.as_deref(), sni_name.as_deref()) {
                Some(u) => u.to_string(),
                None => {
                    tracing::info!(%client, stream = %name, sni = ?sni_name, "no SNI rule and no default upstream");
                    metrics.refused(name, StreamRefusal::Sni);
                    return;
                }
            }
        }
        _ => stream.upstream.clone().unwrap_or_default(),
    };
    let mut client_io: ClientStream = match stream.mode {
        StreamMode::Tls => {
            let Some(tls) = tls else {
                return;
            };
            let handshake = tls.stream_acceptor().accept(tcp);
            match tokio::time::timeout(OPENING_TIMEOUT, handshake).await {
                Ok(Ok(t)) => ClientStream::Tls(Box::new(t)),
                Ok(Err(e)) => {
                    tracing::debug!(%client, stream = %name, error = %e, "TLS handshake failed");
                    metrics.refused(name, StreamRefusal::Tls);
                    return;
                }
                Err(_) => {
                    metrics.refused(name, StreamRefusal::Tls);
                    return;
                }
            }
        }
        _ => ClientStream::Plain(tcp),
    };
    // Before any TLS to the origin: the header is for the origin's TCP layer.
    let header = stream
        .send_proxy
        .map(|version| send_proxy::header(version, client, local));
    let mut origin = match origin::connect(state, &upstream, header.as_deref()).await {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(%client, stream = %name, why, "no origin for a stream connection");
            metrics.refused(name, StreamRefusal::NoOrigin);
            log(
                shared,
                stream,
                client,
                None,
                sni_name.as_deref(),
                0,
                0,
                started,
                "no_origin",
            );
            return;
        }
    };
    let piped = pipe(
        &mut client_io,
        &mut origin.stream,
        stream.idle_timeout,
        Some(&origin.in_flight),
    )
    .await;
    counters.bytes_in.inc_by(piped.client_to_origin);
    counters.bytes_out.inc_by(piped.origin_to_client);
    if let PipeEnd::Idle = piped.end {
        metrics.refused(name, StreamRefusal::Idle);
    }
    if let PipeEnd::Error { side, error } = &piped.end {
        tracing::debug!(stream = %name, side, error = %error, "stream ended by an error");
    }
    log(
        shared,
        stream,
        client,
        Some(origin.origin_name()),
        sni_name.as_deref(),
        piped.client_to_origin,
        piped.origin_to_client,
        started,
        piped.end.result(),
    );
}

/// Waits until the ClientHello has arrived whole (it is left unread for the origin) and
/// returns its server name.
async fn peek_hello(tcp: &mut TcpStream) -> Result<Option<String>, String> {
    let mut buf = vec![0u8; sni::MAX_CLIENT_HELLO];
    let mut seen = 0;
    loop {
        let n = tcp
            .peek_waiting(&mut buf)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("closed before a ClientHello".into());
        }
        match sni::read_hello(&buf[..n]) {
            Hello::Complete(name) => return Ok(name),
            Hello::NotTls(why) => return Err(why),
            Hello::Incomplete if n == seen => {
                // Peeking again at once would spin on the same bytes (the socket stays
                // readable while they wait): give the rest a moment to come.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Hello::Incomplete => seen = n,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn log(
    shared: &Shared,
    stream: &StreamConfig,
    client: SocketAddr,
    origin: Option<&str>,
    sni: Option<&str>,
    client_to_origin: u64,
    origin_to_client: u64,
    started: Instant,
    result: &str,
) {
    let Some((log, format)) = &shared.access_log else {
        return;
    };
    let client = client.to_string();
    let mut fields = vec![
        ("service", Value::Text(&stream.name)),
        ("mode", Value::Text(stream.mode.name())),
        ("client", Value::Text(&client)),
        ("origin", Value::Text(origin.unwrap_or("-"))),
    ];
    if let Some(sni) = sni {
        fields.push(("sni", Value::Text(sni)));
    }
    fields.extend([
        ("bytes_in", Value::Number(client_to_origin)),
        ("bytes_out", Value::Number(origin_to_client)),
        (
            "duration_ms",
            Value::Millis(started.elapsed().as_secs_f64() * 1000.0),
        ),
        ("result", Value::Text(result)),
    ]);
    log.write(session_log::line("stream", now_ms(), &fields, *format));
}
