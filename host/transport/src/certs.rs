//! A cluster certificate authority and the node certificates it issues.
//!
//! For development and tests: `baton certs ca` and `baton certs node <name>`.
//! A node certificate names its node as a DNS subject alternative name (the
//! name peers dial it by and know it as) and serves as both TLS server and
//! client certificate. Production clusters use their own CA's files.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use crate::TransportError;

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that can issue node certificates.
pub struct Authority {
    issued: Issued,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn bad(e: impl std::fmt::Display) -> TransportError {
    TransportError::Certificate(e.to_string())
}

/// Checks that `name` can be a node name: a DNS name of lowercase letters,
/// digits, `-` and `.` (it is a certificate's DNS name and the TLS server
/// name peers ask for).
pub fn check_node_name(name: &str) -> Result<(), TransportError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(TransportError::Certificate(format!(
            "`{name}` is not a valid node name: use lowercase letters, digits, `-` and `.`, like a host name"
        )))
    }
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA, self-signed, named `name`.
    pub fn generate(name: &str) -> Result<Self, TransportError> {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(bad)?;
        let cert = params.self_signed(&key).map_err(bad)?;
        Ok(Authority {
            issued: Issued {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            cert,
            key,
        })
    }

    /// A CA from its PEM certificate and key (to issue more node certificates).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("the CA key: {e}")))?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)
            .map_err(|e| bad(format!("the CA certificate: {e}")))?;
        // Re-signing the same name and key gives an issuer whose signatures
        // verify against the original certificate.
        let cert = params.self_signed(&key).map_err(bad)?;
        Ok(Authority {
            issued: Issued {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
            cert,
            key,
        })
    }

    /// The CA's certificate and key, PEM.
    pub fn files(&self) -> &Issued {
        &self.issued
    }

    /// A fresh certificate for node `name`, as an identity that trusts this
    /// CA: a whole node's credentials in one call (development and tests).
    pub fn identity(&self, name: &str) -> Result<crate::Identity, TransportError> {
        let issued = self.issue(name)?;
        crate::Identity::from_pem(
            name,
            &issued.cert_pem,
            &issued.key_pem,
            &self.issued.cert_pem,
        )
    }

    /// A certificate for node `name`, valid as TLS server and client.
    pub fn issue(&self, name: &str) -> Result<Issued, TransportError> {
        check_node_name(name)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(bad)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(bad)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
