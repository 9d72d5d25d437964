//! rustls server configuration: TLS 1.2 and 1.3 only, the spec's AEAD cipher suites (plus
//! TLS 1.3's mandatory AES-128-GCM), HTTP/1.1 via ALPN, session resumption (stateful cache and
//! TLS 1.3 tickets) so KMS reconnects skip a full handshake, and optional mutual TLS.
//!
//! Resumption stays on with mutual TLS: the server re-checks the client chain of every
//! connection, resumed or not, against the current trust ([`Tls::admits`]), so a session
//! cannot carry a certificate past a trust change, and KMS keeps its cheap reconnects.

use super::mtls::{NameCheckingVerifier, Untrusted};
use crate::config::TlsConfig;
use rustls::crypto::ring::{cipher_suite as cs, default_provider, Ticketer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::VerifierBuilderError;
use rustls::{RootCertStore, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why the `[tls]` section cannot be loaded. Each message names the field and, for a file,
/// its path, as the operator reads it at start and on a refused reload.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `certificate` cannot be read or is not PEM.
    #[error("tls.certificate: {}: {source}", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls::pki_types::pem::Error,
    },
    /// `certificate` holds no certificate.
    #[error("tls.certificate: {} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    /// `private_key` cannot be read, is not PEM or holds no key.
    #[error("tls.private_key: {}: {source}", path.display())]
    PrivateKey {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls::pki_types::pem::Error,
    },
    /// The protocol versions are not supported by the cipher suites.
    #[error("tls: {0}")]
    Protocols(#[source] rustls::Error),
    /// `client_ca` cannot be read or is not PEM.
    #[error("tls.client_ca: {}: {source}", path.display())]
    ClientCaUnreadable {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of `client_ca` is not usable as a trust anchor.
    #[error("tls.client_ca: {}: {source}", path.display())]
    ClientCaRefused {
        /// The file.
        path: PathBuf,
        /// Why the certificate was refused.
        source: rustls::Error,
    },
    /// `client_ca` holds no certificate.
    #[error("tls.client_ca: {} holds no certificate", .0.display())]
    NoClientCa(PathBuf),
    /// The client verifier cannot be built from `client_ca`.
    #[error("tls.client_ca: {0}")]
    ClientVerifier(#[source] VerifierBuilderError),
    /// The certificate and the private key do not belong together, or the key type is not
    /// supported.
    #[error("tls: certificate and private key do not match or are unsupported: {0}")]
    KeyMismatch(#[source] rustls::Error),
    /// No session ticket key could be made.
    #[error("tls: cannot create session ticketer: {0}")]
    Ticketer(#[source] rustls::Error),
}

/// The TLS side of the listener, swapped as a whole on reload: the acceptor for new
/// connections and the client trust it applies, kept so that resumed sessions and open
/// connections can be checked against it.
#[derive(Clone)]
pub struct Tls {
    /// Accepts new connections with the `[tls]` configuration.
    pub acceptor: TlsAcceptor,
    client_trust: Option<Arc<NameCheckingVerifier>>,
}

impl Tls {
    /// Builds the acceptor from the `[tls]` section; errors name the field.
    pub fn from_config(tls: &TlsConfig) -> Result<Tls, TlsError> {
        let (cfg, client_trust) = server_config(tls)?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(cfg),
            client_trust,
        })
    }

    /// Whether a connection whose client presented `chain` (empty: none) passes this
    /// configuration's client trust. Always true without `client_ca`.
    pub fn admits(&self, chain: &[CertificateDer<'_>]) -> Result<(), Untrusted> {
        match &self.client_trust {
            Some(trust) => trust.admits(chain),
            None => Ok(()),
        }
    }
}

/// The cipher suites offered, strongest first.
fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        ],
        ..default_provider()
    }
}

/// Builds the server config from the `[tls]` section, with the client verifier when
/// `client_ca` is set; errors name the field and the problem.
fn server_config(
    tls: &TlsConfig,
) -> Result<(Arc<ServerConfig>, Option<Arc<NameCheckingVerifier>>), TlsError> {
    let (cert, key) = (&tls.certificate, &tls.private_key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|source| TlsError::Certificate {
            path: cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::PrivateKey {
        path: key.clone(),
        source,
    })?;
    let provider = Arc::new(provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Protocols)?;
    let mut trust = None;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let unreadable = |source| TlsError::ClientCaUnreadable {
                path: ca.clone(),
                source,
            };
            for c in CertificateDer::pem_file_iter(ca).map_err(unreadable)? {
                roots
                    .add(c.map_err(unreadable)?)
                    .map_err(|source| TlsError::ClientCaRefused {
                        path: ca.clone(),
                        source,
                    })?;
            }
            if roots.is_empty() {
                return Err(TlsError::NoClientCa(ca.clone()));
            }
            let v = Arc::new(
                NameCheckingVerifier::new(roots, tls.client_names.clone(), provider)
                    .map_err(TlsError::ClientVerifier)?,
            );
            trust = Some(v.clone());
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::KeyMismatch)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = Ticketer::new().map_err(TlsError::Ticketer)?;
    Ok((Arc::new(cfg), trust))
}
