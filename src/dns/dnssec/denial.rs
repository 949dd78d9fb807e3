//! Compact denial of existence (RFC 9824): how an online signer proves a negative answer
//! without walking the zone. The NSEC is made for the query name itself and covers only
//! it: its next name is the name's immediate successor `\000.QNAME`, so it says nothing
//! about any other name (no zone walking), and one signature per name suffices.
//!
//! A name that does not exist is answered as if it existed with no data, with the NXNAME
//! pseudo-type in the bitmap so a validator that knows RFC 9824 can still tell; only a
//! query that sets the Compact Answers OK flag gets the NXDOMAIN rcode back.

use hickory_proto::dnssec::rdata::NSEC;
use hickory_proto::rr::{Name, RecordType};

/// RFC 9824 §6: the NXNAME meta-type, in NSEC bitmaps only.
pub const NXNAME: u16 = 128;
/// RFC 9824 §4: Compact Answers OK, an EDNS header flag (the bit after DO).
pub const EDNS_FLAG_CO: u16 = 0x4000;

/// What the signer proves about a name it answers negatively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The name does not exist.
    NoName,
    /// The name exists with exactly these types (empty for an empty non-terminal), none
    /// of them the one asked.
    NoData(Vec<RecordType>),
}

/// The NSEC at `qname` that proves `denial`.
pub fn nsec(qname: &Name, denial: &Denial) -> Option<NSEC> {
    let next = successor(qname)?;
    let mut types: Vec<RecordType> = match denial {
        Denial::NoName => vec![RecordType::Unknown(NXNAME)],
        Denial::NoData(types) => types.clone(),
    };
    types.extend([RecordType::RRSIG, RecordType::NSEC]);
    types.sort_by_key(|t| u16::from(*t));
    types.dedup();
    Some(NSEC::new(next, types))
}

/// The rcode a compact negative answer carries: NOERROR unless the client said it copes
/// with NXDOMAIN on a compact answer (the CO flag), RFC 9824 §4.
pub fn nxdomain_rcode(co_flag: bool) -> hickory_proto::op::ResponseCode {
    if co_flag {
        hickory_proto::op::ResponseCode::NXDomain
    } else {
        hickory_proto::op::ResponseCode::NoError
    }
}

/// `\000.NAME`, the first name after `NAME` in canonical order (RFC 4034 §6.1); `None`
/// when one more label would pass 255 octets. No zone holds such a name, so only a
/// made-up query name gets there, and its answer goes out without a proof.
fn successor(name: &Name) -> Option<Name> {
    let zero = Name::from_labels([&[0u8][..]]).ok()?;
    zero.append_name(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    #[test]
    fn a_missing_name_gets_an_nsec_of_its_own_with_nxname() {
        let n = nsec(&name("nope.example.test."), &Denial::NoName).unwrap();
        let next = n.next_domain_name();
        assert_eq!(next.num_labels(), 4);
        assert_eq!(next.iter().next(), Some(&[0u8][..]));
        assert_eq!(next.base_name(), name("nope.example.test."));
        let types: Vec<u16> = n.type_bit_maps().map(u16::from).collect();
        assert_eq!(types, vec![46, 47, NXNAME]);
    }

    #[test]
    fn nodata_lists_what_the_name_has_and_never_the_type_asked() {
        let n = nsec(
            &name("static.example.test."),
            &Denial::NoData(vec![RecordType::AAAA, RecordType::A]),
        )
        .unwrap();
        let types: Vec<RecordType> = n.type_bit_maps().collect();
        assert_eq!(
            types,
            vec![
                RecordType::A,
                RecordType::AAAA,
                RecordType::RRSIG,
                RecordType::NSEC
            ]
        );
        // An empty non-terminal: only the NSEC's own types.
        let n = nsec(&name("b.example.test."), &Denial::NoData(Vec::new())).unwrap();
        assert_eq!(n.type_bit_maps().count(), 2);
    }

    #[test]
    fn the_successor_of_a_name_at_the_length_limit_does_not_exist() {
        let long = format!(
            "{}.",
            vec!["a".repeat(63); 3].join(".") + "." + &"b".repeat(61)
        );
        let long = name(&long);
        use hickory_proto::serialize::binary::BinEncodable;
        assert_eq!(long.to_bytes().unwrap().len(), 255);
        assert!(nsec(&long, &Denial::NoName).is_none());
    }

    #[test]
    fn the_rcode_is_nxdomain_only_for_clients_that_set_co() {
        use hickory_proto::op::ResponseCode;
        assert_eq!(nxdomain_rcode(false), ResponseCode::NoError);
        assert_eq!(nxdomain_rcode(true), ResponseCode::NXDomain);
    }
}
