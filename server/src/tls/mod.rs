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
    },
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls { .. })
    }

    /// What the peer handshake binds its proofs to: empty on a plain connection.
    pub fn binding(&self) -> &[u8] {
        match self {
            Transport::Plain => &[],
            Transport::Tls { binding } => binding,
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
