//! The fast path's answer to a query `fast.rs` recognised: the precomputed records of a
//! static name, or a steering decision's nodes, and for a DO query to a signed zone the
//! RRSIGs in wire form from the signer's cache.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::RecordType;

use crate::dns::dnssec::signer::WireKey;
use crate::dns::query::decide::decide;
use crate::dns::query::decisions::DecisionCache;
use crate::dns::query::ecs::deciding_address;
use crate::dns::query::fast;
use crate::dns::query::pick::Rotation;
use crate::dns::state::DnsState;
use crate::dns::zone::Lookup;
use crate::metrics::DnsMetrics;

/// Counts a signed answer the fast path sent.
fn count_signed(
    metrics: &DnsMetrics,
    sigs: Option<&(Arc<crate::dns::dnssec::signer::WireSigs>, bool)>,
) {
    let Some((_, hit)) = sigs else { return };
    metrics.dnssec_signed.inc();
    if *hit {
        metrics.dnssec_cache_hits.inc();
    } else {
        metrics.dnssec_cache_misses.inc();
    }
}

/// Answers a query the fast path recognised from precomputed records. `None` when this
/// query needs the general path after all (no precomputed answer, an empty region, an
/// answer too big for the client's buffer); nothing has been counted then.
#[allow(clippy::too_many_arguments)]
pub fn answer(
    metrics: &DnsMetrics,
    rotation: &Rotation,
    state: &Arc<DnsState>,
    query: &fast::Query<'_>,
    source: IpAddr,
    tcp: bool,
    cache: Option<&mut DecisionCache>,
    out: &mut Vec<u8>,
) -> Option<Option<(usize, bool)>> {
    let entry = state.fast.get(query.name_key())?;
    // A DO query to a signed zone gets the RRSIGs too, from the signer's wire cache.
    let signer = match (entry.signed, query.edns.is_some_and(|e| e.dnssec_ok)) {
        (true, true) => Some(state.zone_for(entry.name.as_ref()?)?.signer.as_deref()?),
        _ => None,
    };
    // The clock is read only for a signed answer: a plain one needs no time.
    let now = || (crate::process::clock::unix_ms() / 1000) as u32;
    let payload = query
        .edns
        .map(|e| e.payload.clamp(512, state.max_udp_payload.max(512)))
        .unwrap_or(512);
    let max_len = if tcp {
        usize::from(u16::MAX)
    } else {
        usize::from(payload)
    };
    let ecs = query.edns.and_then(|e| e.ecs);
    let qtype = u16::from(query.qtype);
    let Some(index) = entry.steered else {
        let records = match query.qtype {
            RecordType::A => entry.a.as_deref(),
            _ => entry.aaaa.as_deref(),
        }?;
        let sigs = match signer {
            None => None,
            Some(signer) => {
                let key = WireKey {
                    name: entry.id,
                    qtype,
                    region: 0,
                    nodes: 0,
                };
                let zone = state.zone_for(entry.name.as_ref()?)?;
                let name = entry.name.as_ref()?;
                let made = signer.wire_sigs(key, now(), || match zone.lookup(name, query.qtype) {
                    Lookup::Answer(r) => r.to_vec(),
                    _ => Vec::new(),
                });
                Some(made.ok()?)
            }
        };
        let sig_records = sigs
            .iter()
            .flat_map(|(s, _)| s.records.iter().map(|r| &**r));
        let answers = records.iter().map(|r| &**r).chain(sig_records);
        if !fast::write_answer(query, answers, payload, 0, max_len, out) {
            return None;
        }
        count_signed(metrics, sigs.as_ref());
        return Some(None);
    };
    let (steered, wire) = (state.steered.get(index)?, state.fast.steered.get(index)?);
    let network = ecs.and_then(|e| e.network);
    let source_prefix = ecs.map(|e| e.source_prefix).unwrap_or(0);
    let address = deciding_address(network, source);
    let mask = steered.service_mask;
    let decision = match cache {
        // Remembered decisions hold for names that need no service; the few that do
        // decide afresh.
        Some(cache) if mask == 0 => {
            cache.prepare(state, state.health.generation());
            cache.get_or(address, source_prefix, |locations| {
                decide(state, network, source, Some(locations), 0)
            })
        }
        _ => decide(state, network, source, None, mask),
    }?;
    let by_region = match query.qtype {
        RecordType::A => &wire.v4,
        _ => &wire.v6,
    };
    let candidates = by_region.get(decision.region)?;
    if candidates.is_empty() {
        return None;
    }
    // The picked records, and which of the region's nodes they are (the signature
    // cache's key): at most 16 answers (the config's limit).
    let first_node = state.table.regions.get(decision.region)?.nodes.start;
    let mut picked: [&[u8]; 16] = [&[]; 16];
    let mut count = 0;
    let mut nodes: u64 = 0;
    for (node, record) in rotation.pick(
        candidates,
        &state.health,
        decision.fail_open,
        steered.answers,
        mask,
    ) {
        *picked.get_mut(count)? = record;
        count += 1;
        match node.checked_sub(first_node) {
            Some(bit) if bit < 64 => nodes |= 1 << bit,
            _ if signer.is_some() => return None,
            _ => {}
        }
    }
    let sigs = match signer {
        None => None,
        Some(signer) => {
            let key = WireKey {
                name: (1 << 31) | index as u32,
                qtype,
                region: decision.region as u32,
                nodes,
            };
            let records = match query.qtype {
                RecordType::A => &steered.v4,
                _ => &steered.v6,
            };
            let region = records.get(decision.region)?;
            let made = signer.wire_sigs(key, now(), || {
                region
                    .iter()
                    .filter(|(node, _)| {
                        node.checked_sub(first_node)
                            .is_some_and(|bit| bit < 64 && nodes & (1 << bit) != 0)
                    })
                    .map(|(_, r)| r.clone())
                    .collect()
            });
            Some(made.ok()?)
        }
    };
    let sig_records = sigs
        .iter()
        .flat_map(|(s, _)| s.records.iter().map(|r| &**r));
    let answers = picked[..count].iter().copied().chain(sig_records);
    if !fast::write_answer(query, answers, payload, decision.scope, max_len, out) {
        return None;
    }
    count_signed(metrics, sigs.as_ref());
    if ecs.is_some() {
        metrics.ecs_present.inc();
    } else {
        metrics.ecs_absent.inc();
    }
    Some(Some((decision.region, decision.fail_open)))
}
