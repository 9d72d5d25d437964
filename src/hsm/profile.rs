//! The PKCS#11 side of a vendor profile ([`Profile`]): which `C_Decrypt` return codes mean "the
//! GCM tag did not verify", who logs in, whether object handles are reused, and what an operator
//! must set up on the vendor's client. The IV mode and PIN format live with the profile in
//! `config`, which needs them before any token is touched. Sources: docs/hsm-profiles.md.

use crate::config::{IvSource, PinFormat, Profile};
use cryptoki::error::RvError;

/// The codes PKCS#11 itself defines for a ciphertext that does not decrypt; every vendor may
/// answer them for a bad tag.
const STANDARD: [RvError; 2] = [RvError::EncryptedDataInvalid, RvError::EncryptedDataLenRange];

/// One vendor's quirks.
#[derive(Debug)]
pub struct Quirks {
    /// The profile these quirks belong to.
    pub profile: Profile,
    /// `C_Decrypt` codes classified as an invalid ciphertext (a bad tag). Any other code from
    /// `C_Decrypt` is a device error: on a strict profile a failing HSM is not mistaken for a
    /// forged ciphertext (and its session is not kept as if nothing happened).
    pub bad_tag: &'static [RvError],
    /// Which login the proxy's `C_Login(CKU_USER)` is on this vendor, and what it must be
    /// allowed to do.
    pub login_role: &'static str,
    /// Whether the vendor gives a destroyed object's handle number to a new object (`None`:
    /// not known; the proxy re-checks cached handles either way).
    pub reuses_handles: Option<bool>,
    /// Set-up the vendor's client needs, shown by the doctor.
    pub notes: &'static [&'static str],
}

const SOFTHSM: Quirks = Quirks {
    profile: Profile::Softhsm,
    bad_tag: &[
        RvError::GeneralError,
        RvError::EncryptedDataInvalid,
        RvError::EncryptedDataLenRange,
    ],
    login_role: "the token's user (CKU_USER), whose PIN was set by `softhsm2-util --init-token`",
    reuses_handles: Some(false),
    notes: &["set SOFTHSM2_CONF in module_env when the token lives outside the default directory"],
};

const LUNA: Quirks = Quirks {
    profile: Profile::Luna,
    bad_tag: &STANDARD,
    login_role: "the partition's Crypto Officer (CKU_USER); the proxy creates data objects (key marks), which a Crypto User may not",
    reuses_handles: None,
    notes: &[
        "set ChrystokiConfigurationPath in module_env to the directory holding Chrystoki.conf",
        "in FIPS mode (HSM policy 12 off) the HSM makes the IV and returns it after the tag: iv_source = \"mechanism-after-tag\"",
    ],
};

const CLOUDHSM: Quirks = Quirks {
    profile: Profile::Cloudhsm,
    bad_tag: &STANDARD,
    login_role: "a crypto user (CU); the PIN is <CU name>:<password>",
    reuses_handles: None,
    notes: &[
        "a cluster of one HSM needs `configure-pkcs11 --disable-key-availability-check`, else key use fails",
        "C_Encrypt/C_Decrypt with CKM_AES_GCM are limited to 16 KB buffers (far above XKS's 4300 bytes)",
    ],
};

const NSHIELD: Quirks = Quirks {
    profile: Profile::Nshield,
    bad_tag: &[
        RvError::FunctionFailed,
        RvError::EncryptedDataInvalid,
        RvError::EncryptedDataLenRange,
    ],
    login_role: "the softcard or OCS named by token_label (CKU_USER, its passphrase as the PIN)",
    reuses_handles: None,
    notes: &[
        "the PKCS#11 security assurance mechanism (CKNFAST_OVERRIDE_SECURITY_ASSURANCE) may refuse calls it finds unsafe: read the library's log when a call fails",
    ],
};

const GENERIC: Quirks = Quirks {
    profile: Profile::Generic,
    bad_tag: &[
        RvError::GeneralError,
        RvError::FunctionFailed,
        RvError::EncryptedDataInvalid,
        RvError::EncryptedDataLenRange,
    ],
    login_role: "the token's user (CKU_USER)",
    reuses_handles: None,
    notes: &["run `xks-bridge doctor` and set the profile of your vendor if there is one"],
};

/// The quirks of `p`.
pub fn quirks(p: Profile) -> &'static Quirks {
    match p {
        Profile::Softhsm => &SOFTHSM,
        Profile::Luna => &LUNA,
        Profile::Cloudhsm => &CLOUDHSM,
        Profile::Nshield => &NSHIELD,
        Profile::Generic => &GENERIC,
    }
}

impl Quirks {
    /// The IV mode used when the config does not set one.
    pub fn iv_source(&self) -> IvSource {
        self.profile.default_iv_source()
    }

    /// The PIN shape `C_Login` expects.
    pub fn pin_format(&self) -> PinFormat {
        self.profile.pin_format()
    }

    /// Is `rv` from `C_Decrypt` a bad tag on this vendor?
    pub fn is_bad_tag(&self, rv: RvError) -> bool {
        self.bad_tag.contains(&rv)
    }

    /// The bad-tag codes as the standard spells them (`CKR_GENERAL_ERROR`, ...).
    pub fn bad_tag_names(&self) -> Vec<String> {
        self.bad_tag.iter().map(|rv| ckr_name(*rv)).collect()
    }
}

/// `RvError::GeneralError` -> `CKR_GENERAL_ERROR`.
pub fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR_");
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_accepts_the_standard_codes() {
        for p in Profile::ALL {
            for rv in STANDARD {
                assert!(quirks(p).is_bad_tag(rv), "{p:?} {rv:?}");
            }
            assert_eq!(quirks(p).profile, p);
        }
    }

    #[test]
    fn vendor_codes_belong_to_their_vendor_only() {
        assert!(quirks(Profile::Softhsm).is_bad_tag(RvError::GeneralError));
        assert!(!quirks(Profile::Softhsm).is_bad_tag(RvError::FunctionFailed));
        assert!(quirks(Profile::Nshield).is_bad_tag(RvError::FunctionFailed));
        assert!(!quirks(Profile::Nshield).is_bad_tag(RvError::GeneralError));
        for p in [Profile::Luna, Profile::Cloudhsm] {
            assert!(!quirks(p).is_bad_tag(RvError::GeneralError), "{p:?}");
            assert!(!quirks(p).is_bad_tag(RvError::FunctionFailed), "{p:?}");
        }
        assert!(!quirks(Profile::Generic).is_bad_tag(RvError::DeviceError));
    }

    #[test]
    fn generic_accepts_every_code_any_profile_accepts() {
        for p in Profile::ALL {
            for rv in quirks(p).bad_tag {
                assert!(quirks(Profile::Generic).is_bad_tag(*rv), "{p:?} {rv:?}");
            }
        }
    }

    #[test]
    fn only_cloudhsm_wants_a_user_in_the_pin_and_luna_takes_its_iv_after_the_tag() {
        for p in Profile::ALL {
            let q = quirks(p);
            assert_eq!(
                q.pin_format() == PinFormat::UserColonPassword,
                p == Profile::Cloudhsm
            );
            assert_eq!(q.iv_source() == IvSource::MechanismAfterTag, p == Profile::Luna);
        }
        assert_eq!(
            ckr_name(RvError::EncryptedDataLenRange),
            "CKR_ENCRYPTED_DATA_LEN_RANGE"
        );
    }
}
