use super::*;

/// Wraps the test's TOML under `[policy]` as in the config file.
#[derive(Deserialize)]
struct File {
    policy: Policy,
}

fn parse(toml_text: &str) -> Policy {
    toml::from_str::<File>(toml_text).unwrap().policy
}

fn compile(toml_text: &str) -> CompiledPolicy {
    parse(toml_text).compile().unwrap()
}

fn errors(toml_text: &str) -> Vec<String> {
    parse(toml_text)
        .validate()
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

const ENCRYPTOR: &str = "arn:aws:iam::111122223333:role/encryptor";
const DECRYPTOR: &str = "arn:aws:iam::111122223333:role/decryptor";

/// A typical Encrypt request in keystore `/tenant-a` for key `k1`.
fn req(op: Operation, principal: &str) -> RequestFacts<'_> {
    RequestFacts {
        key_id: Some("k1"),
        kms_operation: Some(op.name()),
        principal: Some(principal),
        access_key_id: Some("AKIA4GBY3I6JCE5M2HPM"),
        ..RequestFacts::new("/tenant-a", op)
    }
}

fn allowed_by(d: Decision) -> String {
    match d {
        Decision::Allow { rule } => rule,
        Decision::Deny { rule } => panic!("denied by {rule}"),
    }
}

fn denied_by(d: Decision) -> String {
    match d {
        Decision::Deny { rule } => rule,
        Decision::Allow { rule } => panic!("allowed by {rule}"),
    }
}

const SEPARATION_OF_DUTIES: &str = r#"
[policy]
default = "deny"

[[policy.rules]]
name = "encryptor-encrypts"
effect = "allow"
principals = ["arn:aws:iam::111122223333:role/encryptor"]
operations = ["Encrypt", "GetKeyMetadata"]

[[policy.rules]]
name = "decryptor-decrypts"
effect = "allow"
principals = ["arn:aws:iam::111122223333:role/decryptor"]
operations = ["Decrypt", "GetKeyMetadata"]
"#;

#[test]
fn separation_of_duties_lets_each_role_do_only_its_half() {
    let p = compile(SEPARATION_OF_DUTIES);
    let e = |op, who| p.evaluate(&req(op, who));
    assert_eq!(allowed_by(e(Operation::Encrypt, ENCRYPTOR)), "encryptor-encrypts");
    assert_eq!(denied_by(e(Operation::Decrypt, ENCRYPTOR)), "default");
    assert_eq!(allowed_by(e(Operation::Decrypt, DECRYPTOR)), "decryptor-decrypts");
    assert_eq!(denied_by(e(Operation::Encrypt, DECRYPTOR)), "default");
    assert!(e(Operation::Metadata, DECRYPTOR).is_allowed());
    assert!(!e(Operation::Encrypt, "arn:aws:iam::111122223333:role/other").is_allowed());
}

const TENANT_ISOLATION: &str = r#"
[policy]
default = "allow"

[[policy.rules]]
name = "tenant-a-only-account-111"
effect = "deny"
keystores = ["/tenant-a"]
unless = { principals = ["arn:aws:iam::111122223333:*"] }

[[policy.rules]]
name = "tenant-b-only-account-444"
effect = "deny"
keystores = ["/tenant-b"]
unless = { principals = ["arn:aws:iam::444455556666:*"] }
"#;

#[test]
fn tenant_isolation_by_principal_denies_other_accounts() {
    let p = compile(TENANT_ISOLATION);
    let other = "arn:aws:iam::444455556666:role/app";
    assert_eq!(
        allowed_by(p.evaluate(&req(Operation::Encrypt, ENCRYPTOR))),
        "default"
    );
    assert_eq!(
        denied_by(p.evaluate(&req(Operation::Encrypt, other))),
        "tenant-a-only-account-111"
    );
    let in_b = RequestFacts {
        keystore: "/tenant-b",
        ..req(Operation::Decrypt, other)
    };
    assert!(p.evaluate(&in_b).is_allowed());
    let a_in_b = RequestFacts {
        principal: Some(ENCRYPTOR),
        ..in_b
    };
    assert_eq!(denied_by(p.evaluate(&a_in_b)), "tenant-b-only-account-444");
    // Service principals and "AWS Internal" are not account ARNs: they do not match the glob.
    let internal = req(Operation::Encrypt, "AWS Internal");
    assert!(!p.evaluate(&internal).is_allowed());
}

const ONE_SERVICE: &str = r#"
[policy]
default = "allow"

[[policy.rules]]
name = "deny-finance-key-outside-ebs"
effect = "deny"
key_ids = ["fin-*"]
unless = { kms_via_services = ["ebs"] }
"#;

#[test]
fn a_key_restricted_to_one_service_refuses_other_and_direct_callers() {
    let p = compile(ONE_SERVICE);
    let fin = |via| RequestFacts {
        key_id: Some("fin-2024"),
        via_service: via,
        ..req(Operation::Decrypt, ENCRYPTOR)
    };
    assert_eq!(allowed_by(p.evaluate(&fin(Some("ebs")))), "default");
    assert_eq!(
        denied_by(p.evaluate(&fin(Some("rds")))),
        "deny-finance-key-outside-ebs"
    );
    // No kmsViaService at all: a direct KMS call, which is also outside EBS.
    assert_eq!(denied_by(p.evaluate(&fin(None))), "deny-finance-key-outside-ebs");
    // Other keys are untouched.
    assert!(p.evaluate(&req(Operation::Decrypt, ENCRYPTOR)).is_allowed());
}

#[test]
fn explicit_deny_beats_an_earlier_allow() {
    let p = compile(
        r#"
[policy]
default = "allow"
[[policy.rules]]
name = "allow-encryptor"
effect = "allow"
principals = ["arn:aws:iam::111122223333:role/encryptor"]
[[policy.rules]]
name = "no-decrypt-in-tenant-a"
effect = "deny"
keystores = ["/tenant-a"]
operations = ["Decrypt"]
[[policy.rules]]
name = "second-deny"
effect = "deny"
operations = ["Decrypt"]
"#,
    );
    assert_eq!(
        denied_by(p.evaluate(&req(Operation::Decrypt, ENCRYPTOR))),
        "no-decrypt-in-tenant-a"
    );
    assert_eq!(
        allowed_by(p.evaluate(&req(Operation::Encrypt, ENCRYPTOR))),
        "allow-encryptor"
    );
}

#[test]
fn the_default_decides_when_no_rule_matches() {
    let rule = r#"
[[policy.rules]]
name = "only-k9"
effect = "allow"
key_ids = ["k9"]
"#;
    let deny = compile(&format!("[policy]\ndefault = \"deny\"\n{rule}"));
    let allow = compile(&format!("[policy]\ndefault = \"allow\"\n{rule}"));
    let r = req(Operation::Encrypt, ENCRYPTOR);
    assert_eq!(
        deny.evaluate(&r),
        Decision::Deny {
            rule: "default".into()
        }
    );
    assert_eq!(
        allow.evaluate(&r),
        Decision::Allow {
            rule: "default".into()
        }
    );
    let k9 = RequestFacts {
        key_id: Some("k9"),
        ..r
    };
    assert_eq!(allowed_by(deny.evaluate(&k9)), "only-k9");
    let empty = compile("[policy]\ndefault = \"deny\"\n");
    assert_eq!(empty.rule_count(), 0);
    assert_eq!(denied_by(empty.evaluate(&r)), "default");
}

#[test]
fn health_is_exempt_even_under_default_deny_and_a_deny_all_rule() {
    let p = compile(
        r#"
[policy]
default = "deny"
[[policy.rules]]
name = "deny-everything"
effect = "deny"
"#,
    );
    let health = RequestFacts::new("/tenant-a", Operation::Health);
    assert_eq!(
        p.evaluate(&health),
        Decision::Allow {
            rule: "health-exempt".into()
        }
    );
    let full = RequestFacts {
        kms_operation: Some("KmsHealthCheck"),
        ..req(Operation::Health, ENCRYPTOR)
    };
    assert_eq!(allowed_by(p.evaluate(&full)), "health-exempt");
    assert_eq!(
        denied_by(p.evaluate(&req(Operation::Metadata, ENCRYPTOR))),
        "deny-everything"
    );
}

#[test]
fn unknown_kms_operations_are_matched_exactly_or_left_to_the_default() {
    let p = compile(
        r#"
[policy]
default = "allow"
[[policy.rules]]
name = "no-future-op"
effect = "deny"
kms_operations = ["FutureOp"]
"#,
    );
    let with = |op| RequestFacts {
        kms_operation: Some(op),
        ..req(Operation::Encrypt, ENCRYPTOR)
    };
    assert_eq!(denied_by(p.evaluate(&with("FutureOp"))), "no-future-op");
    assert_eq!(allowed_by(p.evaluate(&with("AnotherNewOp"))), "default");
    // Exact, case-sensitive: no prefix or case folding.
    assert!(p.evaluate(&with("FutureOp2")).is_allowed());
    assert!(p.evaluate(&with("futureop")).is_allowed());
}

#[test]
fn a_condition_on_an_absent_field_does_not_match() {
    let p = compile(
        r#"
[policy]
default = "deny"
[[policy.rules]]
name = "via-ebs"
effect = "allow"
kms_via_services = ["ebs"]
[[policy.rules]]
name = "from-vpc"
effect = "allow"
source_vpcs = ["vpc-123"]
source_vpces = ["vpce-1"]
"#,
    );
    let base = req(Operation::Encrypt, ENCRYPTOR);
    assert_eq!(denied_by(p.evaluate(&base)), "default");
    let ebs = RequestFacts {
        via_service: Some("ebs"),
        ..base
    };
    assert_eq!(allowed_by(p.evaluate(&ebs)), "via-ebs");
    let vpc_only = RequestFacts {
        source_vpc: Some("vpc-123"),
        ..base
    };
    assert!(!p.evaluate(&vpc_only).is_allowed(), "both conditions must match");
    let both = RequestFacts {
        source_vpce: Some("vpce-1"),
        ..vpc_only
    };
    assert_eq!(allowed_by(p.evaluate(&both)), "from-vpc");
    // An absent condition matches anything, absent fields included.
    let any = compile("[policy]\ndefault = \"deny\"\n[[policy.rules]]\nname = \"all\"\neffect = \"allow\"\n");
    assert!(any
        .evaluate(&RequestFacts::new("", Operation::Decrypt))
        .is_allowed());
}

#[test]
fn access_key_and_keystore_conditions_are_exact() {
    let p = compile(
        r#"
[policy]
default = "deny"
[[policy.rules]]
name = "root-keystore-old-key"
effect = "allow"
keystores = [""]
access_key_ids = ["AKIA4GBY3I6JCE5M2HPM"]
"#,
    );
    let r = req(Operation::Encrypt, ENCRYPTOR);
    assert!(!p.evaluate(&r).is_allowed(), "/tenant-a is not the root keystore");
    let root = RequestFacts { keystore: "", ..r };
    assert_eq!(allowed_by(p.evaluate(&root)), "root-keystore-old-key");
    let other_key = RequestFacts {
        access_key_id: Some("AKIA4GBY3I6JCE5M2HPX"),
        ..root
    };
    assert!(!p.evaluate(&other_key).is_allowed());
}

#[test]
fn validation_names_every_offending_field() {
    let errs = errors(
        r#"
[policy]
default = "deny"
[[policy.rules]]
name = "dup"
effect = "allow"
key_ids = ["fin-[*"]
[[policy.rules]]
name = "dup"
effect = "deny"
operations = ["GetHealthStatus", "encrypt"]
principals = []
[[policy.rules]]
name = "default"
effect = "deny"
access_key_ids = ["akid"]
keystores = ["tenant-a"]
kms_via_services = [""]
unless = {}
[[policy.rules]]
name = "bad name!"
effect = "allow"
unless = { key_ids = ["[x"] }
"#,
    );
    let expect = [
        "policy.rules[0].key_ids[0]: invalid glob",
        "policy.rules[1].name: duplicate rule name",
        "policy.rules[1].operations[0]: GetHealthStatus is always allowed",
        "policy.rules[1].operations[1]: \"encrypt\" is not an XKS operation",
        "policy.rules[1].principals: an empty list matches nothing",
        "policy.rules[2].name: \"default\" is reserved",
        "policy.rules[2].keystores[0]: \"tenant-a\" is not a uri_prefix",
        "policy.rules[2].kms_via_services[0]: empty value",
        "policy.rules[2].access_key_ids[0]: \"akid\" is not an access key id",
        "policy.rules[2].unless: sets no condition",
        "policy.rules[3].name: \"bad name!\" must be",
        "policy.rules[3].unless.key_ids[0]: invalid glob",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}

#[test]
fn unknown_fields_and_effects_are_rejected_when_parsing() {
    let parse_err = |text: &str| toml::from_str::<File>(text).err().map(|e| e.to_string());
    let typo = "[policy]\ndefault = \"deny\"\n[[policy.rules]]\nname = \"r\"\neffect = \"allow\"\nkey_id = [\"k\"]\n";
    assert!(parse_err(typo).unwrap().contains("key_id"));
    let unless_typo = "[policy]\ndefault = \"deny\"\n[[policy.rules]]\nname = \"r\"\neffect = \"deny\"\nunless = { principal = [\"x\"] }\n";
    assert!(parse_err(unless_typo).is_some());
    assert!(parse_err("[policy]\ndefault = \"maybe\"\n").is_some());
    assert!(parse_err("[policy]\n").is_some(), "default is required");
    assert!(parse_err("[policy]\ndefault = \"deny\"\n[[policy.rules]]\neffect = \"deny\"\n").is_some());
}

#[test]
fn keystore_references_are_checked_against_the_configured_prefixes() {
    let p = parse(
        r#"
[policy]
default = "allow"
[[policy.rules]]
name = "r"
effect = "deny"
keystores = ["/tenant-a", "/tenant-c"]
unless = { keystores = ["/tenant-x"] }
"#,
    );
    let errs = p.check_keystores(&["/tenant-a", "/tenant-b", ""]).unwrap_err();
    let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("policy.rules[0].keystores[1]: \"/tenant-c\""));
    assert!(errs[1].starts_with("policy.rules[0].unless.keystores[0]: \"/tenant-x\""));
    assert!(p
        .check_keystores(&["/tenant-a", "/tenant-c", "/tenant-x"])
        .is_ok());
}

#[test]
fn principal_globs_cover_role_paths_and_stay_case_sensitive() {
    let p = compile(
        r#"
[policy]
default = "deny"
[[policy.rules]]
name = "roles"
effect = "allow"
principals = ["arn:aws:iam::111122223333:role/*", "ec2.amazonaws.com"]
"#,
    );
    for ok in [
        "arn:aws:iam::111122223333:role/path/to/app",
        "arn:aws:iam::111122223333:role/x",
        "ec2.amazonaws.com",
    ] {
        assert!(p.evaluate(&req(Operation::Encrypt, ok)).is_allowed(), "{ok}");
    }
    for no in [
        "arn:aws:iam::111122223333:user/alice",
        "ARN:AWS:IAM::111122223333:ROLE/x",
        "arn:aws:iam::111122223333:role",
    ] {
        assert!(!p.evaluate(&req(Operation::Encrypt, no)).is_allowed(), "{no}");
    }
}

#[test]
fn every_toml_example_in_the_policy_guide_is_valid() {
    let guide = include_str!("../../docs/policy.md");
    let blocks: Vec<&str> = guide
        .split("```toml\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap_or_default())
        .collect();
    assert!(blocks.len() >= 4, "{}", blocks.len());
    for block in blocks {
        if let Err(e) = parse(block).validate() {
            panic!("{e:?} in\n{block}");
        }
    }
    // The guide's examples are the ones these tests exercise.
    for example in [SEPARATION_OF_DUTIES, TENANT_ISOLATION, ONE_SERVICE] {
        assert!(guide.contains(example.trim()), "{example}");
    }
}
