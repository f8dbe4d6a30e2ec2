//! Certificates for the TLS tests, made on the spot with rcgen: a throwaway CA, server
//! certificates it signs for `localhost` and `127.0.0.1` (written as the PEM files a server
//! reads), and client settings that trust chosen CAs, for `wss://` and `https://` from the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A new server certificate (new key, new serial) for `localhost` and `127.0.0.1`.
    pub fn issue(&self) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "concord test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes the CA certificate to `dir/NAME.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }
}

impl Leaf {
    /// Writes `dir/NAME.crt` and `dir/NAME.key` (replacing them if present) and returns their
    /// paths, as `--tls-cert` and `--tls-key` take them.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// Client settings trusting exactly `cas`.
pub fn client_config(cas: &[&TestCa]) -> Arc<ClientConfig> {
    client_config_for(cas, rustls::DEFAULT_VERSIONS)
}

/// [`client_config`] offering only the TLS `versions` given.
pub fn client_config_for(
    cas: &[&TestCa],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.issuer.der().clone()).unwrap();
    }
    Arc::new(
        ClientConfig::builder_with_provider(concord_server::tls::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to `localhost:port`, handshake done (Err: why it failed).
pub async fn tls_connect(
    port: u16,
    tls: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(tls).connect(name, tcp).await
}

/// The certificate the server at `localhost:port` presents to a new connection.
pub async fn served_certificate(port: u16, tls: Arc<ClientConfig>) -> CertificateDer<'static> {
    let stream = tls_connect(port, tls).await.expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Opens a WebSocket to a `wss://localhost:PORT/...` URL.
pub async fn wss_connect(
    url: &str,
    tls: Arc<ClientConfig>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, String> {
    let port: u16 = url
        .strip_prefix("wss://localhost:")
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("a wss://localhost:PORT/... URL");
    let stream = tls_connect(port, tls).await.map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, None)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// GET an `https://` URL trusting what `tls` trusts; the status and body.
pub async fn https_get(url: &str, tls: Arc<ClientConfig>) -> (u16, Vec<u8>) {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.expect("HTTPS request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}
