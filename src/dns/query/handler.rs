//! The query path: one hickory `RequestHandler` that answers static zone data and steered
//! names, and echoes EDNS Client Subnet with the scope of the decision.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::{Header, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;

use crate::acme::table::ChallengeTable;
use crate::dns::query::challenge;
use crate::dns::query::cookie;
use crate::dns::query::decide::decide;
use crate::dns::query::decisions::DecisionCache;
use crate::dns::query::ecs::{client_network, ecs_octets_exact};
use crate::dns::query::fast;
use crate::dns::query::fast_answer;
use crate::dns::query::pick::Rotation;
use crate::dns::query::plan::Plan;
use crate::dns::query::reply::{
    add_identity, encode_error, encode_truncated, query_line, request_cookie, response_edns,
    response_metadata,
};
use crate::dns::query::signed;
use crate::dns::state::DnsState;
use crate::dns::zone::Lookup;
use crate::health::NodeId;
use crate::metrics::{qtype_index, rcode_index, DnsMetrics};

pub struct GeoDnsHandler {
    pub state: Arc<ArcSwap<DnsState>>,
    pub metrics: Arc<DnsMetrics>,
    /// Spreads answers over a region's nodes when it has more than `answers` of them.
    rotation: Rotation,
    /// Response rate limiting for UDP, when configured.
    rrl: Option<crate::dns::query::rrl::Rrl>,
    /// Optional query log: the file, and "one query in `every`".
    query_log: Option<(crate::process::logfile::LogFile, u64)>,
    logged: std::sync::atomic::AtomicU64,
    /// Answer common queries from precomputed records (off only to compare the paths).
    fast: bool,
    /// dns-01 challenges published by the proxies, answered as TXT.
    challenges: Option<Arc<ChallengeTable>>,
}

impl GeoDnsHandler {
    pub fn new(state: Arc<ArcSwap<DnsState>>, metrics: Arc<DnsMetrics>) -> Self {
        Self {
            state,
            metrics,
            rotation: Rotation::default(),
            rrl: None,
            query_log: None,
            logged: std::sync::atomic::AtomicU64::new(0),
            fast: true,
            challenges: None,
        }
    }

    /// Answers `_acme-challenge.NAME TXT` in our zones from `table`.
    pub fn with_challenges(mut self, table: Arc<ChallengeTable>) -> Self {
        self.challenges = Some(table);
        self
    }

    /// Answers everything with the general path (tests compare the two).
    pub fn without_fast_path(mut self) -> Self {
        self.fast = false;
        self
    }

    pub fn with_rrl(mut self, config: crate::dns::query::rrl::RrlConfig) -> Self {
        self.rrl = Some(crate::dns::query::rrl::Rrl::new(config));
        self
    }

    /// Logs one query in `1 / sample` (sample in 0..=1) to `log`.
    pub fn with_query_log(mut self, log: crate::process::logfile::LogFile, sample: f64) -> Self {
        let every = if sample <= 0.0 {
            u64::MAX
        } else {
            (1.0 / sample).round().max(1.0) as u64
        };
        self.query_log = Some((log, every));
        self
    }

    fn plan<'a>(&self, state: &'a DnsState, request: &Request) -> Plan<'a> {
        if request.metadata.op_code != OpCode::Query {
            return Plan::rcode(ResponseCode::NotImp);
        }
        let mut ecs: Option<IpNet> = None;
        let mut has_ecs = false;
        if let Some(edns) = &request.edns {
            if edns.version() > 0 {
                return Plan::rcode(ResponseCode::BADVERS);
            }
            if let Some(EdnsOption::Subnet(subnet)) = edns.option(EdnsCode::Subnet) {
                match client_network(subnet) {
                    Ok(net) => {
                        ecs = net;
                        has_ecs = true;
                    }
                    Err(_) => return Plan::rcode(ResponseCode::FormErr),
                }
            }
        }
        let queries = request.queries.queries();
        if queries.len() != 1 {
            return Plan::rcode(ResponseCode::FormErr);
        }
        let query = &queries[0];
        if query.query_class() != DNSClass::IN && query.query_class() != DNSClass::ANY {
            return Plan::rcode(ResponseCode::Refused);
        }
        let name = query.name();
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers are not offered; say so rather than pretend the zone is empty.
            return Plan::rcode(ResponseCode::Refused);
        }
        let Some(zone) = state.zone_for(name) else {
            return Plan::rcode(ResponseCode::Refused);
        };
        let mut plan = match zone.lookup(name, qtype) {
            Lookup::Answer(records) => {
                Plan::authoritative(records.iter().collect(), &[], ResponseCode::NoError)
            }
            Lookup::Alias { cname, target } => Plan::authoritative(
                cname.iter().chain(target.iter()).collect(),
                &[],
                ResponseCode::NoError,
            ),
            Lookup::NoData => {
                Plan::authoritative(Vec::new(), zone.negative_soa(), ResponseCode::NoError)
            }
            Lookup::NxDomain => {
                Plan::authoritative(Vec::new(), zone.negative_soa(), ResponseCode::NXDomain)
            }
            Lookup::Steered(index) => {
                if has_ecs {
                    self.metrics.ecs_present.inc();
                } else {
                    self.metrics.ecs_absent.inc();
                }
                self.steer(
                    state,
                    index,
                    qtype,
                    ecs,
                    request.src().ip(),
                    zone.negative_soa(),
                )
            }
        };
        if !has_ecs {
            plan.ecs_scope = None;
        }
        plan.zone = Some(zone);
        plan
    }

    fn steer<'a>(
        &self,
        state: &'a DnsState,
        index: usize,
        qtype: RecordType,
        ecs: Option<IpNet>,
        source: IpAddr,
        negative_soa: &'a [Record],
    ) -> Plan<'a> {
        let Some(steered) = state.steered.get(index) else {
            return Plan::rcode(ResponseCode::ServFail);
        };
        let by_region = match qtype {
            RecordType::A | RecordType::ANY => &steered.v4,
            RecordType::AAAA => &steered.v6,
            RecordType::HTTPS if steered.https.is_some() => {
                return self.steer_https(state, steered, ecs, source, negative_soa);
            }
            // The name exists but only has addresses; the answer does not depend on where
            // the client is, so scope 0.
            _ => return Plan::authoritative(Vec::new(), negative_soa, ResponseCode::NoError),
        };
        let Some(decision) = decide(state, ecs, source, None, steered.service_mask) else {
            return Plan::rcode(ResponseCode::ServFail);
        };
        let candidates = &by_region[decision.region];
        let up: Vec<&Record> = self
            .rotation
            .pick(
                candidates,
                &state.health,
                decision.fail_open,
                steered.answers,
                steered.service_mask,
            )
            .map(|(_, r)| r)
            .collect();
        let authority: &[Record] = if up.is_empty() { negative_soa } else { &[] };
        Plan {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: up,
            authority,
            ecs_scope: Some(decision.scope),
            steered: Some((decision.region, decision.fail_open)),
            zone: None,
            made: Vec::new(),
        }
    }

    /// A steered name's HTTPS record: the endpoint is the name itself, with the chosen
    /// region's answered addresses (as A and AAAA would give them) as hints.
    fn steer_https<'a>(
        &self,
        state: &'a DnsState,
        steered: &'a crate::dns::steered::SteeredName,
        ecs: Option<IpNet>,
        source: IpAddr,
        negative_soa: &'a [Record],
    ) -> Plan<'a> {
        let Some(https) = &steered.https else {
            return Plan::authoritative(Vec::new(), negative_soa, ResponseCode::NoError);
        };
        let Some(decision) = decide(state, ecs, source, None, steered.service_mask) else {
            return Plan::rcode(ResponseCode::ServFail);
        };
        let hints = |by_region: &'a [Vec<(NodeId, Record)>]| {
            by_region
                .get(decision.region)
                .map(|c| {
                    self.rotation
                        .pick(
                            c,
                            &state.health,
                            decision.fail_open,
                            steered.answers,
                            steered.service_mask,
                        )
                        .map(|(_, r)| r)
                        .collect::<Vec<&Record>>()
                })
                .unwrap_or_default()
        };
        let v4 = hints(&steered.v4)
            .into_iter()
            .filter_map(|r| match r.data {
                hickory_proto::rr::RData::A(a) => Some(a),
                _ => None,
            })
            .collect();
        let v6 = hints(&steered.v6)
            .into_iter()
            .filter_map(|r| match r.data {
                hickory_proto::rr::RData::AAAA(a) => Some(a),
                _ => None,
            })
            .collect();
        let record = crate::dns::steered::https_record(&steered.name, steered.ttl, https, v4, v6);
        Plan {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authority: &[],
            ecs_scope: Some(decision.scope),
            steered: Some((decision.region, decision.fail_open)),
            zone: None,
            made: vec![record],
        }
    }
}

impl GeoDnsHandler {
    /// The fast path's answer (`fast_answer::answer`) with this handler's metrics and
    /// rotation.
    fn answer_fast(
        &self,
        state: &Arc<DnsState>,
        query: &fast::Query<'_>,
        source: IpAddr,
        tcp: bool,
        cache: Option<&mut DecisionCache>,
        out: &mut Vec<u8>,
    ) -> Option<Option<(usize, bool)>> {
        fast_answer::answer(
            &self.metrics,
            &self.rotation,
            state,
            query,
            source,
            tcp,
            cache,
            out,
        )
    }

    /// Answers one UDP datagram synchronously into `out` (cleared first). Returns false
    /// when nothing should be sent: a header too short to answer, a response packet
    /// (answering those would let anyone bounce traffic off us), or a rate-limited client.
    ///
    /// No task per packet, no channel to a writer, and the output buffer is reused by the
    /// caller.
    /// `cache` remembers steering decisions across the datagrams of one receive loop.
    pub fn answer_datagram(
        &self,
        packet: &[u8],
        src: SocketAddr,
        out: &mut Vec<u8>,
        cache: &mut DecisionCache,
    ) -> bool {
        self.answer(packet, src, false, out, Some(cache))
    }

    /// Answers one message received over TCP (no size limit but the protocol's, and no
    /// rate limiting: the handshake proved the address).
    pub fn answer_stream(&self, packet: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
        self.answer(packet, src, true, out, None)
    }

    fn answer(
        &self,
        packet: &[u8],
        src: SocketAddr,
        tcp: bool,
        out: &mut Vec<u8>,
        cache: Option<&mut DecisionCache>,
    ) -> bool {
        out.clear();
        let started = Instant::now();
        // Too short for a header, or a response (answering those would let anyone bounce
        // traffic off us): read from the raw bytes, as both paths parse the header again.
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return false;
        }
        if let Some(rrl) = self.rrl.as_ref().filter(|_| !tcp) {
            match rrl.check(src.ip()) {
                crate::dns::query::rrl::Action::Send => {}
                crate::dns::query::rrl::Action::Drop => {
                    self.metrics.rrl_dropped.inc();
                    return false;
                }
                crate::dns::query::rrl::Action::Slip => {
                    self.metrics.rrl_slipped.inc();
                    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
                        return false;
                    };
                    return encode_truncated(packet, &header, out);
                }
            }
        }
        let state = self.state.load();
        // The query log wants the parsed request, so logging servers take the general path.
        if self.fast && self.query_log.is_none() {
            if let Some(query) = fast::parse(packet) {
                if let Some(steered) = self.answer_fast(&state, &query, src.ip(), tcp, cache, out) {
                    let rcode = rcode_index(ResponseCode::NoError);
                    self.count(
                        &state,
                        tcp,
                        qtype_index(query.qtype),
                        rcode,
                        steered,
                        started,
                    );
                    return true;
                }
            }
        }
        self.answer_general(&state, packet, src, tcp, out, started)
    }

    /// Answers anything, with hickory's parser and encoder.
    fn answer_general(
        &self,
        state: &DnsState,
        packet: &[u8],
        src: SocketAddr,
        tcp: bool,
        out: &mut Vec<u8>,
        started: Instant,
    ) -> bool {
        let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
        let request = match Request::from_bytes(packet.to_vec(), src, protocol) {
            Ok(r) => r,
            Err(_) => {
                let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else {
                    return false;
                };
                encode_error(&header.metadata, ResponseCode::FormErr, out);
                self.metrics
                    .query(tcp, usize::MAX, rcode_index(ResponseCode::FormErr))
                    .inc();
                return !out.is_empty();
            }
        };
        let challenge = self
            .challenges
            .as_deref()
            .and_then(|table| challenge::records(table, state, &request));
        let now = (crate::process::clock::unix_ms() / 1000) as u32;
        let cookie = request_cookie(state, &request, now);
        if let Some(c) = cookie {
            let result = match c {
                cookie::Check::Valid { .. } => "valid",
                cookie::Check::Invalid { .. } => "invalid",
                cookie::Check::ClientOnly { .. } => "client_only",
                cookie::Check::Malformed => "malformed",
            };
            self.metrics.cookies.with_label_values(&[result]).inc();
        }
        let has_ecs = request
            .edns
            .as_ref()
            .is_some_and(|e| e.option(EdnsCode::Subnet).is_some());
        let mut plan = match (&challenge, cookie) {
            (_, Some(cookie::Check::Malformed)) => Plan::rcode(ResponseCode::FormErr),
            _ if has_ecs && !ecs_octets_exact(packet) => Plan::rcode(ResponseCode::FormErr),
            // RFC 7873 §5.2.3: over UDP, a server cookie we did not make gets BADCOOKIE
            // and a fresh one, so the client's retry proves its address; over TCP the
            // handshake already did.
            (_, Some(cookie::Check::Invalid { .. })) if !tcp => {
                Plan::rcode(ResponseCode::BADCOOKIE)
            }
            (Some(_), _) => Plan::authoritative(Vec::new(), &[], ResponseCode::NoError),
            (None, _) => self.plan(state, &request),
        };
        if challenge.is_some() {
            plan.zone = request
                .queries
                .queries()
                .first()
                .and_then(|q| state.zone_for(q.name()));
        }
        let made = std::mem::take(&mut plan.made);
        let answers: Vec<&Record> = plan
            .answers
            .iter()
            .copied()
            .chain(&made)
            .chain(challenge.iter().flatten())
            .collect();
        let signatures = signed::for_request(&self.metrics, state, &request, &mut plan, &answers);
        let mut edns = response_edns(state, &request, &plan, signatures.is_some());
        if let Some(e) = edns.as_mut() {
            add_identity(e, state, &request, cookie, now);
        }
        let metadata = response_metadata(&request, &plan);
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let unsigned = signed::Signatures::default();
        let sigs = signatures.as_ref().unwrap_or(&unsigned);
        let response = builder.build(
            metadata,
            sigs.interleave(&answers),
            plan.authority.iter().chain(&sigs.authority),
            [],
            [],
        );
        let mut max = match (&edns, tcp) {
            (_, true) => u16::MAX,
            (Some(e), false) => e.max_payload(),
            (None, false) => 512,
        };
        // A client that has not proven its address with a server cookie gets at most this
        // much over UDP (the rest with TC, to fetch over TCP): what a spoofed source can
        // make us send is bounded.
        if !tcp && state.max_nocookie_response > 0 && !cookie.is_some_and(|c| c.proves_address()) {
            max = max.min(state.max_nocookie_response);
        }
        let mut encoder = BinEncoder::new(out);
        encoder.set_max_size(max);
        match response.destructive_emit(&mut encoder) {
            Err(_) => encode_error(&request.metadata, ResponseCode::ServFail, out),
            // Cut short: the records that fitted would be a partial RRset (and its RRSIG
            // may be the part cut), and the OPT record, written last, may be gone too.
            // Send the question and OPT only, with TC, as the client will ask over TCP.
            Ok(info) if info.truncation => {
                out.clear();
                let mut metadata = metadata;
                metadata.truncation = true;
                let mut builder = MessageResponseBuilder::new(&request.queries, None);
                if let Some(edns) = &edns {
                    builder.edns(edns);
                }
                let mut encoder = BinEncoder::new(out);
                encoder.set_max_size(max);
                if builder
                    .build_no_records(metadata)
                    .destructive_emit(&mut encoder)
                    .is_err()
                {
                    encode_error(&request.metadata, ResponseCode::ServFail, out);
                }
            }
            Ok(_) => {}
        }
        self.account(state, &request, &plan, started);
        !out.is_empty()
    }

    fn account(&self, state: &DnsState, request: &Request, plan: &Plan<'_>, started: Instant) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map(|q| qtype_index(q.query_type()))
            .unwrap_or(usize::MAX);
        let tcp = request.protocol() == Protocol::Tcp;
        let rcode = rcode_index(plan.rcode);
        self.count(state, tcp, qtype, rcode, plan.steered, started);
        if let Some((log, every)) = &self.query_log {
            if self
                .logged
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(*every)
            {
                log.write(query_line(state, request, plan));
            }
        }
    }

    /// Counts one answered query: by protocol, type and rcode; by region when steered.
    fn count(
        &self,
        state: &DnsState,
        tcp: bool,
        qtype: usize,
        rcode: usize,
        steered: Option<(usize, bool)>,
        started: Instant,
    ) {
        self.metrics.query(tcp, qtype, rcode).inc();
        if let Some((region, fail_open)) = steered {
            if let Some(counter) = state.region_counters.get(region) {
                counter.inc();
            }
            if fail_open {
                self.metrics.fail_open.inc();
            }
        }
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
