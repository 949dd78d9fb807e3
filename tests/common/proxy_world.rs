//! A `geoedge proxy` in front of `geoedge origin` processes, configured per test: the
//! world of `tests/proxy.rs` and `tests/proxy_tls.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use super::http as h;
use super::Proc;

pub struct Origins {
    pub procs: Vec<Proc>,
    pub addrs: Vec<SocketAddr>,
}

pub fn start_origins(dir: &Path, names: &[&str]) -> Origins {
    let mut procs = Vec::new();
    let mut addrs = Vec::new();
    for name in names {
        let p = Proc::start(
            &["origin", "--listen", "127.0.0.1:0", "--name", name],
            dir,
            1,
        );
        addrs.push(p.addr(&format!("HTTP (origin {name})")));
        procs.push(p);
    }
    Origins { procs, addrs }
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub origins: Origins,
    pub proxy: Proc,
}

pub struct Opts {
    pub names: Vec<&'static str>,
    pub upstream: String,
    pub extra: String,
    pub https: bool,
    /// The HTTP listeners' addresses.
    pub http: Vec<&'static str>,
    /// More keys of the `[listen]` table.
    pub listen: String,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            names: vec!["o1", "o2"],
            upstream: String::new(),
            extra: String::new(),
            https: false,
            http: vec!["127.0.0.1:0"],
            listen: String::new(),
        }
    }
}

pub fn origin_block(names: &[&str], addrs: &[SocketAddr], weights: &[u32]) -> String {
    names
        .iter()
        .zip(addrs)
        .enumerate()
        .map(|(i, (n, a))| {
            format!(
                "[[upstreams.web.origins]]\nname = \"{n}\"\naddr = \"{a}\"\nweight = {}\n",
                weights.get(i).copied().unwrap_or(1)
            )
        })
        .collect()
}

pub fn world(opts: Opts) -> World {
    world_with_weights(opts, &[])
}

pub fn world_with_weights(opts: Opts, weights: &[u32]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let origins = start_origins(dir.path(), &opts.names);
    let proxy = proxy_for(dir.path(), &opts, &origins.addrs, weights);
    World {
        dir,
        origins,
        proxy,
    }
}

/// A proxy in `dir` whose upstream `web` is the origins `opts.names` at `addrs`, serving
/// `www.example.test` and `*.example.test`.
pub fn proxy_for(dir: &Path, opts: &Opts, addrs: &[SocketAddr], weights: &[u32]) -> Proc {
    let http: Vec<String> = opts.http.iter().map(|a| format!("\"{a}\"")).collect();
    let mut listen = format!("http = [{}]", http.join(", "));
    if opts.https {
        listen.push_str("\nhttps = [\"127.0.0.1:0\"]");
    }
    let config = format!(
        r#"[node]
name = "t-1"
region = "t"
workers = 1

[listen]
{listen}
admin = "127.0.0.1:0"
{listen_extra}

{extra}

[[routes]]
hosts = ["www.example.test", "*.example.test"]
upstream = "web"

[upstreams.web]
connect_timeout = "500ms"
response_timeout = "5s"
{upstream}
{origins}
"#,
        extra = opts.extra,
        listen_extra = opts.listen,
        upstream = opts.upstream,
        origins = origin_block(&opts.names, addrs, weights),
    );
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    // A line for each listener, and the admin one.
    let expect = opts.http.len() + usize::from(opts.https) + 1;
    Proc::start(&["proxy", "--config", "proxy.toml"], dir, expect)
}

impl World {
    pub fn http(&self) -> SocketAddr {
        self.proxy.addr("HTTP")
    }
    pub fn admin(&self) -> SocketAddr {
        self.proxy.addr("HTTP (admin)")
    }
    /// The value of one series on the admin listener's `/metrics`, named as the text
    /// format writes it (`name` or `name{label="value"}`).
    pub fn metric(&self, series: &str) -> u64 {
        super::metric(self.admin(), series).unwrap_or_else(|| panic!("no {series} on /metrics"))
            as u64
    }
    pub fn kill_origin(&mut self, i: usize) {
        let _ = self.origins.procs[i].child.kill();
        let _ = self.origins.procs[i].child.wait();
    }
}

pub fn tally(replies: &[h::Reply]) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for r in replies {
        *t.entry(r.origin()).or_insert(0) += 1;
    }
    t
}

/// Sends GETs for `www.example.test` to `http` until `origin` answers one; panics after 5 s.
pub async fn until_served_by(http: SocketAddr, origin: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = h::get(http, "www.example.test", "/").await.unwrap();
        if r.origin() == origin {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{origin} never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn post(addr: SocketAddr, path: &str) {
    let mut s = h::connect(addr).await;
    h::send(&mut s, h::request("POST", "origin", path, &[], b""))
        .await
        .expect("origin control");
}
