//! rustls server configuration: TLS 1.2 and 1.3 only, the spec's AEAD cipher suites (plus
//! TLS 1.3's mandatory AES-128-GCM), HTTP/1.1 via ALPN, and session resumption (stateful cache
//! and TLS 1.3 tickets) so KMS reconnects skip a full handshake.

use rustls::crypto::ring::{cipher_suite as cs, default_provider, Ticketer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;

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

/// Builds the server config from PEM files; errors name the file and the problem.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.certificate: {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls.certificate: {} holds no certificate",
            cert.display()
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls.private_key: {}: {e}", key.display()))?;
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls: certificate and private key do not match or are unsupported: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.ticketer = Ticketer::new().map_err(|e| format!("tls: cannot create session ticketer: {e}"))?;
    Ok(Arc::new(cfg))
}
