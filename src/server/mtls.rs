//! Mutual TLS: the client certificate must chain to the configured CA bundle (rustls' webpki
//! verifier: signature chain, validity period, key usage) AND carry one of the configured names
//! as its subject CN or a DNS SAN. Any failure aborts the handshake, so no HTTP response is
//! ever sent to a wrong client. The spec names the CN; we also accept a SAN because public CAs
//! put host names there.
//!
//! rustls runs the verifier on full handshakes only: a resumed session (TLS 1.2 session id or
//! TLS 1.3 ticket) carries the chain verified when it was made. So the server checks the
//! peer's chain again with [`NameCheckingVerifier::admits`] after every handshake, and again
//! on every open connection when a reload replaces the trust (see `server::Server::swap`).

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, SignatureScheme,
};
use std::path::PathBuf;
use std::sync::Arc;
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::{oid::db::rfc4519::CN, oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME, Decode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

/// Why a client's chain does not pass the trust in force; logged when a resumed session or an
/// open connection is refused.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    /// The client presented no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// webpki refused the chain (signature, validity, key usage).
    #[error("client certificate: {0}")]
    Chain(#[source] Error),
    /// The leaf cannot be read for its names.
    #[error(transparent)]
    Names(#[from] NamesError),
    /// None of the leaf's names is in `tls.client_names`.
    #[error("client certificate names {0:?} not in tls.client_names")]
    NameNotAllowed(Vec<String>),
}

/// Why a certificate's names cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The certificate is not DER X.509.
    #[error("unparseable certificate: {0}")]
    Unparseable(#[source] x509_cert::der::Error),
    /// The subject alternative name extension does not parse.
    #[error("bad SAN: {0}")]
    BadSan(#[source] x509_cert::der::Error),
}

/// Why a certificate file's expiry cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    /// The file cannot be read or holds no PEM certificate.
    #[error("{}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls::pki_types::pem::Error,
    },
    /// The first certificate is not DER X.509.
    #[error("{}: {source}", path.display())]
    Unparseable {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: x509_cert::der::Error,
    },
}

/// Chain verification by webpki, then the name allow-list.
#[derive(Debug)]
pub struct NameCheckingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl NameCheckingVerifier {
    /// A verifier requiring a client certificate from `roots` carrying one of `names`.
    pub fn new(
        roots: RootCertStore,
        names: Vec<String>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, VerifierBuilderError> {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
        Ok(NameCheckingVerifier { inner, names })
    }
}

impl NameCheckingVerifier {
    fn allows_one_of(&self, names: &[String]) -> bool {
        names
            .iter()
            .any(|n| self.names.iter().any(|allowed| allowed.eq_ignore_ascii_case(n)))
    }

    /// Whether a peer's chain (leaf first, as rustls reports it) passes this trust now: the
    /// same chain, validity and name checks as a full handshake. Used for resumed sessions
    /// and for open connections after a reload; the error says why, for the log.
    pub fn admits(&self, chain: &[CertificateDer<'_>]) -> Result<(), Untrusted> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Untrusted::NoCertificate);
        };
        self.inner
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map_err(Untrusted::Chain)?;
        let names = certificate_names(leaf)?;
        if self.allows_one_of(&names) {
            Ok(())
        } else {
            Err(Untrusted::NameNotAllowed(names))
        }
    }
}

/// The subject CNs and DNS SANs of a DER certificate.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, NamesError> {
    let cert = Certificate::from_der(der).map_err(NamesError::Unparseable)?;
    let mut names = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter().filter(|a| a.oid == CN) {
            let v = &atv.value;
            let s = Utf8StringRef::try_from(v)
                .map(|s| s.as_str().to_owned())
                .or_else(|_| PrintableStringRef::try_from(v).map(|s| s.as_str().to_owned()))
                .or_else(|_| Ia5StringRef::try_from(v).map(|s| s.as_str().to_owned()));
            if let Ok(s) = s {
                names.push(s);
            }
        }
    }
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        if ext.extn_id == ID_CE_SUBJECT_ALT_NAME {
            let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(NamesError::BadSan)?;
            for gn in san.0 {
                if let GeneralName::DnsName(d) = gn {
                    names.push(d.as_str().to_owned());
                }
            }
        }
    }
    Ok(names)
}

impl ClientCertVerifier for NameCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let names = certificate_names(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.allows_one_of(&names) {
            Ok(verified)
        } else {
            tracing::warn!(presented = ?names, "client certificate name not in tls.client_names; handshake aborted");
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Seconds until the first certificate in a PEM file expires (negative when expired).
pub fn seconds_to_expiry(pem_path: &std::path::Path) -> Result<i64, ExpiryError> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(pem_path).map_err(|source| ExpiryError::Unreadable {
        path: pem_path.to_owned(),
        source,
    })?;
    let cert = Certificate::from_der(&der).map_err(|source| ExpiryError::Unparseable {
        path: pem_path.to_owned(),
        source,
    })?;
    let not_after = cert
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs() as i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(not_after - now)
}
