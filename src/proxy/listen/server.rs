//! Listeners and connection lifecycle: accept under a connection cap, TLS with ALPN,
//! HTTP/1.1 or HTTP/2 by ALPN, idle and header timeouts, graceful drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::rustls::HandshakeKind;
use tokio_rustls::TlsAcceptor;

use crate::config::proxy::{Limits, ProxyConfig};
use crate::control;
use crate::process::clock::coarse_ms;
use crate::proxy::admin::endpoints::{ProxyAdmin, Reloader};
use crate::proxy::http::fast_h1;
use crate::proxy::http::forward::{self, ClientConn};
use crate::proxy::http::refused::{self, Refusal};
use crate::proxy::listen::client_io::{
    stop_requested, Activity, CheckedTimer, Tracked, POLL_TICK_DIVISOR,
};
use crate::proxy::listen::corked;
use crate::proxy::listen::lazy_socket::{Acceptor, LastWrites, LazySocket, SendFile};
use crate::proxy::listen::proxy_protocol;
use crate::proxy::listen::tls::{CertStore, ClientIdentity, TlsListener, ACME_TLS_ALPN};
use crate::proxy::listen::woken::PollWhenWoken;
use crate::proxy::upstream::tunnel::TunnelSlot;
use crate::proxy::Shared;

pub struct ProxyServer {
    pub shared: Arc<Shared>,
    pub tls: Option<Arc<TlsListener>>,
}

impl ProxyServer {
    pub fn new(config: ProxyConfig) -> anyhow::Result<Self> {
        let tls = if config.https.is_empty() && !config.streams.iter().any(|s| s.terminates_tls()) {
            None
        } else {
            Some(Arc::new(
                TlsListener::new(&config.tls).context("loading TLS certificates")?,
            ))
        };
        Ok(Self {
            shared: Shared::new(config)?,
            tls,
        })
    }

    /// Binds every listener (printing one "listening" line each), serves until `shutdown`
    /// resolves, then drains open connections up to the configured deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let state = self.shared.state.load_full();
        let cfg = &state.config;
        let limits = Arc::new(cfg.limits.clone());
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let reloader = Arc::new(Reloader::new(
            self.shared.clone(),
            self.tls.clone(),
            cfg.path.clone(),
        ));
        // SIGHUP reloads, as with nginx and HAProxy; handled from before the first
        // "listening" line.
        let hangup = {
            let reloader = reloader.clone();
            crate::process::signals::on_hangup(move || {
                let _ = reloader.reload_and_report();
            })
        };

        for addr in &cfg.http {
            let listener = bind_clients(*addr, &limits).await?;
            crate::process::listening::announce("HTTP", listener.local_addr()?);
            tasks.push(tokio::spawn(accept_loop(
                listener,
                None,
                self.shared.clone(),
                limits.clone(),
                permits.clone(),
                stop_rx.clone(),
                cfg.proxy_protocol.contains(addr),
            )));
        }
        if let Some(tls) = &self.tls {
            for addr in &cfg.https {
                let listener = bind_clients(*addr, &limits).await?;
                crate::process::listening::announce("HTTPS", listener.local_addr()?);
                tasks.push(tokio::spawn(accept_loop(
                    listener,
                    Some(tls.clone()),
                    self.shared.clone(),
                    limits.clone(),
                    permits.clone(),
                    stop_rx.clone(),
                    cfg.proxy_protocol.contains(addr),
                )));
            }
            tasks.push(tokio::spawn(watch_certificates(
                tls.store.clone(),
                self.shared.clone(),
            )));
        }
        tasks.extend(crate::proxy::stream::listen::start(&self.shared, self.tls.as_ref()).await?);
        if let Some(addr) = cfg.admin {
            let listener = bind(addr).await?;
            crate::process::listening::announce("HTTP (admin)", listener.local_addr()?);
            tasks.push(tokio::spawn(control::serve(
                listener,
                Arc::new(ProxyAdmin {
                    shared: self.shared.clone(),
                    reloader: reloader.clone(),
                }),
            )));
        }
        if let Some(reports) = cfg.reports.clone() {
            // Fail at start on a bad key file rather than run without reports.
            crate::health::report::ReportKey::from_file(&reports.key_file)?;
        }
        reloader.restart_background(&state);
        tasks.push(tokio::spawn(hangup));

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining open ones");
        for t in &tasks {
            t.abort();
        }
        let _ = stop_tx.send(true);
        let drain = async {
            // Every open connection holds a permit; all permits back means all closed.
            let _all = permits.acquire_many(limits.max_connections as u32).await;
        };
        if tokio::time::timeout(limits.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                "drain deadline of {:?} passed; closing the rest",
                limits.drain_timeout
            );
        }
        reloader.stop_background();
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

async fn bind_clients(addr: SocketAddr, limits: &Limits) -> anyhow::Result<Acceptor> {
    let acceptor = Acceptor::bind(addr).with_context(|| format!("binding {addr}"))?;
    // A client that connects and sends nothing waits in the kernel no longer than it
    // would have waited here for its request head.
    if let Err(e) = acceptor.defer_until_data(limits.header_read_timeout) {
        tracing::warn!(%addr, error = %e, "TCP_DEFER_ACCEPT not set; accepting at once");
    }
    Ok(acceptor)
}

/// Polls certificate files once a second; a broken file keeps the old set. (SIGHUP
/// reloads everything, certificates included: see `run`.)
async fn watch_certificates(store: Arc<CertStore>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match store.reload_if_changed() {
            Some(Ok(())) => {
                shared.metrics.cert_reload_ok.inc();
                tracing::info!("TLS certificates reloaded");
            }
            Some(Err(e)) => {
                shared.metrics.cert_reload_failed.inc();
                tracing::error!(error = %e, "TLS certificate reload failed; still serving the previous certificates");
            }
            None => {}
        }
    }
}

async fn accept_loop(
    listener: Acceptor,
    tls: Option<Arc<TlsListener>>,
    shared: Arc<Shared>,
    limits: Arc<Limits>,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    proxy_protocol: bool,
) {
    let kind = if tls.is_some() { "https" } else { "http" };
    let accepted = shared.metrics.connections.with_label_values(&[kind]);
    // The bound address, read once: what `send_proxy` headers name as the destination.
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        // At the cap we stop accepting and let the kernel queue hold new connections,
        // as HAProxy's maxconn does, instead of accepting and dropping them.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (mut stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        accepted.inc();
        let shared = shared.clone();
        let limits = limits.clone();
        // The policy in force when the connection came: a reload changes later ones.
        let tls = tls.as_ref().map(|t| t.acceptor());
        let stop = stop.clone();
        let cap = shared
            .state
            .load()
            .config
            .rate_limit
            .max_connections_per_client;
        if !proxy_protocol {
            // The per-client cap, checked before a task is spawned: the peer is the client.
            if !admit(&shared, peer.ip(), cap) {
                continue;
            }
            stream.nodelay_from_first_write();
            tokio::spawn(async move {
                shared.metrics.connections_open.inc();
                // Boxed: the connection's state is 2.2 KB, which tokio would copy when it
                // spawns the task and again when the task finishes; the task stays 144 bytes.
                Box::pin(serve_connection(
                    stream, peer, local, tls, &shared, &limits, stop,
                ))
                .await;
                shared.metrics.connections_open.dec();
                if cap.is_some() {
                    shared.connection_counts.close(peer.ip());
                }
                drop(permit);
            });
            continue;
        }
        tokio::spawn(async move {
            shared.metrics.connections_open.inc();
            let mut stream = stream;
            let read = proxy_protocol::read_header(&mut stream);
            let client = match tokio::time::timeout(limits.header_read_timeout, read).await {
                Ok(Ok(client)) => client.unwrap_or(peer),
                Ok(Err(why)) => {
                    tracing::debug!(%peer, why, "PROXY protocol header refused");
                    refused::record(&shared, peer.ip(), Refusal::ProxyHeader);
                    shared.metrics.connections_open.dec();
                    return;
                }
                Err(_) => {
                    refused::record(&shared, peer.ip(), Refusal::HeaderTimeout);
                    shared.metrics.connections_open.dec();
                    return;
                }
            };
            if admit(&shared, client.ip(), cap) {
                stream.nodelay_from_first_write();
                Box::pin(serve_connection(
                    stream, client, local, tls, &shared, &limits, stop,
                ))
                .await;
                if cap.is_some() {
                    shared.connection_counts.close(client.ip());
                }
            }
            shared.metrics.connections_open.dec();
            drop(permit);
        });
    }
}

/// The per-client connection cap (`max_connections_per_client`): false when `client`
/// is at it, and the connection is to be dropped.
fn admit(shared: &Shared, client: IpAddr, cap: Option<u32>) -> bool {
    let Some(cap) = cap else {
        return true;
    };
    if shared.connection_counts.open(client, cap) {
        return true;
    }
    shared
        .metrics
        .rate_limited
        .with_label_values(&["connections"])
        .inc();
    false
}

async fn serve_connection(
    stream: LazySocket,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: &Arc<Shared>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    activity.last_ms.store(coarse_ms(), Ordering::Relaxed);
    let tunnel = Arc::new(TunnelSlot::default());
    let (service_shared, service_activity, service_tunnel) =
        (shared.clone(), activity.clone(), tunnel.clone());
    let service_for = move |conn: ClientConn| {
        let shared = service_shared.clone();
        let activity = service_activity.clone();
        let tunnel = service_tunnel.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let activity = activity.clone();
            let tunnel = tunnel.clone();
            let conn = conn.clone();
            async move {
                activity.waiting.fetch_add(1, Ordering::Relaxed);
                // Boxed: hyper moves the service future around (HTTP/2 spawns a task per
                // stream); a pointer moves cheaper than the request's whole state.
                let handling = Box::pin(forward::handle(&shared, conn, &tunnel, req));
                let resp = handling.await.into_response();
                activity.waiting.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(resp)
            }
        })
    };
    match tls {
        None => {
            let io = Tracked::new(stream, activity.clone());
            let conn = ClientConn {
                peer,
                local,
                tls: false,
                identity: None,
            };
            let service = service_for(conn.clone());
            let fast = FastContext {
                shared,
                conn,
                tunnel: &tunnel,
            };
            serve_http1(io, &fast, service, activity.clone(), limits, stop.clone()).await;
            tunnel.run_if_opened(shared, &activity, limits, stop).await;
        }
        Some(acceptor) => {
            // Boxed, in a statement of its own: the handshake and the HTTP/2 machinery
            // would otherwise make every plain connection's task as large as theirs.
            let tls_serving = Box::pin(async move {
                // The handshake must finish within the header timeout: a client that opens a
                // connection and sends nothing is the same slowloris with TLS on.
                let tls_stream =
                    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => {
                            shared.metrics.tls_ok.inc();
                            if s.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
                                shared.metrics.tls_resumed.inc();
                            }
                            s
                        }
                        Ok(Err(e)) => {
                            shared.metrics.tls_failed.inc();
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            shared.metrics.tls_failed.inc();
                            return;
                        }
                    };
                let session = tls_stream.get_ref().1;
                if session.alpn_protocol() == Some(ACME_TLS_ALPN) {
                    // The CA has seen the challenge certificate; nothing more is said
                    // on such a connection (RFC 8737 §3).
                    return;
                }
                let h2 = session.alpn_protocol() == Some(b"h2");
                let conn = ClientConn {
                    peer,
                    local,
                    tls: true,
                    identity: ClientIdentity::of(session.peer_certificates()).map(Arc::new),
                };
                let service = service_for(conn.clone());
                let tracked = Tracked::new(tls_stream, activity.clone());
                if h2 {
                    serve_h2(tracked, service, activity, limits, stop).await;
                } else {
                    let fast = FastContext {
                        shared,
                        conn,
                        tunnel: &tunnel,
                    };
                    serve_http1(
                        tracked,
                        &fast,
                        service,
                        activity.clone(),
                        limits,
                        stop.clone(),
                    )
                    .await;
                    tunnel.run_if_opened(shared, &activity, limits, stop).await;
                }
            });
            tls_serving.await;
        }
    }
}

/// A client connection's request handler, as hyper's HTTP/1 and HTTP/2 servers take it.
trait ClientService:
    hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::proxy::body::ProxyBody>,
    Error = Infallible,
    Future: Send + 'static,
>
{
}

impl<S> ClientService for S where
    S: hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<crate::proxy::body::ProxyBody>,
        Error = Infallible,
        Future: Send + 'static,
    >
{
}

/// Serves HTTP/2 on a stream: one negotiated by ALPN, or a plain one that opened with the
/// HTTP/2 preface.
async fn serve_h2<I, S: ClientService>(
    io: I,
    service: S,
    activity: Arc<Activity>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (corked, uncork) = corked::cork(io);
    let mut builder = hyper::server::conn::http2::Builder::new(InlineFirstPoll);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(TokioIo::new(corked), service);
    let drain = |cx: &mut Context<'_>| {
        if let Poll::Ready(Err(e)) = uncork.poll_drain(cx) {
            tracing::debug!(error = %e, "HTTP/2 write failed");
        }
    };
    drive(
        conn,
        activity,
        limits,
        stop,
        |c| c.graceful_shutdown(),
        drain,
    )
    .await;
}

/// Runs each HTTP/2 stream's first poll inside the connection's own poll, and spawns a
/// task only for a stream that is still pending after it (one waiting for an origin).
///
/// A cache hit completes on its first poll, so its response is queued while the
/// connection is still being polled, and `corked` sends the responses to all the streams
/// a client sent together at once, instead of a task, a flush and a write each. Polling
/// first with a no-op waker is sound: the spawned task polls the future again at once,
/// and that poll registers the real waker.
#[derive(Clone, Copy)]
struct InlineFirstPoll;

impl<F> hyper::rt::Executor<F> for InlineFirstPoll
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let mut future = Box::pin(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if future.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(future);
        }
    }
}

/// What `fast_h1` needs to forward a request itself.
struct FastContext<'a> {
    shared: &'a Arc<Shared>,
    conn: ClientConn,
    tunnel: &'a TunnelSlot,
}

/// Serves HTTP/1.1 on a plain or TLS stream: requests without a body by `fast_h1`, and
/// the rest of the connection by hyper from the first request that needs it.
async fn serve_http1<I, S: ClientService>(
    io: I,
    fast: &FastContext<'_>,
    service: S,
    activity: Arc<Activity>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + LastWrites + SendFile + Unpin + Send + 'static,
{
    let stopping = AtomicBool::new(false);
    let serving = fast_h1::Serving {
        shared: fast.shared,
        conn: fast.conn.clone(),
        tunnel: fast.tunnel,
        activity: &activity,
        header_read_timeout: limits.header_read_timeout,
        limits: fast_h1::RequestLimits {
            headers: limits.max_headers,
            head_bytes: limits.max_header_bytes,
            body_bytes: limits.max_body_bytes,
        },
        stopping: &stopping,
    };
    let ended = drive(
        fast_h1::serve(io, &serving),
        activity.clone(),
        limits,
        stop.clone(),
        |_| stopping.store(true, Ordering::Relaxed),
        |_| {},
    )
    .await;
    let io = match ended {
        Some(Ok(fast_h1::Ended::Hyper(io))) => io,
        Some(Ok(fast_h1::Ended::H2c(io))) => {
            // Boxed: the HTTP/2 machinery would otherwise enlarge every connection's task.
            return Box::pin(serve_h2(io, service, activity, limits, stop)).await;
        }
        _ => return,
    };
    let conn = http1_builder(limits)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let ended = drive(
        conn,
        activity,
        limits,
        stop,
        |c| c.graceful_shutdown(),
        |_| {},
    )
    .await;
    // hyper answered a head it could not take (400, 414, 431) and ended the connection.
    if let Some(Err(e)) = ended {
        if let Some(refusal) = Refusal::of_hyper(&e) {
            refused::record(fast.shared, fast.conn.peer.ip(), refusal);
        }
    }
}

fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(CheckedTimer)
        // hyper also runs this timer while a keep-alive connection waits for its next
        // request, so on HTTP/1.1 idle connections close after min(this, idle_timeout).
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // hyper's own limit is 100 headers, kept on the stack; an explicit limit, even the
    // same one, makes it fill a fresh array for every request.
    if limits.max_headers != HYPER_MAX_HEADERS {
        b.max_headers(limits.max_headers);
    }
    b
}

/// hyper's default header-count limit for HTTP/1.
const HYPER_MAX_HEADERS: usize = 100;

/// Runs a connection until it ends, it has been idle too long, or shutdown asks it to
/// finish its current requests and close. `after_poll` runs after every poll of it.
/// `None`: cut for idleness.
async fn drive<C, T, E>(
    conn: C,
    activity: Arc<Activity>,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
    graceful: impl Fn(Pin<&mut C>),
    mut after_poll: impl FnMut(&mut Context<'_>),
) -> Option<Result<T, E>>
where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut conn = std::pin::pin!(conn);
    let idle = limits.idle_timeout;
    // The tick also polls the connection, which is what fires hyper's header timeouts
    // (`CheckedTimer`).
    let check_every =
        (idle.min(limits.header_read_timeout) / POLL_TICK_DIVISOR).max(Duration::from_millis(50));
    let watchers = std::pin::pin!(async {
        tokio::select! {
            () = activity.idle_for(idle, check_every) => {}
            () = stop_requested(&mut stop) => {}
        }
    });
    // Each tick still wakes the task, so the connection is polled (see above).
    let mut watchers = PollWhenWoken::new(watchers);
    // The connection first: one answered and closed on its first poll never arms the
    // idle timer or subscribes to the stop signal.
    tokio::select! {
        biased;
        res = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            after_poll(cx);
            polled
        }) => return ended(res),
        () = &mut watchers => {}
    }
    graceful(conn.as_mut());
    // Still ticking: a connection in the middle of a request head ends by its header
    // timeout, which only a poll can notice. A graceful finish that moves no byte for
    // another idle period (a client that stopped reading its response) is cut: asking
    // nicely does not unblock a write.
    tokio::select! {
        res = std::future::poll_fn(|cx| {
            let polled = conn.as_mut().poll(cx);
            after_poll(cx);
            polled
        }) => ended(res),
        () = activity.idle_for(idle, check_every) => None,
    }
}

fn ended<T, E: std::fmt::Display>(res: Result<T, E>) -> Option<Result<T, E>> {
    if let Err(e) = &res {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
    Some(res)
}
