//! One logical keystore: a URI prefix with its own credentials, key selection, quota, policy
//! and token. Below the operations, which take it as their view of the configuration.

use crate::auth::CredentialSet;
use crate::authz::{CompiledPolicy, RequestFacts};
use crate::error::Error;
use crate::gates::Gate;
use crate::hsm::budget::KeyBudgets;
use crate::hsm::Hsm;
use crate::ratelimit::TokenBucket;
use crate::request::RequestContext;
use crate::xks::Operation;
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
    /// This keystore's kill switch; the HSM workers check it again right before each call.
    pub gate: Gate,
    /// Encryption budget and maximum age of its keys' versions (`key_budgets` included).
    pub budgets: KeyBudgets,
}

impl Keystore {
    /// Builds a keystore; `pattern` must already be validated.
    pub fn new(
        prefix: String,
        credentials: CredentialSet,
        hsm: Hsm,
        allowed: Vec<String>,
        pattern: Option<glob::Pattern>,
        gate: Gate,
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
            gate,
            budgets: KeyBudgets::default(),
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
                principal = &*crate::request::cap(ctx.principal.as_deref().unwrap_or("-"), crate::request::MAX_ARN_CHARS),
                "request denied by policy");
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
