//! The DNSSEC records an answer to a DO query gets from a signed zone: the RRSIGs of each
//! answer RRset, and for a negative answer the SOA's RRSIGs and a compact-denial NSEC
//! (RFC 9824) with its own.

use std::sync::Arc;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::rr::{Name, RData, Record};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use hickory_server::server::Request;

use crate::dns::dnssec::denial::{self, Denial};
use crate::dns::dnssec::signer::{SignError, ZoneSigner};
use crate::dns::query::plan::Plan;
use crate::dns::state::DnsState;
use crate::metrics::DnsMetrics;

/// What signing adds to an answer.
#[derive(Default)]
pub struct Signatures {
    /// RRSIGs of the answer section: (the index one past the RRset they cover, RRSIGs).
    pub answer: Vec<(usize, Arc<[Record]>)>,
    /// Appended to the authority section: the SOA's RRSIGs, the NSEC and its RRSIGs.
    pub authority: Vec<Record>,
    /// RRsets whose signatures came from the cache, and those signed now.
    pub cache_hits: u64,
    pub cache_misses: u64,
}

impl Signatures {
    fn count(&mut self, (sigs, hit): (Arc<[Record]>, bool)) -> Arc<[Record]> {
        if hit {
            self.cache_hits += 1;
        } else {
            self.cache_misses += 1;
        }
        sigs
    }

    /// The answer section with each RRset followed by its RRSIGs.
    pub fn interleave<'a>(&'a self, answers: &[&'a Record]) -> Vec<&'a Record> {
        let mut out = Vec::with_capacity(answers.len() * 2);
        let mut sigs = self.answer.iter().peekable();
        for (i, r) in answers.iter().enumerate() {
            out.push(*r);
            while let Some((_, s)) = sigs.next_if(|(end, _)| *end == i + 1) {
                out.extend(s.iter());
            }
        }
        out
    }
}

/// Signs `answers` (RRsets in runs of one owner and type, as the query path lays them
/// out) and `authority` (the negative SOA, if any); `negative` is the query name and what
/// to prove about it when the answer is empty.
pub fn sign(
    signer: &ZoneSigner,
    answers: &[&Record],
    authority: &[Record],
    negative: Option<(&Name, &Denial)>,
    now: u32,
) -> Result<Signatures, SignError> {
    let mut out = Signatures::default();
    let mut start = 0;
    while start < answers.len() {
        let first = answers[start];
        let end = answers[start..]
            .iter()
            .position(|r| r.record_type() != first.record_type() || r.name != first.name)
            .map_or(answers.len(), |n| start + n);
        let sigs = out.count(signer.sign(&answers[start..end], now)?);
        out.answer.push((end, sigs));
        start = end;
    }
    if !authority.is_empty() {
        let refs: Vec<&Record> = authority.iter().collect();
        let sigs = out.count(signer.sign(&refs, now)?);
        out.authority.extend(sigs.iter().cloned());
    }
    if let Some((qname, what)) = negative {
        // No proof can be made for a name at the length limit: the answer goes without.
        if let Some(nsec) = denial::nsec(qname, what) {
            let ttl = authority.first().map_or(0, |soa| soa.ttl);
            let record =
                Record::from_rdata(qname.clone(), ttl, RData::DNSSEC(DNSSECRData::NSEC(nsec)));
            let sigs = out.count(signer.sign(&[&record], now)?);
            out.authority.push(record);
            out.authority.extend(sigs.iter().cloned());
        }
    }
    Ok(out)
}

/// The RRSIGs and denial proof for a DO query answered from a signed zone; `None`
/// when the query or the zone is not for signing. A compact negative answer's rcode is
/// set here (RFC 9824 §4).
pub fn for_request(
    metrics: &DnsMetrics,
    state: &DnsState,
    request: &Request,
    plan: &mut Plan<'_>,
    answers: &[&Record],
) -> Option<Signatures> {
    let edns = request.edns.as_ref()?;
    if !edns.flags().dnssec_ok {
        return None;
    }
    let zone = plan.zone?;
    let signer = zone.signer.as_deref()?;
    let query = request.queries.queries().first()?;
    let qname = Name::from(query.name().clone());
    let negative = (answers.is_empty()
        && plan.authoritative
        && matches!(plan.rcode, ResponseCode::NoError | ResponseCode::NXDomain))
    .then(|| match zone.types_at(query.name()) {
        None => Denial::NoName,
        Some(mut types) => {
            if let crate::dns::zone::Lookup::Steered(i) = zone.lookup(query.name(), RecordType::A) {
                if state.steered.get(i).is_some_and(|s| s.https.is_some()) {
                    types.push(RecordType::HTTPS);
                }
            }
            types.retain(|t| *t != query.query_type());
            Denial::NoData(types)
        }
    });
    let now = (crate::process::clock::unix_ms() / 1000) as u32;
    match sign(
        signer,
        answers,
        plan.authority,
        negative.as_ref().map(|d| (&qname, d)),
        now,
    ) {
        Ok(sigs) => {
            if negative == Some(Denial::NoName) {
                plan.rcode = denial::nxdomain_rcode(edns.flags().z & denial::EDNS_FLAG_CO != 0);
            }
            metrics.dnssec_signed.inc();
            metrics.dnssec_cache_hits.inc_by(sigs.cache_hits);
            metrics.dnssec_cache_misses.inc_by(sigs.cache_misses);
            Some(sigs)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not sign an answer; SERVFAIL");
            *plan = Plan::rcode(ResponseCode::ServFail);
            None
        }
    }
}
