//! WebSocket over HTTP/1.1 Upgrade (RFC 6455 §4, RFC 9110 §7.8): once the origin answers
//! 101, the client's connection and the origin's become one byte tunnel.
//!
//! Only `websocket` is tunnelled. `Upgrade: h2c` through a proxy would let a client speak
//! HTTP/2 straight to the origin, past every per-request rule here ("h2c smuggling"), and
//! no other protocol has a use behind a GSLB edge. Their Upgrade headers go the way of
//! every hop-by-hop header, and the origin sees an ordinary request.
//!
//! The tunnel runs in the client connection's own task, after hyper hands the socket
//! back: it keeps holding the connection's slot under `max_connections`, and its origin
//! keeps counting it as in flight, so `least_conn` spreads long-lived sockets.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::config::proxy::Limits;
use crate::process::clock::coarse_ms;
use crate::proxy::listen::client_io::{stop_requested, Activity};
use crate::proxy::listen::woken::PollWhenWoken;
use crate::proxy::upstream::connect::OriginStream;
use crate::proxy::upstream::group::InFlight;
use crate::proxy::Shared;

/// Whether a client request asks to become a WebSocket: an HTTP/1.1 GET with `websocket`
/// among its Upgrade protocols and `upgrade` among its Connection options.
pub fn wants_websocket(version: Version, method: &Method, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && method == Method::GET
        && has_token(headers, UPGRADE, "websocket")
        && has_token(headers, CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Puts back the two headers hop-by-hop removal took, for the next hop to upgrade too.
pub fn ask_for_websocket(headers: &mut HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// A 101 from the origin, with the connection it came on, waiting for hyper to hand over
/// the client's side.
pub struct Tunnel {
    pub client: OnUpgrade,
    pub origin: OriginStream,
    /// Origin bytes read along with the 101 head: the tunnel's first bytes to the client.
    pub early: Bytes,
    pub in_flight: InFlight,
}

/// Where a request's handler leaves its tunnel for the connection's task.
#[derive(Default)]
pub struct TunnelSlot(Mutex<Option<Tunnel>>);

impl TunnelSlot {
    pub fn put(&self, tunnel: Tunnel) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(tunnel);
        }
    }

    pub fn take(&self) -> Option<Tunnel> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Runs the tunnel a request on this connection opened, if one did (hyper has handed
    /// the socket over by the time its connection future ends).
    pub async fn run_if_opened(
        &self,
        shared: &Shared,
        activity: &Activity,
        limits: &Limits,
        stop: watch::Receiver<bool>,
    ) {
        let Some(tunnel) = self.take() else {
            return;
        };
        shared.metrics.tunnels_open.inc();
        match tunnel.run(activity, limits.tunnel_idle_timeout, stop).await {
            Ok(ended) => tracing::debug!(?ended, "tunnel ended"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended with an error"),
        }
        shared.metrics.tunnels_open.dec();
    }
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed, or one did and the other finished.
    Closed,
    /// Nothing crossed in either direction for the idle timeout.
    Idle,
    /// The server is stopping.
    Stopped,
}

impl Tunnel {
    /// Copies bytes both ways until both sides close, the tunnel has been idle for `idle`
    /// (judged by the client side's last read or write, which every byte crosses), or
    /// the server stops.
    pub async fn run(
        self,
        activity: &Activity,
        idle: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> io::Result<Ended> {
        let Tunnel {
            client,
            mut origin,
            early,
            in_flight,
        } = self;
        let mut client = TokioIo::new(
            client
                .await
                .map_err(|e| io::Error::other(format!("client upgrade: {e}")))?,
        );
        if !early.is_empty() {
            client.write_all(&early).await?;
        }
        activity.last_ms.store(coarse_ms(), Ordering::Relaxed);
        let check_every = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let watchers = std::pin::pin!(async {
            tokio::select! {
                () = activity.idle_for(idle, check_every) => Ended::Idle,
                () = stop_requested(&mut stop) => Ended::Stopped,
            }
        });
        // Not polled for every chunk copied, only when a timer tick or the stop wakes it.
        let mut watchers = PollWhenWoken::new(watchers);
        let ended = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut origin) => {
                copied.map(|_| Ended::Closed)
            }
            why = &mut watchers => Ok(why),
        };
        drop(in_flight);
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_an_http11_get_asking_for_websocket_by_both_headers_upgrades() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(wants_websocket(Version::HTTP_11, &Method::GET, &ws));
        assert!(!wants_websocket(Version::HTTP_10, &Method::GET, &ws));
        assert!(!wants_websocket(Version::HTTP_2, &Method::GET, &ws));
        assert!(!wants_websocket(Version::HTTP_11, &Method::POST, &ws));
        let cases: [&[(&str, &str)]; 4] = [
            &[("upgrade", "websocket")],
            &[("connection", "upgrade")],
            &[("connection", "upgrade"), ("upgrade", "h2c")],
            &[("connection", "upgraded"), ("upgrade", "websocket")],
        ];
        for case in cases {
            assert!(
                !wants_websocket(Version::HTTP_11, &Method::GET, &headers(case)),
                "{case:?}"
            );
        }
        let listed = headers(&[
            ("connection", "close"),
            ("connection", "upgrade"),
            ("upgrade", "foo/2, websocket"),
        ]);
        assert!(wants_websocket(Version::HTTP_11, &Method::GET, &listed));
    }
}
