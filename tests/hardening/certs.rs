//! Certificates made in the test with `rcgen`: CAs (roots and intermediates), leaves, and a
//! client config presenting one.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use std::path::Path;
use std::sync::Arc;

pub fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A certificate authority made for one test: a root, or an intermediate under one.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    /// The intermediate CA certificates from this CA up to (not including) the root, which a
    /// certificate holder sends along with its own.
    pub intermediates: Vec<CertificateDer<'static>>,
}

/// What a leaf certificate says.
pub struct LeafSpec<'a> {
    /// Subject CN (none: an empty subject).
    pub cn: Option<&'a str>,
    /// Subject alternative names (an IP address becomes an IP SAN, anything else a dNSName).
    pub sans: &'a [&'a str],
    pub eku: ExtendedKeyUsagePurpose,
    /// Validity ends a day ago.
    pub expired: bool,
}

/// A certificate with its private key.
pub struct Leaf {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    /// Intermediate CA certificates sent after the leaf.
    pub intermediates: Vec<CertificateDer<'static>>,
}

pub fn ca_params(cn: &str, path_len: u8) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(30);
    p.not_after = now + time::Duration::days(30);
    p
}

impl Ca {
    /// A root CA that signs leaves directly.
    pub fn new(cn: &str) -> Ca {
        Self::root(cn, 0)
    }

    /// A root CA allowing `path_len` intermediates below it.
    pub fn root(cn: &str, path_len: u8) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let cert = ca_params(cn, path_len).self_signed(&key).expect("self-signed CA");
        Ca {
            cert,
            key,
            intermediates: Vec::new(),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let cert = ca_params(cn, 0)
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign intermediate");
        let mut intermediates = vec![cert.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ca {
            cert,
            key,
            intermediates,
        }
    }

    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).expect("write CA PEM");
    }

    pub fn issue(&self, spec: LeafSpec) -> Leaf {
        self.issue_with(spec, None)
    }

    /// Like [`Ca::issue`], valid from a day ago until `not_after`.
    pub fn issue_until(&self, spec: LeafSpec, not_after: time::OffsetDateTime) -> Leaf {
        self.issue_with(spec, Some(not_after))
    }

    fn issue_with(&self, spec: LeafSpec, not_after: Option<time::OffsetDateTime>) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let sans: Vec<String> = spec.sans.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).expect("leaf params");
        p.distinguished_name = match spec.cn {
            Some(cn) => dn(cn),
            None => DistinguishedName::new(),
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![spec.eku];
        let now = time::OffsetDateTime::now_utc();
        if spec.expired {
            p.not_before = now - time::Duration::days(10);
            p.not_after = now - time::Duration::days(1);
        } else {
            p.not_before = now - time::Duration::days(1);
            p.not_after = not_after.unwrap_or(now + time::Duration::days(10));
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("sign leaf");
        Leaf {
            cert,
            key,
            intermediates: self.intermediates.clone(),
        }
    }
}

impl Leaf {
    /// The leaf followed by its intermediates.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![self.cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        chain
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

/// A client config trusting `server_ca`, speaking only `version`, presenting `cert` if given.
pub fn client_tls(
    server_ca: &Path,
    version: &'static SupportedProtocolVersion,
    cert: Option<&Leaf>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca).expect("read server CA") {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .expect("protocol version")
        .with_root_certificates(roots);
    let cfg = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.key_der())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}
