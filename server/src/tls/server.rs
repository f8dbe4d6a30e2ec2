//! The certificate and key served on `--listen` (`--tls-cert`, `--tls-key`), reloadable: every
//! handshake asks [`CertStore`] for the current pair, and SIGHUP swaps in what the files hold
//! now, so certificates rotate without a restart. A reload that fails (a missing file, a key
//! that does not fit) keeps serving the old pair and says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::TlsError;

/// The served certificate chain and key, as last loaded successfully.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the pair; fails if either file is unreadable or the key does not fit.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let current = load_pair(cert, key)?;
        Ok(Arc::new(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again and serves what they hold from the next handshake on; on error the
    /// current pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = Arc::new(load_pair(&self.cert, &self.key)?);
        *self.current.write().unwrap() = next;
        Ok(())
    }

    /// The pair served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap().clone()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path, e: &dyn std::fmt::Display| TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(cert, &e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| read(key, &e))?;
    CertifiedKey::from_der(chain, private, &super::provider()).map_err(|source| TlsError::Key {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    })
}

/// The TLS side of `--listen`: TLS 1.2 and 1.3, HTTP/1.1 (WebSocket upgrades need it).
pub fn acceptor(store: Arc<CertStore>) -> Result<TlsAcceptor, TlsError> {
    let mut config = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Reloads the certificate and key on every SIGHUP until `stop`; a failed reload keeps the pair
/// being served. (`serve` takes SIGHUP over before the port opens, so an early one is never
/// fatal.)
pub fn reload_on_sighup(store: Arc<CertStore>, stop: CancellationToken) {
    on_sighup(stop, move || match store.reload() {
        Ok(()) => info!(cert = %store.cert.display(), "TLS certificate reloaded"),
        Err(e) => {
            warn!(error = %e, "TLS certificate reload failed; still serving the previous one")
        }
    });
}

/// Without TLS there is nothing to reload: SIGHUP (an operator's `systemctl reload`, a
/// certificate hook) is logged and otherwise ignored, never fatal.
pub fn ignore_sighup(stop: CancellationToken) {
    on_sighup(stop, || info!("SIGHUP: nothing to reload (no --tls-cert)"));
}

/// Runs `then` on every SIGHUP until `stop`.
#[cfg(unix)]
fn on_sighup(stop: CancellationToken, then: impl Fn() + Send + 'static) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                then();
            }
        }
        .in_current_span(),
    );
}

#[cfg(not(unix))]
fn on_sighup(_stop: CancellationToken, _then: impl Fn() + Send + 'static) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, signing_key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    fn served(store: &CertStore) -> Vec<u8> {
        store.current().cert[0].to_vec()
    }

    #[test]
    fn reload_swaps_the_pair_and_a_failed_reload_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = issue(dir.path());
        let store = CertStore::load(&cert, &key).unwrap();
        assert_eq!(served(&store), first);

        std::fs::write(&key, "not a key").unwrap();
        let err = store.reload().unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert_eq!(served(&store), first, "a failed reload keeps the old pair");

        // A key that parses but belongs to another certificate is refused too.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key, other.serialize_pem()).unwrap();
        let err = store.reload().unwrap_err();
        assert!(matches!(err, TlsError::Key { .. }), "{err}");
        assert_eq!(served(&store), first);

        let (_, _, second) = issue(dir.path());
        store.reload().unwrap();
        assert_eq!(served(&store), second);
    }

    #[test]
    fn a_missing_or_empty_certificate_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = issue(dir.path());
        assert!(CertStore::load(&dir.path().join("absent.pem"), &key).is_err());
        std::fs::write(&cert, "").unwrap();
        assert!(matches!(
            CertStore::load(&cert, &key).unwrap_err(),
            TlsError::NoCertificate { .. }
        ));
    }
}
