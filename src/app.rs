//! The assembled request handler, independent of HTTP plumbing: keystores (URI prefix,
//! credentials, key selection, token) and the dispatch from a routed, authenticated request to
//! its operation.

use crate::auth::CredentialSet;
use crate::config::Limits;
use crate::error::Error;
use crate::hsm::Hsm;
use crate::ops::{self, RequestContext};
use crate::server::routes::Operation;
use std::collections::HashSet;

/// One logical keystore: a URI prefix with its own credentials and key set.
pub struct Keystore {
    /// Prefix as configured (may be empty).
    pub prefix: String,
    /// `<prefix>/kms/xks/v1`.
    pub api_base: String,
    /// SigV4 credentials accepted on this prefix.
    pub credentials: CredentialSet,
    /// Worker pool of the token holding the keys.
    pub hsm: Hsm,
    allowed: HashSet<String>,
    pattern: Option<glob::Pattern>,
}

impl Keystore {
    /// Builds a keystore; `pattern` must already be validated.
    pub fn new(
        prefix: String,
        credentials: CredentialSet,
        hsm: Hsm,
        allowed: Vec<String>,
        pattern: Option<glob::Pattern>,
    ) -> Keystore {
        let api_base = format!("{prefix}/kms/xks/v1");
        Keystore {
            prefix,
            api_base,
            credentials,
            hsm,
            allowed: allowed.into_iter().collect(),
            pattern,
        }
    }

    /// A key outside the keystore's allow-list or pattern is answered exactly like a key that
    /// does not exist, so a caller learns nothing about other keys on the token.
    pub fn check_key(&self, key_id: &str) -> Result<(), Error> {
        let by_pattern = self.pattern.as_ref().is_some_and(|p| p.matches(key_id));
        if self.allowed.contains(key_id) || by_pattern {
            Ok(())
        } else {
            Err(Error::KeyNotFound)
        }
    }
}

/// Everything a request needs, shared by all connections.
pub struct App {
    /// Keystores in config order.
    pub keystores: Vec<Keystore>,
    /// Size limits.
    pub limits: Limits,
    /// Reported fleet size.
    pub fleet_size: u32,
}

impl App {
    /// Runs an authenticated request's operation.
    pub async fn dispatch(
        &self,
        keystore: usize,
        op: Operation,
        key_id: &str,
        body: &[u8],
        ctx: &mut RequestContext,
    ) -> Result<Vec<u8>, Error> {
        let ks = self.keystores.get(keystore).ok_or(Error::InvalidUriPath)?;
        match op {
            Operation::Health => ops::health::handle(ks, self.fleet_size, body, ctx).await,
            Operation::Metadata => ops::metadata::handle(ks, key_id, body, ctx).await,
            Operation::Encrypt => ops::encrypt::handle(ks, key_id, body, &self.limits, ctx).await,
            Operation::Decrypt => ops::decrypt::handle(ks, key_id, body, &self.limits, ctx).await,
        }
    }
}
