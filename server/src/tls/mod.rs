//! TLS with rustls (ring provider only), for clients and between regions: without it, everything
//! a client or a peer sends crosses the network in clear text.
//!
//! - [`server`]: the certificate served on `--listen` (HTTPS and WSS), swapped on SIGHUP.
//! - [`peer`]: dialing `https://` peers, verified against the system roots plus `--peer-ca`.
//!
//! Both ends of a TLS connection derive the same exporter value from its session (RFC 8446
//! §7.5; [`binding`]); the peer handshake MACs it, so a proof recorded on one connection is
//! worthless on another (see [`crate::replication::auth`]).

pub mod peer;
pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ConnectionCommon;
use rustls::crypto::CryptoProvider;

/// The exporter label of the peer handshake's channel binding.
pub const BINDING_LABEL: &[u8] = b"EXPERIMENTAL-concord-peer-link";
/// Bytes of exporter output the binding uses.
pub const BINDING_LEN: usize = 32;

/// How a request's connection reached this node; the accept loop inserts it into every request.
#[derive(Clone, Debug)]
pub enum Transport {
    Plain,
    /// TLS, with the session's exporter value ([`binding`]).
    Tls {
        binding: [u8; BINDING_LEN],
        /// TLS 1.3: only its exporter is unique to the session whatever the client does (a TLS
        /// 1.2 one can be shared by two sessions, the triple-handshake attack), so peer links
        /// need it. Browsers may use 1.2.
        tls13: bool,
    },
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls { .. })
    }

    /// Whether a peer link may be bound to this connection: plain (nothing to bind) or TLS 1.3.
    pub fn can_bind_peer_link(&self) -> bool {
        matches!(self, Transport::Plain | Transport::Tls { tls13: true, .. })
    }

    /// What the peer handshake binds its proofs to: empty on a plain connection.
    pub fn binding(&self) -> &[u8] {
        match self {
            Transport::Plain => &[],
            Transport::Tls { binding, .. } => binding,
        }
    }
}

/// The exporter value of an established TLS session, the same on both ends.
pub fn binding<D>(conn: &ConnectionCommon<D>) -> Result<[u8; BINDING_LEN], rustls::Error> {
    conn.export_keying_material([0u8; BINDING_LEN], BINDING_LABEL, None)
}

/// The one crypto provider Concord uses. rustls deprecates ring's for lacking post-quantum key
/// exchange; aws-lc-rs has it but needs cmake and a long C build, which this project avoids.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not a usable private key for {}: {source}", key.display(), cert.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error(
        "--peer-tls-required, but peer {0} would be dialed in clear text: list it as https://HOST:PORT (or drop --peer-tls-required)"
    )]
    PlainPeer(String),
    #[error(
        "no certificate authority to verify https:// peers with: the system has no roots and --peer-ca is not set"
    )]
    NoRoots,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// Two ends of one real TLS session over an in-memory pipe; returns each end's binding.
    async fn session(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> ([u8; 32], [u8; 32]) {
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = TlsAcceptor::from(Arc::new(server)).accept(a);
        let connect = TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), b);
        let (s, c) = tokio::join!(accept, connect);
        let (s, c) = (s.unwrap(), c.unwrap());
        (
            binding(s.get_ref().1).unwrap(),
            binding(c.get_ref().1).unwrap(),
        )
    }

    /// The peer handshake's binding only works if both ends of a session derive the same value
    /// and every session a different one.
    #[tokio::test]
    async fn both_ends_of_a_session_share_its_binding_and_sessions_differ() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (server1, client1) = session(&cert).await;
        let (server2, client2) = session(&cert).await;
        assert_eq!(server1, client1);
        assert_eq!(server2, client2);
        assert_ne!(server1, server2);
        assert_ne!(server1, [0u8; BINDING_LEN]);
    }
}
