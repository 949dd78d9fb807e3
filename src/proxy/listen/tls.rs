//! TLS offload: certificates chosen by SNI behind an atomically swapped set, reloaded from
//! disk without touching open connections, keeping the last good set when a new file is
//! broken; OCSP responses stapled from files reloaded the same way; and the listeners'
//! policy (protocol versions, client certificates) in a server config swapped on reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use sha2::Digest;
use tokio_rustls::TlsAcceptor;

use crate::config::proxy::{
    AcmeChallenge, CertificateSource, ClientAuth, ClientAuthMode, ListenerTls, TlsVersion,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("generating a self-signed certificate for {names:?}: {message}")]
    Generate { names: Vec<String>, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no certificates configured")]
    Empty,
}

/// One loaded certificate chain and key, and the PEM it came from (for self-signed ones,
/// so a demo can hand the certificate to curl).
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub pem: String,
    /// The name it is known by in `/status` and metrics: its first DNS name.
    pub label: String,
    /// When it expires (unix seconds; 0 when the leaf cannot be read).
    pub not_after: u64,
}

/// The first DNS name and the expiry of a leaf certificate.
fn describe(leaf: Option<&CertificateDer<'_>>) -> (String, u64) {
    let parsed = leaf.and_then(|l| x509_parser::parse_x509_certificate(l.as_ref()).ok());
    let Some((_, cert)) = parsed else {
        return ("unknown".into(), 0);
    };
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let name = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        })
        .unwrap_or_else(|| cert.subject().to_string());
    (name, not_after)
}

/// The certificates in force. The first configured one is the default for clients that
/// send no SNI or a name no certificate covers.
pub struct CertSet {
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    pub fn load(sources: &[CertificateSource]) -> Result<Self, TlsError> {
        if sources.is_empty() {
            return Err(TlsError::Empty);
        }
        let certs = sources
            .iter()
            .map(load_one)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { certs })
    }

    fn resolve_name(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name.and_then(|n| ServerName::try_from(n.to_string()).ok()) {
            for c in &self.certs {
                let Some(leaf) = c.key.cert.first() else {
                    continue;
                };
                let Ok(ee) = webpki::EndEntityCert::try_from(leaf) else {
                    continue;
                };
                if ee.verify_is_valid_for_subject_name(&name).is_ok() {
                    return Some(c.key.clone());
                }
            }
        }
        self.certs.first().map(|c| c.key.clone())
    }
}

fn load_one(source: &CertificateSource) -> Result<LoadedCert, TlsError> {
    match source {
        CertificateSource::Files { cert, key, ocsp } => {
            let file_err = |path: &Path, message: String| TlsError::File {
                path: path.to_path_buf(),
                message,
            };
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, format!("cannot read certificates: {e}")))?
                .collect::<Result<_, _>>()
                .map_err(|e| file_err(cert, format!("bad PEM certificate: {e}")))?;
            if chain.is_empty() {
                return Err(file_err(cert, "no CERTIFICATE block found".into()));
            }
            let der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_err(key, format!("no usable private key: {e}")))?;
            let signing = provider::sign::any_supported_type(&der)
                .map_err(|e| file_err(key, format!("unsupported private key: {e}")))?;
            let mut certified = CertifiedKey::new(chain, signing);
            certified
                .keys_match()
                .map_err(|e| file_err(key, format!("key does not match the certificate: {e}")))?;
            if let Some(path) = ocsp {
                let response = std::fs::read(path)
                    .map_err(|e| file_err(path, format!("cannot read the OCSP response: {e}")))?;
                // A DER OCSPResponse is a SEQUENCE; anything else would be stapled as
                // garbage that clients reject.
                if response.first() != Some(&0x30) || response.len() < 8 {
                    return Err(file_err(path, "not a DER OCSP response".into()));
                }
                certified.ocsp = Some(response);
            }
            let pem = std::fs::read_to_string(cert).unwrap_or_default();
            let (label, not_after) = describe(certified.cert.first());
            Ok(LoadedCert {
                key: Arc::new(certified),
                pem,
                label,
                not_after,
            })
        }
        CertificateSource::Acme(acme) => {
            if acme.cert.exists() && acme.key.exists() {
                return load_one(&CertificateSource::Files {
                    cert: acme.cert.clone(),
                    key: acme.key.clone(),
                    ocsp: None,
                });
            }
            // Not issued yet: a stand-in for its names until the CA answers, so the
            // listener runs (and a tls-alpn-01 handshake can reach it).
            load_one(&CertificateSource::SelfSigned(acme.names.clone()))
        }
        CertificateSource::SelfSigned(names) => {
            let generated = rcgen::generate_simple_self_signed(names.clone()).map_err(|e| {
                TlsError::Generate {
                    names: names.clone(),
                    message: e.to_string(),
                }
            })?;
            let pem = generated.cert.pem();
            let der = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
            let signing =
                provider::sign::any_supported_type(&der).map_err(|e| TlsError::Generate {
                    names: names.clone(),
                    message: e.to_string(),
                })?;
            let (label, not_after) = describe(Some(generated.cert.der()));
            Ok(LoadedCert {
                key: Arc::new(CertifiedKey::new(
                    vec![generated.cert.der().clone()],
                    signing,
                )),
                pem,
                label,
                not_after,
            })
        }
    }
}

/// Resolves certificates by SNI from the current set; reloads swap the set whole.
pub struct CertStore {
    current: ArcSwap<CertSet>,
    sources: std::sync::Mutex<Vec<CertificateSource>>,
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
    /// tls-alpn-01 challenge certificates by domain, shown only to `acme-tls/1`
    /// handshakes while an order is open.
    alpn_challenges: std::sync::Mutex<std::collections::HashMap<String, Arc<CertifiedKey>>>,
    /// The last ACME failure per certificate (first name), for `/status`.
    acme_errors: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("sources", &self.sources)
            .finish()
    }
}

impl CertStore {
    pub fn new(sources: Vec<CertificateSource>) -> Result<Self, TlsError> {
        let set = CertSet::load(&sources)?;
        let stamps = std::sync::Mutex::new(file_stamps(&sources));
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            sources: std::sync::Mutex::new(sources),
            stamps,
            alpn_challenges: Default::default(),
            acme_errors: Default::default(),
        })
    }

    pub fn sources(&self) -> Vec<CertificateSource> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn show_alpn_challenge(&self, domain: &str, cert: Arc<CertifiedKey>) {
        self.alpn_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_ascii_lowercase(), cert);
    }

    pub fn hide_alpn_challenge(&self, domain: &str) {
        self.alpn_challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&domain.to_ascii_lowercase());
    }

    pub fn note_acme_error(&self, certificate: &str, error: String) {
        self.acme_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(certificate.to_string(), error);
    }

    pub fn acme_error(&self, certificate: &str) -> Option<String> {
        self.acme_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(certificate)
            .cloned()
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }

    /// Reloads every certificate from disk. On error the old set stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let set = CertSet::load(&sources)?;
        self.current.store(Arc::new(set));
        Ok(())
    }

    /// Switches to another list of certificates (a config reload); on error nothing
    /// changes. Unchanged self-signed entries would be generated anew, so they are kept.
    pub fn set_sources(&self, sources: Vec<CertificateSource>) -> Result<(), TlsError> {
        let mut current = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if *current == sources {
            drop(current);
            return self.reload_files_only();
        }
        let set = CertSet::load(&sources)?;
        self.current.store(Arc::new(set));
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = file_stamps(&sources);
        *current = sources;
        Ok(())
    }

    /// Reloads from files, keeping generated self-signed certificates as they are.
    fn reload_files_only(&self) -> Result<(), TlsError> {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if sources
            .iter()
            .all(|s| matches!(s, CertificateSource::SelfSigned(_)))
        {
            return Ok(());
        }
        self.reload()
    }

    /// Reloads if any certificate or key file changed since the last look. Returns
    /// Some(result) when it tried.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = file_stamps(&sources);
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if *stamps == now {
            return None;
        }
        *stamps = now;
        Some(self.reload())
    }
}

fn file_stamps(sources: &[CertificateSource]) -> Vec<Option<SystemTime>> {
    sources
        .iter()
        .flat_map(|s| match s {
            CertificateSource::Files { cert, key, ocsp } => {
                let mut files = vec![cert.clone(), key.clone()];
                files.extend(ocsp.iter().cloned());
                files
            }
            CertificateSource::Acme(a) => vec![a.cert.clone(), a.key.clone()],
            CertificateSource::SelfSigned(_) => Vec::new(),
        })
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// The ALPN protocol of the tls-alpn-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            // Only a challenge certificate answers the CA's validation handshake; with
            // no order open there is none, and the handshake fails.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .alpn_challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        self.current.load().resolve_name(hello.server_name())
    }
}

/// The HTTPS listeners' TLS: the certificate store and the server config made from the
/// policy, swapped whole on a config reload (connections open keep theirs). Session
/// tickets and the session cache outlive reloads, so clients still resume after one.
pub struct TlsListener {
    pub store: Arc<CertStore>,
    config: ArcSwap<ServerConfig>,
    /// The same without ALPN, for stream listeners: what they carry is not HTTP, and a
    /// client offering a protocol we do not list must not be refused for it.
    stream_config: ArcSwap<ServerConfig>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl TlsListener {
    pub fn new(tls: &ListenerTls) -> Result<Self, TlsError> {
        let store = Arc::new(CertStore::new(tls.certificates.clone())?);
        let ticketer = provider::Ticketer::new()?;
        let sessions: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(16_384);
        let config = server_config(&store, tls, ticketer.clone(), sessions.clone())?;
        Ok(Self {
            store,
            stream_config: ArcSwap::new(without_alpn(&config)),
            config: ArcSwap::new(config),
            ticketer,
            sessions,
        })
    }

    /// The acceptor for a new connection, with the policy in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// The acceptor for a stream listener's connection (no ALPN).
    pub fn stream_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.stream_config.load_full())
    }

    /// Takes a reloaded config's certificates and policy; on error nothing changes.
    pub fn reconfigure(&self, tls: &ListenerTls) -> Result<(), TlsError> {
        let config = server_config(
            &self.store,
            tls,
            self.ticketer.clone(),
            self.sessions.clone(),
        )?;
        self.store.set_sources(tls.certificates.clone())?;
        self.stream_config.store(without_alpn(&config));
        self.config.store(config);
        Ok(())
    }
}

fn without_alpn(config: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut plain = (**config).clone();
    plain.alpn_protocols.clear();
    Arc::new(plain)
}

/// The rustls server config: the versions the policy allows, ALPN h2 then http/1.1,
/// client certificates where asked for, stateless session tickets plus a session cache
/// for TLS 1.2 resumption.
pub fn server_config(
    store: &Arc<CertStore>,
    tls: &ListenerTls,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, provider)?),
    };
    let mut config = builder.with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let alpn_challenges = tls.certificates.iter().any(
        |s| matches!(s, CertificateSource::Acme(a) if a.challenge == AcmeChallenge::TlsAlpn01),
    );
    if alpn_challenges {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    config.ticketer = ticketer;
    // One ticket per handshake, not rustls's two: OpenSSL servers send one after a
    // resumption, and each ticket costs the client a session object and a key
    // derivation. Our tickets are stateless and every connection gets a fresh one, so a
    // client that reconnects always has one to offer.
    config.send_tls13_tickets = 1;
    config.session_storage = sessions;
    Ok(Arc::new(config))
}

fn client_verifier(
    auth: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let file_err = |message: String| TlsError::File {
        path: auth.ca_file.clone(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(&auth.ca_file)
        .map_err(|e| file_err(format!("cannot read client CAs: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(format!("bad PEM certificate: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(file_err("no usable CA certificate".into()));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = match auth.mode {
        ClientAuthMode::Required => builder,
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
    };
    builder
        .build()
        .map_err(|e| file_err(format!("client certificate verifier: {e}")))
}

/// A client certificate that verified, as origins are told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject's distinguished name (`CN=edge-1, O=Example`).
    pub subject: String,
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub sha256: String,
}

impl ClientIdentity {
    /// From the leaf of a verified chain; None when there is none (or it cannot be read).
    pub fn of(chain: Option<&[CertificateDer<'_>]>) -> Option<Self> {
        let leaf = chain?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let digest = sha2::Sha256::digest(leaf.as_ref());
        let mut sha256 = String::with_capacity(64);
        for b in digest {
            sha256.push_str(&format!("{b:02x}"));
        }
        Some(Self {
            subject: cert.subject().to_string(),
            sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(
            hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn sni_picks_the_matching_certificate_and_unknown_names_get_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = write_pair(dir.path(), "a", &["www.example.test"]);
        let (c2, k2) = write_pair(dir.path(), "b", &["*.api.example.test"]);
        let set = CertSet::load(&[
            CertificateSource::Files {
                cert: c1,
                key: k1,
                ocsp: None,
            },
            CertificateSource::Files {
                cert: c2,
                key: k2,
                ocsp: None,
            },
        ])
        .unwrap();
        let first = leaf(&set.certs[0].key);
        let second = leaf(&set.certs[1].key);
        assert_eq!(
            leaf(&set.resolve_name(Some("www.example.test")).unwrap()),
            first
        );
        assert_eq!(
            leaf(&set.resolve_name(Some("v1.api.example.test")).unwrap()),
            second
        );
        assert_eq!(leaf(&set.resolve_name(Some("other.test")).unwrap()), first);
        assert_eq!(leaf(&set.resolve_name(None).unwrap()), first);
    }

    #[test]
    fn broken_files_are_clear_errors_and_reload_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", &["www.example.test"]);
        let store = CertStore::new(vec![CertificateSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            ocsp: None,
        }])
        .unwrap();
        let before = leaf(&store.current().certs[0].key);
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = store.reload().unwrap_err();
        assert!(err.to_string().contains("a.crt"), "{err}");
        assert_eq!(
            leaf(&store.current().certs[0].key),
            before,
            "old certificate still served"
        );

        // A key that belongs to another certificate is refused.
        let (_, other_key) = write_pair(dir.path(), "b", &["x.test"]);
        let (good_cert, _) = write_pair(dir.path(), "c", &["www.example.test"]);
        let err = CertSet::load(&[CertificateSource::Files {
            cert: good_cert,
            key: other_key,
            ocsp: None,
        }])
        .err()
        .unwrap();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn self_signed_certificates_are_generated_with_their_pem() {
        let set = CertSet::load(&[CertificateSource::SelfSigned(vec![
            "www.example.test".into()
        ])])
        .unwrap();
        assert!(set.certs[0].pem.contains("BEGIN CERTIFICATE"));
    }
}
