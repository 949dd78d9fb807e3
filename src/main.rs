use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

// The request paths allocate small, short-lived buffers (headers, bodies, boxed futures);
// mimalloc serves those from per-thread free lists with less contention and overhead
// than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use geoedge::config::{detect_kind, ConfigError, ConfigKind, DnsConfig, ProxyConfig};
use geoedge::dns::server::DnsServer;
use geoedge::dns::DnsState;
use geoedge::geo::GeoDb;
use geoedge::proxy::ProxyServer;
use geoedge::steer::{Basis, RegionTable};

#[derive(Parser)]
#[command(
    name = "geoedge",
    version,
    about = "Global server load balancing edge: steered DNS and a regional proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the authoritative DNS server.
    Dns {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a regional proxy node.
    Proxy {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a small origin server (for the demo and tests).
    Origin {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        name: String,
        /// Speak HTTPS with this PEM certificate chain (and --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Demand a client certificate signed by one of these PEM CAs (mTLS).
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
    },
    /// Run the whole demo world (DNS + three regions + origins) on loopback.
    Demo {
        /// Folder with dns.toml and region-*.toml.
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
    },
    /// Show every region and node as a DNS server sees them.
    Status {
        /// The DNS server's control listener, e.g. 127.0.0.1:9153.
        #[arg(long)]
        dns: String,
        #[arg(long)]
        json: bool,
    },
    /// Force a node or a whole region up or down on a DNS server (or clear that).
    Force {
        #[arg(long)]
        dns: String,
        #[arg(long)]
        token_file: PathBuf,
        #[arg(long, conflicts_with = "region", required_unless_present = "region")]
        node: Option<String>,
        #[arg(long)]
        region: Option<String>,
        /// up, down or clear
        state: String,
        /// How long the override lasts, e.g. 60s (default: until cleared).
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// Hash a password (read from standard input) for a users file: argon2id, PHC format.
    HashPassword,
    /// Validate a config file (and the files it names); exit 0 when it is good.
    Check { file: PathBuf },
    /// GeoIP tools.
    Geo {
        #[command(subcommand)]
        command: GeoCommand,
    },
    /// DNSSEC keys of a signed zone.
    Dnssec {
        #[command(subcommand)]
        command: DnssecCommand,
    },
}

#[derive(Subcommand)]
enum DnssecCommand {
    /// Make a key for a zone: in --dir, or in the zone's `key_dir` of --config.
    Keygen {
        zone: String,
        #[arg(long, required_unless_present = "dir")]
        config: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// csk (signs everything), ksk (the DNSKEY set) or zsk (the rest).
        #[arg(long, default_value = "csk")]
        role: String,
        /// active (signs) or publish (published only, for a rollover).
        #[arg(long, default_value = "active")]
        state: String,
        /// ecdsap256sha256 or ed25519.
        #[arg(long, default_value = "ecdsap256sha256")]
        algorithm: String,
    },
    /// Print the DS lines for the parent (or a resolver's trust anchor) and the DNSKEYs;
    /// with --config, a zone with `generate` and no key yet gets its key made first, as
    /// the server's first start would.
    Ds {
        zone: String,
        #[arg(long, required_unless_present = "dir")]
        config: Option<PathBuf>,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum GeoCommand {
    /// Show where an address is, the network that decided it, and how regions rank for it.
    Lookup {
        #[arg(long)]
        db: Option<PathBuf>,
        /// A dns config: rank its regions for the address (its database is used unless --db).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Ask the running DNS server of --config (at its `server.control`, or the control
        /// address given) which regions are up and what they shed, and say which region
        /// this address is answered with and why.
        #[arg(long, requires = "config", num_args = 0..=1, value_name = "CONTROL")]
        live: Option<Option<std::net::SocketAddr>>,
        ip: IpAddr,
    },
    /// Build a GeoIP database from a text source (see geo/README.md).
    Build { source: PathBuf, out: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dns { config } => {
            let cfg = DnsConfig::load(&config)?;
            geoedge::process::logging::init(cfg.log_level.as_deref());
            let runtime = runtime(cfg.workers)?;
            runtime.block_on(async {
                let stop = geoedge::process::signals::shutdown();
                let server = std::sync::Arc::new(DnsServer::new(&cfg)?);
                server.run(&cfg, stop).await
            })
        }
        Command::Proxy { config } => {
            let cfg = ProxyConfig::load(&config)?;
            geoedge::process::logging::init(cfg.log_level.as_deref());
            let runtime = runtime(cfg.workers)?;
            runtime.block_on(async {
                let stop = geoedge::process::signals::shutdown();
                let server = ProxyServer::new(cfg)?;
                server.run(stop).await
            })
        }
        Command::Origin {
            listen,
            name,
            tls_cert,
            tls_key,
            client_ca,
        } => {
            geoedge::process::logging::init(None);
            let tls = match (&tls_cert, &tls_key) {
                (Some(cert), Some(key)) => Some(
                    geoedge::origin::tls_acceptor(cert, key, client_ca.as_deref())
                        .map_err(anyhow::Error::msg)
                        .context("loading the origin's TLS files")?,
                ),
                _ => None,
            };
            let kind = if tls.is_some() { "HTTPS" } else { "HTTP" };
            let runtime = runtime(1)?;
            runtime.block_on(async {
                let listener = geoedge::origin::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                geoedge::process::listening::announce(
                    &format!("{kind} (origin {name})"),
                    listener.local_addr()?,
                );
                let origin = geoedge::origin::Origin::new(&name);
                let stop = geoedge::process::signals::shutdown();
                tokio::select! {
                    _ = geoedge::origin::serve_with(listener, origin, tls) => {},
                    _ = stop => {},
                }
                Ok(())
            })
        }
        Command::Demo { config_dir } => {
            geoedge::process::logging::init(None);
            let runtime = runtime(2)?;
            runtime.block_on(async {
                let stop = geoedge::process::signals::shutdown();
                geoedge::demo::run(&config_dir, stop).await
            })
        }
        Command::Status { dns, json } => {
            let runtime = runtime(1)?;
            runtime.block_on(async {
                let url = format!("http://{dns}/status");
                let body = reqwest::get(&url)
                    .await
                    .with_context(|| format!("asking {url}"))?
                    .error_for_status()?
                    .bytes()
                    .await?;
                if json {
                    println!("{}", String::from_utf8_lossy(&body));
                } else {
                    let status: geoedge::dns::admin::Status =
                        serde_json::from_slice(&body).context("reading the status")?;
                    print!("{}", geoedge::dns::admin::status_table(&status));
                }
                Ok(())
            })
        }
        Command::Force {
            dns,
            token_file,
            node,
            region,
            state,
            duration,
        } => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading {}", token_file.display()))?;
            let target = match (&node, &region) {
                (Some(n), _) => format!("node={n}"),
                (None, Some(r)) => format!("region={r}"),
                (None, None) => anyhow::bail!("give --node or --region"),
            };
            let mut url = format!("http://{dns}/admin/force?{target}&state={state}");
            if let Some(d) = duration {
                url.push_str(&format!("&for={d}"));
            }
            let runtime = runtime(1)?;
            runtime.block_on(async {
                let resp = reqwest::Client::new()
                    .post(&url)
                    .bearer_auth(token.trim())
                    .send()
                    .await
                    .with_context(|| format!("asking {dns}"))?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if !status.is_success() {
                    anyhow::bail!("{status}: {}", text.trim());
                }
                print!("{text}");
                Ok(())
            })
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("reading the password")?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                anyhow::bail!("empty password");
            }
            println!(
                "{}",
                geoedge::proxy::route::auth::hash_password(password).map_err(anyhow::Error::msg)?
            );
            Ok(())
        }
        Command::Check { file } => {
            check(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Dnssec { command } => dnssec(command),
        Command::Geo { command } => match command {
            GeoCommand::Build { source, out } => {
                let n = geoedge::geo::build::build_file(&source, &out)?;
                println!("wrote {} networks to {}", n, out.display());
                Ok(())
            }
            GeoCommand::Lookup {
                db,
                config,
                live,
                ip,
            } => geo_lookup(db, config, live, ip),
        },
    }
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    if detect_kind(file)? == ConfigKind::Proxy {
        let cfg = ProxyConfig::load(file)?;
        let failed = |key: &str, message: String| ConfigError {
            file: file.to_path_buf(),
            key: Some(key.into()),
            line: None,
            message,
        };
        if !cfg.https.is_empty() {
            geoedge::proxy::listen::tls::TlsListener::new(&cfg.tls)
                .map_err(|e| failed("tls", e.to_string()))?;
        }
        for u in &cfg.upstreams {
            if let Some(tls) = &u.tls {
                geoedge::proxy::upstream::origin_tls::OriginTls::new(&u.name, u.protocol, tls)
                    .map_err(|e| failed(&format!("upstreams.{}.tls", u.name), e.to_string()))?;
            }
        }
        return Ok(());
    }
    let mut cfg = DnsConfig::load(file)?;
    // A check writes nothing: a zone whose first key the server would make is checked
    // unsigned, and said so.
    for zone in &mut cfg.zones {
        let Some(d) = &zone.dnssec else { continue };
        let has_keys = std::fs::read_dir(&d.key_dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().extension().is_some_and(|x| x == "key"))
        });
        if d.generate && !has_keys {
            println!(
                "zone {}: no key in {} yet; the first start makes one",
                zone.origin,
                d.key_dir.display()
            );
            zone.dnssec = None;
        }
    }
    DnsState::build(&cfg).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        key: None,
        line: None,
        message: e.to_string(),
    })?;
    Ok(())
}

fn geo_lookup(
    db: Option<PathBuf>,
    config: Option<PathBuf>,
    live: Option<Option<std::net::SocketAddr>>,
    ip: IpAddr,
) -> anyhow::Result<()> {
    let cfg = config.map(|c| DnsConfig::load(&c)).transpose()?;
    let db_path = match (&db, &cfg) {
        (Some(db), _) => db.clone(),
        (None, Some(cfg)) => cfg.geoip_database.clone(),
        (None, None) => anyhow::bail!("give --db FILE or --config FILE"),
    };
    let geo = GeoDb::open(&db_path)?;
    let m = geo.lookup(ip)?;
    println!("address:   {ip}");
    println!("network:   {}", m.network);
    match &m.location {
        Some(loc) => {
            let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
            let code = |c: Option<geoedge::geo::Code>| {
                c.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
            };
            println!(
                "city:      {}",
                geo.city_name(ip).unwrap_or_else(|| "-".into())
            );
            println!("country:   {}", code(loc.country));
            println!("continent: {}", code(loc.continent));
            println!("location:  {}, {}", fmt(loc.latitude), fmt(loc.longitude));
        }
        None => println!("location:  not in the database"),
    }
    if let Some(cfg) = cfg {
        let table = RegionTable::from_config(&cfg);
        println!("regions (best first):");
        for (rank, (region, basis)) in table.rank(ip, m.location.as_ref()).into_iter().enumerate() {
            let why = match basis {
                Basis::Distance(km) => format!("{km:.0} km"),
                Basis::Override(i) => format!("override #{i}"),
                Basis::DefaultOrder => "default order".to_string(),
            };
            println!("  {}. {:<12} {}", rank + 1, table.regions[region].name, why);
        }
        if let Some(given) = live {
            let control = given.or(cfg.control).context(
                "--live asks the server's control listener: give its address or set server.control",
            )?;
            let status = fetch_status(control)?;
            let ranked: Vec<String> = table
                .rank(ip, m.location.as_ref())
                .into_iter()
                .map(|(r, _)| table.regions[r].name.clone())
                .collect();
            let position = geoedge::steer::shed::position(ip);
            let (_, lines) = geoedge::dns::explain::explain(&ranked, &status.regions, position);
            println!("live (from {control}):");
            for line in lines {
                println!("  {line}");
            }
        }
    }
    Ok(())
}

fn fetch_status(control: std::net::SocketAddr) -> anyhow::Result<geoedge::dns::admin::Status> {
    let url = format!("http://{control}/status");
    runtime(1)?.block_on(async {
        let resp = reqwest::Client::new()
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("asking {url}"))?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            anyhow::bail!("{url}: {status}");
        }
        serde_json::from_slice(&body).with_context(|| format!("{url}: not a status document"))
    })
}

/// The zone's name and key directory, from --dir or the zone's `[zones.dnssec]` in
/// --config (with it, the zone's settings).
fn zone_keys(
    zone: &str,
    config: Option<&std::path::Path>,
    dir: Option<PathBuf>,
) -> anyhow::Result<(
    hickory_proto::rr::Name,
    PathBuf,
    Option<geoedge::config::dns::DnssecConfig>,
)> {
    let mut name = hickory_proto::rr::Name::from_ascii(zone)
        .with_context(|| format!("`{zone}` is not a zone name"))?;
    name.set_fqdn(true);
    let settings = match config {
        Some(path) => {
            let cfg = DnsConfig::load(path)?;
            let lower = hickory_proto::rr::LowerName::new(&name);
            let z = cfg
                .zones
                .iter()
                .find(|z| hickory_proto::rr::LowerName::new(&z.origin) == lower)
                .with_context(|| format!("{} has no zone {name}", path.display()))?;
            Some(z.dnssec.clone().with_context(|| {
                format!("zone {name} of {} has no [zones.dnssec]", path.display())
            })?)
        }
        None => None,
    };
    let dir = match (dir, &settings) {
        (Some(d), _) => d,
        (None, Some(s)) => s.key_dir.clone(),
        (None, None) => anyhow::bail!("give --config or --dir"),
    };
    Ok((name, dir, settings))
}

fn dnssec(command: DnssecCommand) -> anyhow::Result<()> {
    use geoedge::dns::dnssec::keys::{self, KeyState, Role};
    match command {
        DnssecCommand::Keygen {
            zone,
            config,
            dir,
            role,
            state,
            algorithm,
        } => {
            let (name, dir, _) = zone_keys(&zone, config.as_deref(), dir)?;
            let role = Role::parse(&role).context("--role: csk, ksk or zsk")?;
            let state = KeyState::parse(&state).context("--state: active or publish")?;
            let algorithm = geoedge::config::dns::KeyAlgorithm::parse(&algorithm)
                .context("--algorithm: ecdsap256sha256 or ed25519")?;
            let path = keys::generate(&name, &dir, role, state, algorithm)?;
            println!("{}", path.display());
            Ok(())
        }
        DnssecCommand::Ds { zone, config, dir } => {
            let (name, dir, settings) = zone_keys(&zone, config.as_deref(), dir)?;
            if let Some(s) = &settings {
                // Makes the key when the zone has none yet, as the server would.
                geoedge::dns::dnssec::load(&name, s, 3600)?;
            }
            let loaded = keys::load_dir(&name, &dir)?;
            for k in &loaded {
                println!(
                    "; {} {} tag {} ({})",
                    k.role.as_str(),
                    k.state.as_str(),
                    k.tag,
                    k.path.display()
                );
            }
            for line in keys::parent_lines(&name, &loaded)? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 1 {
            b.worker_threads(workers);
        }
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}
