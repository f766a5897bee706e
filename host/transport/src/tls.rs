//! A node's identity and the TLS configurations built from it.

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::TransportError;
use crate::certs::check_node_name;

/// The wire versions this build speaks, newest first, as ALPN protocol ids.
/// A release that changes the wire adds its version in front and keeps the
/// previous one, so that nodes one version apart connect during a rolling
/// deploy; the negotiated one is [`crate::Peer::version`], and the protocol
/// above uses only what both sides speak.
///
/// - `baton/3`: promotions skip an epoch, so a handoff's transfer goes out
///   with its handover instead of after the replica acknowledged it (see
///   `baton_cluster::node::WIRE`).
/// - `baton/2`: nodes also ship session snapshots to replicas.
/// - `baton/1`: records, heartbeats, journals, tunnels.
pub const WIRE_VERSIONS: &[&str] = &["baton/3", "baton/2", "baton/1"];

/// The number in a wire version id (`baton/2` → 2); 0 if it has none.
pub fn wire_version_number(id: &str) -> u32 {
    id.strip_prefix("baton/")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One crypto provider for everything (ring: builds offline with gcc).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Who a node is on the wire: its name, its certificate chain and key, and
/// the cluster CA it trusts peers by.
#[derive(Debug)]
pub struct Identity {
    name: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    /// The wire versions offered, newest first.
    versions: Vec<String>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            versions: self.versions.clone(),
        }
    }
}

/// The DNS names a certificate is for.
pub(crate) fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

impl Identity {
    /// An identity from PEM text: the node's certificate (chain), its key
    /// and the cluster CA. The certificate must be for `name`.
    pub fn from_pem(
        name: &str,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, TransportError> {
        check_node_name(name)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| TransportError::Certificate(format!("the node certificate: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(TransportError::Certificate(
                "the node certificate file holds no certificate".into(),
            ));
        };
        let names = dns_names(leaf);
        if !names.iter().any(|n| n == name) {
            return Err(TransportError::Certificate(format!(
                "the certificate is for {names:?}, not for node `{name}`"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TransportError::Certificate(format!("the node key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let ca =
                ca.map_err(|e| TransportError::Certificate(format!("the CA certificate: {e}")))?;
            roots
                .add(ca)
                .map_err(|e| TransportError::Certificate(format!("the CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TransportError::Certificate(
                "the CA file holds no certificate".into(),
            ));
        }
        let identity = Identity {
            name: name.to_owned(),
            chain,
            key,
            roots: Arc::new(roots),
            versions: WIRE_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        };
        // Fail now, not at the first handshake, on a key that does not
        // match or a chain the CA did not sign.
        identity.server_crypto()?;
        identity.client_crypto(false)?;
        identity.client_crypto(true)?;
        Ok(identity)
    }

    /// An identity from PEM files.
    pub fn from_files(
        name: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<Self, TransportError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| TransportError::Certificate(format!("{}: {e}", path.display())))
        };
        Self::from_pem(name, &read(cert)?, &read(key)?, &read(ca)?)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offers only `versions` (newest first) instead of every version
    /// this build speaks: how a test stands in for an older host.
    pub fn with_wire_versions(mut self, versions: &[&str]) -> Self {
        self.versions = versions.iter().map(|v| (*v).to_owned()).collect();
        self
    }

    fn alpn(&self) -> Vec<Vec<u8>> {
        self.versions
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect()
    }

    fn server_crypto(&self) -> Result<rustls::ServerConfig, TransportError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(|e| TransportError::Certificate(format!("the CA: {e}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = self.alpn();
        // No 0-RTT: nothing a peer sends counts before the handshake ends.
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The dialing side. `any_node`: for an address whose node name is not
    /// known yet (a seed, a DNS answer), the peer's chain must lead to the
    /// cluster CA and its name is whatever its certificate says; otherwise
    /// it must be the name dialed.
    fn client_crypto(&self, any_node: bool) -> Result<rustls::ClientConfig, TransportError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = if any_node {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                self.roots.clone(),
                provider(),
            )
            .build()
            .map_err(|e| TransportError::Certificate(format!("the CA: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyClusterNode(inner)))
        } else {
            builder.with_root_certificates(self.roots.clone())
        };
        let mut config = builder.with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = self.alpn();
        config.enable_early_data = false;
        Ok(config)
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(2)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_secs(10))
                    .unwrap_or(quinn::VarInt::from_u32(10_000).into()),
            ));
        Arc::new(transport)
    }

    pub(crate) fn server_config(&self) -> Result<quinn::ServerConfig, TransportError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(self.server_crypto()?)
            .map_err(|e| {
                TransportError::Certificate(format!("QUIC needs TLS 1.3 cipher suites: {e}"))
            })?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    pub(crate) fn client_config(
        &self,
        any_node: bool,
    ) -> Result<quinn::ClientConfig, TransportError> {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.client_crypto(any_node)?)
                .map_err(|e| {
                    TransportError::Certificate(format!("QUIC needs TLS 1.3 cipher suites: {e}"))
                })?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }
}

/// Verifies a server's chain against the cluster CA for the name its own
/// certificate carries (the CA vouches for that name); used when dialing an
/// address before knowing which node answers there.
#[derive(Debug)]
struct AnyClusterNode(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyClusterNode {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let name = dns_names(end_entity)
            .into_iter()
            .next()
            .ok_or_else(|| rustls::Error::General("the peer's certificate names no node".into()))?;
        let name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|e| rustls::Error::General(format!("the peer's node name: {e}")))?;
        self.0
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
