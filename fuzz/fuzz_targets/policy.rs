//! `policy`: secondary-authorization policies (`authz::Policy`) parsed from TOML, compiled,
//! and evaluated against request facts.
//!
//! Input: TOML text holding a `[policy]` table (as in the configuration file and
//! docs/policy.md), then optionally a NUL byte followed by the request facts, one per line:
//! keystore prefix, operation name, key id, kmsOperation, awsPrincipalArn, kmsViaService,
//! awsSourceVpc, awsSourceVpce, access key id. A missing or empty line is an absent fact.
//!
//! Invariants:
//! - nothing panics (and, via libFuzzer's timeout, glob matching of request-controlled facts
//!   stays fast);
//! - `validate()` and `compile()` agree; every error names a field under `policy.rules[`;
//! - evaluation equals an independent reference written from the module documentation:
//!   health is always allowed by `health-exempt`; a rule matches when all its conditions match
//!   (an absent fact never matches; globs for key ids and principals, exact otherwise) and its
//!   `unless` conditions do not all match; the first matching deny wins, then the first
//!   matching allow, then the default (rule `default`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xks_bridge::authz::{
    Conditions, Decision, Effect, Policy, RequestFacts, DEFAULT_RULE, HEALTH_EXEMPT_RULE,
};
use xks_bridge::server::routes::Operation;

fuzz_target!(|data: &[u8]| {
    let (text, facts) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    let Some(value) = table.get("policy") else { return };
    let Ok(policy) = value.clone().try_into::<Policy>() else {
        return;
    };

    let compiled = policy.compile();
    assert_eq!(compiled.is_ok(), policy.validate().is_ok());
    let compiled = match compiled {
        Ok(c) => c,
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(e.field.starts_with("policy.rules["), "error field {:?}", e.field);
                assert!(!e.message.is_empty());
            }
            return;
        }
    };

    let facts = String::from_utf8_lossy(facts);
    let mut lines = facts.split('\n');
    let mut next = || lines.next().filter(|l| !l.is_empty());
    let keystore = next().unwrap_or("");
    let operation = match next() {
        Some("GetKeyMetadata") => Operation::Metadata,
        Some("Decrypt") => Operation::Decrypt,
        Some("GetHealthStatus") => Operation::Health,
        _ => Operation::Encrypt,
    };
    let f = RequestFacts {
        key_id: next(),
        kms_operation: next(),
        principal: next(),
        via_service: next(),
        source_vpc: next(),
        source_vpce: next(),
        access_key_id: next(),
        ..RequestFacts::new(keystore, operation)
    };
    let got = compiled.evaluate(&f);
    let want = reference(&policy, &f);
    assert_eq!(got, want, "policy decision differs from the reference");
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert!(
        [DEFAULT_RULE, HEALTH_EXEMPT_RULE].contains(&got.rule()) || names.contains(&got.rule()),
        "decided by unknown rule {:?}",
        got.rule()
    );
});

fn condition(list: &Option<Vec<String>>, fact: Option<&str>, glob: bool) -> bool {
    let Some(list) = list else { return true };
    let Some(fact) = fact else { return false };
    list.iter().any(|v| {
        if glob {
            glob::Pattern::new(v).unwrap().matches(fact)
        } else {
            v == fact
        }
    })
}

/// All set conditions match (an unset condition matches anything).
fn all(c: &Conditions, f: &RequestFacts<'_>) -> bool {
    condition(&c.keystores, Some(f.keystore), false)
        && condition(&c.operations, Some(f.operation.name()), false)
        && condition(&c.key_ids, f.key_id, true)
        && condition(&c.kms_operations, f.kms_operation, false)
        && condition(&c.principals, f.principal, true)
        && condition(&c.kms_via_services, f.via_service, false)
        && condition(&c.source_vpcs, f.source_vpc, false)
        && condition(&c.source_vpces, f.source_vpce, false)
        && condition(&c.access_key_ids, f.access_key_id, false)
}

fn reference(p: &Policy, f: &RequestFacts<'_>) -> Decision {
    if f.operation == Operation::Health {
        return Decision::Allow {
            rule: HEALTH_EXEMPT_RULE.into(),
        };
    }
    let matching: Vec<_> = p
        .rules
        .iter()
        .filter(|r| {
            let own = Conditions {
                keystores: r.keystores.clone(),
                operations: r.operations.clone(),
                key_ids: r.key_ids.clone(),
                kms_operations: r.kms_operations.clone(),
                principals: r.principals.clone(),
                kms_via_services: r.kms_via_services.clone(),
                source_vpcs: r.source_vpcs.clone(),
                source_vpces: r.source_vpces.clone(),
                access_key_ids: r.access_key_ids.clone(),
            };
            all(&own, f) && !r.unless.as_ref().is_some_and(|u| all(u, f))
        })
        .collect();
    if let Some(r) = matching.iter().find(|r| r.effect == Effect::Deny) {
        return Decision::Deny { rule: r.name.clone() };
    }
    if let Some(r) = matching.iter().find(|r| r.effect == Effect::Allow) {
        return Decision::Allow { rule: r.name.clone() };
    }
    match p.default {
        Effect::Allow => Decision::Allow {
            rule: DEFAULT_RULE.into(),
        },
        Effect::Deny => Decision::Deny {
            rule: DEFAULT_RULE.into(),
        },
    }
}
