//! A steered name's answers, precomputed per region from the region table: what the
//! query path picks from once steering has chosen the regions.

use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record};

use crate::health::NodeId;
use crate::steer::RegionTable;

/// A steered name with its answers for every region, precomputed.
pub struct SteeredName {
    pub name: Name,
    pub ttl: u32,
    pub answers: usize,
    /// Per region: (node, A record) for each node with an IPv4 address.
    pub v4: Vec<Vec<(NodeId, Record)>>,
    /// Per region: (node, AAAA record) for each node with an IPv6 address.
    pub v6: Vec<Vec<(NodeId, Record)>>,
    /// The stream services a node must report up to be answered (bits over
    /// `DnsState::services`); 0 for names that need none.
    pub service_mask: u64,
    /// Answer HTTPS queries with the chosen region's addresses as hints.
    pub https: Option<crate::config::dns::HttpsConfig>,
}

impl SteeredName {
    /// The A and AAAA record of every node, per region, made once per config.
    pub fn build(table: &RegionTable, name: &Name, ttl: u32, answers: usize) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for region in &table.regions {
            let mut r4 = Vec::new();
            let mut r6 = Vec::new();
            for id in region.nodes.clone() {
                let node = &table.nodes[id];
                if let Some(ip) = node.ipv4 {
                    r4.push((id, Record::from_rdata(name.clone(), ttl, RData::A(A(ip)))));
                }
                if let Some(ip) = node.ipv6 {
                    r6.push((
                        id,
                        Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(ip))),
                    ));
                }
            }
            v4.push(r4);
            v6.push(r6);
        }
        Self {
            name: name.clone(),
            ttl,
            answers,
            v4,
            v6,
            service_mask: 0,
            https: None,
        }
    }
}

/// The HTTPS record (RFC 9460 ServiceMode: priority 1, target ".", the name's own
/// endpoint) for a region whose answered addresses are `v4` and `v6`.
pub fn https_record(
    name: &Name,
    ttl: u32,
    https: &crate::config::dns::HttpsConfig,
    v4: Vec<A>,
    v6: Vec<AAAA>,
) -> Record {
    use hickory_proto::rr::rdata::svcb::{Alpn, IpHint, SvcParamKey, SvcParamValue, SVCB};
    use hickory_proto::rr::rdata::HTTPS;
    // Keys in increasing order (RFC 9460 §2.2): alpn (1), port (3), ipv4hint (4),
    // ipv6hint (6).
    let mut params = vec![(
        SvcParamKey::Alpn,
        SvcParamValue::Alpn(Alpn(https.alpn.clone())),
    )];
    if let Some(port) = https.port {
        params.push((SvcParamKey::Port, SvcParamValue::Port(port)));
    }
    if !v4.is_empty() {
        params.push((SvcParamKey::Ipv4Hint, SvcParamValue::Ipv4Hint(IpHint(v4))));
    }
    if !v6.is_empty() {
        params.push((SvcParamKey::Ipv6Hint, SvcParamValue::Ipv6Hint(IpHint(v6))));
    }
    Record::from_rdata(
        name.clone(),
        ttl,
        RData::HTTPS(HTTPS(SVCB::new(1, Name::root(), params))),
    )
}
