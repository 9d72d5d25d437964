//! AWS Signature Version 4, as the XKS spec uses it: service `kms-xks-proxy`, region taken from
//! the credential scope, an empty query string, every header named in `SignedHeaders`, the hash
//! of the exact body bytes, ±5 minutes of clock skew and a constant-time comparison.
//!
//! Signing lives here too (used by `bench` and the quickstart's sample request) so both sides
//! share one canonicalisation; tests check the verifier against AWS's published vectors and an
//! independent signer (the `aws-sigv4` crate).

use super::AuthError;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The only signing algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service name in the credential scope.
pub const SERVICE: &str = "kms-xks-proxy";
/// Allowed distance between X-Amz-Date and the proxy's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
const DERIVED_KEYS_KEPT: usize = 8;

type HmacSha256 = Hmac<Sha256>;
/// A derived signing key for one (yyyymmdd, region).
type DerivedKey = (String, String, Zeroizing<[u8; 32]>);

/// One access key id and its secret, with a small cache of derived signing keys.
pub struct Credential {
    /// The access key id (not secret).
    pub access_key_id: String,
    secret: SecretString,
    /// Derived keys per (yyyymmdd, region): deriving costs four HMACs, so it is done once a day.
    derived: Mutex<Vec<DerivedKey>>,
}

impl Credential {
    /// A credential from its id and secret.
    pub fn new(access_key_id: String, secret: SecretString) -> Self {
        Credential {
            access_key_id,
            secret,
            derived: Mutex::new(Vec::new()),
        }
    }

    fn signing_key(&self, date: &str, region: &str) -> Zeroizing<[u8; 32]> {
        let mut cache = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, k)) = cache.iter().find(|(d, r, _)| d == date && r == region) {
            return k.clone();
        }
        let key = derive_signing_key(self.secret.expose_secret(), date, region);
        if cache.len() >= DERIVED_KEYS_KEPT {
            cache.remove(0);
        }
        cache.push((date.to_owned(), region.to_owned(), key.clone()));
        key
    }
}

/// The credentials of one keystore.
#[derive(Clone, Default)]
pub struct CredentialSet {
    creds: Vec<Arc<Credential>>,
    allowed_regions: Arc<Vec<String>>,
}

/// What a successful verification proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The access key id that signed the request.
    pub access_key_id: String,
    /// The region in the credential scope.
    pub region: String,
}

impl CredentialSet {
    /// A set accepting any of `creds`; `allowed_regions` empty means any region.
    pub fn new(creds: Vec<Credential>, allowed_regions: Vec<String>) -> Self {
        CredentialSet {
            creds: creds.into_iter().map(Arc::new).collect(),
            allowed_regions: Arc::new(allowed_regions),
        }
    }

    /// Verifies a request. `path` is the path as received, `query` must be empty.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, AuthError> {
        let auth = single_header(headers, "authorization")?;
        let amz_date = single_header(headers, "x-amz-date")?;
        let parsed = parse_authorization(auth)?;
        let scope = parse_scope(parsed.credential)?;
        let cred = self
            .creds
            .iter()
            .find(|c| c.access_key_id == scope.access_key_id)
            .ok_or(AuthError::UnknownAccessKey)?;
        if scope.service != SERVICE {
            return Err(AuthError::WrongService);
        }
        if !self.allowed_regions.is_empty() && !self.allowed_regions.iter().any(|r| r == scope.region) {
            return Err(AuthError::RegionNotAllowed);
        }
        let request_time = parse_amz_date(amz_date)?;
        if amz_date.get(..8) != Some(scope.date) {
            return Err(AuthError::ScopeDateMismatch);
        }
        let skew = match now.duration_since(request_time) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > MAX_SKEW {
            return Err(AuthError::ClockSkew);
        }
        let names = signed_header_names(parsed.signed_headers)?;
        let mut values = Vec::with_capacity(names.len());
        for name in &names {
            values.push(
                canonical_header_value(headers, name).ok_or(AuthError::SignedHeaders(
                    "a signed header is missing from the request",
                ))?,
            );
        }
        let pairs = names.iter().copied().zip(values.iter().map(String::as_str));
        let creq = canonical_request(method, path, pairs, parsed.signed_headers, body);
        let sts = string_to_sign(amz_date, parsed.credential_scope(), &creq);
        let key = cred.signing_key(scope.date, scope.region);
        let expected = hmac(&key[..], sts.as_bytes());
        let mut given = [0u8; 32];
        hex::decode_to_slice(parsed.signature, &mut given)
            .map_err(|_| AuthError::Malformed("signature is not 64 hex digits"))?;
        if bool::from(expected.ct_eq(&given)) {
            Ok(Verified {
                access_key_id: cred.access_key_id.clone(),
                region: scope.region.to_owned(),
            })
        } else {
            Err(AuthError::SignatureMismatch)
        }
    }
}

/// Headers produced by [`sign`].
pub struct Signature {
    /// Value of `X-Amz-Date`.
    pub amz_date: String,
    /// Value of `Authorization`.
    pub authorization: String,
}

/// Signs a POST with `SignedHeaders=content-type;host;x-amz-date` (what curl signs).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    path: &str,
    host: &str,
    content_type: &str,
    body: &[u8],
    access_key_id: &str,
    secret: &str,
    region: &str,
    now: SystemTime,
) -> Signature {
    let amz_date = format_amz_date(now);
    let date = &amz_date[..8];
    let signed = "content-type;host;x-amz-date";
    // Canonical values, exactly as `verify` computes them from the headers as sent.
    let (mut content_type_c, mut host_c) = (String::new(), String::new());
    push_trimmed(&mut content_type_c, content_type);
    push_trimmed(&mut host_c, host);
    let pairs = [
        ("content-type", content_type_c.as_str()),
        ("host", host_c.as_str()),
        ("x-amz-date", amz_date.as_str()),
    ];
    let creq = canonical_request("POST", path, pairs.into_iter(), signed, body);
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let sts = string_to_sign(&amz_date, &scope, &creq);
    let key = derive_signing_key(secret, date, region);
    let sig = hex::encode(hmac(&key[..], sts.as_bytes()));
    let authorization =
        format!("{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={sig}");
    Signature {
        amz_date,
        authorization,
    }
}

struct ParsedAuth<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

impl<'a> ParsedAuth<'a> {
    fn credential_scope(&self) -> &'a str {
        // credential = AKID/date/region/service/aws4_request; the scope is all but the AKID.
        self.credential.split_once('/').map(|(_, s)| s).unwrap_or("")
    }
}

struct Scope<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
}

/// The one value of `name`. A repeated `Authorization` or `X-Amz-Date` is refused rather
/// than resolved: a proxy in front of us may pick a different copy than we do, and the
/// signature must cover exactly what every hop sees.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, AuthError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(AuthError::MissingHeader)?;
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader);
    }
    first.to_str().map_err(|_| AuthError::MissingHeader)
}

fn parse_authorization(value: &str) -> Result<ParsedAuth<'_>, AuthError> {
    let (algorithm, rest) = value
        .split_once(' ')
        .ok_or(AuthError::Malformed("no space after the algorithm"))?;
    if algorithm != ALGORITHM {
        return Err(AuthError::Malformed("algorithm is not AWS4-HMAC-SHA256"));
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(AuthError::Malformed("component without '='"))?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(AuthError::Malformed("unknown component")),
        };
        if slot.replace(v).is_some() {
            return Err(AuthError::Malformed("component repeated"));
        }
    }
    match (credential, signed_headers, signature) {
        (Some(credential), Some(signed_headers), Some(signature)) => Ok(ParsedAuth {
            credential,
            signed_headers,
            signature,
        }),
        _ => Err(AuthError::Malformed(
            "Credential, SignedHeaders or Signature missing",
        )),
    }
}

fn parse_scope(credential: &str) -> Result<Scope<'_>, AuthError> {
    let mut it = credential.split('/');
    let mut next = || {
        it.next()
            .ok_or(AuthError::Malformed("credential scope has too few parts"))
    };
    let scope = Scope {
        access_key_id: next()?,
        date: next()?,
        region: next()?,
        service: next()?,
    };
    if next()? != "aws4_request" || it.next().is_some() {
        return Err(AuthError::Malformed(
            "credential scope must end with aws4_request",
        ));
    }
    Ok(scope)
}

fn signed_header_names(list: &str) -> Result<Vec<&str>, AuthError> {
    let names: Vec<&str> = list.split(';').collect();
    let well_formed = names
        .iter()
        .all(|n| !n.is_empty() && !n.bytes().any(|b| b.is_ascii_uppercase()))
        && names.windows(2).all(|w| w[0] < w[1]);
    if !well_formed {
        return Err(AuthError::Malformed(
            "SignedHeaders must be sorted, lower-case and unique",
        ));
    }
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return Err(AuthError::SignedHeaders("host and x-amz-date must be signed"));
    }
    Ok(names)
}

/// All values of a header, each trimmed with inner runs of spaces collapsed, joined by commas.
fn canonical_header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?;
        if any {
            out.push(',');
        }
        any = true;
        push_trimmed(&mut out, v);
    }
    any.then_some(out)
}

/// One header value as SigV4 canonicalises it: trimmed, inner runs of spaces and tabs made one
/// space.
fn push_trimmed(out: &mut String, value: &str) {
    let mut last_space = false;
    for c in value.trim().chars() {
        if c == ' ' || c == '\t' {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
}

fn canonical_request<'a>(
    method: &str,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    signed_headers: &str,
    body: &[u8],
) -> String {
    let mut c = String::with_capacity(256);
    c.push_str(method);
    c.push('\n');
    c.push_str(path);
    c.push_str("\n\n"); // the XKS API never uses a query string
    for (name, value) in headers {
        c.push_str(name);
        c.push(':');
        c.push_str(value);
        c.push('\n');
    }
    c.push('\n');
    c.push_str(signed_headers);
    c.push('\n');
    c.push_str(&hex::encode(Sha256::digest(body)));
    c
}

fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = hex::encode(Sha256::digest(canonical_request.as_bytes()));
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{hash}")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"); // ok: infallible
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn derive_signing_key(secret: &str, date: &str, region: &str) -> Zeroizing<[u8; 32]> {
    derive_signing_key_for(secret, date, region, SERVICE)
}

fn derive_signing_key_for(secret: &str, date: &str, region: &str, service: &str) -> Zeroizing<[u8; 32]> {
    let k_secret = Zeroizing::new(format!("AWS4{secret}"));
    let k_date = Zeroizing::new(hmac(k_secret.as_bytes(), date.as_bytes()));
    let k_region = Zeroizing::new(hmac(&k_date[..], region.as_bytes()));
    let k_service = Zeroizing::new(hmac(&k_region[..], service.as_bytes()));
    Zeroizing::new(hmac(&k_service[..], b"aws4_request"))
}

const AMZ_DATE: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

fn parse_amz_date(s: &str) -> Result<SystemTime, AuthError> {
    time::PrimitiveDateTime::parse(s, AMZ_DATE)
        .map(|t| t.assume_utc().into())
        .map_err(|_| AuthError::Malformed("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))
}

/// Formats a time as an `X-Amz-Date` value.
pub fn format_amz_date(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(AMZ_DATE).unwrap_or_default()
}

#[cfg(test)]
#[path = "sigv4_tests.rs"]
mod tests;
