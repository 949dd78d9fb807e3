//! HTTP clients for tests: HTTP/1.1 over TCP, and HTTP/1.1 or HTTP/2 over TLS with any
//! certificate accepted (the test wants to see which one was presented).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Trailer fields, when the response had any.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    /// Which built-in origin answered.
    pub fn origin(&self) -> String {
        self.header("x-origin").unwrap_or_default()
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub type Sender = http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 connection over plain TCP.
pub async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request")
}

pub async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(15), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    collect(resp).await
}

pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok(Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// One GET on a fresh plain connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, String> {
    get_with(addr, host, path, &[]).await
}

pub async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send(&mut sender, request("GET", host, path, headers, b"")).await
}

/// One GET from a chosen local address (to look like another client).
pub async fn get_from(
    local: std::net::IpAddr,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(local, 0))
        .map_err(|e| e.to_string())?;
    let stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    send(&mut sender, request("GET", host, path, headers, b"")).await
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection; returns the negotiated ALPN, the leaf certificate and a sender.
pub enum TlsSender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub struct TlsConn {
    pub alpn: Option<Vec<u8>>,
    pub leaf: Vec<u8>,
    /// The handshake resumed an earlier session.
    pub resumed: bool,
    pub sender: TlsSender,
}

/// A client config trusting any certificate; it keeps the sessions (tickets) it is given,
/// so connections made with the same config can resume.
pub fn tls_client_config(
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub async fn tls_connect(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> Result<TlsConn, String> {
    let config = tls_client_config(alpn, rustls::DEFAULT_VERSIONS);
    tls_connect_with(addr, sni, config).await
}

pub async fn tls_connect_with(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsConn, String> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let alpn = session.alpn_protocol().map(|p| p.to_vec());
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        TlsSender::H2(s)
    } else {
        let (s, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        TlsSender::H1(s)
    };
    Ok(TlsConn {
        alpn,
        leaf,
        resumed,
        sender,
    })
}

impl TlsConn {
    pub async fn get(&mut self, host: &str, path: &str) -> Result<Reply, String> {
        match &mut self.sender {
            TlsSender::H1(s) => send(s, request("GET", host, path, &[], b"")).await,
            TlsSender::H2(s) => h2_get(s, host, path).await,
        }
    }
}

/// One GET on an HTTP/2 connection (clone the sender to send several at once).
pub async fn h2_get(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> Result<Reply, String> {
    let req = Request::builder()
        .uri(format!("https://{host}{path}"))
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    collect(resp).await
}
