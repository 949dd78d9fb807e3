//! TLS to origins: the rustls client an upstream with `protocol = "https"` or `"h2"`
//! connects through. Certificates are verified by default, against the system's trust
//! store (read with `rustls-native-certs`, so the operator's additions to
//! `/etc/ssl/certs` count, as with HAProxy's `ca-file @system-ca`) or the upstream's
//! `ca_file`. One client config per upstream, so its session cache resumes the
//! handshakes of every connection to the same origin.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::proxy::{OriginProtocol, OriginTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum OriginTlsError {
    #[error("upstream {upstream}: reading {path}: {message}")]
    File {
        upstream: String,
        path: String,
        message: String,
    },
    #[error("upstream {upstream}: no CA certificate could be read from the system's trust store ({why}); install ca-certificates or set tls.ca_file")]
    NoSystemRoots { upstream: String, why: String },
    #[error("upstream {upstream}: {message}")]
    Config { upstream: String, message: String },
}

/// How an upstream's connections are made secure.
pub struct OriginTls {
    pub connector: TlsConnector,
    /// Verification is off (`insecure_skip_verify`).
    pub unverified: bool,
    /// HTTP/2 must be agreed by ALPN.
    pub needs_h2: bool,
}

impl OriginTls {
    pub fn new(
        upstream: &str,
        protocol: OriginProtocol,
        cfg: &OriginTlsConfig,
    ) -> Result<Self, OriginTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let file_error = |path: &std::path::Path, e: &dyn std::fmt::Display| OriginTlsError::File {
            upstream: upstream.to_string(),
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| OriginTlsError::Config {
                upstream: upstream.to_string(),
                message: e.to_string(),
            })?;
        let builder = if cfg.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let roots = Arc::new(trust_store(upstream, cfg)?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| OriginTlsError::Config {
                    upstream: upstream.to_string(),
                    message: e.to_string(),
                })?;
            builder.with_webpki_verifier(verifier)
        };
        let mut config = match &cfg.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| file_error(cert, &e))?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, &e))?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    OriginTlsError::Config {
                        upstream: upstream.to_string(),
                        message: format!("client certificate: {e}"),
                    }
                })?
            }
        };
        let needs_h2 = protocol.is_http2();
        // Stream protocols offer no ALPN: an origin that knows none of our names would
        // be within its rights to refuse the handshake.
        config.alpn_protocols = match protocol {
            OriginProtocol::H2 | OriginProtocol::H2c => vec![b"h2".to_vec()],
            OriginProtocol::Https | OriginProtocol::Http1 => vec![b"http/1.1".to_vec()],
            OriginProtocol::Tcp
            | OriginProtocol::Tls
            | OriginProtocol::Ftp
            | OriginProtocol::Ftps => Vec::new(),
        };
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            unverified: cfg.insecure_skip_verify,
            needs_h2,
        })
    }
}

/// The name an origin's certificate must carry: its own `server_name`, the upstream's,
/// or its IP address (checked against the certificate's IP addresses; no SNI is sent).
pub fn origin_name(
    origin: Option<&str>,
    upstream: Option<&str>,
    addr: SocketAddr,
) -> ServerName<'static> {
    origin
        .or(upstream)
        .and_then(|n| ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

fn trust_store(upstream: &str, cfg: &OriginTlsConfig) -> Result<RootCertStore, OriginTlsError> {
    let mut roots = RootCertStore::empty();
    match &cfg.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| OriginTlsError::File {
                    upstream: upstream.to_string(),
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(OriginTlsError::File {
                    upstream: upstream.to_string(),
                    path: path.display().to_string(),
                    message: "no usable CA certificate".into(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none found".into());
                return Err(OriginTlsError::NoSystemRoots {
                    upstream: upstream.to_string(),
                    why,
                });
            }
        }
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate is taken, but the handshake's signatures must
/// still be made by the key it names, so the connection is at least with the holder of
/// that certificate.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_verified_by_its_own_name_then_the_upstreams_then_its_address() {
        let addr: SocketAddr = "127.0.0.5:8443".parse().unwrap();
        let dns = |s: &str| ServerName::try_from(s.to_string()).unwrap();
        assert_eq!(
            origin_name(Some("a.test"), Some("b.test"), addr),
            dns("a.test")
        );
        assert_eq!(origin_name(None, Some("b.test"), addr), dns("b.test"));
        assert_eq!(
            origin_name(None, None, addr),
            ServerName::IpAddress(addr.ip().into())
        );
    }

    #[test]
    fn a_missing_ca_file_is_an_error_naming_the_upstream_and_file() {
        let cfg = OriginTlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let Err(e) = OriginTls::new("api", OriginProtocol::Https, &cfg) else {
            panic!("a missing CA file was taken");
        };
        let text = e.to_string();
        assert!(
            text.contains("upstream api") && text.contains("/nonexistent/ca.pem"),
            "{text}"
        );
    }
}
