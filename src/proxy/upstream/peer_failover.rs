//! Failover at the proxy: a request this region's origins could not take (none healthy,
//! or none reachable before anything was sent) goes to the nearest healthy peer region's
//! proxy instead, so clients that a resolver keeps on this region's address are still
//! served. The decisions (which peer, whether a mark is genuine) are in `failover`; this
//! is the I/O around them.
//!
//! Any method may go: nothing reached a local origin. The request carries our signed mark
//! (one hop only) and the forwarding headers we wrote, which the peer keeps.

use http::header::HeaderValue;
use http::HeaderMap;

use crate::config::proxy::HOP_HEADER;
use crate::process::clock::unix_ms;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::ProxyError;
use crate::proxy::upstream::exchange::{is_idempotent, Exchanged, Origin};
use crate::proxy::upstream::failover::{self, Forward, Hop};

impl Origin {
    /// Takes our mark off a request (it never reaches an origin), and says whether it is a
    /// genuine one: the request then came from a peer region's proxy.
    pub(super) fn take_hop_mark(&self, headers: &mut HeaderMap) -> Option<Hop> {
        let value = headers.remove(HOP_HEADER)?;
        let peers = self.state.failover.as_ref()?;
        match failover::verify(&peers.key, value.as_bytes(), unix_ms() / 1000) {
            Ok(hop) => {
                self.shared
                    .metrics
                    .failover_received
                    .with_label_values(&[&hop.from])
                    .inc();
                Some(hop)
            }
            Err(why) => {
                tracing::warn!(client = %self.client, reason = %why, "failover mark refused; the request is served as any client's");
                None
            }
        }
    }

    /// Whether a failed local exchange left the request whole for another region: nothing
    /// was sent that could have had an effect.
    pub(super) fn unserved(
        error: &ProxyError,
        body: &Option<ProxyBody>,
        parts: &http::request::Parts,
        bodyless: bool,
    ) -> bool {
        let replayable = bodyless && is_idempotent(&parts.method);
        match error {
            ProxyError::NoHealthyOrigin(_) | ProxyError::Connect { .. } => {
                body.is_some() || replayable
            }
            // A reset before the response head: only a request that may be repeated.
            ProxyError::Upstream { .. } => replayable,
            _ => false,
        }
    }

    /// Sends the request to the first healthy peer region (and the next if that one cannot
    /// be reached), or says why none could take it.
    pub(super) async fn fail_over(
        &self,
        local: ProxyError,
        hop: Option<Hop>,
        mut parts: http::request::Parts,
        mut body: Option<ProxyBody>,
        bodyless: bool,
    ) -> Result<Exchanged, ProxyError> {
        let state = &*self.state;
        let Some(peers) = state.failover.as_ref() else {
            return Err(local);
        };
        let metrics = &self.shared.metrics.failover;
        let healthy: Vec<bool> = peers
            .peers
            .iter()
            .map(|(_, u)| state.upstreams.get(*u).is_some_and(|u| u.can_serve()))
            .collect();
        let mut tried = Vec::new();
        loop {
            match failover::choose_peer(&healthy, &tried, hop.is_some()) {
                Forward::AlreadyForwarded => {
                    let from = hop.map(|h| h.from).unwrap_or_default();
                    metrics.with_label_values(&[&from, "hop_refused"]).inc();
                    tracing::warn!(upstream = %self.upstream.name, from = %from, "no healthy origin for a request another region forwarded; not forwarded again");
                    return Err(ProxyError::HopRefused {
                        upstream: self.upstream.name.clone(),
                        from,
                    });
                }
                Forward::NoPeerUp => {
                    metrics.with_label_values(&["none", "no_peer"]).inc();
                    let tried: Vec<&str> =
                        tried.iter().map(|&i| peers.peers[i].0.as_str()).collect();
                    return Err(ProxyError::NoRegion {
                        upstream: self.upstream.name.clone(),
                        tried: if tried.is_empty() {
                            format!("local: {local}")
                        } else {
                            format!("local: {local}; tried {}", tried.join(", "))
                        },
                    });
                }
                Forward::To(i) => {
                    let (region, index) = (&peers.peers[i].0, peers.peers[i].1);
                    let Some(upstream) = state.upstreams.get(index) else {
                        tried.push(i);
                        continue;
                    };
                    let mark = failover::mark(&peers.key, &peers.region, unix_ms() / 1000);
                    if let Ok(v) = HeaderValue::from_str(&mark) {
                        parts.headers.insert(HOP_HEADER, v);
                    }
                    let sent = self
                        .exchange_with(upstream, index, None, &parts, &mut body, bodyless)
                        .await;
                    match sent {
                        Ok(mut exchanged) => {
                            metrics.with_label_values(&[region, "forwarded"]).inc();
                            tracing::info!(upstream = %self.upstream.name, to = %region, method = %parts.method, reason = %local, "request forwarded to a peer region");
                            exchanged.peer = u16::try_from(index).ok();
                            return Ok(exchanged);
                        }
                        Err(e) if Self::unserved(&e, &body, &parts, bodyless) => {
                            metrics.with_label_values(&[region, "peer_failed"]).inc();
                            tracing::warn!(to = %region, error = %e, "failover peer could not be reached; trying the next");
                            tried.push(i);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }
}
