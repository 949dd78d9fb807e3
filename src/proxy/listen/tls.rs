//! TLS offload: certificates chosen by SNI behind an atomically swapped set, reloaded from
//! disk without touching open connections, keeping the last good set when a new file is
//! broken.

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

use crate::config::proxy::CertificateSource;

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
        CertificateSource::Files { cert, key } => {
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
            let certified = CertifiedKey::new(chain, signing);
            certified
                .keys_match()
                .map_err(|e| file_err(key, format!("key does not match the certificate: {e}")))?;
            let pem = std::fs::read_to_string(cert).unwrap_or_default();
            Ok(LoadedCert {
                key: Arc::new(certified),
                pem,
            })
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
            Ok(LoadedCert {
                key: Arc::new(CertifiedKey::new(
                    vec![generated.cert.der().clone()],
                    signing,
                )),
                pem,
            })
        }
    }
}

/// Resolves certificates by SNI from the current set; reloads swap the set whole.
pub struct CertStore {
    current: ArcSwap<CertSet>,
    sources: std::sync::Mutex<Vec<CertificateSource>>,
    stamps: std::sync::Mutex<Vec<Option<SystemTime>>>,
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
        })
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
            CertificateSource::Files { cert, key } => vec![cert.clone(), key.clone()],
            CertificateSource::SelfSigned(_) => Vec::new(),
        })
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().resolve_name(hello.server_name())
    }
}

/// The rustls server config: TLS 1.2 and 1.3, ALPN h2 then http/1.1, stateless session
/// tickets plus a session cache for TLS 1.2 resumption.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = provider::Ticketer::new()?;
    // One ticket per handshake, not rustls's two: OpenSSL servers send one after a
    // resumption, and each ticket costs the client a session object and a key
    // derivation. Our tickets are stateless and every connection gets a fresh one, so a
    // client that reconnects always has one to offer.
    config.send_tls13_tickets = 1;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    Ok(Arc::new(config))
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
            CertificateSource::Files { cert: c1, key: k1 },
            CertificateSource::Files { cert: c2, key: k2 },
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
