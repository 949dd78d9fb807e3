//! Choosing and opening a stream's origin connection: the upstream's balancer picks, a
//! failed connect counts as a passive failure and the next healthy origin is tried (at
//! most three), and an open connection counts as in flight for `least_conn` until it
//! closes. FTP upstreams connect in the clear: their TLS starts after `AUTH TLS`.

use std::sync::Arc;

use crate::config::proxy::OriginProtocol;
use crate::proxy::state::ProxyState;
use crate::proxy::upstream::connect::{self, OriginStream};
use crate::proxy::upstream::group::{InFlight, Upstream};

/// Origins tried for one client connection before it is given up.
const MAX_TRIES: usize = 3;

pub struct Connected {
    pub stream: OriginStream,
    pub upstream: Arc<Upstream>,
    pub index: usize,
    /// Held for as long as the client's connection lasts.
    pub in_flight: InFlight,
}

impl Connected {
    pub fn origin_name(&self) -> &str {
        &self.upstream.origins[self.index].name
    }
}

/// Opens a connection to an origin of upstream `name`, `preface` (a PROXY header) its
/// first bytes; `Err` says why none could be had.
pub async fn connect(
    state: &ProxyState,
    name: &str,
    preface: Option<&[u8]>,
) -> Result<Connected, String> {
    let Some((u_index, upstream)) = state.upstream(name) else {
        return Err(format!("no upstream {name}"));
    };
    let Some(first) = upstream.choose(None, None) else {
        return Err(format!("upstream {name}: no healthy origin"));
    };
    let order = std::iter::once(first).chain(
        (0..upstream.origins.len())
            .filter(|&i| i != first && upstream.origins[i].state.is_healthy()),
    );
    let mut last_error = String::new();
    for index in order.take(MAX_TRIES) {
        let origin = &upstream.origins[index];
        let tls = match upstream.protocol {
            OriginProtocol::Tls => upstream.tls_to(index),
            _ => None,
        };
        let started = std::time::Instant::now();
        match connect::open(origin.addr, upstream.connect_timeout, tls, preface).await {
            Ok(stream) => {
                origin.state.record_success();
                // A stream has no response to time: `peak_ewma` goes by the connect
                // (and TLS handshake) time.
                origin.state.latency.observe(
                    started.elapsed().as_secs_f64() * 1e6,
                    crate::process::clock::now_ms(),
                );
                let gauge = state
                    .in_flight_gauges
                    .get(u_index)
                    .and_then(|g| g.get(index))
                    .cloned();
                return Ok(Connected {
                    stream,
                    upstream: upstream.clone(),
                    index,
                    in_flight: InFlight::new(origin.state.clone(), gauge),
                });
            }
            Err(e) => {
                if origin
                    .state
                    .record_failure(upstream.passive_failures, upstream.passive_cooldown)
                {
                    tracing::warn!(upstream = %name, origin = %origin.name, "origin in cool-down after {} failed connections", upstream.passive_failures);
                }
                tracing::warn!(upstream = %name, origin = %origin.name, error = %e, "stream origin connect failed; trying another");
                last_error = e.to_string();
            }
        }
    }
    Err(format!("upstream {name}: {last_error}"))
}
