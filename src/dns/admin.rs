//! The DNS server's control routes: signed health reports in, `/status` out, and the
//! operator's overrides.

use std::fmt::Write as _;
use std::sync::Arc;

use hyper::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::acme::challenge::{self, CHALLENGE_PATH, MAX_CHALLENGE_BYTES};
use crate::control::{json, text, token_matches, Admin, Body, ControlRequest};
use crate::dns::server::DnsServer;
use crate::health::report::{self, Rejection, REPORT_PATH, SIGNATURE_HEADER};
use crate::health::{Forced, ReportError, ReportFigures};
use crate::process::clock::{now_ms, unix_ms};

pub struct DnsAdmin(pub Arc<DnsServer>);

#[derive(Serialize, Deserialize)]
pub struct Status {
    pub regions: Vec<RegionStatus>,
}

#[derive(Serialize, Deserialize)]
pub struct RegionStatus {
    pub name: String,
    pub up: bool,
    /// Mean utilisation of its up nodes that report a capacity.
    #[serde(default)]
    pub utilisation: Option<f64>,
    /// Share of its clients answered with another region (shedding).
    #[serde(default)]
    pub shed_share: f64,
    /// Where the utilisation stands against the watermarks: `none` (no watermarks),
    /// `unknown` (no load reported), `below_low`, `between` or `above_high`.
    #[serde(default)]
    pub watermark_state: String,
    /// (low, high), when the region sheds.
    #[serde(default)]
    pub watermarks: Option<(f64, f64)>,
    /// The utilisation smoothed, the demand unshed the shedding aims from, and the share
    /// it aims at (the law's rest point), as of the last step.
    #[serde(default)]
    pub smoothed_utilisation: Option<f64>,
    #[serde(default)]
    pub demand: Option<f64>,
    #[serde(default)]
    pub shed_target: Option<f64>,
    pub nodes: Vec<NodeStatusView>,
}

#[derive(Serialize, Deserialize)]
pub struct NodeStatusView {
    pub name: String,
    pub up: bool,
    pub reason: String,
    pub report_age_ms: Option<u64>,
    pub healthy_origins: u32,
    pub total_origins: u32,
    pub in_flight: u64,
    pub load: f64,
    pub forced: Option<String>,
}

impl DnsAdmin {
    /// A proxy publishes or withdraws a dns-01 challenge. The 200 is the proxy's proof
    /// that this server now answers it: the proxy asks the ACME server to validate only
    /// when every DNS server it reports to has said so.
    fn challenge(&self, req: &ControlRequest) -> Response<Body> {
        let server = &self.0;
        let key_guard = server.report_key.load();
        let Some(key) = key_guard.as_deref() else {
            return text(
                StatusCode::FORBIDDEN,
                "ACME challenges need signed reports: set health.report_key_file\n",
            );
        };
        if req.body.len() > MAX_CHALLENGE_BYTES {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "challenge too large\n");
        }
        let now = unix_ms();
        let skew = server
            .max_clock_skew_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let message = match challenge::open(key, &req.body, req.header(SIGNATURE_HEADER), now, skew)
        {
            Ok(m) => m,
            Err(r) => {
                server
                    .metrics
                    .reports_rejected
                    .with_label_values(&[r.label()])
                    .inc();
                tracing::warn!(reason = %r, "ACME challenge refused");
                return text(
                    StatusCode::UNAUTHORIZED,
                    format!("challenge rejected: {r}\n"),
                );
            }
        };
        let absolute = format!("{}.", message.domain.trim_end_matches('.'));
        let in_our_zones = hickory_proto::rr::Name::from_ascii(&absolute)
            .is_ok_and(|n| server.state.load().zone_for(&n.into()).is_some());
        if !in_our_zones {
            return text(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{} is in none of this server's zones\n", message.domain),
            );
        }
        if message.remove {
            server.challenges.withdraw(&message.domain, &message.value);
            tracing::info!(node = %message.node, domain = %message.domain, "ACME challenge withdrawn");
            return text(StatusCode::OK, "withdrawn\n");
        }
        let expires = now + u64::from(message.ttl_secs.min(3600)) * 1000;
        match server
            .challenges
            .publish(&message.domain, &message.value, expires, now)
        {
            Ok(()) => {
                tracing::info!(node = %message.node, domain = %message.domain, "ACME challenge published");
                text(StatusCode::OK, "published\n")
            }
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        }
    }

    fn report(&self, req: &ControlRequest) -> Response<Body> {
        let server = &self.0;
        let key_guard = server.report_key.load();
        let Some(key) = key_guard.as_deref() else {
            return text(
                StatusCode::FORBIDDEN,
                "reports are not enabled: set health.report_key_file\n",
            );
        };
        let reject = |r: Rejection| {
            server
                .metrics
                .reports_rejected
                .with_label_values(&[r.label()])
                .inc();
            tracing::debug!(reason = %r, "report rejected");
            text(StatusCode::UNAUTHORIZED, format!("report rejected: {r}\n"))
        };
        let opened = report::open(
            key,
            &req.body,
            req.header(SIGNATURE_HEADER),
            unix_ms(),
            server
                .max_clock_skew_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let report = match opened {
            Ok(r) => r,
            Err(r) => return reject(r),
        };
        let mut state = server.state.load_full();
        let node = match state.table.node_by_name(&report.node) {
            Some(n) => n,
            None => {
                match server.add_dynamic_node(&report.region, &report.node, &report.addresses) {
                    Some(n) => {
                        state = server.state.load_full();
                        n
                    }
                    None => return reject(Rejection::UnknownNode),
                }
            }
        };
        if state.table.regions[state.table.nodes[node].region].name != report.region {
            return reject(Rejection::UnknownNode);
        }
        let figures = ReportFigures {
            healthy_origins: report.healthy_origins,
            total_origins: report.total_origins,
            in_flight: report.in_flight,
            load: report.load,
            utilisation: report.capacity.as_ref().and_then(|c| c.utilisation()),
        };
        match state
            .health
            .record_report(node, report.seq, report.can_serve, figures, now_ms())
        {
            Err(ReportError::Replayed) => reject(Rejection::Replayed),
            Ok(transition) => {
                let down = state
                    .services
                    .iter()
                    .enumerate()
                    .filter(|(_, name)| report.services.get(*name) != Some(&true))
                    .fold(0u64, |mask, (i, _)| mask | 1 << i);
                // A service the report does not name is down: a node without that stream
                // (or older than streams) cannot serve a name that needs it.
                state.health.record_services(node, down);
                server.metrics.reports_accepted.inc();
                server.apply(transition.into_iter().collect());
                Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(Body::default())
                    .unwrap_or_default()
            }
        }
    }

    pub fn status(&self) -> Status {
        let server = &self.0;
        let state = server.state.load();
        let now = now_ms();
        let regions = state
            .table
            .regions
            .iter()
            .enumerate()
            .map(|(rid, r)| {
                let nodes: Vec<NodeStatusView> = r
                    .nodes
                    .clone()
                    .filter_map(|id| {
                        let s = state.health.status(id, now)?;
                        Some(NodeStatusView {
                            name: state.table.nodes[id].name.clone(),
                            up: s.up,
                            reason: s.reason.as_str().to_string(),
                            report_age_ms: s.report_age_ms,
                            healthy_origins: s.figures.healthy_origins,
                            total_origins: s.figures.total_origins,
                            in_flight: s.figures.in_flight,
                            load: s.figures.load,
                            forced: s.forced.map(|(f, until)| {
                                let what = if f == Forced::Up { "up" } else { "down" };
                                match until {
                                    Some(u) => format!(
                                        "{what} for {} s more",
                                        u.saturating_sub(now) / 1000
                                    ),
                                    None => what.to_string(),
                                }
                            }),
                        })
                    })
                    .collect();
                let view = state.shed.view(rid);
                RegionStatus {
                    name: r.name.clone(),
                    up: state.table.region_is_up(rid, |n| state.health.is_up(n)),
                    utilisation: state.shed.utilisation(rid),
                    shed_share: state.shed.share(rid),
                    watermark_state: state.shed.watermark_state(rid).to_string(),
                    watermarks: state.shed.watermarks(rid).map(|m| (m.low, m.high)),
                    smoothed_utilisation: view.map(|v| v.smoothed),
                    demand: view.and_then(|v| v.demand),
                    shed_target: view.map(|v| v.target),
                    nodes,
                }
            })
            .collect();
        Status { regions }
    }

    fn force(&self, req: &ControlRequest) -> Response<Body> {
        let server = &self.0;
        let token_guard = server.admin_token.load();
        let Some(token) = token_guard.as_deref() else {
            return text(
                StatusCode::FORBIDDEN,
                "admin endpoints are disabled: set health.admin_token_file\n",
            );
        };
        if !token_matches(req.header("authorization"), token) {
            return text(StatusCode::UNAUTHORIZED, "bad or missing bearer token\n");
        }
        let forced = match req.param("state") {
            Some("up") => Some(Forced::Up),
            Some("down") => Some(Forced::Down),
            Some("clear") => None,
            _ => return text(StatusCode::BAD_REQUEST, "state must be up, down or clear\n"),
        };
        let now = now_ms();
        let until = match req.param("for") {
            None => None,
            Some(d) => match crate::config::parse_duration(d) {
                Ok(d) => Some(now + d.as_millis() as u64),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
        };
        let state = server.state.load();
        let nodes: Vec<usize> = match (req.param("node"), req.param("region")) {
            (Some(n), None) => match state.table.node_by_name(n) {
                Some(id) => vec![id],
                None => return text(StatusCode::NOT_FOUND, format!("no node named {n}\n")),
            },
            (None, Some(r)) => match state.table.region_by_name(r) {
                Some(rid) => state.table.regions[rid].nodes.clone().collect(),
                None => return text(StatusCode::NOT_FOUND, format!("no region named {r}\n")),
            },
            _ => return text(StatusCode::BAD_REQUEST, "give node=NAME or region=NAME\n"),
        };
        let mut changes = Vec::new();
        for id in &nodes {
            changes.extend(state.health.force(*id, forced, until, now));
        }
        tracing::info!(nodes = ?nodes.iter().map(|n| &state.table.nodes[*n].name).collect::<Vec<_>>(), state = req.param("state").unwrap_or(""), "operator override");
        server.apply(changes);
        text(StatusCode::OK, "ok\n")
    }
}

/// The status as a table for humans (also what `geoedge status` prints).
pub fn status_table(status: &Status) -> String {
    let mut out = String::new();
    out.push_str(
        "REGION   NODE         STATE REASON                REPORT  ORIGINS  INFLIGHT  FORCED\n",
    );
    for r in &status.regions {
        for n in &r.nodes {
            let age = n
                .report_age_ms
                .map(|a| format!("{:.2}s", a as f64 / 1000.0))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<8} {:<12} {:<5} {:<18} {:>9} {:>8} {:>9}  {}",
                r.name,
                n.name,
                if n.up { "up" } else { "DOWN" },
                n.reason,
                age,
                format!("{}/{}", n.healthy_origins, n.total_origins),
                n.in_flight,
                n.forced.as_deref().unwrap_or("-")
            );
        }
        if !r.up {
            let _ = writeln!(
                out,
                "{:<8} (region down: its clients go to the next nearest region)",
                r.name
            );
        }
    }
    out
}

impl Admin for DnsAdmin {
    fn metrics(&self) -> String {
        self.0.refresh_gauges();
        crate::metrics::render(&self.0.registry)
    }

    fn route(&self, req: &ControlRequest) -> Option<Response<Body>> {
        Some(match (&req.method, req.path.as_str()) {
            (&Method::POST, REPORT_PATH) => self.report(req),
            (&Method::POST, CHALLENGE_PATH) => self.challenge(req),
            (&Method::GET, "/status") => {
                let status = self.status();
                if req.param("format") == Some("text") {
                    text(StatusCode::OK, status_table(&status))
                } else {
                    json(
                        StatusCode::OK,
                        serde_json::to_vec(&status).unwrap_or_default(),
                    )
                }
            }
            (&Method::POST, "/admin/force") => self.force(req),
            (&Method::POST, "/admin/reload") => {
                let token_guard = self.0.admin_token.load();
                let Some(token) = token_guard.as_deref() else {
                    return Some(text(
                        StatusCode::FORBIDDEN,
                        "admin endpoints are disabled: set health.admin_token_file\n",
                    ));
                };
                if !token_matches(req.header("authorization"), token) {
                    return Some(text(
                        StatusCode::UNAUTHORIZED,
                        "bad or missing bearer token\n",
                    ));
                }
                match self.0.reload_and_report() {
                    Ok(()) => text(StatusCode::OK, "reloaded\n"),
                    Err(e) => text(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("reload refused, previous configuration kept: {e}\n"),
                    ),
                }
            }
            (_, REPORT_PATH | CHALLENGE_PATH | "/status" | "/admin/force" | "/admin/reload") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "wrong method\n")
            }
            _ => return None,
        })
    }
}
