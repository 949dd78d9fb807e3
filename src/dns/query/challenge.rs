//! `_acme-challenge.NAME TXT` in our zones, answered from the dns-01 challenges the
//! proxies published (see `crate::acme`).

use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::Request;

use crate::acme::table::ChallengeTable;
use crate::dns::state::DnsState;

/// Challenge records are short-lived by nature: resolvers must not keep an old value.
const CHALLENGE_TTL: u32 = 5;

/// The TXT records of a published dns-01 challenge the request asks for, if any.
pub fn records(table: &ChallengeTable, state: &DnsState, request: &Request) -> Option<Vec<Record>> {
    if table.is_empty() {
        return None;
    }
    let query = request.queries.queries().first()?;
    if query.query_type() != RecordType::TXT || request.queries.queries().len() != 1 {
        return None;
    }
    state.zone_for(query.name())?;
    let owner = Name::from(query.name().clone());
    if !owner
        .iter()
        .next()?
        .eq_ignore_ascii_case(b"_acme-challenge")
    {
        return None;
    }
    let values = table.values(
        &owner.base_name().to_ascii(),
        crate::process::clock::unix_ms(),
    );
    if values.is_empty() {
        return None;
    }
    Some(
        values
            .into_iter()
            .map(|v| {
                Record::from_rdata(owner.clone(), CHALLENGE_TTL, RData::TXT(TXT::new(vec![v])))
            })
            .collect(),
    )
}
