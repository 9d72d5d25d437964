//! The assembled request handler, independent of HTTP plumbing: keystores (URI prefix,
//! credentials, key selection, token) and the dispatch from a routed, authenticated request to
//! its operation.

use crate::auth::CredentialSet;
use crate::authz::{CompiledPolicy, RequestFacts};
use crate::config::Limits;
use crate::error::Error;
use crate::hsm::Hsm;
use crate::kill_switch::KillSwitch;
use crate::ops::{self, RequestContext};
use crate::ratelimit::TokenBucket;
use crate::server::routes::Operation;
use std::collections::HashSet;
use std::sync::Arc;

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
    /// Request quota, if configured.
    pub quota: Option<TokenBucket>,
    /// Secondary authorization, if configured (shared by all keystores).
    pub policy: Option<Arc<CompiledPolicy>>,
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
            quota: None,
            policy: None,
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

    /// Secondary authorization of an authenticated, validated request for a known key. The
    /// deciding rule is recorded for the audit trail and logged on a denial.
    pub fn authorize(&self, op: Operation, key_id: &str, ctx: &mut RequestContext) -> Result<(), Error> {
        let Some(policy) = &self.policy else { return Ok(()) };
        let facts = RequestFacts {
            key_id: Some(key_id),
            kms_operation: ctx.kms_operation.as_deref(),
            principal: ctx.principal.as_deref(),
            via_service: ctx.via_service.as_deref(),
            source_vpc: ctx.source_vpc.as_deref(),
            source_vpce: ctx.source_vpce.as_deref(),
            access_key_id: ctx.access_key_id.as_deref(),
            ..RequestFacts::new(&self.prefix, op)
        };
        let decision = policy.evaluate(&facts);
        ctx.authz_rule = Some(decision.rule().to_owned());
        if decision.is_allowed() {
            Ok(())
        } else {
            tracing::warn!(rule = decision.rule(), keystore = %self.prefix, key_id, operation = op.name(),
                principal = ctx.principal.as_deref().unwrap_or("-"), "request denied by policy");
            Err(Error::AccessDenied(decision.rule().to_owned()))
        }
    }

    /// Key-scope kill switch: a disabled key refuses Encrypt and Decrypt.
    pub fn check_enabled(&self, key_id: &str) -> Result<(), Error> {
        if self.hsm.token().is_refused(key_id) {
            Err(Error::InvalidState("the external key is disabled".into()))
        } else {
            Ok(())
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
    /// Whole-proxy and keystore kill switch.
    pub kill: Arc<KillSwitch>,
    /// `<prefix>/kms/xks/v1` of each keystore, for routing.
    pub api_bases: Vec<String>,
}

impl App {
    /// Assembles the app.
    pub fn new(keystores: Vec<Keystore>, limits: Limits, fleet_size: u32, kill: Arc<KillSwitch>) -> App {
        let api_bases = keystores.iter().map(|k| k.api_base.clone()).collect();
        App {
            keystores,
            limits,
            fleet_size,
            kill,
            api_bases,
        }
    }

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
        if self.kill.proxy_engaged() {
            return Err(Error::InvalidState("the proxy kill switch is engaged".into()));
        }
        if self.kill.keystore_engaged(&ks.prefix) {
            return Err(Error::InvalidState(
                "this keystore is disabled by its kill switch".into(),
            ));
        }
        if ks.quota.as_ref().is_some_and(|q| !q.try_take()) {
            return Err(Error::Throttled);
        }
        match op {
            Operation::Health => ops::health::handle(ks, self.fleet_size, body, ctx).await,
            Operation::Metadata => ops::metadata::handle(ks, key_id, body, ctx).await,
            Operation::Encrypt => ops::encrypt::handle(ks, key_id, body, &self.limits, ctx).await,
            Operation::Decrypt => ops::decrypt::handle(ks, key_id, body, &self.limits, ctx).await,
        }
    }
}
