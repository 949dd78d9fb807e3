//! Upstream groups at run time: each origin's health (active checks and passive errors),
//! its in-flight count, and its pool of idle HTTP/1.1 connections, which an origin's
//! response body refills when it ends.
//!
//! We hold connections ourselves instead of using a pooled client so that a connect
//! failure happens *before* the request is handed over: the request is still whole and can
//! go to another origin, body and all.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http_body::{Body, Frame, SizeHint};
use rustls::pki_types::ServerName;

use crate::config::proxy::{Balance, HealthCheckConfig, OriginProtocol, UpstreamConfig};
use crate::health::RiseFall;
use crate::proxy::body::BoxError;
use crate::proxy::upstream::balance::{self, Candidate};
pub use crate::proxy::upstream::connect::ConnectError;
use crate::proxy::upstream::connect::{self, TlsTo};
use crate::proxy::upstream::meter::{CountsTraffic, Latency, Traffic};
use crate::proxy::upstream::origin_conn::{OriginConn, ResponseBody};
use crate::proxy::upstream::origin_h2::H2Session;
use crate::proxy::upstream::origin_tls::{self, OriginTls, OriginTlsError};

/// Idle connections kept per origin; past this the longest idle is closed.
const MAX_IDLE_PER_ORIGIN: usize = 256;
/// An idle connection older than this is closed rather than reused: origins time idle
/// connections out (nginx after 75 s, Apache after 5), and a request should not be the
/// one to find out.
const MAX_IDLE_MS: u64 = 4_000;

pub use crate::process::clock::now_ms;

/// State of one origin that must survive config reloads (looked up by name and address).
pub struct OriginState {
    pub in_flight: AtomicUsize,
    /// Verdict of the active checks (true when none are configured).
    checked_up: AtomicBool,
    checks: Mutex<RiseFall>,
    passive_failures: AtomicU32,
    /// Passive cool-down: no traffic before this instant (`now_ms`).
    down_until: AtomicU64,
    /// Newest at the back, with the coarse time each went idle.
    idle: Mutex<VecDeque<(OriginConn, u64)>>,
    /// The one connection of an `h2c` upstream's origin.
    pub h2: H2Session,
    /// Bytes moved recently, for `least_traffic`.
    pub traffic: Traffic,
    /// Response latency, for `peak_ewma`.
    pub latency: Latency,
}

impl OriginState {
    fn new(rise: u32, fall: u32) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            checked_up: AtomicBool::new(true),
            checks: Mutex::new(RiseFall::new(true, rise, fall)),
            passive_failures: AtomicU32::new(0),
            down_until: AtomicU64::new(0),
            idle: Mutex::new(VecDeque::new()),
            h2: H2Session::default(),
            traffic: Traffic::new(now_ms()),
            latency: Latency::new(now_ms()),
        }
    }

    pub fn is_healthy(&self) -> bool {
        if !self.checked_up.load(Ordering::Relaxed) {
            return false;
        }
        // Read the clock only during a cool-down: this runs for every candidate of every
        // request.
        let down_until = self.down_until.load(Ordering::Relaxed);
        down_until == 0 || now_ms() >= down_until
    }

    /// Feeds an active check result; returns Some(new state) on a change.
    pub fn record_check(&self, ok: bool) -> Option<bool> {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if checks.observe(ok) {
            let up = checks.is_up();
            self.checked_up.store(up, Ordering::Relaxed);
            if up {
                // Back from active checks: forget old passive errors.
                self.passive_failures.store(0, Ordering::Relaxed);
                self.down_until.store(0, Ordering::Relaxed);
            }
            return Some(up);
        }
        None
    }

    pub fn record_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a connect error, reset, timeout or 5xx; `threshold` in a row put the origin
    /// in cool-down. Returns true when this failure started a cool-down.
    pub fn record_failure(&self, threshold: u32, cooldown: Duration) -> bool {
        let n = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= threshold {
            self.passive_failures.store(0, Ordering::Relaxed);
            self.down_until
                .store(now_ms() + cooldown.as_millis() as u64, Ordering::Relaxed);
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            return true;
        }
        false
    }

    /// The most recently used idle connection that is still open and young enough, if any;
    /// `owner`: one whose PROXY header named this client (`send_proxy` upstreams).
    pub fn take_idle(&self, owner: Option<SocketAddr>) -> Option<OriginConn> {
        self.take_idle_at(crate::process::clock::coarse_ms(), owner)
    }

    fn take_idle_at(&self, now: u64, owner: Option<SocketAddr>) -> Option<OriginConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if owner.is_some() {
            // Connections of many clients share the pool: look for this one's.
            while idle
                .front()
                .is_some_and(|&(_, since)| now.saturating_sub(since) > MAX_IDLE_MS)
            {
                idle.pop_front();
            }
            let at = idle
                .iter()
                .rposition(|(c, _)| c.owner == owner && c.is_open())?;
            return idle.remove(at).map(|(conn, _)| conn);
        }
        while let Some((conn, since)) = idle.pop_back() {
            if now.saturating_sub(since) > MAX_IDLE_MS {
                // Everything older is further to the front.
                idle.clear();
                return None;
            }
            // One a PROXY header tied to a client (a reload turned send_proxy off) is
            // nobody else's.
            if conn.owner.is_none() && conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    pub fn put_idle(&self, conn: OriginConn) {
        self.put_idle_at(conn, crate::process::clock::coarse_ms());
    }

    fn put_idle_at(&self, conn: OriginConn, now: u64) {
        if !conn.is_reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle
            .front()
            .is_some_and(|&(_, since)| now.saturating_sub(since) > MAX_IDLE_MS)
        {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE_PER_ORIGIN {
            idle.pop_front();
        }
        idle.push_back((conn, now));
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

/// Keeps each origin's state across config reloads, so in-flight counts and health carry
/// over for origins that still exist.
#[derive(Default)]
pub struct OriginRegistry {
    /// By protocol too: a pooled plain connection must never carry a request that an
    /// upstream now sends over TLS.
    states: Mutex<HashMap<(String, SocketAddr, OriginProtocol), Arc<OriginState>>>,
}

impl OriginRegistry {
    pub fn state(
        &self,
        name: &str,
        addr: SocketAddr,
        protocol: OriginProtocol,
        hc: Option<&HealthCheckConfig>,
    ) -> Arc<OriginState> {
        let (rise, fall) = hc.map(|h| (h.rise, h.fall)).unwrap_or((1, 1));
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .entry((name.to_string(), addr, protocol))
            .or_insert_with(|| Arc::new(OriginState::new(rise, fall)))
            .clone()
    }
}

pub struct Origin {
    pub name: String,
    /// The name again, shared cheaply with access-log entries.
    pub name_arc: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub authority: Authority,
    /// Value of the sticky cookie that pins a client here.
    pub sticky: String,
    /// The name its certificate is checked against, for TLS upstreams.
    pub tls_name: ServerName<'static>,
    pub state: Arc<OriginState>,
}

pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    pub sticky_cookie: Option<String>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub passive_failures: u32,
    pub passive_cooldown: Duration,
    pub health_check: Option<HealthCheckConfig>,
    pub protocol: OriginProtocol,
    /// Present for `https` and `h2` upstreams.
    pub tls: Option<OriginTls>,
    pub send_proxy: Option<crate::config::proxy::ProxyVersion>,
    pub origins: Vec<Origin>,
    schedule: Vec<usize>,
    turn: AtomicUsize,
    seed: AtomicU64,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, registry: &OriginRegistry) -> Result<Self, OriginTlsError> {
        let tls = match &cfg.tls {
            Some(t) => Some(OriginTls::new(&cfg.name, cfg.protocol, t)?),
            None => None,
        };
        let upstream_name = cfg.tls.as_ref().and_then(|t| t.server_name.as_deref());
        let origins = cfg
            .origins
            .iter()
            .map(|o| Origin {
                name: o.name.clone(),
                name_arc: Arc::from(o.name.as_str()),
                addr: o.addr,
                weight: o.weight,
                authority: Authority::try_from(o.addr.to_string().as_str())
                    .unwrap_or_else(|_| Authority::from_static("origin")),
                sticky: balance::sticky_value(&o.name),
                tls_name: origin_tls::origin_name(o.server_name.as_deref(), upstream_name, o.addr),
                state: registry.state(&o.name, o.addr, cfg.protocol, cfg.health_check.as_ref()),
            })
            .collect::<Vec<_>>();
        let weights: Vec<u32> = origins.iter().map(|o| o.weight).collect();
        Ok(Self {
            name: cfg.name.clone(),
            balance: cfg.balance,
            sticky_cookie: cfg.sticky_cookie.clone(),
            connect_timeout: cfg.connect_timeout,
            response_timeout: cfg.response_timeout,
            passive_failures: cfg.passive_failures,
            passive_cooldown: cfg.passive_cooldown,
            health_check: cfg.health_check.clone(),
            protocol: cfg.protocol,
            tls,
            send_proxy: cfg.send_proxy,
            origins,
            schedule: balance::weighted_schedule(&weights),
            turn: AtomicUsize::new(0),
            seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ now_ms()),
        })
    }

    /// How to secure a connection to origin `index`, for TLS upstreams.
    pub fn tls_to(&self, index: usize) -> Option<TlsTo<'_>> {
        self.tls.as_ref().map(|tls| TlsTo {
            tls,
            name: &self.origins[index].tls_name,
        })
    }

    /// At least one origin can take traffic.
    pub fn can_serve(&self) -> bool {
        self.origins.iter().any(|o| o.state.is_healthy())
    }

    /// Chooses an origin, skipping unhealthy ones and `exclude` (a retry's first choice).
    /// A sticky value naming a healthy origin wins.
    pub fn choose(&self, sticky: Option<&str>, exclude: Option<usize>) -> Option<usize> {
        if let Some(value) = sticky {
            if let Some(i) = self.origins.iter().position(|o| o.sticky == value) {
                if Some(i) != exclude && self.origins[i].state.is_healthy() {
                    return Some(i);
                }
            }
        }
        // Measured load is read only by the balancers that use it.
        let now = match self.balance {
            Balance::LeastTraffic | Balance::PeakEwma => now_ms(),
            _ => 0,
        };
        let candidate = |(i, o): (usize, &Origin)| {
            let mut c = Candidate {
                in_flight: o.state.in_flight.load(Ordering::Relaxed),
                weight: o.weight,
                eligible: Some(i) != exclude && o.state.is_healthy(),
                ..Candidate::NONE
            };
            match self.balance {
                Balance::LeastTraffic => {
                    o.state.traffic.fold(now);
                    c.traffic = o.state.traffic.recent(now) as u64;
                }
                Balance::PeakEwma => c.latency_us = o.state.latency.current_us(now) as u64,
                _ => {}
            }
            c
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let random = self.next_random();
        // A stack buffer for the usual handful of origins, so the request path does not
        // allocate; larger upstreams pay for a Vec.
        const STACK: usize = 32;
        if self.origins.len() <= STACK {
            let mut buf = [Candidate::NONE; STACK];
            for (i, o) in self.origins.iter().enumerate() {
                buf[i] = candidate((i, o));
            }
            balance::pick(
                self.balance,
                &buf[..self.origins.len()],
                &self.schedule,
                turn,
                random,
            )
        } else {
            let all: Vec<Candidate> = self.origins.iter().enumerate().map(candidate).collect();
            balance::pick(self.balance, &all, &self.schedule, turn, random)
        }
    }

    fn next_random(&self) -> u64 {
        // SplitMix64 over an atomic counter: lock-free and good enough for tie-breaking.
        let mut z = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A pooled connection to the origin, unless `fresh` is asked for or none is idle;
    /// for `send_proxy` upstreams, one opened for `client` (the client's connection
    /// address).
    pub fn pooled(&self, index: usize, fresh: bool, client: SocketAddr) -> Option<OriginConn> {
        if fresh {
            return None;
        }
        let owner = self.send_proxy.map(|_| client);
        self.origins[index].state.take_idle(owner)
    }

    /// A new connection to the origin, within the connect timeout; for `send_proxy`
    /// upstreams it starts with a PROXY header saying `client` connected to `local`.
    pub async fn connect(
        &self,
        index: usize,
        client: SocketAddr,
        local: SocketAddr,
    ) -> Result<OriginConn, ConnectError> {
        let addr = self.origins[index].addr;
        let header = self
            .send_proxy
            .map(|v| crate::proxy::upstream::send_proxy::header(v, client, local));
        let stream = connect::open(
            addr,
            self.connect_timeout,
            self.tls_to(index),
            header.as_deref(),
        )
        .await?;
        let mut conn = OriginConn::new(stream);
        conn.owner = self.send_proxy.map(|_| client);
        Ok(conn)
    }
}

/// Counts a request as in flight at an origin until dropped (when the response body is
/// done or abandoned).
pub struct InFlight {
    state: Arc<OriginState>,
    gauge: Option<prometheus::IntGauge>,
}

impl InFlight {
    pub fn new(state: Arc<OriginState>, gauge: Option<prometheus::IntGauge>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(g) = &gauge {
            g.inc();
        }
        Self { state, gauge }
    }

    /// The origin's state, whose traffic and latency meters this request feeds.
    pub fn origin(&self) -> &OriginState {
        &self.state
    }

    pub fn shared_origin(&self) -> Arc<OriginState> {
        self.state.clone()
    }
}

impl CountsTraffic for InFlight {
    fn moved(&self, bytes: u64) {
        self.state.traffic.add(bytes);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// An origin's response body on its way to the client. When the origin has sent it all,
/// the connection goes back to the pool; if the client goes away first, the connection is
/// dropped (its state is unknown). Either way the in-flight count goes down on drop.
pub struct OriginBody {
    inner: ResponseBody,
    pool: Arc<OriginState>,
    _in_flight: InFlight,
}

impl OriginBody {
    pub fn new(inner: ResponseBody, pool: Arc<OriginState>, in_flight: InFlight) -> Self {
        let mut body = Self {
            inner,
            pool,
            _in_flight: in_flight,
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if let Some(conn) = self.inner.take_reusable() {
            self.pool.put_idle(conn);
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this._in_flight.moved(data.len() as u64);
            }
        }
        if let Poll::Ready(None | Some(Ok(_))) = polled {
            // The last frame often arrives with the end: give the connection back now,
            // not a poll later.
            this.release_if_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::OriginConfig;

    fn upstream(balance: Balance, n: usize) -> Upstream {
        let cfg = UpstreamConfig {
            name: "u".into(),
            balance,
            sticky_cookie: Some("s".into()),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            origins: (0..n)
                .map(|i| OriginConfig {
                    name: format!("o{i}"),
                    addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    weight: 1,
                    server_name: None,
                })
                .collect(),
            health_check: None,
            passive_failures: 2,
            passive_cooldown: Duration::from_secs(60),
            protocol: OriginProtocol::Http1,
            tls: None,
            send_proxy: None,
        };
        Upstream::new(&cfg, &OriginRegistry::default()).unwrap()
    }

    /// A connected pair: our end as an origin connection, and the origin's end.
    async fn conn_pair(listener: &tokio::net::TcpListener) -> (OriginConn, tokio::net::TcpStream) {
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (OriginConn::new(ours), theirs)
    }

    #[tokio::test]
    async fn the_pool_gives_the_newest_open_young_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = OriginState::new(1, 1);
        let (a, _a_peer) = conn_pair(&listener).await;
        let (b, b_peer) = conn_pair(&listener).await;
        let t0 = 1_000_000;
        state.put_idle_at(a, t0);
        state.put_idle_at(b, t0 + 10);
        assert_eq!(state.idle_count(), 2);

        // The origin closes the newest one; once the reactor has seen that, it is skipped
        // and the older one comes out.
        drop(b_peer);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let newest_open = state.idle.lock().unwrap().back().unwrap().0.is_open();
            if !newest_open {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "close never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = state.take_idle_at(t0 + 20, None).expect("the open one");
        assert!(got.is_open());
        assert_eq!(state.idle_count(), 0);

        // Idle past MAX_IDLE_MS: not handed out, and swept when another comes back.
        state.put_idle_at(got, t0);
        assert!(state.take_idle_at(t0 + MAX_IDLE_MS + 1, None).is_none());
        let (c, _c_peer) = conn_pair(&listener).await;
        let (d, _d_peer) = conn_pair(&listener).await;
        state.put_idle_at(c, t0);
        state.put_idle_at(d, t0 + MAX_IDLE_MS + 1);
        assert_eq!(state.idle_count(), 1, "the stale one is closed on the way");
    }

    #[tokio::test]
    async fn a_connection_a_proxy_header_tied_to_a_client_serves_only_that_client() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let state = OriginState::new(1, 1);
        let alice: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        let bob: SocketAddr = "192.0.2.2:40000".parse().unwrap();
        let (mut a, _a_peer) = conn_pair(&listener).await;
        a.owner = Some(alice);
        let t0 = 1_000_000;
        state.put_idle_at(a, t0);
        assert!(state.take_idle_at(t0 + 1, Some(bob)).is_none(), "not bob's");
        assert!(state.take_idle_at(t0 + 1, None).is_none(), "nor anyone's");
        let (mut again, _again_peer) = conn_pair(&listener).await;
        again.owner = Some(alice);
        state.put_idle_at(again, t0 + 2);
        let got = state
            .take_idle_at(t0 + 3, Some(alice))
            .expect("alice's own");
        assert_eq!(got.owner, Some(alice));
    }

    #[test]
    fn passive_failures_put_an_origin_in_cool_down() {
        let u = upstream(Balance::RoundRobin, 2);
        assert!(!u.origins[0]
            .state
            .record_failure(2, Duration::from_secs(60)));
        assert!(u.origins[0]
            .state
            .record_failure(2, Duration::from_secs(60)));
        assert!(!u.origins[0].state.is_healthy());
        for _ in 0..10 {
            assert_eq!(u.choose(None, None), Some(1));
        }
    }

    #[test]
    fn a_success_resets_the_passive_count() {
        let u = upstream(Balance::RoundRobin, 1);
        u.origins[0]
            .state
            .record_failure(2, Duration::from_secs(60));
        u.origins[0].state.record_success();
        assert!(!u.origins[0]
            .state
            .record_failure(2, Duration::from_secs(60)));
        assert!(u.origins[0].state.is_healthy());
    }

    #[test]
    fn sticky_value_pins_until_the_origin_is_unhealthy() {
        let u = upstream(Balance::RoundRobin, 3);
        let pinned = u.origins[2].sticky.clone();
        for _ in 0..5 {
            assert_eq!(u.choose(Some(&pinned), None), Some(2));
        }
        u.origins[2]
            .state
            .record_failure(1, Duration::from_secs(60));
        assert_ne!(u.choose(Some(&pinned), None), Some(2));
    }

    #[test]
    fn upstreams_larger_than_the_stack_buffer_use_every_origin() {
        let u = upstream(Balance::RoundRobin, 40);
        let picks: std::collections::HashSet<usize> =
            (0..40).filter_map(|_| u.choose(None, None)).collect();
        assert_eq!(picks.len(), 40);
    }

    #[test]
    fn exclude_moves_a_retry_elsewhere() {
        let u = upstream(Balance::LeastConn, 2);
        for _ in 0..10 {
            assert_eq!(u.choose(None, Some(0)), Some(1));
        }
    }

    #[test]
    fn in_flight_guard_counts_up_and_down_and_state_survives_reload() {
        let registry = OriginRegistry::default();
        let cfg = |addr: &str| UpstreamConfig {
            name: "u".into(),
            balance: Balance::LeastConn,
            sticky_cookie: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            origins: vec![OriginConfig {
                name: "o".into(),
                addr: addr.parse().unwrap(),
                weight: 1,
                server_name: None,
            }],
            health_check: None,
            passive_failures: 2,
            passive_cooldown: Duration::from_secs(1),
            protocol: OriginProtocol::Http1,
            tls: None,
            send_proxy: None,
        };
        let before = Upstream::new(&cfg("127.0.0.1:1"), &registry).unwrap();
        let guard = InFlight::new(before.origins[0].state.clone(), None);
        let after = Upstream::new(&cfg("127.0.0.1:1"), &registry).unwrap();
        assert_eq!(after.origins[0].state.in_flight.load(Ordering::Relaxed), 1);
        drop(guard);
        assert_eq!(after.origins[0].state.in_flight.load(Ordering::Relaxed), 0);
        let moved = Upstream::new(&cfg("127.0.0.1:2"), &registry).unwrap();
        assert!(!Arc::ptr_eq(
            &moved.origins[0].state,
            &before.origins[0].state
        ));
    }
}
