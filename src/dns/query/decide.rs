//! Where a steered query goes, pure given the state: the client located by GeoIP of its
//! ECS network or source, the nearest region that is up (`min_healthy`, the services the
//! name needs), then shedding: a busy region's share of client networks goes to the
//! nearest other region with room. The fast path and the hickory path both call it.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use ipnet::IpNet;

use crate::dns::query::decisions::{Decision, LocationCache};
use crate::dns::query::ecs::{answer_scope, deciding_address};
use crate::dns::state::DnsState;

/// Where a steered query goes: pure, given the state (zones, regions, GeoIP, health).
/// `locations` remembers decoded GeoIP records between calls.
pub fn decide(
    state: &DnsState,
    ecs: Option<IpNet>,
    source: IpAddr,
    locations: Option<&mut LocationCache>,
    services: u64,
) -> Option<Decision> {
    let address = deciding_address(ecs, source);
    let found = match locations {
        Some(cache) => cache.lookup(&state.geo, address),
        None => state.geo.lookup(address).map(|m| (m.location, m.network)),
    };
    let (location, network) = match found {
        Ok((location, network)) => (location, Some(network)),
        Err(e) => {
            tracing::debug!(error = %e, "GeoIP lookup failed; using the default order");
            (None, None)
        }
    };
    let health = &*state.health;
    let table = &state.table;
    let region_up = |r: usize| table.region_is_up(r, |n| health.is_up_for(n, services));
    let mut choice = table.choose(address, location.as_ref(), region_up)?;
    let shed = &state.shed;
    // A shedding region's clients go one way or the other by their /24 (/48): the
    // answer then holds for no wider a network than that.
    let sheds = !choice.fail_open && shed.share(choice.region) > 0.0;
    if sheds && crate::steer::shed::moves(address, shed.share(choice.region)) {
        // One of the share of this region's clients sent elsewhere: the nearest other
        // region that is up and below its own high watermark.
        let from = choice.region;
        let spill = table.choose(address, location.as_ref(), |r| {
            r != from && region_up(r) && shed.has_room(r)
        });
        match spill {
            Some(other) if !other.fail_open => {
                if let Some(n) = shed.moved.get(from) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                choice = other;
            }
            _ => {
                // Every other region is full or down: the nearest order stands.
                shed.all_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let source_prefix = ecs.map(|n| n.prefix_len()).unwrap_or(0);
    let scope = match network {
        Some(net) => {
            // The widest network around the client that ranks the regions as it does
            // (never narrower than the GeoIP network that decided).
            let merged = state
                .scopes
                .scope(address)
                .filter(|&m| m <= net.prefix_len())
                .and_then(|m| IpNet::new(address, m).ok())
                .map(|n| n.trunc())
                .unwrap_or(net);
            let scope = answer_scope(merged, source_prefix, state.override_cidrs.iter().copied());
            if sheds {
                let floor = if address.is_ipv4() { 24 } else { 48 };
                scope.max(floor).min(source_prefix)
            } else {
                scope
            }
        }
        None => 0,
    };
    Some(Decision {
        region: choice.region,
        fail_open: choice.fail_open,
        scope,
    })
}
