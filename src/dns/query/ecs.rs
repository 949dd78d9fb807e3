//! EDNS Client Subnet (RFC 7871): which address a query stands for, and the scope of an
//! answer that depended on it.

use std::net::IpAddr;

use hickory_proto::rr::rdata::opt::ClientSubnet;
use ipnet::IpNet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EcsError {
    #[error("source prefix {0} is longer than the address")]
    PrefixTooLong(u8),
    #[error("address bits are set beyond the source prefix")]
    StrayBits,
    #[error("scope prefix must be 0 in a query")]
    ScopeInQuery,
}

/// The client network a query carries, validated per RFC 7871 §7.1.1.
/// `Ok(None)` for a source prefix of 0: the client asked us not to use its address
/// ("privacy"), so the packet's source decides and the answer gets scope 0.
pub fn client_network(option: &ClientSubnet) -> Result<Option<IpNet>, EcsError> {
    let prefix = option.source_prefix();
    if option.scope_prefix() != 0 {
        return Err(EcsError::ScopeInQuery);
    }
    let net = IpNet::new(option.addr(), prefix).map_err(|_| EcsError::PrefixTooLong(prefix))?;
    if net.addr() != net.network() {
        return Err(EcsError::StrayBits);
    }
    Ok((prefix > 0).then_some(net))
}

/// Scope of an answer decided by the GeoIP network `decided_by`: the resolver may reuse it
/// for every client in that network. Never longer than what the client sent. CIDR override
/// rules narrower than the GeoIP network split it, so the scope must cover them too.
pub fn answer_scope(
    decided_by: IpNet,
    source_prefix: u8,
    override_cidrs: impl Iterator<Item = IpNet>,
) -> u8 {
    let mut scope = decided_by.prefix_len();
    for cidr in override_cidrs {
        let overlaps = decided_by.contains(&cidr) || cidr.contains(&decided_by);
        if overlaps && cidr.prefix_len() > scope {
            scope = cidr.prefix_len();
        }
    }
    scope.min(source_prefix)
}

/// Whether every ECS option of the packet's OPT record carries exactly the address octets
/// its source prefix needs (RFC 7871 §6: "ADDRESS ... MUST NOT contain more octets"; a
/// shorter one is as wrong). hickory's parser pads or drops octets without saying, so the
/// general path checks the wire itself, once the packet has parsed.
pub fn ecs_octets_exact(packet: &[u8]) -> bool {
    use hickory_proto::op::Header;
    use hickory_proto::rr::{Record, RecordType};
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let mut d = BinDecoder::new(packet);
    let Ok(header) = Header::read(&mut d) else {
        return false;
    };
    let c = header.counts;
    for _ in 0..c.queries {
        if hickory_proto::op::Query::read(&mut d).is_err() {
            return false;
        }
    }
    let records = u32::from(c.answers) + u32::from(c.authorities) + u32::from(c.additionals);
    for _ in 0..records {
        let start = d.index();
        let Ok(record) = Record::read(&mut d) else {
            return false;
        };
        if record.record_type() != RecordType::OPT {
            continue;
        }
        // Root owner (1), type, class, TTL (8), RDLENGTH (2), then the options.
        let Some(mut options) = packet.get(start + 11..d.index()) else {
            return false;
        };
        while options.len() >= 4 {
            let code = u16::from_be_bytes([options[0], options[1]]);
            let len = usize::from(u16::from_be_bytes([options[2], options[3]]));
            let Some(data) = options.get(4..4 + len) else {
                return false;
            };
            if code == 8 {
                let Some(&source) = data.get(2) else {
                    return false;
                };
                if data.len() != 4 + usize::from(source).div_ceil(8) {
                    return false;
                }
            }
            options = &options[4 + len..];
        }
    }
    true
}

/// The address that decides a query's answer: the ECS network's address if present,
/// else the packet's source.
pub fn deciding_address(ecs: Option<IpNet>, source: IpAddr) -> IpAddr {
    ecs.map(|n| n.addr()).unwrap_or(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(addr: &str, source: u8, scope: u8) -> ClientSubnet {
        ClientSubnet::new(addr.parse().unwrap(), source, scope)
    }

    #[test]
    fn accepts_clean_networks() {
        let n = client_network(&subnet("192.0.2.0", 24, 0))
            .unwrap()
            .unwrap();
        assert_eq!(n.to_string(), "192.0.2.0/24");
        let n = client_network(&subnet("2001:db8:1::", 48, 0))
            .unwrap()
            .unwrap();
        assert_eq!(n.prefix_len(), 48);
    }

    #[test]
    fn zero_source_prefix_means_no_client_network() {
        assert_eq!(client_network(&subnet("0.0.0.0", 0, 0)), Ok(None));
    }

    #[test]
    fn rejects_stray_bits_long_prefixes_and_query_scope() {
        assert_eq!(
            client_network(&subnet("192.0.2.1", 24, 0)),
            Err(EcsError::StrayBits)
        );
        assert_eq!(
            client_network(&subnet("192.0.2.0", 33, 0)),
            Err(EcsError::PrefixTooLong(33))
        );
        assert_eq!(
            client_network(&subnet("192.0.2.0", 24, 8)),
            Err(EcsError::ScopeInQuery)
        );
    }

    #[test]
    fn scope_is_the_geo_network_capped_by_the_source() {
        let geo: IpNet = "192.0.2.0/24".parse().unwrap();
        assert_eq!(answer_scope(geo, 32, std::iter::empty()), 24);
        assert_eq!(answer_scope(geo, 20, std::iter::empty()), 20);
        let wide: IpNet = "10.0.0.0/8".parse().unwrap();
        let rule: IpNet = "10.9.0.0/16".parse().unwrap();
        assert_eq!(answer_scope(wide, 24, std::iter::once(rule)), 16);
        let elsewhere: IpNet = "172.16.0.0/16".parse().unwrap();
        assert_eq!(answer_scope(wide, 24, std::iter::once(elsewhere)), 8);
    }
}
