//! `geoedge demo`: the whole world in one process on loopback, from the shipped `config/`
//! and `geo/` files: the DNS server, three regions (a proxy each, in front of two built-in
//! origins), signed reports from every proxy to the DNS server, failover from each region's
//! proxy to the others (nearest first), and a self-signed certificate written to a
//! temporary folder so curl can verify it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::proxy::{
    peer_upstream, CertificateSource, FailoverConfig, OriginProtocol, PeerConfig, PeerTiming,
    ReportsConfig,
};
use crate::config::{DnsConfig, ProxyConfig};
use crate::dns::server::DnsServer;
use crate::geo::distance::great_circle_km;
use crate::origin::{self, Origin};
use crate::proxy::ProxyServer;

/// Files the demo writes for itself; removed on exit.
pub struct DemoFiles {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub report_key: PathBuf,
    pub admin_token: PathBuf,
}

impl DemoFiles {
    pub fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("geoedge-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = vec![
            "www.example.test".to_string(),
            "api.example.test".to_string(),
            "localhost".to_string(),
        ];
        let generated =
            rcgen::generate_simple_self_signed(names).context("generating the demo certificate")?;
        let files = Self {
            cert: dir.join("www.example.test.pem"),
            key: dir.join("www.example.test.key"),
            report_key: dir.join("report.key"),
            admin_token: dir.join("admin.token"),
            dir,
        };
        std::fs::write(&files.cert, generated.cert.pem())?;
        write_private(&files.key, generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&files.report_key, random_hex(32)?.as_bytes())?;
        write_private(&files.admin_token, random_hex(24)?.as_bytes())?;
        Ok(files)
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The demo's configs: the shipped files with the demo's key, token and certificate
/// filled in, and every proxy reporting to the DNS server.
pub struct DemoWorld {
    pub dns: DnsConfig,
    pub regions: Vec<ProxyConfig>,
}

pub fn load_world(config_dir: &Path, files: &DemoFiles) -> anyhow::Result<DemoWorld> {
    let mut dns = DnsConfig::load(&config_dir.join("dns.toml"))?;
    dns.report_key_file = Some(files.report_key.clone());
    dns.admin_token_file = Some(files.admin_token.clone());
    let control = dns
        .control
        .context("config/dns.toml needs server.control: the proxies report there")?;
    let mut region_files: Vec<PathBuf> = std::fs::read_dir(config_dir)
        .with_context(|| format!("reading {}", config_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("region-") && n.ends_with(".toml"))
        })
        .collect();
    region_files.sort();
    if region_files.is_empty() {
        anyhow::bail!("no region-*.toml files in {}", config_dir.display());
    }
    let mut regions = Vec::new();
    let mut admin_ports = std::collections::HashMap::new();
    for path in region_files {
        let mut cfg = ProxyConfig::load(&path)?;
        cfg.tls.certificates = vec![CertificateSource::Files {
            cert: files.cert.clone(),
            key: files.key.clone(),
            ocsp: None,
        }];
        let addresses: Vec<IpAddr> = cfg.http.iter().chain(&cfg.https).map(|a| a.ip()).collect();
        if let Some(admin) = cfg.admin {
            admin_ports.insert(cfg.region.clone(), admin.port());
        }
        cfg.reports = Some(ReportsConfig {
            dns: vec![format!("http://{control}")],
            key_file: files.report_key.clone(),
            interval: dns.report_interval,
            addresses,
        });
        regions.push(cfg);
    }
    // The DNS server also probes each node's /healthz, so both halves of the health
    // loop run in the demo.
    for region in &mut dns.regions {
        if let Some(port) = admin_ports.get(&region.name) {
            region.probe.get_or_insert(crate::config::dns::ProbeConfig {
                port: *port,
                path: "/healthz".into(),
                interval: std::time::Duration::from_millis(250),
                timeout: std::time::Duration::from_millis(200),
                expect_status: 200,
            });
        }
    }
    wire_failover(&dns, &mut regions);
    Ok(DemoWorld { dns, regions })
}

/// Gives each region's proxy, unless its file has its own `[failover]`, the other regions'
/// proxies as failover peers, nearest first by the DNS config's coordinates, under the
/// demo's report key.
fn wire_failover(dns: &DnsConfig, regions: &mut [ProxyConfig]) {
    struct Proxy {
        region: String,
        place: (f64, f64),
        http: SocketAddr,
        admin: SocketAddr,
    }
    let place = |name: &str| {
        dns.regions
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.latitude, r.longitude))
    };
    let proxies: Vec<Proxy> = regions
        .iter()
        .filter_map(|r| {
            Some(Proxy {
                region: r.region.clone(),
                place: place(&r.region)?,
                http: *r.http.first()?,
                admin: r.admin?,
            })
        })
        .collect();
    for cfg in regions.iter_mut() {
        let (Some(here), Some(reports)) = (place(&cfg.region), &cfg.reports) else {
            continue;
        };
        if cfg.failover.is_some() {
            continue;
        }
        let mut peers: Vec<(f64, &Proxy)> = proxies
            .iter()
            .filter(|p| p.region != cfg.region)
            .map(|p| (great_circle_km(here, p.place), p))
            .collect();
        if peers.is_empty() {
            continue;
        }
        peers.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut failover = FailoverConfig {
            key_file: reports.key_file.clone(),
            peers: Vec::new(),
        };
        for (_, p) in peers {
            let upstream = peer_upstream(
                &p.region,
                p.http,
                p.admin,
                OriginProtocol::Http1,
                None,
                PeerTiming::default(),
            );
            failover.peers.push(PeerConfig {
                region: p.region.clone(),
                upstream: upstream.name.clone(),
            });
            cfg.upstreams.push(upstream);
        }
        cfg.failover = Some(failover);
    }
}

/// Runs the world until `shutdown` resolves, then stops every part and returns.
pub async fn run(
    config_dir: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let files = DemoFiles::create()?;
    let world = load_world(config_dir, &files)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    // DNS first, so the proxies' first reports find it listening.
    let dns = Arc::new(DnsServer::new(&world.dns)?);
    {
        let cfg = world.dns.clone();
        let rx = stop_rx.clone();
        tasks.spawn(async move { dns.run(&cfg, stopped(rx)).await });
    }
    for region in &world.regions {
        let peer = |name: &str| {
            region
                .failover
                .iter()
                .flat_map(|f| &f.peers)
                .any(|p| p.upstream == name)
        };
        // A failover peer's "origin" is another region's proxy, started below.
        for upstream in region.upstreams.iter().filter(|u| !peer(&u.name)) {
            for o in &upstream.origins {
                let listener = origin::bind(o.addr)
                    .await
                    .with_context(|| format!("starting origin {} on {}", o.name, o.addr))?;
                let origin = Origin::new(&o.name);
                let rx = stop_rx.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        _ = origin::serve(listener, origin) => {},
                        _ = stopped(rx) => {},
                    }
                    Ok(())
                });
            }
        }
    }
    for region in world.regions.clone() {
        let server = ProxyServer::new(region)?;
        let rx = stop_rx.clone();
        tasks.spawn(async move { server.run(stopped(rx)).await });
    }

    // Give every listener a moment to bind (a bind error ends its task with a message).
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(done) = tasks.try_join_next() {
        match done {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(e) => anyhow::bail!("a demo task failed: {e}"),
        }
    }
    say(&instructions(&world, &files));

    tokio::select! {
        _ = shutdown => {},
        Some(done) = tasks.join_next() => {
            // A part stopped on its own: that is an error worth showing.
            let _ = stop_tx.send(true);
            return match done {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("a part of the demo stopped unexpectedly")),
            };
        }
    }
    say("stopping the demo...");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.abort_all();
    }
    drop(files);
    say("demo stopped");
    Ok(())
}

/// Prints to stdout, ignoring a closed pipe (`geoedge demo | head` must not panic).
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn instructions(world: &DemoWorld, files: &DemoFiles) -> String {
    let dns = world
        .dns
        .listen
        .first()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (dns_ip, dns_port) = dns.rsplit_once(':').unwrap_or(("127.0.0.1", "5353"));
    let control = world.dns.control.map(|a| a.to_string()).unwrap_or_default();
    let mut s = String::new();
    s.push_str("\ngeoedge demo is running.\n\n");
    s.push_str(&format!(
        "  DNS        {dns} (UDP and TCP), control http://{control}\n"
    ));
    for r in &world.regions {
        let ip = r
            .http
            .first()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let origins: Vec<String> = r
            .upstreams
            .iter()
            .flat_map(|u| u.origins.iter().map(|o| format!("{} {}", o.name, o.addr)))
            .collect();
        s.push_str(&format!(
            "  region {:<3} proxy {} (HTTP :8080, HTTPS :8443, admin :9100); origins {}\n",
            r.region,
            ip,
            origins.join(", ")
        ));
    }
    let eu = world
        .regions
        .iter()
        .find(|r| r.region == "eu")
        .or(world.regions.first());
    let eu_ip = eu
        .and_then(|r| r.http.first())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "127.0.0.11".into());
    let eu_origins: Vec<String> = eu
        .map(|r| {
            r.upstreams
                .iter()
                .flat_map(|u| u.origins.iter().map(|o| o.addr.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let cert = files.cert.display();
    let token = files.admin_token.display();
    s.push_str(&format!(
        "
Where does DNS send a client? (ECS carries the client's network)
  dig @{dns_ip} -p {dns_port} www.example.test +subnet=192.0.2.0/24 +short      # Frankfurt -> eu
  dig @{dns_ip} -p {dns_port} www.example.test +subnet=198.51.100.0/24 +short   # Ashburn   -> us
  dig @{dns_ip} -p {dns_port} www.example.test +subnet=203.0.113.0/24 +short    # Singapore -> ap
  dig @{dns_ip} -p {dns_port} www.example.test AAAA +subnet=2001:db8:3::/56     # IPv6, scope /48

Fetch through the region DNS chose (the certificate is the demo's own):
  curl --cacert {cert} --resolve www.example.test:8443:{eu_ip} https://www.example.test:8443/
  curl -H 'Host: www.example.test' http://{eu_ip}:8080/_origin/echo

Health as DNS sees it:
  curl -s 'http://{control}/status?format=text'

Take region eu down by failing its origins' health checks, and watch DNS move eu clients:
"
    ));
    for o in &eu_origins {
        s.push_str(&format!(
            "  curl -X POST 'http://{o}/_origin/health?status=503'\n"
        ));
    }
    s.push_str(&format!(
        "  dig @{dns_ip} -p {dns_port} www.example.test +subnet=192.0.2.0/24 +short      # -> us within a second
  (bring it back with status=200)

Or as an operator, force it down for a minute:
  geoedge force --dns {control} --token-file {token} --region eu down --for 60s

Metrics: http://{control}/metrics (DNS) and http://<region ip>:9100/metrics (proxies).
Ctrl-C stops everything.
"
    ));
    s
}
