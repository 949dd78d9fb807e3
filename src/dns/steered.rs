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
        }
    }
}
