//! The handler's tests, chiefly the fast path against the general path, query by query:
//! both must give the same answer (parsed, so that compression choices do not matter).

use super::*;
use crate::health::Forced;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::ClientSubnet;
use hickory_proto::rr::{Name, RData};
use std::path::Path;

fn handlers() -> (Arc<ArcSwap<DnsState>>, GeoDnsHandler, GeoDnsHandler) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = crate::config::DnsConfig::load(&root.join("config/dns.toml")).expect("config");
    let state = Arc::new(ArcSwap::from_pointee(DnsState::build(&cfg).expect("state")));
    let metrics = Arc::new(DnsMetrics::new(&prometheus::Registry::new()));
    let fast = GeoDnsHandler::new(state.clone(), metrics.clone());
    let general = GeoDnsHandler::new(state.clone(), metrics).without_fast_path();
    (state, fast, general)
}

fn ecs_option(addr: &str, source: u8) -> EdnsOption {
    EdnsOption::Subnet(ClientSubnet::new(addr.parse().unwrap(), source, 0))
}

/// Queries of every shape the fast path takes or declines.
fn queries() -> Vec<Vec<u8>> {
    let names = [
        "www.example.test.",
        "WwW.ExAmPlE.TeSt.",
        "static.example.test.",
        "api.example.test.",
        "mail.example.test.",
        "nope.example.test.",
        "example.test.",
        "www.elsewhere.test.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::MX,
        RecordType::ANY,
    ];
    let mut edns_variants: Vec<Option<Edns>> = vec![None];
    for payload in [100u16, 512, 1232, 4096] {
        let mut e = Edns::new();
        e.set_max_payload(payload);
        edns_variants.push(Some(e));
    }
    for (addr, source) in [
        ("192.0.2.0", 24),
        ("192.0.2.128", 25),
        ("198.51.100.0", 24),
        ("203.0.113.0", 24),
        ("10.0.0.0", 8),
        ("0.0.0.0", 0),
        ("2001:db8:1::", 48),
        ("2001:db8:3::", 56),
        ("2001:db8::", 32),
    ] {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.options_mut().insert(ecs_option(addr, source));
        edns_variants.push(Some(e));
    }
    // DO queries: the shipped zone is signed, so these get RRSIGs on both paths.
    for ecs in [None, Some(("192.0.2.0", 24)), Some(("2001:db8:3::", 56))] {
        for payload in [512u16, 1232] {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(true);
            if let Some((addr, source)) = ecs {
                e.options_mut().insert(ecs_option(addr, source));
            }
            edns_variants.push(Some(e));
        }
    }
    let mut out = Vec::new();
    let mut id = 0u16;
    for name in names {
        for qtype in types {
            for edns in &edns_variants {
                for (rd, cd) in [(true, false), (false, true)] {
                    id = id.wrapping_add(1);
                    let mut m = Message::query();
                    m.metadata.id = id;
                    m.metadata.recursion_desired = rd;
                    m.metadata.checking_disabled = cd;
                    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
                    if let Some(e) = edns {
                        m.set_edns(e.clone());
                    }
                    out.push(m.to_vec().expect("encodable query"));
                }
            }
        }
    }
    out
}

fn parsed(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).expect("answer parses")
}

fn compare(fast: &GeoDnsHandler, general: &GeoDnsHandler, cache: &mut DecisionCache) -> usize {
    let sources: [SocketAddr; 3] = [
        "127.0.0.1:5000".parse().unwrap(),
        "203.0.113.7:5000".parse().unwrap(),
        "[2001:db8:1::7]:5000".parse().unwrap(),
    ];
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut taken = 0;
    for query in queries() {
        for src in sources {
            let sent_a = fast.answer_datagram(&query, src, &mut a, cache);
            let sent_b = general.answer(&query, src, false, &mut b, None);
            assert_eq!(sent_a, sent_b);
            let (ma, mb) = (parsed(&a), parsed(&b));
            let q = parsed(&query);
            let what = format!("{:?} from {src}", q.queries);
            assert_eq!(ma.metadata, mb.metadata, "header of {what}");
            assert_eq!(ma.queries, mb.queries, "question of {what}");
            assert_eq!(ma.answers, mb.answers, "answers of {what}");
            assert_eq!(ma.authorities, mb.authorities, "authority of {what}");
            assert_eq!(ma.edns, mb.edns, "OPT of {what}");
            if fast::parse(&query)
                .is_some_and(|fq| fast.state.load().fast.get(fq.name_key()).is_some())
            {
                taken += 1;
            }
        }
    }
    taken
}

#[test]
fn fast_path_answers_exactly_like_the_general_path() {
    let (state, fast, general) = handlers();
    let mut cache = DecisionCache::new(64);
    let taken = compare(&fast, &general, &mut cache);
    // www, WwW, static and mail, for A and AAAA, in every EDNS and flag variant.
    assert!(taken >= 4 * 2 * 14 * 2 * 3, "fast path taken {taken} times");

    // Steering moves when regions go down, and the decision cache must follow.
    let s = state.load_full();
    let eu = s.table.regions.iter().position(|r| r.name == "eu").unwrap();
    for node in s.table.regions[eu].nodes.clone() {
        s.health.force(node, Some(Forced::Down), None, 0);
    }
    compare(&fast, &general, &mut cache);
    for node in 0..s.table.nodes.len() {
        s.health.force(node, Some(Forced::Down), None, 0);
    }
    compare(&fast, &general, &mut cache);
}

#[test]
fn fast_path_serves_steered_and_static_names() {
    let (state, fast, _) = handlers();
    let s = state.load_full();
    let mut out = Vec::new();
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("www.example.test.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.options_mut().insert(ecs_option("192.0.2.0", 24));
    m.set_edns(e);
    let bytes = m.to_vec().unwrap();
    let q = fast::parse(&bytes).expect("recognised");
    let steered = fast.answer_fast(&s, &q, "127.0.0.1".parse().unwrap(), false, None, &mut out);
    let eu = s.table.regions.iter().position(|r| r.name == "eu").unwrap();
    assert_eq!(steered, Some(Some((eu, false))));
    let answer = parsed(&out);
    assert_eq!(answer.answers.len(), 1);
    assert_eq!(
        answer.answers[0].data,
        RData::A("127.0.0.11".parse().unwrap())
    );

    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("static.example.test.").unwrap(),
        RecordType::AAAA,
    ));
    let bytes = m.to_vec().unwrap();
    let q = fast::parse(&bytes).expect("recognised");
    let plain = fast.answer_fast(&s, &q, "127.0.0.1".parse().unwrap(), false, None, &mut out);
    assert_eq!(plain, Some(None));
    assert_eq!(
        parsed(&out).answers[0].data,
        RData::AAAA("2001:db8::80".parse().unwrap())
    );
}

#[test]
fn pick_rotates_over_up_nodes_and_never_answers_empty() {
    let (_, handler, _) = handlers();
    let settings = crate::health::HealthSettings {
        rise: 1,
        fall: 1,
        expects_reports: false,
        stale_after_ms: 1_000,
    };
    let health = crate::health::HealthTable::new(&[(true, false); 3], settings, 0);
    let candidates = [(0, "a"), (1, "b"), (2, "c")];
    let picks = |fail_open| -> Vec<Vec<&str>> {
        (0..3)
            .map(|_| {
                handler
                    .rotation
                    .pick(&candidates, &health, fail_open, 2, 0)
                    .map(|(_, r)| *r)
                    .collect()
            })
            .collect()
    };
    let rounds = picks(false);
    assert!(rounds.iter().all(|r| r.len() == 2));
    for name in ["a", "b", "c"] {
        assert!(
            rounds.iter().any(|r| r.contains(&name)),
            "{name} gets its turn"
        );
    }
    health.force(1, Some(Forced::Down), None, 0);
    for round in picks(false) {
        assert_eq!(round.len(), 2);
        assert!(!round.contains(&"b"), "a down node is skipped");
    }
    for n in [0, 2] {
        health.force(n, Some(Forced::Down), None, 0);
    }
    // Every node of this family down (the region is up through the other family):
    // its addresses rather than an empty answer.
    assert!(picks(false).iter().all(|r| r.len() == 2));
    assert!(picks(true).iter().all(|r| r.len() == 2));
}

#[test]
fn responses_and_runts_get_no_answer() {
    let (_, handler, _) = handlers();
    let mut m = Message::query();
    m.add_query(Query::query(
        Name::from_ascii("www.example.test.").unwrap(),
        RecordType::A,
    ));
    let mut bytes = m.to_vec().unwrap();
    let src: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    let mut out = Vec::new();
    let mut cache = DecisionCache::new(16);
    assert!(handler.answer_datagram(&bytes, src, &mut out, &mut cache));
    bytes[2] |= 0x80;
    assert!(!handler.answer_datagram(&bytes, src, &mut out, &mut cache));
    assert!(!handler.answer_stream(&bytes, src, &mut out));
    assert!(out.is_empty());
    assert!(!handler.answer_datagram(&bytes[..11], src, &mut out, &mut cache));
}

#[test]
fn damaged_queries_get_the_same_answer_from_both_paths() {
    let (_, fast, general) = handlers();
    let mut cache = DecisionCache::new(64);
    let seeds: Vec<Vec<u8>> = queries()
        .into_iter()
        .filter(|q| fast::parse(q).is_some())
        .collect();
    let mut m = crate::test_support::Mutator::new(0x5851_f42d_4c95_7f2d);
    let src: SocketAddr = "203.0.113.7:5000".parse().unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut fast_taken, mut answered) = (0, 0);
    for i in 0..20_000 {
        let query = m.mutate(&seeds[i % seeds.len()]);
        if fast::parse(&query).is_some() {
            fast_taken += 1;
        }
        let sent_a = fast.answer_datagram(&query, src, &mut a, &mut cache);
        let sent_b = general.answer(&query, src, false, &mut b, None);
        assert_eq!(sent_a, sent_b, "{query:?}");
        if !sent_a {
            continue;
        }
        answered += 1;
        assert_eq!(a[..2], query[..2], "the answer carries the query's id");
        match (Message::from_vec(&a), Message::from_vec(&b)) {
            (Ok(ma), Ok(mb)) => {
                assert_eq!(ma.metadata, mb.metadata, "{query:?}");
                assert_eq!(ma.queries, mb.queries, "{query:?}");
                assert_eq!(ma.answers, mb.answers, "{query:?}");
                assert_eq!(ma.edns, mb.edns, "{query:?}");
            }
            (ra, rb) => assert_eq!(a, b, "{query:?}: {:?} / {:?}", ra.err(), rb.err()),
        }
    }
    // Damage both kept queries on the fast path and pushed them off it.
    assert!(
        fast_taken > 200 && answered > fast_taken,
        "{fast_taken} fast of {answered}"
    );
}
