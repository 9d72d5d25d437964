//! Secondary authorization (XKS spec section 13): a declarative allow/deny policy over the
//! request's metadata, evaluated after authentication and key lookup, before key state.
//!
//! # Policy file shape
//!
//! ```toml
//! [policy]
//! default = "deny"                       # "allow" | "deny": applies when no rule matches
//!
//! [[policy.rules]]
//! name = "deny-finance-key-outside-ebs"  # required, unique, [A-Za-z0-9._-]{1,64}
//! effect = "deny"                        # "allow" | "deny"
//! key_ids = ["fin-*"]                    # conditions, see below
//! unless = { kms_via_services = ["ebs"] }
//! ```
//!
//! # Conditions
//!
//! | Field              | Request fact                            | Match        |
//! |--------------------|-----------------------------------------|--------------|
//! | `keystores`        | URI prefix of the keystore (`""` = root) | exact        |
//! | `operations`       | XKS operation (`GetKeyMetadata`, `Encrypt`, `Decrypt`) | exact |
//! | `key_ids`          | external key id from the path           | glob         |
//! | `kms_operations`   | `requestMetadata.kmsOperation`          | exact        |
//! | `principals`       | `requestMetadata.awsPrincipalArn`       | glob         |
//! | `kms_via_services` | `requestMetadata.kmsViaService`         | exact        |
//! | `source_vpcs`      | `requestMetadata.awsSourceVpc`          | exact        |
//! | `source_vpces`     | `requestMetadata.awsSourceVpce`         | exact        |
//! | `access_key_ids`   | SigV4 access key id that signed the request | exact    |
//!
//! Matching is case-sensitive. Globs use the `glob` crate's syntax (`*`, `?`, `[...]`) and `*`
//! also matches `/`, so `arn:aws:iam::111122223333:role/*` covers role paths too.
//!
//! # Semantics
//!
//! 1. `GetHealthStatus` is always allowed, before any rule is looked at (the spec says it MUST
//!    be exempt). [`CompiledPolicy::evaluate`] answers `Allow { rule: "health-exempt" }` for
//!    it, and a rule that names `GetHealthStatus` in `operations` is a validation error, so
//!    nobody can believe they have denied health checks.
//! 2. A condition is a list of values; it matches when the request's fact equals one of them
//!    (or matches one of the globs). A condition on a fact the request lacks (e.g.
//!    `kms_via_services` when `kmsViaService` is absent) does **not** match. There is no
//!    literal standing for "absent": use `unless` instead (see 4).
//! 3. A rule's conditions combine with AND: the rule matches when every condition it sets
//!    matches. An absent condition matches anything, so a rule without conditions matches
//!    every request (a blanket allow or deny). A condition set to an empty list is a
//!    validation error, because it could never match and is almost certainly a mistake.
//! 4. `unless` is an optional table with the same condition fields. A rule matches when its own
//!    conditions match and the `unless` conditions do **not** all match. Because an absent
//!    fact never matches, `unless = { kms_via_services = ["ebs"] }` excludes exactly the
//!    requests that came through EBS; a request without `kmsViaService` is not excluded, so
//!    a deny rule with it fails closed.
//! 5. Explicit deny wins: if any matching rule has `effect = "deny"`, the request is denied
//!    by the first such rule in file order; otherwise, if a matching rule allows, it is
//!    allowed by the first such rule; otherwise `default` decides (rule name `"default"`).
//! 6. Unknown `kmsOperation` values are never an error: they are strings like any other, so
//!    an exact `kms_operations` rule can match them and otherwise the default applies.
//!
//! The deciding rule's name is returned in the [`Decision`]; the caller logs it and records it
//! in the audit trail, so an operator can tell which statement denied a request.

mod compiled;
#[cfg(test)]
mod tests;

pub use compiled::CompiledPolicy;

use crate::xks::Operation;
use serde::Deserialize;

/// Rule name reported when no rule matched and `default` decided.
pub const DEFAULT_RULE: &str = "default";
/// Rule name reported for `GetHealthStatus`, which is never subject to the policy.
pub const HEALTH_EXEMPT_RULE: &str = "health-exempt";

/// What a rule (or the default) does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Answer 403 `AccessDeniedException`.
    Deny,
}

/// The `[policy]` table as written in the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Effect when no rule matches.
    pub default: Effect,
    /// Rules in file order; order picks which rule is reported, never whether deny wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One `[[policy.rules]]` entry: a name, an effect and conditions (see the module doc).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name, logged and audited when this rule decides.
    pub name: String,
    /// Allow or deny.
    pub effect: Effect,
    /// Keystore URI prefixes, exact (`""` is the keystore without a prefix).
    pub keystores: Option<Vec<String>>,
    /// XKS operation names.
    pub operations: Option<Vec<String>>,
    /// Globs over the external key id.
    pub key_ids: Option<Vec<String>>,
    /// `kmsOperation` values, exact; unknown values are fine.
    pub kms_operations: Option<Vec<String>>,
    /// Globs over `awsPrincipalArn`.
    pub principals: Option<Vec<String>>,
    /// `kmsViaService` values, exact.
    pub kms_via_services: Option<Vec<String>>,
    /// `awsSourceVpc` values, exact.
    pub source_vpcs: Option<Vec<String>>,
    /// `awsSourceVpce` values, exact.
    pub source_vpces: Option<Vec<String>>,
    /// SigV4 access key ids, exact.
    pub access_key_ids: Option<Vec<String>>,
    /// Exceptions: the rule does not match a request that matches all of these.
    pub unless: Option<Conditions>,
}

/// The condition fields alone, as used by `unless`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditions {
    /// Keystore URI prefixes, exact.
    pub keystores: Option<Vec<String>>,
    /// XKS operation names.
    pub operations: Option<Vec<String>>,
    /// Globs over the external key id.
    pub key_ids: Option<Vec<String>>,
    /// `kmsOperation` values, exact.
    pub kms_operations: Option<Vec<String>>,
    /// Globs over `awsPrincipalArn`.
    pub principals: Option<Vec<String>>,
    /// `kmsViaService` values, exact.
    pub kms_via_services: Option<Vec<String>>,
    /// `awsSourceVpc` values, exact.
    pub source_vpcs: Option<Vec<String>>,
    /// `awsSourceVpce` values, exact.
    pub source_vpces: Option<Vec<String>>,
    /// SigV4 access key ids, exact.
    pub access_key_ids: Option<Vec<String>>,
}

impl Rule {
    /// The rule's own conditions, in the same shape as `unless`.
    fn conditions(&self) -> ConditionRefs<'_> {
        ConditionRefs([
            (Fact::Keystore, &self.keystores),
            (Fact::Operation, &self.operations),
            (Fact::KeyId, &self.key_ids),
            (Fact::KmsOperation, &self.kms_operations),
            (Fact::Principal, &self.principals),
            (Fact::ViaService, &self.kms_via_services),
            (Fact::SourceVpc, &self.source_vpcs),
            (Fact::SourceVpce, &self.source_vpces),
            (Fact::AccessKeyId, &self.access_key_ids),
        ])
    }
}

impl Conditions {
    fn refs(&self) -> ConditionRefs<'_> {
        ConditionRefs([
            (Fact::Keystore, &self.keystores),
            (Fact::Operation, &self.operations),
            (Fact::KeyId, &self.key_ids),
            (Fact::KmsOperation, &self.kms_operations),
            (Fact::Principal, &self.principals),
            (Fact::ViaService, &self.kms_via_services),
            (Fact::SourceVpc, &self.source_vpcs),
            (Fact::SourceVpce, &self.source_vpces),
            (Fact::AccessKeyId, &self.access_key_ids),
        ])
    }
}

/// Every condition field of a rule or of `unless`, so that validation and compilation are
/// written once for both.
struct ConditionRefs<'a>([(Fact, &'a Option<Vec<String>>); 9]);

/// Which request fact a condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    Keystore,
    Operation,
    KeyId,
    KmsOperation,
    Principal,
    ViaService,
    SourceVpc,
    SourceVpce,
    AccessKeyId,
}

impl Fact {
    /// The TOML field name, for error messages.
    fn field(self) -> &'static str {
        match self {
            Fact::Keystore => "keystores",
            Fact::Operation => "operations",
            Fact::KeyId => "key_ids",
            Fact::KmsOperation => "kms_operations",
            Fact::Principal => "principals",
            Fact::ViaService => "kms_via_services",
            Fact::SourceVpc => "source_vpcs",
            Fact::SourceVpce => "source_vpces",
            Fact::AccessKeyId => "access_key_ids",
        }
    }
}

/// What the policy knows about one request. Optional facts are `None` when the request did not
/// carry them.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// URI prefix of the keystore the request was routed to.
    pub keystore: &'a str,
    /// The XKS operation; typed so the health exemption cannot be missed by a misspelling.
    pub operation: Operation,
    /// External key id (`None` only for health).
    pub key_id: Option<&'a str>,
    /// `requestMetadata.kmsOperation`.
    pub kms_operation: Option<&'a str>,
    /// `requestMetadata.awsPrincipalArn`.
    pub principal: Option<&'a str>,
    /// `requestMetadata.kmsViaService`.
    pub via_service: Option<&'a str>,
    /// `requestMetadata.awsSourceVpc`.
    pub source_vpc: Option<&'a str>,
    /// `requestMetadata.awsSourceVpce`.
    pub source_vpce: Option<&'a str>,
    /// The SigV4 access key id that signed the request.
    pub access_key_id: Option<&'a str>,
}

impl<'a> RequestFacts<'a> {
    /// Facts for `keystore` and `operation` with every optional fact absent; set the others
    /// with struct update syntax.
    pub fn new(keystore: &'a str, operation: Operation) -> RequestFacts<'a> {
        RequestFacts {
            keystore,
            operation,
            key_id: None,
            kms_operation: None,
            principal: None,
            via_service: None,
            source_vpc: None,
            source_vpce: None,
            access_key_id: None,
        }
    }

    fn get(&self, fact: Fact) -> Option<&'a str> {
        match fact {
            Fact::Keystore => Some(self.keystore),
            Fact::Operation => Some(self.operation.name()),
            Fact::KeyId => self.key_id,
            Fact::KmsOperation => self.kms_operation,
            Fact::Principal => self.principal,
            Fact::ViaService => self.via_service,
            Fact::SourceVpc => self.source_vpc,
            Fact::SourceVpce => self.source_vpce,
            Fact::AccessKeyId => self.access_key_id,
        }
    }
}

/// The outcome of evaluating the policy for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go on; `rule` is the allowing rule, [`DEFAULT_RULE`] or [`HEALTH_EXEMPT_RULE`].
    Allow {
        /// Name of the deciding rule.
        rule: String,
    },
    /// Answer 403 `AccessDeniedException`; `rule` is the denying rule or [`DEFAULT_RULE`].
    Deny {
        /// Name of the deciding rule.
        rule: String,
    },
}

impl Decision {
    /// Was the request allowed?
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// Name of the rule that decided.
    pub fn rule(&self) -> &str {
        match self {
            Decision::Allow { rule } | Decision::Deny { rule } => rule,
        }
    }
}

/// One problem in a policy, naming the field (`policy.rules[2].key_ids[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Policy {
    /// Checks the whole policy and returns every problem found, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<PolicyError>> {
        self.compile().map(|_| ())
    }

    /// Validates the policy and compiles it (globs parsed once) for evaluation.
    pub fn compile(&self) -> Result<CompiledPolicy, Vec<PolicyError>> {
        compiled::compile(self)
    }

    /// Checks that every keystore prefix the rules name is one of `known` (the configured
    /// prefixes): a misspelt prefix would silently make its rule never match.
    pub fn check_keystores(&self, known: &[&str]) -> Result<(), Vec<PolicyError>> {
        let mut errors = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let lists = [
                (format!("policy.rules[{i}].keystores"), &rule.keystores),
                (
                    format!("policy.rules[{i}].unless.keystores"),
                    rule.unless.as_ref().map_or(&None, |u| &u.keystores),
                ),
            ];
            for (field, list) in lists {
                for (j, k) in list.iter().flatten().enumerate() {
                    if !known.contains(&k.as_str()) {
                        errors.push(PolicyError {
                            field: format!("{field}[{j}]"),
                            message: format!("{k:?} is not the uri_prefix of any configured keystore"),
                        });
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
