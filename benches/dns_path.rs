//! Micro-benchmarks of the DNS query path's pure parts: GeoIP lookup and the steering
//! decision. End-to-end throughput against gdnsd is measured by ../shared/bench/dns.sh.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use geoedge::config::DnsConfig;
use geoedge::geo::GeoDb;
use geoedge::steer::RegionTable;

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let db = GeoDb::open(&root.join("geo/geoedge-demo.mmdb")).expect("demo database");
    let cfg = DnsConfig::load(&root.join("config/dns.toml")).expect("demo config");
    let table = RegionTable::from_config(&cfg);
    let clients: Vec<IpAddr> = ["192.0.2.9", "198.18.1.9", "2001:db8:3::9", "8.8.8.8"]
        .iter()
        .map(|s| s.parse().expect("address"))
        .collect();

    c.bench_function("geoip_lookup", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % clients.len();
            black_box(db.lookup(black_box(clients[i])).ok())
        })
    });

    let located: Vec<_> = clients
        .iter()
        .map(|ip| (*ip, db.lookup(*ip).ok().and_then(|m| m.location)))
        .collect();
    c.bench_function("steer_choose", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % located.len();
            let (ip, loc) = &located[i];
            black_box(table.choose(*ip, loc.as_ref(), |r| r != 0))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
