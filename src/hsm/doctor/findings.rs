//! The facts `xks-bridge doctor` collects, one struct per check, as found on the token (no
//! judgement: see `doctor_report`).

use super::super::keyspec::KeySpec;
use crate::config::{IvSource, Profile};
use cryptoki::slot::Limit;
use serde::Serialize;

pub use super::super::gcm_probe::Probe;

/// A call the token refused, in the words the report uses: `CKR_MECHANISM_INVALID from
/// C_GetMechanismInfo`, or the PKCS#11 library's own error. Serialized as that text, which is
/// what the JSON report has always carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(transparent)]
#[error("{0}")]
pub struct Refusal(String);

impl Refusal {
    pub(super) fn of(e: &cryptoki::error::Error) -> Self {
        Refusal(super::super::gcm_probe::code(e))
    }
}

/// `C_GetInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryFacts {
    /// `cryptokiVersion`: the PKCS#11 version the library implements.
    pub pkcs11_version: String,
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
    pub info: Result<KeySizes, Refusal>,
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

/// Which GCM IV modes work on a scratch session key.
#[derive(Debug, Clone, Serialize)]
pub struct IvFacts {
    /// The IV is 12 bytes from `C_GenerateRandom`, passed in (`iv_source = "token-random"`).
    pub caller_random: Probe,
    /// The token generates the IV in `C_Encrypt` and writes it back (`iv_source = "mechanism"`).
    pub mechanism_generated: Probe,
    /// No IV is passed; the token returns the one it made after the tag
    /// (`iv_source = "mechanism-after-tag"`).
    pub after_tag: Probe,
}

impl IvFacts {
    /// How the probe of `mode` went.
    pub fn get(&self, mode: IvSource) -> &Probe {
        match mode {
            IvSource::TokenRandom => &self.caller_random,
            IvSource::Mechanism => &self.mechanism_generated,
            IvSource::MechanismAfterTag => &self.after_tag,
        }
    }

    /// The mode to use: `configured` if it works, else the first that works, else `configured`.
    pub fn working(&self, configured: IvSource) -> IvSource {
        let works = |m: &IvSource| self.get(*m) == &Probe::Works;
        if works(&configured) {
            return configured;
        }
        IvSource::ALL.into_iter().find(works).unwrap_or(configured)
    }
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
        /// Classified as invalid ciphertext by `hsm::classify` under the configured profile.
        invalid_ciphertext: bool,
        /// The profiles that count this code from `C_Decrypt` as a bad tag.
        accepted_by: Vec<Profile>,
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
    pub scratch_key: Result<(), Refusal>,
    /// IV modes.
    pub iv: IvFacts,
    /// A tampered GCM tag.
    pub bad_tag: BadTag,
    /// Private `CKO_DATA` token objects (disabled-key marks, key versions, encryption
    /// counters): one is created and destroyed.
    pub data_objects: WriteProbe,
    /// Public `CKO_DATA` token objects (the fleet epoch): one is created and destroyed.
    pub public_objects: WriteProbe,
    /// Handle reuse; `None` without `--write-tests`.
    pub handle_reuse: Option<HandleReuse>,
    /// Sessions at once.
    pub sessions: SessionFacts,
    /// Encrypt latency; `None` when there is no scratch key or GCM refused.
    pub latency: Option<Latency>,
    /// The configured keys.
    pub keys: Vec<KeyFacts>,
}
