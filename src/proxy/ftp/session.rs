//! One FTP control session through the gateway. The client talks to the gateway, the
//! gateway to one origin chosen by the upstream's balancer; commands are relayed one by
//! one, with the security commands (`AUTH TLS`, `PBSZ`, `PROT`) answered here for the
//! client's side and set up by the gateway itself on the origin's side, passive replies
//! rewritten to the gateway's own ports (see `data`), active mode refused, and every reply
//! scrubbed of the origin's address. The client never sees the origin's banner.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::config::proxy::{FtpConfig, FtpTls, OriginProtocol, StreamConfig};
use crate::metrics::StreamRefusal;
use crate::process::clock::now_ms;
use crate::proxy::ftp::command::{self, Kind};
use crate::proxy::ftp::control::{Line, LineConn};
use crate::proxy::ftp::data::{self, DataError, DataPlan, PortPool};
use crate::proxy::ftp::limits::{CommandRate, LoginLedger};
use crate::proxy::ftp::origin::{open_origin, read_reply};
use crate::proxy::ftp::reply::{self, Assembler, Reply};
use crate::proxy::listen::tls::TlsListener;
use crate::proxy::maybe_tls::ClientStream;
use crate::proxy::state::ProxyState;
use crate::proxy::stream::pipe::Piped;
use crate::proxy::stream::session_log::{self, Value};
use crate::proxy::upstream::connect::OriginStream;
use crate::proxy::upstream::group::Upstream;
use crate::proxy::Shared;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What outlives one session: the passive port pool and the failed-login ledger of an
/// FTP stream.
#[derive(Default)]
pub struct Gateway {
    pub ports: PortPool,
    pub logins: LoginLedger,
}

/// How a session ended, for the session's log line.
#[derive(Debug)]
enum End {
    Quit,
    ClientClosed,
    Refused(StreamRefusal),
    Origin(String),
    Protocol(&'static str),
}

impl End {
    fn result(&self) -> String {
        match self {
            End::Quit => "quit".into(),
            End::ClientClosed => "closed".into(),
            End::Refused(r) => r.label().into(),
            End::Origin(_) => "origin_error".into(),
            End::Protocol(why) => (*why).into(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn serve(
    tcp: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    stream: &StreamConfig,
    state: &ProxyState,
    shared: &Arc<Shared>,
    tls: Option<&TlsListener>,
    gateway: &Gateway,
) {
    let Some(cfg) = stream.ftp.as_ref() else {
        return;
    };
    let started = Instant::now();
    let service = stream.name.as_str();
    let metrics = &shared.stream_metrics;
    let client_io = if cfg.tls == FtpTls::Implicit {
        let Some(tls) = tls else {
            return;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.stream_acceptor().accept(tcp)).await {
            Ok(Ok(t)) => ClientStream::Tls(Box::new(t)),
            _ => {
                metrics.refused(service, StreamRefusal::Tls);
                return;
            }
        }
    } else {
        ClientStream::Plain(tcp)
    };
    let mut client_conn = LineConn::new(client_io, cfg.max_line);
    if gateway.logins.failures(client.ip(), now_ms()) >= cfg.login_attempts {
        metrics.refused(service, StreamRefusal::LoginAttempts);
        let _ = client_conn
            .send(
                &Reply::new(
                    421,
                    "Too many failed logins from your address; try again later.",
                )
                .to_wire(),
            )
            .await;
        return;
    }
    let upstream_name = stream.upstream.clone().unwrap_or_default();
    let header = stream
        .send_proxy
        .map(|v| crate::proxy::upstream::send_proxy::header(v, client, local));
    let opened = match open_origin(state, &upstream_name, header.as_deref()).await {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(%client, service, why, "FTP session without an origin");
            metrics.refused(service, StreamRefusal::NoOrigin);
            let _ = client_conn
                .send(
                    &Reply::new(421, "Service not available, closing control connection.")
                        .to_wire(),
                )
                .await;
            session_line(
                shared,
                service,
                client,
                None,
                None,
                0,
                (0, 0),
                started,
                "no_origin",
            );
            return;
        }
    };
    let public_ip = cfg.passive_address.unwrap_or(local.ip());
    let mut session = Session {
        cfg,
        stream,
        shared,
        tls,
        gateway,
        service,
        client,
        local,
        public_ip,
        client_conn: Some(client_conn),
        origin_conn: opened.conn,
        origin_addr: opened.addr,
        origin_name: opened.name,
        upstream: opened.upstream,
        origin_index: opened.index,
        replies: Assembler::default(),
        client_tls: cfg.tls == FtpTls::Implicit,
        protect_data: cfg.tls == FtpTls::Implicit,
        user: None,
        logged_in: false,
        passive: None,
        rate: CommandRate::new(cfg.commands_per_second, now_ms()),
        transfers: 0,
        moved: (0, 0),
    };
    let _in_flight = opened.in_flight;
    let end = session.run().await;
    if let Some(task) = session.passive.take() {
        task.abort();
    }
    if let End::Origin(why) = &end {
        tracing::warn!(%client, service, origin = %session.origin_name, why, "FTP session ended by its origin");
    }
    session_line(
        shared,
        service,
        client,
        session.user.as_deref(),
        Some(&session.origin_name),
        session.transfers,
        session.moved,
        started,
        &end.result(),
    );
}

struct Session<'a> {
    cfg: &'a FtpConfig,
    stream: &'a StreamConfig,
    shared: &'a Arc<Shared>,
    tls: Option<&'a TlsListener>,
    gateway: &'a Gateway,
    service: &'a str,
    client: SocketAddr,
    local: SocketAddr,
    public_ip: IpAddr,
    /// Out only while its TLS handshake runs.
    client_conn: Option<LineConn<ClientStream>>,
    origin_conn: LineConn<OriginStream>,
    origin_addr: SocketAddr,
    origin_name: String,
    upstream: Arc<Upstream>,
    origin_index: usize,
    replies: Assembler,
    client_tls: bool,
    protect_data: bool,
    user: Option<String>,
    logged_in: bool,
    passive: Option<JoinHandle<Result<Piped, DataError>>>,
    rate: CommandRate,
    transfers: u32,
    /// Data bytes (client to origin, origin to client) over all transfers.
    moved: (u64, u64),
}

/// Did a handler want the session to go on?
type Step = Result<(), End>;

impl Session<'_> {
    async fn run(&mut self) -> End {
        if self.say(220, "Service ready.").await.is_err() {
            return End::ClientClosed;
        }
        loop {
            let Some(conn) = self.client_conn.as_mut() else {
                return End::ClientClosed;
            };
            let line = match tokio::time::timeout(self.stream.idle_timeout, conn.read_line()).await
            {
                Err(_) => {
                    self.refuse(StreamRefusal::Idle);
                    let _ = self
                        .say(421, "Timeout: closing the control connection.")
                        .await;
                    return End::Refused(StreamRefusal::Idle);
                }
                Ok(Err(_)) | Ok(Ok(Line::Closed)) => return End::ClientClosed,
                Ok(Ok(Line::TooLong)) => {
                    self.refuse(StreamRefusal::LineTooLong);
                    let _ = self.say(500, "Command line too long; closing.").await;
                    return End::Refused(StreamRefusal::LineTooLong);
                }
                Ok(Ok(Line::Text(line))) => line,
            };
            if !self.rate.allow(now_ms()) {
                self.refuse(StreamRefusal::CommandRate);
                let _ = self
                    .say(421, "Too many commands; closing the control connection.")
                    .await;
                return End::Refused(StreamRefusal::CommandRate);
            }
            let cmd = match command::parse(&line) {
                Ok(c) => c,
                Err(_) => {
                    if self
                        .say(500, "Syntax error, command unrecognized.")
                        .await
                        .is_err()
                    {
                        return End::ClientClosed;
                    }
                    continue;
                }
            };
            let step = match command::kind(&cmd.verb) {
                Kind::Auth => self.auth(&cmd).await,
                Kind::Pbsz => self.pbsz().await,
                Kind::Prot => self.prot(&cmd).await,
                Kind::Ccc => {
                    self.say(534, "The control connection stays encrypted.")
                        .await
                }
                Kind::User => self.user(&cmd, &line).await,
                Kind::Pass => self.pass(&line).await,
                Kind::Pasv | Kind::Epsv => self.passive(&cmd).await,
                Kind::Active => {
                    self.refuse(StreamRefusal::ActiveMode);
                    self.say(502, "Active mode (PORT/EPRT) is off on this gateway; use passive mode (PASV or EPSV).").await
                }
                Kind::Transfer => self.transfer(&cmd, &line).await,
                Kind::Feat => self.feat().await,
                Kind::Rein => {
                    self.say(502, "REIN is not supported here; reconnect instead.")
                        .await
                }
                Kind::Quit => {
                    let _ = self.relay(&line).await;
                    return End::Quit;
                }
                Kind::Other => self.relay(&line).await.map(drop),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn refuse(&self, why: StreamRefusal) {
        self.shared.stream_metrics.refused(self.service, why);
    }

    async fn say(&mut self, code: u16, text: &str) -> Step {
        self.send(&Reply::new(code, text)).await
    }

    async fn send(&mut self, reply: &Reply) -> Step {
        let Some(conn) = self.client_conn.as_mut() else {
            return Err(End::ClientClosed);
        };
        conn.send(&reply.to_wire())
            .await
            .map_err(|_| End::ClientClosed)
    }

    /// Sends `line` to the origin and relays its replies, preliminary ones included, up
    /// to the final one, which is returned.
    async fn relay(&mut self, line: &[u8]) -> Result<Reply, End> {
        self.send_origin(line).await?;
        loop {
            let r = self.origin_reply().await?;
            self.send(&self.scrubbed(&r)).await?;
            if !r.is_preliminary() {
                return Ok(r);
            }
        }
    }

    async fn send_origin(&mut self, line: &[u8]) -> Step {
        let mut wire = line.to_vec();
        wire.extend_from_slice(b"\r\n");
        self.origin_conn
            .send(&wire)
            .await
            .map_err(|e| End::Origin(format!("writing to the origin: {e}")))
    }

    async fn origin_reply(&mut self) -> Result<Reply, End> {
        read_reply(
            &mut self.origin_conn,
            &mut self.replies,
            self.upstream.response_timeout,
        )
        .await
        .map_err(End::Origin)
    }

    fn scrubbed(&self, r: &Reply) -> Reply {
        reply::scrub(r, self.origin_addr.ip(), self.public_ip)
    }

    async fn auth(&mut self, cmd: &command::Command) -> Step {
        let mechanism = command::arg_text(cmd).trim().to_ascii_uppercase();
        if self.cfg.tls == FtpTls::None {
            return self.say(502, "TLS is not offered on this listener.").await;
        }
        if self.client_tls {
            return self.say(503, "Already using TLS.").await;
        }
        if self.user.is_some() {
            return self.say(503, "AUTH must come before USER.").await;
        }
        if !matches!(mechanism.as_str(), "TLS" | "TLS-C" | "SSL" | "TLS-P") {
            return self.say(504, "Only AUTH TLS is supported.").await;
        }
        let Some(tls) = self.tls else {
            return self.say(431, "TLS is not available.").await;
        };
        self.say(234, "Proceed with negotiation.").await?;
        let Some(conn) = self.client_conn.take() else {
            return Err(End::ClientClosed);
        };
        let max = conn.max_line();
        let Ok(ClientStream::Plain(tcp)) = conn.into_stream() else {
            // Commands sent behind AUTH TLS, before the handshake: an injection attempt.
            return Err(End::Protocol("pipelined_after_auth"));
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.stream_acceptor().accept(tcp)).await {
            Ok(Ok(t)) => {
                self.client_conn = Some(LineConn::new(ClientStream::Tls(Box::new(t)), max));
                self.client_tls = true;
                Ok(())
            }
            _ => {
                self.refuse(StreamRefusal::Tls);
                Err(End::Refused(StreamRefusal::Tls))
            }
        }
    }

    async fn pbsz(&mut self) -> Step {
        if !self.client_tls {
            return self.say(503, "PBSZ needs AUTH TLS first.").await;
        }
        self.say(200, "PBSZ=0").await
    }

    async fn prot(&mut self, cmd: &command::Command) -> Step {
        if !self.client_tls {
            return self.say(503, "PROT needs AUTH TLS first.").await;
        }
        match command::arg_text(cmd).trim().to_ascii_uppercase().as_str() {
            "P" => {
                self.protect_data = true;
                self.say(200, "Protection level set to Private.").await
            }
            "C" => {
                self.protect_data = false;
                self.say(200, "Protection level set to Clear.").await
            }
            "S" | "E" => self.say(536, "Only C and P are supported.").await,
            _ => self.say(504, "Unknown protection level.").await,
        }
    }

    async fn user(&mut self, cmd: &command::Command, line: &[u8]) -> Step {
        if self.cfg.require_tls && !self.client_tls {
            self.refuse(StreamRefusal::TlsRequired);
            return self.say(530, "TLS is required: send AUTH TLS first.").await;
        }
        self.user = Some(command::arg_text(cmd));
        self.logged_in = false;
        let r = self.relay(line).await?;
        self.login_result(r.code).await
    }

    async fn pass(&mut self, line: &[u8]) -> Step {
        let r = self.relay(line).await?;
        self.login_result(r.code).await
    }

    /// 230 logs in; 530 (to USER, where a server refuses the name, or to PASS) is a failed
    /// attempt, counted for the client's address across its sessions.
    async fn login_result(&mut self, code: u16) -> Step {
        if code == 230 {
            self.logged_in_now();
            return Ok(());
        }
        if code != 530 {
            return Ok(());
        }
        let logins = &self.shared.stream_metrics.logins;
        logins.with_label_values(&["failed", self.service]).inc();
        let failures = self.gateway.logins.fail(self.client.ip(), now_ms());
        if failures >= self.cfg.login_attempts {
            self.refuse(StreamRefusal::LoginAttempts);
            let _ = self.say(421, "Too many failed logins; closing.").await;
            return Err(End::Refused(StreamRefusal::LoginAttempts));
        }
        Ok(())
    }

    fn logged_in_now(&mut self) {
        self.logged_in = true;
        self.gateway.logins.succeed(self.client.ip());
        self.shared
            .stream_metrics
            .logins
            .with_label_values(&["ok", self.service])
            .inc();
    }

    async fn feat(&mut self) -> Step {
        self.send_origin(b"FEAT").await?;
        let r = self.origin_reply().await?;
        let ours = reply::feat(&r, self.cfg.tls != FtpTls::None);
        self.send(&ours).await
    }

    /// PASV or EPSV: a passive port of the origin's, and one of ours in front of it.
    async fn passive(&mut self, cmd: &command::Command) -> Step {
        if let Some(old) = self.passive.take() {
            old.abort();
        }
        let extended = cmd.verb == "EPSV";
        if extended && command::arg_text(cmd).trim().eq_ignore_ascii_case("ALL") {
            return self.say(200, "EPSV ALL ok.").await;
        }
        let public_v4 = match self.public_ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        if !extended && public_v4.is_none() {
            return self
                .say(425, "PASV names IPv4 addresses only; use EPSV.")
                .await;
        }
        // Ask the origin the same way first (an origin may know only one), then the other.
        let order: [&[u8]; 2] = if extended {
            [b"EPSV", b"PASV"]
        } else {
            [b"PASV", b"EPSV"]
        };
        let mut origin_port = None;
        let mut last = None;
        for ask in order {
            self.send_origin(ask).await?;
            let r = self.origin_reply().await?;
            origin_port = reply::epsv_port(&r).or_else(|| reply::pasv_port(&r));
            if origin_port.is_some() || r.code < 500 {
                last = Some(r);
                break;
            }
            last = Some(r);
        }
        let Some(origin_port) = origin_port else {
            let r = last.unwrap_or_else(|| Reply::new(425, "Cannot open a passive connection."));
            return self.send(&self.scrubbed(&r)).await;
        };
        let Some(listener) = self
            .gateway
            .ports
            .listen(self.local.ip(), &self.cfg.passive_ports)
            .await
        else {
            self.refuse(StreamRefusal::NoPassivePort);
            return self.say(425, "No passive port free; try again.").await;
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let origin_tls = match (
            self.upstream.protocol,
            self.upstream.tls_to(self.origin_index),
        ) {
            (OriginProtocol::Ftps, Some(to)) => Some((to.tls.connector.clone(), to.name.clone())),
            _ => None,
        };
        let client_tls = match (self.protect_data, self.tls) {
            (true, Some(tls)) => Some(tls.stream_acceptor()),
            _ => None,
        };
        let plan = DataPlan {
            listener,
            client_ip: self.client.ip(),
            origin: SocketAddr::new(self.origin_addr.ip(), origin_port),
            origin_tls,
            client_tls,
            accept_timeout: self.cfg.data_timeout,
            connect_timeout: self.upstream.connect_timeout,
            idle_timeout: self.stream.idle_timeout,
            service: self.service.to_string(),
            meter: self.upstream.origins[self.origin_index].state.clone(),
        };
        self.passive = Some(tokio::spawn(data::run(plan, self.shared.clone())));
        match (extended, public_v4) {
            (false, Some(v4)) => self.send(&reply::pasv_reply(v4, port)).await,
            _ => self.send(&reply::epsv_reply(port)).await,
        }
    }

    /// A command that moves data: relayed, with the passive channel running beside it;
    /// the final reply reaches the client only once the data has.
    async fn transfer(&mut self, cmd: &command::Command, line: &[u8]) -> Step {
        let Some(mut task) = self.passive.take() else {
            return self.say(425, "Use PASV or EPSV first.").await;
        };
        let started = Instant::now();
        self.send_origin(line).await?;
        let mut data_result: Option<Result<Piped, String>> = None;
        let final_reply = loop {
            let next = if data_result.is_none() {
                tokio::select! {
                    r = read_reply(&mut self.origin_conn, &mut self.replies, transfer_wait(self.cfg)) => r,
                    joined = &mut task => {
                        data_result = Some(data::joined(joined));
                        continue;
                    }
                }
            } else {
                read_reply(
                    &mut self.origin_conn,
                    &mut self.replies,
                    self.upstream.response_timeout,
                )
                .await
            };
            let r = next.map_err(End::Origin)?;
            if r.is_preliminary() {
                self.send(&self.scrubbed(&r)).await?;
                continue;
            }
            break r;
        };
        let data = match data_result {
            Some(d) => d,
            None if final_reply.code < 300 => data::joined(task.await),
            None => {
                task.abort();
                Err("the origin refused the transfer".into())
            }
        };
        let client_reply = match (&data, final_reply.code < 300) {
            (Err(why), true) => Reply::new(426, &format!("Transfer failed: {why}.")),
            _ => self.scrubbed(&final_reply),
        };
        let (up, down, ok) = match &data {
            Ok(p) => (
                p.client_to_origin,
                p.origin_to_client,
                final_reply.code < 300 && p.end.result() == "ok",
            ),
            Err(_) => (0, 0, false),
        };
        self.moved.0 += up;
        self.moved.1 += down;
        self.transfers += 1;
        let metrics = &self.shared.stream_metrics;
        metrics.moved(self.service, up, down);
        metrics
            .transfers
            .with_label_values(&[if ok { "ok" } else { "failed" }, self.service])
            .inc();
        self.transfer_line(
            cmd,
            up,
            down,
            started,
            client_reply.code,
            data.as_ref().err(),
        );
        self.send(&client_reply).await
    }

    fn transfer_line(
        &self,
        cmd: &command::Command,
        up: u64,
        down: u64,
        started: Instant,
        code: u16,
        error: Option<&String>,
    ) {
        let Some((log, format)) = &self.shared.access_log else {
            return;
        };
        let client = self.client.to_string();
        let file = command::arg_text(cmd);
        let code = code.to_string();
        let mut fields = vec![
            ("service", Value::Text(self.service)),
            ("client", Value::Text(&client)),
            ("user", Value::Text(self.user.as_deref().unwrap_or("-"))),
            ("command", Value::Text(&cmd.verb)),
            ("file", Value::Text(&file)),
            ("bytes_in", Value::Number(up)),
            ("bytes_out", Value::Number(down)),
            (
                "duration_ms",
                Value::Millis(started.elapsed().as_secs_f64() * 1000.0),
            ),
            ("reply", Value::Text(&code)),
        ];
        if let Some(e) = error {
            fields.push(("error", Value::Text(e)));
        }
        log.write(session_log::line(
            "ftp_transfer",
            now_ms(),
            &fields,
            *format,
        ));
    }
}

/// How long the first reply to a transfer command may take: the client's data connection
/// may come up to `data_timeout` late, and the origin answers only once it has.
fn transfer_wait(cfg: &FtpConfig) -> Duration {
    cfg.data_timeout + Duration::from_secs(30)
}

#[allow(clippy::too_many_arguments)]
fn session_line(
    shared: &Shared,
    service: &str,
    client: SocketAddr,
    user: Option<&str>,
    origin: Option<&str>,
    transfers: u32,
    moved: (u64, u64),
    started: Instant,
    result: &str,
) {
    let Some((log, format)) = &shared.access_log else {
        return;
    };
    let client = client.to_string();
    let fields = [
        ("service", Value::Text(service)),
        ("client", Value::Text(&client)),
        ("user", Value::Text(user.unwrap_or("-"))),
        ("origin", Value::Text(origin.unwrap_or("-"))),
        ("transfers", Value::Number(u64::from(transfers))),
        ("bytes_in", Value::Number(moved.0)),
        ("bytes_out", Value::Number(moved.1)),
        (
            "duration_ms",
            Value::Millis(started.elapsed().as_secs_f64() * 1000.0),
        ),
        ("result", Value::Text(result)),
    ];
    log.write(session_log::line("ftp_session", now_ms(), &fields, *format));
}
