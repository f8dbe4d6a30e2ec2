//! TLS for `--tls` runs and `wss://` targets: a self-signed certificate generated for the
//! regions this tool starts (written next to the report, passed to them as `--tls-cert` and
//! `--tls-key`, and trusted by the editors and by the peer links through `--peer-ca`), and the
//! client configuration that trusts it. rustls with the ring provider only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// A certificate and its key, as PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates a self-signed certificate for `localhost` and `127.0.0.1` into `dir`.
pub fn self_signed(dir: &Path) -> anyhow::Result<CertFiles> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("generating the TLS certificate")?;
    let files = CertFiles {
        cert: dir.join("tls-cert.pem"),
        key: dir.join("tls-key.pem"),
    };
    std::fs::write(&files.cert, generated.cert.pem())?;
    std::fs::write(&files.key, generated.signing_key.serialize_pem())?;
    Ok(files)
}

/// Certificates from a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// A client configuration trusting `extra`, plus the system's roots when `system` is set.
pub fn client_config(
    extra: &[CertificateDer<'static>],
    system: bool,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if system {
        roots.add_parsable_certificates(system_roots());
    }
    for c in extra {
        roots
            .add(c.clone())
            .context("adding a trusted certificate")?;
    }
    // ring, as everywhere in Concord (aws-lc-rs needs cmake); its lack of post-quantum key
    // exchange does not matter to a load test.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's trusted roots (unreadable ones skipped).
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}
