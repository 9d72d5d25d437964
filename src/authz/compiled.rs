//! Validation and compilation of a [`Policy`] into matchers (globs parsed once at load), and
//! the evaluation of a request against them.

use super::{
    ConditionRefs, Decision, Effect, Fact, Policy, PolicyError, RequestFacts, DEFAULT_RULE,
    HEALTH_EXEMPT_RULE,
};
use crate::xks::{valid_access_key_id, Operation};
use std::collections::HashSet;

/// Operations a rule may name. `GetHealthStatus` is deliberately absent: it is exempt.
const RULE_OPERATIONS: [Operation; 3] = [Operation::Metadata, Operation::Encrypt, Operation::Decrypt];

/// A validated policy, ready to evaluate requests.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    default: Effect,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    name: String,
    effect: Effect,
    when: Vec<Condition>,
    /// `None` when the rule has no `unless`; never an empty list (validation refuses that).
    unless: Option<Vec<Condition>>,
}

#[derive(Debug, Clone)]
struct Condition {
    fact: Fact,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(Vec<String>),
    Glob(Vec<glob::Pattern>),
}

impl Condition {
    /// An absent fact never matches (module doc, rule 2).
    fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        let Some(value) = facts.get(self.fact) else {
            return false;
        };
        match &self.matcher {
            Matcher::Exact(values) => values.iter().any(|v| v == value),
            Matcher::Glob(patterns) => patterns.iter().any(|p| p.matches(value)),
        }
    }
}

fn all_match(conditions: &[Condition], facts: &RequestFacts<'_>) -> bool {
    conditions.iter().all(|c| c.matches(facts))
}

impl CompiledRule {
    fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        all_match(&self.when, facts) && !self.unless.as_ref().is_some_and(|u| all_match(u, facts))
    }
}

impl CompiledPolicy {
    /// Decides one request. `GetHealthStatus` is allowed before any rule is looked at; for the
    /// rest, the first matching deny rule wins, then the first matching allow rule, then the
    /// default.
    pub fn evaluate(&self, facts: &RequestFacts<'_>) -> Decision {
        if facts.operation == Operation::Health {
            return Decision::Allow {
                rule: HEALTH_EXEMPT_RULE.to_owned(),
            };
        }
        let mut first_allow: Option<&CompiledRule> = None;
        for rule in &self.rules {
            if !rule.matches(facts) {
                continue;
            }
            match rule.effect {
                Effect::Deny => {
                    return Decision::Deny {
                        rule: rule.name.clone(),
                    }
                }
                Effect::Allow => {
                    first_allow.get_or_insert(rule);
                }
            }
        }
        match (first_allow, self.default) {
            (Some(rule), _) => Decision::Allow {
                rule: rule.name.clone(),
            },
            (None, Effect::Allow) => Decision::Allow {
                rule: DEFAULT_RULE.to_owned(),
            },
            (None, Effect::Deny) => Decision::Deny {
                rule: DEFAULT_RULE.to_owned(),
            },
        }
    }

    /// Number of rules, for the start-up log.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// Collects problems instead of stopping at the first, so one run of `check-config` shows all.
struct Errors(Vec<PolicyError>);

impl Errors {
    fn push(&mut self, field: String, message: impl Into<String>) {
        self.0.push(PolicyError {
            field,
            message: message.into(),
        });
    }
}

pub(super) fn compile(policy: &Policy) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let mut errors = Errors(Vec::new());
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(policy.rules.len());
    for (i, rule) in policy.rules.iter().enumerate() {
        let at = format!("policy.rules[{i}]");
        check_name(&rule.name, &format!("{at}.name"), &mut errors);
        if !names.insert(rule.name.as_str()) {
            errors.push(
                format!("{at}.name"),
                format!("duplicate rule name {:?}", rule.name),
            );
        }
        let when = compile_conditions(rule.conditions(), &at, &mut errors);
        let unless = rule.unless.as_ref().map(|u| {
            let at = format!("{at}.unless");
            let conditions = compile_conditions(u.refs(), &at, &mut errors);
            if conditions.is_empty() {
                errors.push(at, "sets no condition, so the rule would never match");
            }
            conditions
        });
        rules.push(CompiledRule {
            name: rule.name.clone(),
            effect: rule.effect,
            when,
            unless,
        });
    }
    if errors.0.is_empty() {
        Ok(CompiledPolicy {
            default: policy.default,
            rules,
        })
    } else {
        Err(errors.0)
    }
}

/// Names appear in logs and audit records, so keep them short and plain; the two reserved
/// names would make a decision ambiguous.
fn check_name(name: &str, field: &str, errors: &mut Errors) {
    let plain = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !plain {
        errors.push(
            field.to_owned(),
            format!("{name:?} must be 1-64 characters of A-Z a-z 0-9 - . _"),
        );
    } else if name == DEFAULT_RULE || name == HEALTH_EXEMPT_RULE {
        errors.push(field.to_owned(), format!("{name:?} is reserved"));
    }
}

fn compile_conditions(refs: ConditionRefs<'_>, at: &str, errors: &mut Errors) -> Vec<Condition> {
    let mut out = Vec::new();
    for (fact, list) in refs.0 {
        let Some(values) = list else { continue };
        let field = format!("{at}.{}", fact.field());
        if values.is_empty() {
            errors.push(
                field,
                "an empty list matches nothing; remove the field to match any value",
            );
            continue;
        }
        let mut exact = Vec::new();
        let mut globs = Vec::new();
        for (j, value) in values.iter().enumerate() {
            let field = format!("{field}[{j}]");
            match check_value(fact, value) {
                Err(bad) => errors.push(field, bad.to_string()),
                Ok(()) if is_glob(fact) => match glob::Pattern::new(value) {
                    Ok(p) => globs.push(p),
                    Err(e) => errors.push(field, format!("invalid glob {value:?}: {e}")),
                },
                Ok(()) => exact.push(value.clone()),
            }
        }
        let matcher = if is_glob(fact) {
            Matcher::Glob(globs)
        } else {
            Matcher::Exact(exact)
        };
        out.push(Condition { fact, matcher });
    }
    out
}

fn is_glob(fact: Fact) -> bool {
    matches!(fact, Fact::KeyId | Fact::Principal)
}

/// Why a rule's value cannot match anything it is meant to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BadValue {
    #[error("{0:?} is not a uri_prefix (empty or starting with '/')")]
    NotAPrefix(String),
    #[error("empty value")]
    Empty,
    #[error("GetHealthStatus is always allowed (the spec exempts it) and cannot appear in a rule")]
    HealthExempt,
    #[error("{0:?} is not an XKS operation (GetKeyMetadata, Encrypt, Decrypt)")]
    NotAnOperation(String),
    #[error("{0:?} is not an access key id (20-30 characters of A-Z 2-7)")]
    NotAnAccessKeyId(String),
}

fn check_value(fact: Fact, value: &str) -> Result<(), BadValue> {
    match fact {
        // The keystore without a prefix is spelt "".
        Fact::Keystore if !(value.is_empty() || value.starts_with('/')) => {
            Err(BadValue::NotAPrefix(value.to_owned()))
        }
        Fact::Keystore => Ok(()),
        _ if value.is_empty() => Err(BadValue::Empty),
        Fact::Operation if value == Operation::Health.name() => Err(BadValue::HealthExempt),
        Fact::Operation if !RULE_OPERATIONS.iter().any(|op| op.name() == value) => {
            Err(BadValue::NotAnOperation(value.to_owned()))
        }
        Fact::AccessKeyId if !valid_access_key_id(value) => Err(BadValue::NotAnAccessKeyId(value.to_owned())),
        _ => Ok(()),
    }
}
