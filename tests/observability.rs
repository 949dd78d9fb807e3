//! The dashboards and alerts checked against the real thing: the demo runs, a real
//! Prometheus scrapes it with grafana/prometheus.yml, traffic flows, and every query of
//! every panel must parse and return data. A renamed metric breaks this test instead of a
//! dashboard. promtool checks every /metrics page and the alert rules.
//!
//! Needs Debian's `prometheus` package (prometheus and promtool); `.ci/run` installs it.
//! Without it, outside CI, the test still checks what it can without Prometheus: the
//! dashboards parse and every metric they name is exported by the running demo.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::dns::{udp, Ask};
use common::http::{self as h, runtime};
use common::{have, http_get, Proc};
use hickory_proto::rr::RecordType;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every PromQL expression in a dashboard: panel targets and query variables.
fn dashboard_queries(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        json["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "{}: current schema",
        path.display()
    );
    let vars = json["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        vars.iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
        "{}: a Prometheus data source variable",
        path.display()
    );
    let mut out = Vec::new();
    for p in json["panels"].as_array().cloned().unwrap_or_default() {
        for t in p["targets"].as_array().cloned().unwrap_or_default() {
            if let Some(e) = t["expr"].as_str() {
                out.push((
                    p["title"].as_str().unwrap_or("?").to_string(),
                    e.to_string(),
                ));
            }
        }
    }
    for v in vars {
        if let Some(q) = v["definition"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    assert!(!out.is_empty(), "{}: no queries", path.display());
    out
}

fn dashboards() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("grafana/dashboards"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "Global, Region proxy and DNS server dashboards"
    );
    files
}

/// Grafana's variables made concrete, as Grafana would before sending the query.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$__range", "1m")
        .replace("$__interval", "5s")
        .replace("$region", ".*")
        .replace("$node", ".*")
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("geoedge_") || word.starts_with("process_") {
            names.insert(word.trim_end_matches("_bucket").to_string());
        }
    }
    names
}

fn drive_traffic(rt: &tokio::runtime::Runtime) {
    let dns: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    for subnet in ["192.0.2.0", "198.51.100.0", "203.0.113.0", "198.18.2.0"] {
        for _ in 0..5 {
            udp(
                dns,
                &Ask::new("www.example.test.", RecordType::A).ecs(subnet, 24),
            );
        }
    }
    udp(dns, &Ask::new("nope.example.test.", RecordType::A));
    udp(dns, &Ask::new("www.example.test.", RecordType::AAAA));
    rt.block_on(async {
        for ip in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
            let http: SocketAddr = format!("{ip}:8080").parse().unwrap();
            for i in 0..10 {
                let _ = h::get(http, "www.example.test", "/cached?cache=max-age%3D60").await;
                let _ = h::get(http, "www.example.test", &format!("/dynamic/{i}")).await;
            }
            let https: SocketAddr = format!("{ip}:8443").parse().unwrap();
            if let Ok(mut c) = h::tls_connect(https, "www.example.test", &[b"h2"]).await {
                let _ = c.get("www.example.test", "/tls").await;
            }
        }
    });
}

#[test]
fn every_dashboard_query_and_alert_works_against_the_demo() {
    let in_ci = std::env::var_os("CI").is_some();
    let full = have("prometheus") && have("promtool");
    assert!(
        full || !in_ci,
        "CI must install Debian's prometheus package (prometheus, promtool)"
    );

    let dir = tempfile::tempdir().unwrap();
    let demo = Proc::start(
        &[
            "demo",
            "--config-dir",
            root().join("config").to_str().unwrap(),
        ],
        dir.path(),
        12,
    );
    let rt = runtime();
    drive_traffic(&rt);

    let endpoints = [
        "127.0.0.1:9153",
        "127.0.0.11:9100",
        "127.0.0.12:9100",
        "127.0.0.13:9100",
    ];
    let mut exported = String::new();
    for ep in endpoints {
        if std::net::TcpStream::connect(ep).is_err() {
            panic!("{ep} refused; demo stderr:\n{}", demo.stderr());
        }
        let (status, body) = http_get(ep.parse().unwrap(), "/metrics");
        assert_eq!(status, 200, "{ep}");
        exported.push_str(&body);
        if full {
            let out = common::run_with_stdin("promtool", &["check", "metrics"], body.as_bytes());
            assert!(
                out.status.success(),
                "promtool check metrics {ep}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Without Prometheus: every metric a dashboard names must be exported.
    let queries: Vec<(PathBuf, String, String)> = dashboards()
        .into_iter()
        .flat_map(|d| {
            dashboard_queries(&d)
                .into_iter()
                .map(move |(t, e)| (d.clone(), t, e))
        })
        .collect();
    for (dash, title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&format!("\n{name}"))
                    || exported.contains(&format!("{name}_bucket")),
                "{}: panel `{title}` uses {name}, which no endpoint exports",
                dash.display()
            );
        }
    }
    if !full {
        eprintln!("prometheus/promtool not installed: checked dashboard metric names only");
        return;
    }

    let out = Command::new("promtool")
        .args([
            "check",
            "rules",
            root().join("grafana/alerts.yml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A real Prometheus with the shipped scrape config, scraping every second.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = std::fs::read_to_string(root().join("grafana/prometheus.yml"))
        .unwrap()
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace(
            "- alerts.yml",
            &format!("- {}", root().join("grafana/alerts.yml").display()),
        );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prom = KillOnDrop(prom);
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = |q: &str| -> serde_json::Value {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        // Prometheus may still be starting: a refused connection is "no answer yet".
        if std::net::TcpStream::connect(api).is_err() {
            return serde_json::Value::Null;
        }
        let (_, body) = http_get(api, &format!("/api/v1/query?query={encoded}"));
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    };
    // Wait until all four targets are up and have a few scrapes behind them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query("sum(up)");
        let n = up["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("0")
            .parse::<f64>()
            .unwrap_or(0.0);
        if n >= 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped all four targets: {up}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Traffic during scraping, so rates have something to show.
    for _ in 0..6 {
        drive_traffic(&rt);
        std::thread::sleep(Duration::from_millis(700));
    }
    let mut failures = Vec::new();
    for (dash, title, expr) in &queries {
        let q = if expr.starts_with("label_values(") {
            // label_values(metric{...}, label) is Grafana's; ask for the metric itself.
            expr.trim_start_matches("label_values(")
                .rsplit_once(',')
                .map(|(m, _)| m.to_string())
                .unwrap_or_default()
        } else {
            concrete(expr)
        };
        let q = concrete(&q);
        let v = query(&q);
        let ok = v["status"] == "success"
            && v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        if !ok {
            failures.push(format!(
                "{} / {title}: {q}\n  -> {v}",
                dash.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "panel queries without data:\n{}",
        failures.join("\n")
    );
    // The rules loaded and evaluate.
    let (_, rules) = http_get(api, "/api/v1/rules");
    assert!(
        rules.contains("GeoedgeRegionDown") && !rules.contains("\"health\":\"err\""),
        "{rules}"
    );
}
