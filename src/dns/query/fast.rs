//! Precomputed answers for the queries that make up nearly all of an authoritative
//! server's traffic: one question, class IN, type A or AAAA, for a name we hold, with at
//! most an OPT record (ECS, cookies, padding).
//!
//! Such a query is recognised by reading a few fixed fields of the packet, and its answer
//! is written by copying the question and resource records encoded when the config was
//! loaded. Everything else (other types, odd flags, malformed or unusual EDNS, names that
//! would need a negative answer or an alias) goes to the general path, which parses with
//! hickory. The two paths must agree; `handler.rs` tests that they do, query by query.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use ipnet::IpNet;

use crate::dns::zone::{Lookup, Zone};
use crate::health::NodeId;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const OPTION_NSID: u16 = 3;
const OPTION_ECS: u16 = 8;
const OPTION_COOKIE: u16 = crate::dns::query::cookie::OPTION_COOKIE;
const HEADER_LEN: usize = 12;

/// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2).
const FLAG_RD: u16 = 0x0100;
const FLAG_CD: u16 = 0x0010;
/// The flags a query on the fast path may carry: RD, AD and CD. Anything else (a
/// response, another opcode, TC, AA, Z) takes the general path.
const QUERY_FLAGS_ALLOWED: u16 = FLAG_RD | 0x0020 | FLAG_CD;
const RESPONSE_BASE_FLAGS: u16 = 0x8000 | 0x0400; // QR, AA

/// A query the fast path can answer, borrowed from the packet.
#[derive(Debug)]
pub struct Query<'p> {
    id: u16,
    flags: u16,
    /// QNAME, QTYPE and QCLASS exactly as received (the answer echoes them).
    question: &'p [u8],
    /// QNAME in lower case, wire format.
    key: [u8; 255],
    key_len: usize,
    pub qtype: RecordType,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub fn name_key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }
}

/// The OPT record of a query, as far as the answer depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Edns {
    pub payload: u16,
    pub ecs: Option<Ecs>,
    /// The DO bit: a signed zone's answer needs its RRSIGs (the general path adds them).
    pub dnssec_ok: bool,
}

/// An EDNS Client Subnet option, already validated (RFC 7871 §7.1.1).
#[derive(Debug, Clone, Copy)]
pub struct Ecs {
    family: u16,
    pub source_prefix: u8,
    /// The address bytes as sent: (source_prefix + 7) / 8 of them.
    address: [u8; 16],
    /// The network, `None` for source prefix 0.
    pub network: Option<IpNet>,
}

/// Reads a query the fast path can answer, or `None` for anything else. Never fails
/// otherwise: the general path deals with whatever this declines.
pub fn parse(packet: &[u8]) -> Option<Query<'_>> {
    let header = packet.get(..HEADER_LEN)?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (id, flags) = (word(0), word(2));
    if flags & !QUERY_FLAGS_ALLOWED != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (word(4), word(6), word(8), word(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut key = [0u8; 255];
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*packet.get(pos)?);
        if len == 0 {
            break;
        }
        // Compression pointers and extended label types are not expected in a question.
        if len > 63 {
            return None;
        }
        let key_at = pos - HEADER_LEN;
        // The name's wire form, root byte included, is at most 255 bytes (RFC 1035 §3.1).
        if key_at + 1 + len + 1 > key.len() {
            return None;
        }
        let label = packet.get(pos..pos + 1 + len)?;
        for (k, b) in key[key_at..key_at + 1 + len].iter_mut().zip(label) {
            *k = b.to_ascii_lowercase();
        }
        pos += 1 + len;
    }
    let key_len = pos - HEADER_LEN + 1;
    pos += 1;
    let fixed = packet.get(pos..pos + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    if qclass != CLASS_IN {
        return None;
    }
    let qtype = match qtype {
        TYPE_A => RecordType::A,
        TYPE_AAAA => RecordType::AAAA,
        _ => return None,
    };
    pos += 4;
    let question = &packet[HEADER_LEN..pos];
    let edns = if ar == 1 {
        let (edns, end) = parse_opt(packet, pos)?;
        pos = end;
        Some(edns)
    } else {
        None
    };
    if pos != packet.len() {
        return None;
    }
    Some(Query {
        id,
        flags,
        question,
        key,
        key_len,
        qtype,
        edns,
    })
}

/// Reads an OPT record at `pos`; returns it and where it ends.
fn parse_opt(packet: &[u8], pos: usize) -> Option<(Edns, usize)> {
    let fixed = packet.get(pos..pos + 11)?;
    // Owner name: the root, nothing else.
    if fixed[0] != 0 || u16::from_be_bytes([fixed[1], fixed[2]]) != TYPE_OPT {
        return None;
    }
    let payload = u16::from_be_bytes([fixed[3], fixed[4]]);
    let (rcode_high, version) = (fixed[5], fixed[6]);
    if rcode_high != 0 || version != 0 {
        return None;
    }
    let ednsflags = u16::from_be_bytes([fixed[7], fixed[8]]);
    // Flags past DO (CO, Z): the general path, which echoes what it must.
    if ednsflags & 0x7FFF != 0 {
        return None;
    }
    let dnssec_ok = ednsflags & 0x8000 != 0;
    let rdlen = usize::from(u16::from_be_bytes([fixed[9], fixed[10]]));
    let start = pos + 11;
    let end = start + rdlen;
    let mut options = packet.get(start..end)?;
    let mut ecs = None;
    while !options.is_empty() {
        let head = options.get(..4)?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let data = options.get(4..4 + len)?;
        match code {
            OPTION_ECS if ecs.is_none() => ecs = Some(parse_ecs(data)?),
            // A second ECS, or an NSID or cookie, which the answer must echo: the general
            // path's.
            OPTION_ECS | OPTION_NSID | OPTION_COOKIE => return None,
            // Padding, keepalive and unknown options do not change the answer.
            _ => {}
        }
        options = &options[4 + len..];
    }
    Some((
        Edns {
            payload,
            ecs,
            dnssec_ok,
        },
        end,
    ))
}

fn parse_ecs(data: &[u8]) -> Option<Ecs> {
    let head = data.get(..4)?;
    let family = u16::from_be_bytes([head[0], head[1]]);
    let (source_prefix, scope_prefix) = (head[2], head[3]);
    let bytes = &data[4..];
    // A scope in a query, stray bits or a wrong length are FORMERR: the general path says so.
    if scope_prefix != 0 || bytes.len() != usize::from(source_prefix).div_ceil(8) {
        return None;
    }
    let mut address = [0u8; 16];
    let ip = match family {
        1 if source_prefix <= 32 => {
            address[..bytes.len()].copy_from_slice(bytes);
            IpAddr::V4(Ipv4Addr::new(
                address[0], address[1], address[2], address[3],
            ))
        }
        2 if source_prefix <= 128 => {
            address[..bytes.len()].copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(address))
        }
        _ => return None,
    };
    let net = IpNet::new(ip, source_prefix).ok()?;
    if net.addr() != net.network() {
        return None;
    }
    Some(Ecs {
        family,
        source_prefix,
        address,
        network: (source_prefix > 0).then_some(net),
    })
}

/// One answer record in wire form, its owner a pointer to the question's name.
pub type WireRecord = Box<[u8]>;

/// What the fast path knows of one name.
#[derive(Default)]
pub struct Entry {
    /// The steered name's index, if the name is steered.
    pub steered: Option<usize>,
    /// The name's zone is signed: DO queries get the RRSIGs too.
    pub signed: bool,
    /// The name, to find its records when their signatures are made.
    pub name: Option<LowerName>,
    /// The name's number among the table's, for the signature cache.
    pub id: u32,
    pub a: Option<Box<[WireRecord]>>,
    pub aaaa: Option<Box<[WireRecord]>>,
}

/// Steered answers in wire form: per steered name, per region, (node, record).
pub struct SteeredWire {
    pub v4: Vec<Vec<(NodeId, WireRecord)>>,
    pub v6: Vec<Vec<(NodeId, WireRecord)>>,
}

/// Names (lower-case wire form) the fast path answers, built with the state.
#[derive(Default)]
pub struct Table {
    names: HashMap<Box<[u8]>, Entry>,
    pub steered: Vec<SteeredWire>,
}

impl Table {
    /// Precomputes the answers of every (name, A/AAAA) that the general path would answer
    /// with records of the name itself or with a steering decision. `zone_for` is the
    /// state's own zone choice, so a name shadowed by a more specific zone is left to the
    /// general path's rules rather than guessed here.
    pub fn build<'z>(
        zones: &'z [Zone],
        zone_for: impl Fn(&LowerName) -> Option<&'z Zone>,
        steered: &[crate::dns::steered::SteeredName],
    ) -> Self {
        let mut names: HashMap<Box<[u8]>, Entry> = HashMap::new();
        for zone in zones {
            for name in zone.owner_names() {
                let Some(owner) = zone_for(name) else {
                    continue;
                };
                if !std::ptr::eq(owner, zone) {
                    continue;
                }
                let Ok(key) = name.to_bytes() else { continue };
                let mut entry = Entry {
                    signed: zone.signer.is_some(),
                    name: Some(name.clone()),
                    id: names.len() as u32,
                    ..Entry::default()
                };
                for qtype in [RecordType::A, RecordType::AAAA] {
                    match zone.lookup(name, qtype) {
                        Lookup::Steered(index) => entry.steered = Some(index),
                        Lookup::Answer(records) => {
                            let wire: Option<Vec<WireRecord>> =
                                records.iter().map(wire_record).collect();
                            let wire = wire.map(Vec::into_boxed_slice);
                            match qtype {
                                RecordType::A => entry.a = wire,
                                _ => entry.aaaa = wire,
                            }
                        }
                        _ => {}
                    }
                }
                if entry.steered.is_some() || entry.a.is_some() || entry.aaaa.is_some() {
                    names.insert(key.into_boxed_slice(), entry);
                }
            }
        }
        let steered = steered
            .iter()
            .map(|s| {
                let family = |by_region: &Vec<Vec<(NodeId, Record)>>| {
                    by_region
                        .iter()
                        .map(|nodes| {
                            nodes
                                .iter()
                                .filter_map(|(node, r)| Some((*node, wire_record(r)?)))
                                .collect()
                        })
                        .collect()
                };
                SteeredWire {
                    v4: family(&s.v4),
                    v6: family(&s.v6),
                }
            })
            .collect();
        Self { names, steered }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.names.get(key)
    }
}

/// An A or AAAA record as it appears in an answer to a question for its own name.
fn wire_record(record: &Record) -> Option<WireRecord> {
    let (rtype, rdata): (u16, &[u8]) = match &record.data {
        RData::A(a) => (TYPE_A, &a.0.octets()),
        RData::AAAA(a) => (TYPE_AAAA, &a.0.octets()),
        _ => return None,
    };
    if record.dns_class != DNSClass::IN {
        return None;
    }
    let mut out = Vec::with_capacity(12 + rdata.len());
    out.extend_from_slice(&[0xC0, 0x0C]); // the question's name, at offset 12
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
    Some(out.into_boxed_slice())
}

/// Writes the answer to `query` with `answers` into `out`. `payload` is the UDP payload
/// size the OPT record advertises; `scope` the ECS scope to echo. Returns false (and
/// leaves `out` empty) when the answer would exceed `max_len`: the general path then
/// truncates as the protocol says.
pub fn write_answer<'r>(
    query: &Query<'_>,
    answers: impl Iterator<Item = &'r [u8]>,
    payload: u16,
    scope: u8,
    max_len: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let flags = RESPONSE_BASE_FLAGS | (query.flags & (FLAG_RD | FLAG_CD));
    out.extend_from_slice(&query.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(query.edns.is_some())]);
    out.extend_from_slice(query.question);
    let mut count: u16 = 0;
    for rr in answers {
        out.extend_from_slice(rr);
        count += 1;
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    if let Some(edns) = &query.edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&payload.to_be_bytes());
        // Extended rcode 0, version 0, and the query's DO bit copied (RFC 3225 §3).
        out.extend_from_slice(&[0, 0, if edns.dnssec_ok { 0x80 } else { 0 }, 0]);
        match &edns.ecs {
            Some(ecs) => {
                let bytes = usize::from(ecs.source_prefix).div_ceil(8);
                let option_len = 4 + bytes;
                out.extend_from_slice(&((4 + option_len) as u16).to_be_bytes());
                out.extend_from_slice(&OPTION_ECS.to_be_bytes());
                out.extend_from_slice(&(option_len as u16).to_be_bytes());
                out.extend_from_slice(&ecs.family.to_be_bytes());
                out.extend_from_slice(&[ecs.source_prefix, scope]);
                out.extend_from_slice(&ecs.address[..bytes]);
            }
            None => out.extend_from_slice(&[0, 0]),
        }
    }
    if out.len() > max_len {
        out.clear();
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        if let Some(opt) = opt {
            p.extend_from_slice(opt);
        }
        p
    }

    fn opt(options: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0];
        o.extend_from_slice(&(options.len() as u16).to_be_bytes());
        o.extend_from_slice(options);
        o
    }

    const WWW: &[u8] = b"\x03WwW\x07example\x04test\x00";

    #[test]
    fn reads_a_plain_query_and_lowercases_the_key() {
        let p = query(WWW, 1, None);
        let q = parse(&p).expect("fast");
        assert_eq!(q.name_key(), b"\x03www\x07example\x04test\x00");
        assert_eq!(q.question, &p[12..]);
        assert_eq!(q.qtype, RecordType::A);
        assert!(q.edns.is_none());
    }

    #[test]
    fn reads_ecs_skips_padding_and_leaves_cookies_to_the_general_path() {
        // Padding (12) and ECS: ours.
        let mut options = vec![0, 12, 0, 4, 0, 0, 0, 0];
        options.extend_from_slice(&[0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2]);
        let p = query(WWW, 28, Some(&opt(&options)));
        let q = parse(&p).expect("fast");
        let edns = q.edns.expect("edns");
        assert_eq!(edns.payload, 1232);
        let ecs = edns.ecs.expect("ecs");
        assert_eq!(ecs.network, Some("192.0.2.0/24".parse().unwrap()));
        // A cookie must be answered with one: the general path's.
        let cookie = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        assert!(parse(&query(WWW, 28, Some(&opt(&cookie)))).is_none());
    }

    #[test]
    fn declines_what_the_general_path_must_judge() {
        let cases: Vec<Vec<u8>> = vec![
            // stray bits beyond the source prefix
            query(WWW, 1, Some(&opt(&[0, 8, 0, 7, 0, 1, 23, 0, 192, 0, 3]))),
            // scope set in a query
            query(WWW, 1, Some(&opt(&[0, 8, 0, 7, 0, 1, 24, 8, 192, 0, 2]))),
            // address longer than the prefix needs
            query(WWW, 1, Some(&opt(&[0, 8, 0, 8, 0, 1, 24, 0, 192, 0, 2, 0]))),
            // two ECS options
            query(
                WWW,
                1,
                Some(&opt(&[0, 8, 0, 4, 0, 1, 0, 0, 0, 8, 0, 4, 0, 1, 0, 0])),
            ),
            // an option running past the record
            query(WWW, 1, Some(&opt(&[0, 10, 0, 9, 1, 2]))),
            // MX, class CH, a compressed name, trailing bytes
            query(WWW, 15, None),
            {
                let mut p = query(WWW, 1, None);
                let n = p.len();
                p[n - 1] = 3;
                p
            },
            query(b"\xc0\x0c", 1, None),
            {
                let mut p = query(WWW, 1, None);
                p.push(0);
                p
            },
            // EDNS version 1
            {
                let mut o = opt(&[]);
                o[6] = 1;
                query(WWW, 1, Some(&o))
            },
        ];
        for (i, p) in cases.iter().enumerate() {
            assert!(parse(p).is_none(), "case {i} should take the general path");
        }
        let mut response = query(WWW, 1, None);
        response[2] |= 0x80;
        assert!(parse(&response).is_none());
        let mut two = query(WWW, 1, None);
        two[5] = 2;
        assert!(parse(&two).is_none());
        assert!(parse(&[0u8; 11]).is_none());
    }

    #[test]
    fn a_name_of_more_than_255_bytes_is_declined() {
        let mut name = Vec::new();
        for _ in 0..5 {
            name.push(63);
            name.extend_from_slice(&[b'a'; 63]);
        }
        name.push(0);
        assert!(parse(&query(&name, 1, None)).is_none());
    }
}
