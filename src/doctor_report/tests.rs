//! Verdicts of the doctor's report on made-up findings.

use super::*;
use crate::hsm::doctor::{
    BadTag, IvFacts, KeyFacts, KeySizes, LibraryFacts, MechanismFact, Probe, SessionFacts, SessionLimit,
    TokenFacts, NEEDED_MECHANISMS,
};

fn token(iv: &str) -> TokenConfig {
    toml::from_str(&format!(
        "name = \"hsm\"\nmodule = \"/lib/p11.so\"\ntoken_label = \"t\"\npin = {{ env = \"PIN\" }}\niv_source = \"{iv}\""
    ))
    .expect("token config")
}

fn token_of(profile: &str) -> TokenConfig {
    toml::from_str(&format!(
        "name = \"hsm\"\nmodule = \"/lib/p11.so\"\ntoken_label = \"t\"\npin = {{ env = \"PIN\" }}\nprofile = \"{profile}\""
    ))
    .expect("token config")
}

fn key(label: &str) -> KeyFacts {
    KeyFacts {
        label: label.into(),
        named: true,
        found: 1,
        key_spec: "AES_256".into(),
        sensitive: Some(true),
        extractable: Some(false),
        private: Some(true),
        modifiable: Some(false),
        usages: vec!["ENCRYPT", "DECRYPT"],
    }
}

/// What a good token reports.
fn good() -> Findings {
    Findings {
        library: LibraryFacts {
            pkcs11_version: "2.40".into(),
            manufacturer: "m".into(),
            description: "d".into(),
            version: "1.0".into(),
        },
        token: TokenFacts {
            label: "t".into(),
            manufacturer: "m".into(),
            model: "x".into(),
            serial: "1".into(),
            firmware: "1.0".into(),
            hardware: "1.0".into(),
            flags: vec![
                "RNG",
                "LOGIN_REQUIRED",
                "USER_PIN_INITIALIZED",
                "TOKEN_INITIALIZED",
            ],
            max_sessions: SessionLimit::Infinite,
            max_rw_sessions: SessionLimit::Infinite,
        },
        mechanisms: NEEDED_MECHANISMS
            .iter()
            .map(|(name, used_for)| MechanismFact {
                name,
                used_for,
                listed: true,
                info: Ok(KeySizes {
                    min: 16,
                    max: 32,
                    flags: vec!["ENCRYPT", "DECRYPT"],
                }),
            })
            .collect(),
        scratch_key: Ok(()),
        iv: IvFacts {
            caller_random: Probe::Works,
            mechanism_generated: Probe::Wrong("no IV written back".into()),
            after_tag: Probe::Wrong("the token returned no IV after the tag".into()),
        },
        bad_tag: BadTag::Refused {
            code: "CKR_GENERAL_ERROR".into(),
            function: "C_Decrypt".into(),
            invalid_ciphertext: true,
            accepted_by: vec![Profile::Softhsm, Profile::Generic],
        },
        data_objects: crate::hsm::doctor::WriteProbe::Done,
        public_objects: crate::hsm::doctor::WriteProbe::Done,
        handle_reuse: None,
        sessions: SessionFacts {
            wanted: 4,
            opened: 4,
            refusal: None,
        },
        latency: None,
        keys: vec![key("k")],
    }
}

fn verdict_of<'r>(r: &'r Report, name: &str) -> &'r Check {
    r.checks
        .iter()
        .find(|c| c.name.starts_with(name))
        .expect("check present")
}

#[test]
fn a_token_that_only_generates_ivs_itself_is_usable_with_the_iv_source_changed() {
    let mut f = good();
    f.latency = Some(crate::hsm::doctor::Latency {
        ops: 10,
        ops_per_sec: 5.0,
        p50_us: 100,
        p99_us: 200,
    });
    f.iv = IvFacts {
        caller_random: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
        mechanism_generated: Probe::Works,
        after_tag: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
    };
    let r = judge(&token("token-random"), f);
    assert_eq!(r.verdict, Overall::UsableWithChanges);
    assert_eq!(r.exit_code, 0);
    let iv = verdict_of(&r, "IV: caller-supplied");
    assert_eq!(iv.verdict, Verdict::Warn);
    assert!(iv
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("iv_source = \"mechanism\"")));
    assert!(r.snippet.contains("iv_source = \"mechanism\""), "{}", r.snippet);
    assert!(render(&r).contains("changes needed:"));
}

#[test]
fn no_working_iv_mode_an_accepted_forgery_or_a_weak_key_is_not_usable() {
    let mut f = good();
    f.iv.caller_random = Probe::Refused("CKR_MECHANISM_INVALID from C_EncryptInit".into());
    let r = judge(&token("token-random"), f);
    assert_eq!((r.verdict, r.exit_code), (Overall::NotUsable, 1));

    let mut f = good();
    f.bad_tag = BadTag::Accepted;
    assert_eq!(judge(&token("token-random"), f).verdict, Overall::NotUsable);

    let mut f = good();
    f.keys[0].extractable = Some(true);
    let r = judge(&token("token-random"), f);
    assert_eq!(r.verdict, Overall::NotUsable);
    assert!(verdict_of(&r, "key k")
        .fix
        .as_deref()
        .is_some_and(|f| f.contains("extractable")));
}

#[test]
fn an_unclassified_tag_failure_and_a_modifiable_key_are_warnings() {
    let mut f = good();
    f.bad_tag = BadTag::Refused {
        code: "CKR_DATA_INVALID".into(),
        function: "C_Decrypt".into(),
        invalid_ciphertext: false,
        accepted_by: vec![],
    };
    f.keys[0].modifiable = Some(true);
    f.latency = Some(crate::hsm::doctor::Latency {
        ops: 1,
        ops_per_sec: 1.0,
        p50_us: 1,
        p99_us: 1,
    });
    let r = judge(&token("token-random"), f);
    assert_eq!(r.verdict, Overall::UsableWithChanges);
    assert_eq!(verdict_of(&r, "bad GCM tag").verdict, Verdict::Warn);
    assert_eq!(verdict_of(&r, "key k").verdict, Verdict::Warn);
}

#[test]
fn a_token_that_behaves_as_its_profile_says_keeps_it_in_the_snippet() {
    let r = judge(&token_of("softhsm"), good());
    assert_eq!(verdict_of(&r, "profile").verdict, Verdict::Ok);
    assert!(r.snippet.contains("profile = \"softhsm\""), "{}", r.snippet);
    let r = judge(&token("token-random"), good());
    assert!(r.snippet.contains("profile = \"generic\""), "{}", r.snippet);
}

/// SoftHSM2 behaves exactly as `generic`: only its manufacturer ID names it. A config without a
/// profile still works (no warning), and the snippet names the token's own profile.
#[test]
fn a_module_that_names_itself_softhsm_gets_the_softhsm_profile_in_the_snippet() {
    let mut f = good();
    f.library.manufacturer = "SoftHSM".into();
    let r = judge(&token("token-random"), f.clone());
    let p = verdict_of(&r, "profile");
    assert_eq!(p.verdict, Verdict::Ok, "{}", p.found);
    assert!(p.found.contains("identifies as \"softhsm\""), "{}", p.found);
    assert!(r.snippet.contains("profile = \"softhsm\""), "{}", r.snippet);
    let unnamed = judge(&token("token-random"), good());
    assert_eq!(r.verdict, unnamed.verdict, "a name alone changes no verdict");
    // A name is not enough: a module that says SoftHSM but returns its IV after the tag is
    // judged by what it does.
    f.iv = IvFacts {
        caller_random: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
        mechanism_generated: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
        after_tag: Probe::Works,
    };
    let r = judge(&token("token-random"), f);
    assert!(!r.snippet.contains("profile = \"softhsm\""), "{}", r.snippet);
    assert!(r.snippet.contains("mechanism-after-tag"), "{}", r.snippet);
}

#[test]
fn a_token_that_returns_its_iv_after_the_tag_is_named_luna() {
    let mut f = good();
    f.iv = IvFacts {
        caller_random: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
        mechanism_generated: Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into()),
        after_tag: Probe::Works,
    };
    f.bad_tag = BadTag::Refused {
        code: "CKR_ENCRYPTED_DATA_INVALID".into(),
        function: "C_Decrypt".into(),
        invalid_ciphertext: true,
        accepted_by: Profile::ALL.to_vec(),
    };
    let r = judge(&token_of("softhsm"), f);
    let p = verdict_of(&r, "profile");
    assert_eq!(p.verdict, Verdict::Warn);
    assert!(
        p.fix.as_deref().is_some_and(|x| x.contains("profile = \"luna\"")),
        "{p:?}"
    );
    assert!(r.snippet.contains("profile = \"luna\""), "{}", r.snippet);
    assert!(
        r.snippet.contains("iv_source = \"mechanism-after-tag\""),
        "{}",
        r.snippet
    );
}

#[test]
fn a_tag_failure_code_outside_the_profile_names_the_profile_that_has_it() {
    let mut f = good();
    f.iv.caller_random = Probe::Refused("CKR_MECHANISM_PARAM_INVALID from C_EncryptInit".into());
    f.iv.mechanism_generated = Probe::Works;
    f.bad_tag = BadTag::Refused {
        code: "CKR_FUNCTION_FAILED".into(),
        function: "C_Decrypt".into(),
        invalid_ciphertext: false,
        accepted_by: vec![Profile::Nshield, Profile::Generic],
    };
    let r = judge(&token_of("softhsm"), f);
    let tag = verdict_of(&r, "bad GCM tag");
    assert_eq!(tag.verdict, Verdict::Warn);
    assert!(
        tag.fix
            .as_deref()
            .is_some_and(|x| x.contains("profile = \"nshield\"")),
        "{tag:?}"
    );
    assert!(r.snippet.contains("profile = \"nshield\""), "{}", r.snippet);
    assert!(r.snippet.contains("iv_source = \"mechanism\""), "{}", r.snippet);
}

#[test]
fn handle_reuse_against_the_profile_is_reported_without_a_warning() {
    let mut f = good();
    f.handle_reuse = Some(crate::hsm::doctor::HandleReuse {
        probe: crate::hsm::doctor::WriteProbe::Done,
        reused: Some(true),
    });
    let r = judge(&token_of("softhsm"), f.clone());
    let p = verdict_of(&r, "profile");
    assert_eq!(p.verdict, Verdict::Ok);
    assert!(
        p.found
            .contains("destroyed handles reused: true, where this profile expects false"),
        "{p:?}"
    );
    let r = judge(&token_of("generic"), f);
    assert!(!verdict_of(&r, "profile").found.contains("handles reused"));
}
