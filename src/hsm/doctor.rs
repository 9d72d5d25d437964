//! The PKCS#11 side of `xks-bridge doctor`: what a token offers and how it behaves, found by
//! asking it and by running the proxy's own operations on a scratch key. It returns facts
//! ([`Findings`], one struct per check); judging them (ok / warn / fail) and printing them is
//! the caller's job.
//!
//! Nothing here leaves anything on the token: the scratch key is a session object
//! (`CKA_TOKEN=false`) destroyed before the session closes, and the token objects made by the
//! write tests (only when asked for) are destroyed before the probe returns; one that could not
//! be destroyed is reported with its handle.

use super::classify::classify;
use super::connection::find_slot;
use super::keyspec::KeySpec;
use super::lifecycle::{usages, USAGE_ATTRIBUTES};
use super::marks;
use super::setup;
use super::HsmError;
use crate::config::TokenConfig;
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::{Limit, Slot};
use secrecy::SecretString;
use serde::Serialize;
use std::time::{Duration, Instant};

/// `CKA_APPLICATION` of the token objects the write tests create (and destroy).
pub const PROBE_APP: &[u8] = b"xks-bridge/doctor-probe";
const TAG_BITS: u64 = 128;
const PROBE_AAD: &[u8] = b"xks-bridge doctor probe";

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

/// `C_GetInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryFacts {
    /// `cryptokiVersion`.
    pub cryptoki_version: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `libraryDescription`.
    pub description: String,
    /// `libraryVersion`.
    pub version: String,
}

/// `C_GetTokenInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct TokenFacts {
    /// `label`.
    pub label: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber`.
    pub serial: String,
    /// `firmwareVersion`.
    pub firmware: String,
    /// `hardwareVersion`.
    pub hardware: String,
    /// The `CKF_` flags that are set, by name.
    pub flags: Vec<&'static str>,
    /// `ulMaxSessionCount` (None: effectively infinite or not reported).
    pub max_sessions: SessionLimit,
    /// `ulMaxRwSessionCount`.
    pub max_rw_sessions: SessionLimit,
}

/// A session limit as the token reports it.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SessionLimit {
    /// An explicit maximum.
    Max(u64),
    /// `CK_EFFECTIVELY_INFINITE`.
    Infinite,
    /// `CK_UNAVAILABLE_INFORMATION`.
    Unknown,
}

impl From<Limit> for SessionLimit {
    fn from(l: Limit) -> SessionLimit {
        match l {
            Limit::Max(n) => SessionLimit::Max(n),
            Limit::Infinite => SessionLimit::Infinite,
            Limit::Unavailable => SessionLimit::Unknown,
        }
    }
}

/// One mechanism the proxy needs.
#[derive(Debug, Clone, Serialize)]
pub struct MechanismFact {
    /// `CKM_AES_GCM`, ...
    pub name: &'static str,
    /// What the proxy uses it for.
    pub used_for: &'static str,
    /// In `C_GetMechanismList`.
    pub listed: bool,
    /// `C_GetMechanismInfo`'s key size range (bytes for AES), or the code it answered.
    pub info: Result<KeySizes, String>,
}

/// A mechanism's key size range and the operations it allows.
#[derive(Debug, Clone, Serialize)]
pub struct KeySizes {
    /// `ulMinKeySize`.
    pub min: u64,
    /// `ulMaxKeySize`.
    pub max: u64,
    /// `CKF_ENCRYPT`/`DECRYPT`/`GENERATE`/`WRAP`/`UNWRAP` flags set.
    pub flags: Vec<&'static str>,
}

/// How one probe on the scratch key went.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "outcome", content = "detail")]
pub enum Probe {
    /// It worked end to end (encrypt, then decrypt to the same plaintext).
    Works,
    /// The token did it but not as the proxy needs (detail says how).
    Wrong(String),
    /// A call failed: `CKR_` code and function.
    Refused(String),
    /// Not run (detail says why).
    NotRun(String),
}

/// Which GCM IV modes work on a scratch session key.
#[derive(Debug, Clone, Serialize)]
pub struct IvFacts {
    /// The IV is 12 bytes from `C_GenerateRandom`, passed in (`iv_source = "token-random"`).
    pub caller_random: Probe,
    /// The token generates the IV in `C_Encrypt` and writes it back (`iv_source = "mechanism"`).
    pub mechanism_generated: Probe,
}

/// What `C_Decrypt` says to a ciphertext whose tag was altered.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum BadTag {
    /// Refused with this code; `invalid_ciphertext`: the proxy's classification turns it into
    /// an invalid-ciphertext answer (not a device failure).
    Refused {
        /// `CKR_...`
        code: String,
        /// The PKCS#11 function that returned it.
        function: String,
        /// Classified as invalid ciphertext by `hsm::classify`.
        invalid_ciphertext: bool,
    },
    /// The token returned a plaintext for a forged ciphertext.
    Accepted,
    /// Not run (why).
    NotRun {
        /// Why.
        reason: String,
    },
}

/// A create/destroy test on token objects.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum WriteProbe {
    /// Created and destroyed.
    Done,
    /// The token refused to create it.
    Refused {
        /// `CKR_...` and function.
        code: String,
    },
    /// Created, but destroying failed: the object is still on the token.
    LeftBehind {
        /// Its handle.
        handle: u64,
        /// Why destroying failed.
        code: String,
    },
}

/// Handle reuse: a destroyed object's handle number given to the next object.
#[derive(Debug, Clone, Serialize)]
pub struct HandleReuse {
    /// The create/destroy sequence itself.
    pub probe: WriteProbe,
    /// Whether the second object got the first one's (destroyed) handle number.
    pub reused: Option<bool>,
}

/// Sessions the token lets this login open at once.
#[derive(Debug, Clone, Serialize)]
pub struct SessionFacts {
    /// Sessions asked for.
    pub wanted: usize,
    /// Sessions opened (all closed again).
    pub opened: usize,
    /// The code of the first refusal, if any.
    pub refusal: Option<String>,
}

/// A 2-second (by default) encrypt sample on the scratch key, IV from `C_GenerateRandom`.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Encryptions done.
    pub ops: u64,
    /// Per second.
    pub ops_per_sec: f64,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
}

/// A configured key's attributes.
#[derive(Debug, Clone, Serialize)]
pub struct KeyFacts {
    /// Its label (the external key id).
    pub label: String,
    /// Named in `allowed_keys` (else found through `key_pattern`).
    pub named: bool,
    /// How many secret keys carry the label (1 is right).
    pub found: usize,
    /// `AES_256`, ...
    pub key_spec: String,
    /// `CKA_SENSITIVE`.
    pub sensitive: Option<bool>,
    /// `CKA_EXTRACTABLE`.
    pub extractable: Option<bool>,
    /// `CKA_PRIVATE`.
    pub private: Option<bool>,
    /// `CKA_MODIFIABLE`.
    pub modifiable: Option<bool>,
    /// `ENCRYPT`, `DECRYPT`, ...
    pub usages: Vec<&'static str>,
}

impl KeyFacts {
    /// XKS v1 keys are AES-256.
    pub fn is_aes256(&self) -> bool {
        self.key_spec == KeySpec::Aes { bits: 256 }.to_string()
    }
}

/// Everything the doctor found on one token.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    /// The module.
    pub library: LibraryFacts,
    /// The token.
    pub token: TokenFacts,
    /// `CKM_AES_KEY_GEN`, `CKM_AES_GCM`, `CKM_AES_KEY_WRAP_PAD`.
    pub mechanisms: Vec<MechanismFact>,
    /// The scratch session key (AES-256, `C_GenerateKey`): `Ok` or the refusal.
    pub scratch_key: Result<(), String>,
    /// IV modes.
    pub iv: IvFacts,
    /// A tampered GCM tag.
    pub bad_tag: BadTag,
    /// Private `CKO_DATA` token objects (disabled-key marks); `None` without `--write-tests`.
    pub data_objects: Option<WriteProbe>,
    /// Handle reuse; `None` without `--write-tests`.
    pub handle_reuse: Option<HandleReuse>,
    /// Sessions at once.
    pub sessions: SessionFacts,
    /// Encrypt latency; `None` when there is no scratch key or GCM refused.
    pub latency: Option<Latency>,
    /// The configured keys.
    pub keys: Vec<KeyFacts>,
}

/// `CKR_GENERAL_ERROR from C_Decrypt`, from a cryptoki error.
fn code(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, f) => format!("{} from C_{f:?}", ckr_name(&format!("{rv:?}"))),
        other => other.to_string(),
    }
}

/// `GeneralError` -> `CKR_GENERAL_ERROR`.
fn ckr_name(debug: &str) -> String {
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
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
    let scratch = scratch_key(s);
    let (scratch_key, iv, bad_tag, latency) = match &scratch {
        Ok(key) => (
            Ok(()),
            IvFacts {
                caller_random: caller_random_iv(s, *key),
                mechanism_generated: mechanism_iv(s, *key),
            },
            bad_tag(s, *key),
            sample(s, *key, plan.sample),
        ),
        Err(e) => {
            let why = format!("no scratch key ({e})");
            (
                Err(e.clone()),
                IvFacts {
                    caller_random: Probe::NotRun(why.clone()),
                    mechanism_generated: Probe::NotRun(why.clone()),
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
    let (data_objects, handle_reuse) = if plan.write_tests {
        (Some(data_object_probe(s)), Some(handle_reuse_probe(s)))
    } else {
        (None, None)
    };
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
        cryptoki_version: i.cryptoki_version().to_string(),
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
            info: p.get_mechanism_info(slot, *t).map_err(|e| code(&e)).map(|i| {
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

/// An AES-256 session key (never on the token), sensitive and not extractable.
fn scratch_key(s: &Session) -> Result<ObjectHandle, String> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(b"xks-bridge-doctor-scratch".to_vec()),
    ];
    s.generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| code(&e))
}

fn gcm_encrypt(s: &Session, key: ObjectHandle, iv: &mut [u8; 12], pt: &[u8]) -> Result<Vec<u8>, CkError> {
    let params = GcmParams::new(iv, PROBE_AAD, TAG_BITS.into())?;
    s.encrypt(&Mechanism::AesGcm(params), key, pt)
}

fn gcm_decrypt(s: &Session, key: ObjectHandle, iv: &[u8; 12], ct: &[u8]) -> Result<Vec<u8>, CkError> {
    let mut iv = *iv;
    let params = GcmParams::new(&mut iv, PROBE_AAD, TAG_BITS.into())?;
    s.decrypt(&Mechanism::AesGcm(params), key, ct)
}

/// Encrypts under a random IV from `C_GenerateRandom`: (iv, ciphertext and tag).
fn random_iv_encrypt(s: &Session, key: ObjectHandle, pt: &[u8]) -> Result<([u8; 12], Vec<u8>), CkError> {
    let mut iv = [0u8; 12];
    s.generate_random_slice(&mut iv)?;
    let ct = gcm_encrypt(s, key, &mut iv, pt)?;
    Ok((iv, ct))
}

fn round_trip(s: &Session, key: ObjectHandle, iv: &[u8; 12], ct: &[u8], pt: &[u8]) -> Probe {
    match gcm_decrypt(s, key, iv, ct) {
        Ok(back) if back == pt => Probe::Works,
        Ok(_) => Probe::Wrong("decryption returned a different plaintext".into()),
        Err(e) => Probe::Refused(code(&e)),
    }
}

fn caller_random_iv(s: &Session, key: ObjectHandle) -> Probe {
    let pt = b"doctor: caller-supplied random IV";
    match random_iv_encrypt(s, key, pt) {
        Ok((iv, ct)) if ct.len() == pt.len() + 16 => round_trip(s, key, &iv, &ct, pt),
        Ok((_, ct)) => Probe::Wrong(format!(
            "ciphertext of {} bytes for {} bytes of plaintext",
            ct.len(),
            pt.len()
        )),
        Err(e) => Probe::Refused(code(&e)),
    }
}

/// Passes an all-zero IV and looks whether the token wrote a generated one back (what
/// `iv_source = "mechanism"` relies on). A token that simply uses the zero IV does not
/// generate IVs; the scratch key is discarded, so that one encryption is harmless.
fn mechanism_iv(s: &Session, key: ObjectHandle) -> Probe {
    let pt = b"doctor: IV generated by the token";
    let mut iv = [0u8; 12];
    match gcm_encrypt(s, key, &mut iv, pt) {
        Ok(_) if iv == [0u8; 12] => {
            Probe::Wrong("the token used the IV it was given and wrote none back".into())
        }
        Ok(ct) => round_trip(s, key, &iv, &ct, pt),
        Err(e) => Probe::Refused(code(&e)),
    }
}

fn bad_tag(s: &Session, key: ObjectHandle) -> BadTag {
    let pt = b"doctor: tampered tag";
    let (iv, mut ct) = match random_iv_encrypt(s, key, pt) {
        Ok(v) => v,
        Err(e) => {
            return BadTag::NotRun {
                reason: format!("encrypt failed: {}", code(&e)),
            }
        }
    };
    if let Some(last) = ct.last_mut() {
        *last ^= 0x01;
    }
    match gcm_decrypt(s, key, &iv, &ct) {
        Ok(_) => BadTag::Accepted,
        Err(e) => {
            let (rv, function) = match &e {
                CkError::Pkcs11(rv, f) => (ckr_name(&format!("{rv:?}")), format!("C_{f:?}")),
                other => (other.to_string(), String::new()),
            };
            BadTag::Refused {
                code: rv,
                function,
                invalid_ciphertext: matches!(classify(e), HsmError::InvalidCiphertext),
            }
        }
    }
}

fn sample(s: &Session, key: ObjectHandle, length: Duration) -> Option<Latency> {
    let pt = [0x5au8; 32];
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < length {
        let t = Instant::now();
        random_iv_encrypt(s, key, &pt).ok()?;
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_micros() as u64
    };
    Some(Latency {
        ops: times.len() as u64,
        ops_per_sec: times.len() as f64 / total.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn destroy(s: &Session, h: ObjectHandle) -> Result<(), WriteProbe> {
    s.destroy_object(h).map_err(|e| WriteProbe::LeftBehind {
        handle: h.handle(),
        code: code(&e),
    })
}

fn put_probe(s: &Session, n: u32) -> Result<ObjectHandle, WriteProbe> {
    marks::put_data(s, PROBE_APP, &format!("xks-bridge-doctor-{n}"), b"probe").map_err(|e| {
        WriteProbe::Refused {
            code: match e {
                HsmError::Device { rv, function } => {
                    format!("{} from C_{function:?}", ckr_name(&format!("{rv:?}")))
                }
                other => other.to_string(),
            },
        }
    })
}

/// A private `CKO_DATA` token object, as the disabled-key marks are, created and destroyed.
fn data_object_probe(s: &Session) -> WriteProbe {
    match put_probe(s, 0).and_then(|h| destroy(s, h)) {
        Ok(()) => WriteProbe::Done,
        Err(w) => w,
    }
}

/// Creates and destroys one object, then creates another: does it get the first one's number?
fn handle_reuse_probe(s: &Session) -> HandleReuse {
    let run = || -> Result<bool, WriteProbe> {
        let first = put_probe(s, 1)?;
        destroy(s, first)?;
        let second = put_probe(s, 2)?;
        destroy(s, second)?;
        Ok(first.handle() == second.handle())
    };
    match run() {
        Ok(reused) => HandleReuse {
            probe: WriteProbe::Done,
            reused: Some(reused),
        },
        Err(w) => HandleReuse {
            probe: w,
            reused: None,
        },
    }
}

/// Opens up to `wanted` read-only sessions at once (the daemon's login, workers and poll
/// sessions), then closes them all.
fn session_probe(p: &Pkcs11, slot: Slot, wanted: usize) -> SessionFacts {
    let mut open = Vec::new();
    let mut refusal = None;
    while open.len() < wanted {
        match p.open_ro_session(slot) {
            Ok(s) => open.push(s),
            Err(e) => {
                refusal = Some(code(&e));
                break;
            }
        }
    }
    let opened = open.len();
    drop(open);
    SessionFacts {
        wanted,
        opened,
        refusal,
    }
}

fn key_facts(s: &Session, plan: &Plan<'_>) -> Result<Vec<KeyFacts>, HsmError> {
    let mut labels: Vec<(String, bool)> = plan.named_keys.iter().map(|k| (k.clone(), true)).collect();
    for h in s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .map_err(classify)?
    {
        for a in s.get_attributes(h, &[AttributeType::Label]).map_err(classify)? {
            if let Attribute::Label(l) = a {
                let l = String::from_utf8_lossy(&l).into_owned();
                if (plan.pattern)(&l) && !labels.iter().any(|(k, _)| *k == l) {
                    labels.push((l, false));
                }
            }
        }
    }
    labels.sort();
    labels
        .into_iter()
        .map(|(l, named)| one_key(s, l, named))
        .collect()
}

fn one_key(s: &Session, label: String, named: bool) -> Result<KeyFacts, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(classify)?;
    let mut k = KeyFacts {
        label,
        named,
        found: found.len(),
        key_spec: KeySpec::Unknown.to_string(),
        sensitive: None,
        extractable: None,
        private: None,
        modifiable: None,
        usages: Vec::new(),
    };
    let [h] = found.as_slice() else {
        return Ok(k);
    };
    let mut wanted = vec![
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Private,
        AttributeType::Modifiable,
    ];
    wanted.extend(USAGE_ATTRIBUTES);
    let attrs = s.get_attributes(*h, &wanted).map_err(classify)?;
    let (mut kt, mut len) = (None, 0u64);
    for a in &attrs {
        match a {
            Attribute::KeyType(t) => kt = Some(*t),
            Attribute::ValueLen(l) => len = u64::from(*l),
            Attribute::Sensitive(b) => k.sensitive = Some(*b),
            Attribute::Extractable(b) => k.extractable = Some(*b),
            Attribute::Private(b) => k.private = Some(*b),
            Attribute::Modifiable(b) => k.modifiable = Some(*b),
            _ => {}
        }
    }
    k.key_spec = KeySpec::decode(kt, len, || marks::recorded_value_len(s, &k.label)).to_string();
    k.usages = usages(&attrs);
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_are_named_as_the_standard_spells_them() {
        assert_eq!(ckr_name("GeneralError"), "CKR_GENERAL_ERROR");
        assert_eq!(ckr_name("MechanismInvalid"), "CKR_MECHANISM_INVALID");
        assert_eq!(ckr_name("EncryptedDataInvalid"), "CKR_ENCRYPTED_DATA_INVALID");
    }
}
