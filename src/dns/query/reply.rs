//! The parts of an answer around its records: the header, the OPT record (payload, ECS
//! scope, DO and CO, cookie, NSID), header-only error and truncated answers, and the query
//! log's line.

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption, NSIDPayload};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::dns::dnssec::denial;
use crate::dns::query::cookie;
use crate::dns::query::plan::Plan;
use crate::dns::state::DnsState;
use crate::metrics::rcode_index;

/// `time client proto qname qtype rcode ecs=ADDR/SOURCE/SCOPE region=NAME`.
pub fn query_line(state: &DnsState, request: &Request, plan: &Plan<'_>) -> String {
    let q = request.queries.queries().first();
    let ecs = request
        .edns
        .as_ref()
        .and_then(|e| match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => Some(format!(
                "{}/{}/{}",
                s.addr(),
                s.source_prefix(),
                plan.ecs_scope.unwrap_or(0)
            )),
            _ => None,
        })
        .unwrap_or_else(|| "-".into());
    let region = plan
        .steered
        .and_then(|(r, _)| state.table.regions.get(r))
        .map(|r| r.name.as_str())
        .unwrap_or("-");
    format!(
        "{} {} {} {} {} {} ecs={} region={}",
        crate::process::logfile::rfc3339(crate::process::clock::unix_ms()),
        request.src().ip(),
        if request.protocol() == Protocol::Tcp {
            "tcp"
        } else {
            "udp"
        },
        q.map(|q| q.name().to_string())
            .unwrap_or_else(|| "-".into()),
        q.map(|q| q.query_type().to_string())
            .unwrap_or_else(|| "-".into()),
        crate::metrics::RCODES[rcode_index(plan.rcode)],
        ecs,
        region
    )
}

/// A header-only error answer (FORMERR for packets we cannot parse, SERVFAIL when an
/// answer cannot be encoded), with the query's id.
pub fn encode_error(query: &Metadata, rcode: ResponseCode, out: &mut Vec<u8>) {
    out.clear();
    let mut metadata = Metadata::response_from_request(query);
    metadata.response_code = rcode;
    let response = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    let mut encoder = BinEncoder::new(out);
    if response.emit(&mut encoder).is_err() {
        out.clear();
    }
}

/// The RRL "slip": the header and question only, with TC set, so a real client retries
/// over TCP; nothing worth reflecting.
pub fn encode_truncated(packet: &[u8], header: &Header, out: &mut Vec<u8>) -> bool {
    out.clear();
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.truncation = true;
    let mut decoder = BinDecoder::new(packet);
    if Header::read(&mut decoder).is_err() {
        return false;
    }
    let Ok(queries) = hickory_server::zone_handler::Queries::read(
        &mut decoder,
        usize::from(header.counts.queries.min(1)),
    ) else {
        return false;
    };
    let response = MessageResponseBuilder::new(&queries, None).build_no_records(metadata);
    let mut encoder = BinEncoder::new(out);
    encoder.set_max_size(512);
    response.destructive_emit(&mut encoder).is_ok() && !out.is_empty()
}

pub fn response_metadata(request: &Request, plan: &Plan<'_>) -> Metadata {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.authoritative = plan.authoritative;
    metadata.recursion_available = false;
    metadata.response_code = plan.rcode;
    metadata
}

/// The OPT record of the answer: present when the query had one, advertising the
/// smaller of the client's buffer and ours (never below 512, RFC 6891), and echoing ECS
/// with the plan's scope.
/// A signed answer keeps the query's DO bit and, for compact denial, its CO flag.
pub fn response_edns(
    state: &DnsState,
    request: &Request,
    plan: &Plan<'_>,
    signed: bool,
) -> Option<Edns> {
    let req = request.edns.as_ref()?;
    let mut edns = Edns::new();
    // RFC 3225 §3: the DO bit is copied into the answer.
    edns.set_dnssec_ok(req.flags().dnssec_ok);
    if signed {
        edns.flags_mut().z = req.flags().z & denial::EDNS_FLAG_CO;
    }
    edns.set_max_payload(req.max_payload().clamp(512, state.max_udp_payload.max(512)));
    edns.set_version(0);
    if let (Some(scope), Some(EdnsOption::Subnet(subnet))) =
        (plan.ecs_scope, req.option(EdnsCode::Subnet))
    {
        edns.options_mut()
            .insert(EdnsOption::Subnet(ClientSubnet::new(
                subnet.addr(),
                subnet.source_prefix(),
                scope,
            )));
    }
    Some(edns)
}

/// The query's COOKIE option, checked; `None` without one.
pub fn request_cookie(state: &DnsState, request: &Request, now: u32) -> Option<cookie::Check> {
    let edns = request.edns.as_ref()?;
    match edns.option(EdnsCode::Cookie)? {
        EdnsOption::Unknown(_, data) => Some(cookie::check(
            data,
            request.src().ip(),
            now,
            &state.cookie_secrets,
        )),
        _ => Some(cookie::Check::Malformed),
    }
}

/// The answer's COOKIE (the client's cookie and a server cookie made now, RFC 9018) and
/// NSID (when asked for and configured, RFC 5001).
pub fn add_identity(
    edns: &mut Edns,
    state: &DnsState,
    request: &Request,
    cookie: Option<cookie::Check>,
    now: u32,
) {
    if let Some(client) = cookie.and_then(|c| c.client()) {
        let data = cookie::answer(
            &client,
            request.src().ip(),
            now,
            &state.cookie_secrets.current,
        );
        edns.options_mut()
            .insert(EdnsOption::Unknown(cookie::OPTION_COOKIE, data.to_vec()));
    }
    let asked = request
        .edns
        .as_ref()
        .is_some_and(|e| e.option(EdnsCode::NSID).is_some());
    if let (true, Some(nsid)) = (asked, &state.nsid) {
        if let Ok(payload) = NSIDPayload::new(nsid.clone()) {
            edns.options_mut().insert(EdnsOption::NSID(payload));
        }
    }
}
