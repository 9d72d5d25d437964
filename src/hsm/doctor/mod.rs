//! The PKCS#11 side of `xks-bridge doctor`: what a token offers and how it behaves, found by
//! asking it and by running the proxy's own operations on a scratch key. It returns facts
//! ([`Findings`], one struct per check); judging them (ok / warn / fail) and printing them is
//! the caller's job.
//!
//! Nothing here leaves anything on the token: the scratch key is a session object
//! (`CKA_TOKEN=false`) destroyed before the session closes, and the token objects made by the
//! write tests (only when asked for) are destroyed before the probe returns; one that could not
//! be destroyed is reported with its handle.

use super::connection::find_slot;
use super::profile::quirks;
use super::setup;
use super::HsmError;
use crate::config::IvSource;
use crate::config::TokenConfig;
use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use std::time::Duration;

mod findings;
mod probes;

pub use findings::*;
use probes::*;

/// `CKA_APPLICATION` of the token objects the write tests create (and destroy).
pub const PROBE_APP: &[u8] = b"xks-bridge/doctor-probe";

/// What to examine, beyond the token itself.
pub struct Plan<'a> {
    /// The token's configuration (module, label).
    pub token: &'a TokenConfig,
    /// The user PIN, from the config's secret source.
    pub pin: SecretString,
    /// Key labels the config names exactly (`allowed_keys`).
    pub named_keys: Vec<String>,
    /// Whether a label on the token is selected by a configured `key_pattern`.
    pub pattern: Box<dyn Fn(&str) -> bool + 'a>,
    /// Create and destroy token objects (data-object and handle-reuse tests).
    pub write_tests: bool,
    /// How long to measure encrypt latency on the scratch key.
    pub sample: Duration,
    /// Sessions to open at once in the session test (workers + login + poll).
    pub sessions_wanted: usize,
}

/// Runs every check. `Err` only when the doctor cannot run at all: the module does not load,
/// the token is absent, the PIN is refused ([`HsmError::Unavailable`] / [`HsmError::LoginRefused`]).
pub fn examine(plan: &Plan<'_>) -> Result<Findings, HsmError> {
    let module = setup::load(&plan.token.module)?;
    let result = examine_loaded(&module, plan);
    module.finalize();
    result
}

fn examine_loaded(module: &setup::Module, plan: &Plan<'_>) -> Result<Findings, HsmError> {
    let p = module.pkcs11();
    let label = &plan.token.token_label;
    let library = library_facts(p)?;
    let slot = find_slot(p, label)?;
    let token = token_facts(p, slot)?;
    let user = module.open_user_session(label, &plan.pin)?;
    let s = user.session();
    let mechanisms = mechanism_facts(p, slot);
    let scratch = scratch_key(s, b"xks-bridge-doctor-scratch").map_err(|e| Refusal::of(&e));
    let q = quirks(plan.token.profile);
    let (scratch_key, iv, bad_tag, latency) = match &scratch {
        Ok(key) => {
            let iv = IvFacts {
                caller_random: iv_probe(s, *key, IvSource::TokenRandom),
                mechanism_generated: iv_probe(s, *key, IvSource::Mechanism),
                after_tag: iv_probe(s, *key, IvSource::MechanismAfterTag),
            };
            // The tag and latency probes need an encryption that works on this token.
            let mode = iv.working(plan.token.effective_iv_source());
            (
                Ok(()),
                iv,
                bad_tag(s, *key, mode, q),
                sample(s, *key, mode, plan.sample),
            )
        }
        Err(e) => {
            let why = format!("no scratch key ({e})");
            (
                Err(e.clone()),
                IvFacts {
                    caller_random: Probe::NotRun(why.clone()),
                    mechanism_generated: Probe::NotRun(why.clone()),
                    after_tag: Probe::NotRun(why.clone()),
                },
                BadTag::NotRun { reason: why },
                None,
            )
        }
    };
    if let Ok(key) = scratch {
        // A session object dies with its session anyway; destroy it now so that not even a
        // long-lived session of a token that keeps them around holds it.
        let _ = s.destroy_object(key);
    }
    // Every Encrypt depends on this login creating private data objects (the encryption
    // counters), so the doctor always tries one: created and destroyed at once. Handle reuse
    // needs several objects and stays behind --write-tests.
    let data_objects = data_object_probe(s);
    let public_objects = public_object_probe(s);
    let handle_reuse = plan.write_tests.then(|| handle_reuse_probe(s));
    let sessions = session_probe(p, slot, plan.sessions_wanted);
    let keys = key_facts(s, plan)?;
    drop(user);
    Ok(Findings {
        library,
        token,
        mechanisms,
        scratch_key,
        iv,
        bad_tag,
        data_objects,
        public_objects,
        handle_reuse,
        sessions,
        latency,
        keys,
    })
}

fn library_facts(p: &Pkcs11) -> Result<LibraryFacts, HsmError> {
    let i = p
        .get_library_info()
        .map_err(|e| HsmError::Unavailable(format!("C_GetInfo: {e}")))?;
    Ok(LibraryFacts {
        pkcs11_version: i.cryptoki_version().to_string(),
        manufacturer: i.manufacturer_id().trim().to_owned(),
        description: i.library_description().trim().to_owned(),
        version: i.library_version().to_string(),
    })
}

fn token_facts(p: &Pkcs11, slot: Slot) -> Result<TokenFacts, HsmError> {
    let i = p
        .get_token_info(slot)
        .map_err(|e| HsmError::Unavailable(format!("C_GetTokenInfo: {e}")))?;
    let flags = [
        ("RNG", i.rng()),
        ("WRITE_PROTECTED", i.write_protected()),
        ("LOGIN_REQUIRED", i.login_required()),
        ("USER_PIN_INITIALIZED", i.user_pin_initialized()),
        ("PROTECTED_AUTHENTICATION_PATH", i.protected_authentication_path()),
        ("TOKEN_INITIALIZED", i.token_initialized()),
        ("USER_PIN_COUNT_LOW", i.user_pin_count_low()),
        ("USER_PIN_FINAL_TRY", i.user_pin_final_try()),
        ("USER_PIN_LOCKED", i.user_pin_locked()),
        ("USER_PIN_TO_BE_CHANGED", i.user_pin_to_be_changed()),
    ];
    Ok(TokenFacts {
        label: i.label().trim().to_owned(),
        manufacturer: i.manufacturer_id().trim().to_owned(),
        model: i.model().trim().to_owned(),
        serial: i.serial_number().trim().to_owned(),
        firmware: i.firmware_version().to_string(),
        hardware: i.hardware_version().to_string(),
        flags: flags.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect(),
        max_sessions: i.max_session_count().into(),
        max_rw_sessions: i.max_rw_session_count().into(),
    })
}

/// The mechanisms the proxy uses, and for what.
pub const NEEDED_MECHANISMS: [(&str, &str); 3] = [
    ("CKM_AES_KEY_GEN", "keys create"),
    ("CKM_AES_GCM", "Encrypt and Decrypt (every KMS request)"),
    ("CKM_AES_KEY_WRAP_PAD", "keys import"),
];

fn mechanism_facts(p: &Pkcs11, slot: Slot) -> Vec<MechanismFact> {
    let listed = p.get_mechanism_list(slot).unwrap_or_default();
    let types = [
        MechanismType::AES_KEY_GEN,
        MechanismType::AES_GCM,
        MechanismType::AES_KEY_WRAP_PAD,
    ];
    types
        .iter()
        .zip(NEEDED_MECHANISMS)
        .map(|(t, (name, used_for))| MechanismFact {
            name,
            used_for,
            listed: listed.contains(t),
            info: p
                .get_mechanism_info(slot, *t)
                .map_err(|e| Refusal::of(&e))
                .map(|i| {
                    let flags = [
                        ("ENCRYPT", i.encrypt()),
                        ("DECRYPT", i.decrypt()),
                        ("GENERATE", i.generate()),
                        ("WRAP", i.wrap()),
                        ("UNWRAP", i.unwrap()),
                    ];
                    KeySizes {
                        min: i.min_key_size() as u64,
                        max: i.max_key_size() as u64,
                        flags: flags.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect(),
                    }
                }),
        })
        .collect()
}
