//! Merged ECS scopes: every answer's scope is the widest network around the client over
//! which the regions rank the same (checked by brute force against every network of the
//! shipped database and of a generated one), and a real ECS-caching resolver (unbound's
//! subnetcache module) answers a whole merged network from one entry.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use common::dns::{addresses, ecs_scope, udp, Ask};
use common::unbound::{sbin, Unbound};
use common::{build_geo, need, Proc};
use geoedge::config::DnsConfig;
use geoedge::dns::DnsState;
use hickory_proto::rr::RecordType;
use ipnet::IpNet;

/// Four neighbouring /24s in Frankfurt: one /22 ranks alike.
const FRANKFURT_22: &str = "\
10.1.0.0/24 DE EU 50.1109 8.6821 Frankfurt
10.1.1.0/24 DE EU 50.1109 8.6821 Frankfurt
10.1.2.0/24 DE EU 50.1109 8.6821 Frankfurt
10.1.3.0/24 DE EU 50.1109 8.6821 Frankfurt
10.1.4.0/24 SG AS 1.3521 103.8198 Singapore
2001:db8:40::/48 DE EU 50.1109 8.6821 Frankfurt
2001:db8:41::/48 DE EU 50.1109 8.6821 Frankfurt
";

fn in_net(net: &IpNet, other: &IpNet) -> bool {
    net.contains(&other.network()) && net.contains(&other.broadcast())
}

/// Addresses in a network, modulo 2^128 (a whole IPv6 space is 0, and a sum of disjoint
/// parts equals it only when they cover it).
fn size(net: &IpNet) -> u128 {
    let bits: u32 = if net.addr().is_ipv4() { 32 } else { 128 };
    1u128
        .checked_shl(bits - u32::from(net.prefix_len()))
        .unwrap_or(0)
}

/// For addresses in every network of the database: the scope's network ranks alike
/// throughout and is covered whole by the database, and its parent is not.
fn check_widest(state: &DnsState) -> usize {
    let mut networks = Vec::new();
    for v6 in [false, true] {
        state
            .geo
            .for_each_network(v6, |net, location| {
                networks.push((net, state.table.ranking(location)));
            })
            .unwrap();
    }
    let uniform = |block: &IpNet, want: &geoedge::steer::scope::Ranking| {
        let inside: Vec<_> = networks.iter().filter(|(n, _)| in_net(block, n)).collect();
        let covered = inside
            .iter()
            .fold(0u128, |sum, (n, _)| sum.wrapping_add(size(n)));
        // A network wider than the block that holds it counts as covering it.
        let held = networks.iter().any(|(n, r)| in_net(n, block) && r == want);
        held || (covered == size(block) && inside.iter().all(|(_, r)| r == want))
    };
    let mut checked = 0;
    for (net, ranking) in &networks {
        for addr in [net.network(), net.broadcast()] {
            let Some(scope) = state.scopes.scope(addr) else {
                continue;
            };
            let block = IpNet::new(addr, scope).unwrap().trunc();
            assert!(
                uniform(&block, ranking),
                "{addr}: scope /{scope} holds another ranking"
            );
            if scope > 0 {
                let parent = IpNet::new(addr, scope - 1).unwrap().trunc();
                assert!(
                    !uniform(&parent, ranking),
                    "{addr}: /{scope} but /{} ranks alike too",
                    scope - 1
                );
            }
            checked += 1;
        }
    }
    checked
}

fn config(dir: &Path, extra_geo: &str) -> DnsConfig {
    build_geo(dir, extra_geo);
    std::fs::write(
        dir.join("zone.txt"),
        "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
@ IN NS ns1\nns1 IN A 127.0.0.1\n",
    )
    .unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/dns.toml"))
            .unwrap();
    // The shipped regions and steering, this folder's zone and database, no DNSSEC.
    let regions = &shipped[shipped.find("[[regions]]").unwrap()..];
    let steering =
        &shipped[shipped.find("[steering]").unwrap()..shipped.find("[[zones]]").unwrap()];
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\n\
[geoip]\ndatabase = \"geo.mmdb\"\n{steering}\n\
[[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n\
[[zones.steered]]\nname = \"www\"\nttl = 30\n\n{regions}"
    );
    std::fs::write(dir.join("dns.toml"), text).unwrap();
    DnsConfig::load(&dir.join("dns.toml")).unwrap()
}

#[test]
fn every_scope_is_the_widest_network_that_ranks_alike() {
    // The shipped database with the shipped regions and overrides.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped =
        DnsState::build(&DnsConfig::load(&root.join("config/dns.toml")).unwrap()).unwrap();
    let n = check_widest(&shipped);
    // A generated one with networks that merge.
    let dir = tempfile::tempdir().unwrap();
    let generated = DnsState::build(&config(dir.path(), FRANKFURT_22)).unwrap();
    let m = check_widest(&generated);
    let scope = |ip: &str| generated.scopes.scope(ip.parse().unwrap()).unwrap();
    assert_eq!(scope("10.1.2.7"), 22);
    assert_eq!(scope("10.1.4.7"), 24);
    assert_eq!(scope("2001:db8:41::1"), 47);
    println!("checked {n} addresses on the shipped database, {m} on a generated one");
}

#[test]
fn answers_carry_the_merged_scope_but_never_longer_than_the_source() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), FRANKFURT_22);
    let dns = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    let ask = |net: &str, prefix: u8| {
        udp(
            dns.addr("UDP"),
            &Ask::new("www.example.test.", RecordType::A).ecs(net, prefix),
        )
    };
    let m = ask("10.1.1.0", 24);
    assert_eq!(addresses(&m), vec!["127.0.0.11".parse::<IpAddr>().unwrap()]);
    assert_eq!(ecs_scope(&m), Some((24, 22)));
    // A /20 source covers Singapore too: the scope stays within what was sent.
    assert_eq!(ecs_scope(&ask("10.1.0.0", 20)), Some((20, 20)));
    assert_eq!(ecs_scope(&ask("10.1.4.0", 24)), Some((24, 24)));
}

/// unbound as an ECS-caching resolver: subnetcache, client subnets forwarded to us.
fn unbound(upstream: SocketAddr) -> Unbound {
    Unbound::start(
        upstream,
        "subnetcache iterator",
        &format!(
            "    send-client-subnet: {}\n    max-client-subnet-ipv4: 24\n",
            upstream.ip()
        ),
    )
}

#[test]
fn unbound_serves_a_whole_merged_network_from_one_cached_answer() {
    if !need(&[&sbin("unbound")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), FRANKFURT_22);
    let dns = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    let control = dns.addr("HTTP (control)");
    let u = unbound(dns.addr("UDP"));
    let asked_us = || {
        let (_, text) = common::http_get(control, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("geoedge_dns_steered_answers_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let through = |net: &str| {
        udp(
            u.addr,
            &Ask::new("www.example.test.", RecordType::A)
                .ecs(net, 24)
                .recursive(),
        )
    };
    let eu: Vec<IpAddr> = vec!["127.0.0.11".parse().unwrap()];
    let before = asked_us();
    for net in ["10.1.0.0", "10.1.1.0", "10.1.2.0", "10.1.3.0"] {
        assert_eq!(addresses(&through(net)), eu, "{net}/24 through unbound");
    }
    let for_four = asked_us() - before;
    // Each region's clients get their region through unbound.
    let us: Vec<IpAddr> = vec!["127.0.0.12".parse().unwrap()];
    assert_eq!(addresses(&through("198.51.100.0")), us);
    let ap: Vec<IpAddr> = vec!["127.0.0.13".parse().unwrap()];
    assert_eq!(addresses(&through("203.0.113.0")), ap);
    assert_eq!(addresses(&through("10.1.4.0")), ap);
    println!("four /24s of one merged /22 through unbound: {for_four} queries reached us");
    assert_eq!(
        for_four, 1.0,
        "unbound should have cached the /22 answer once"
    );
}
