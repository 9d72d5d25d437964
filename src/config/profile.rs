//! The HSM vendor a `[[tokens]]` entry talks to (`profile = "luna"`), and the facts about it
//! that the configuration itself needs: the IV mode used when `iv_source` is not set, and the
//! shape of the PIN. The PKCS#11 side of each profile (tag-failure codes, login role, notes)
//! is in `hsm::profile`; docs/hsm-profiles.md gives the source of every fact.

use super::Reason;
use serde::{Deserialize, Serialize};

/// A vendor profile. Absent from the config: [`Profile::Generic`], which behaves as the proxy
/// did before profiles existed.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// SoftHSM2 (tests, quickstart, development).
    Softhsm,
    /// Thales Luna Network HSM 7 (FIPS mode: the HSM makes the IV).
    Luna,
    /// AWS CloudHSM (Client SDK 5).
    Cloudhsm,
    /// Entrust nShield.
    Nshield,
    /// Any other token: caller-supplied random IVs, every known tag-failure code accepted.
    #[default]
    Generic,
}

/// Where the 12-byte (or, for [`IvSource::MechanismAfterTag`], 12- or 16-byte) GCM IV comes
/// from.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IvSource {
    /// The proxy asks the token for 12 random bytes (`C_GenerateRandom`) and passes them in.
    /// Works with SoftHSM2 and most HSMs.
    #[default]
    TokenRandom,
    /// The proxy passes a zeroed 12-byte IV buffer; the HSM generates the IV inside
    /// `C_Encrypt` and writes it back into that buffer (CloudHSM, nShield).
    Mechanism,
    /// The proxy passes no IV (length 0); the HSM generates one and returns it after the tag
    /// in `C_Encrypt`'s output: `ciphertext || tag || IV` (Luna in FIPS mode).
    MechanismAfterTag,
}

impl IvSource {
    /// Every mode, in the order the doctor reports them.
    pub const ALL: [IvSource; 3] = [
        IvSource::TokenRandom,
        IvSource::Mechanism,
        IvSource::MechanismAfterTag,
    ];

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            IvSource::TokenRandom => "token-random",
            IvSource::Mechanism => "mechanism",
            IvSource::MechanismAfterTag => "mechanism-after-tag",
        }
    }
}

/// The form a token's user PIN must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinFormat {
    /// Whatever the token accepts.
    Any,
    /// `<user name>:<password>`: the PIN names the HSM user as well (CloudHSM crypto users).
    UserColonPassword,
}

impl Profile {
    /// Every profile, in the order the documentation lists them.
    pub const ALL: [Profile; 5] = [
        Profile::Softhsm,
        Profile::Luna,
        Profile::Cloudhsm,
        Profile::Nshield,
        Profile::Generic,
    ];

    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Softhsm => "softhsm",
            Profile::Luna => "luna",
            Profile::Cloudhsm => "cloudhsm",
            Profile::Nshield => "nshield",
            Profile::Generic => "generic",
        }
    }

    /// The IV mode of this vendor when `iv_source` is not set.
    pub fn default_iv_source(self) -> IvSource {
        match self {
            Profile::Softhsm | Profile::Generic => IvSource::TokenRandom,
            Profile::Cloudhsm | Profile::Nshield => IvSource::Mechanism,
            Profile::Luna => IvSource::MechanismAfterTag,
        }
    }

    /// The PIN shape this vendor's `C_Login` expects.
    pub fn pin_format(self) -> PinFormat {
        match self {
            Profile::Cloudhsm => PinFormat::UserColonPassword,
            _ => PinFormat::Any,
        }
    }

    /// Checks a PIN against [`Profile::pin_format`]. The message never contains the PIN: it is
    /// printed at start and by `check-config`.
    pub fn check_pin(self, pin: &str) -> Result<(), Reason> {
        match self.pin_format() {
            PinFormat::Any => Ok(()),
            PinFormat::UserColonPassword => match pin.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(()),
                _ => Err(Reason::Rule(format!(
                    "profile {:?} needs the PIN as <crypto user name>:<password> (e.g. \
                     \"xks-proxy:secret\"); the PIN read from its source is not of that form",
                    self.name()
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudhsm_pin_needs_a_user_and_a_password_and_is_never_echoed() {
        assert!(Profile::Cloudhsm.check_pin("cu:pw").is_ok());
        assert!(Profile::Cloudhsm.check_pin("cu:pw:with:colons").is_ok());
        for bad in ["secretpin", ":secretpin", "secretpin:", ""] {
            let e = Profile::Cloudhsm.check_pin(bad).expect_err(bad).to_string();
            if !bad.is_empty() {
                assert!(!e.contains("secretpin"), "{e}");
            }
        }
        for p in [
            Profile::Softhsm,
            Profile::Luna,
            Profile::Nshield,
            Profile::Generic,
        ] {
            assert!(p.check_pin("1234").is_ok(), "{p:?}");
        }
    }

    #[test]
    fn no_profile_keeps_the_caller_random_iv() {
        assert_eq!(Profile::default(), Profile::Generic);
        assert_eq!(Profile::default().default_iv_source(), IvSource::TokenRandom);
        assert_eq!(Profile::Luna.default_iv_source(), IvSource::MechanismAfterTag);
        assert_eq!(Profile::Cloudhsm.default_iv_source(), IvSource::Mechanism);
        assert_eq!(Profile::Nshield.default_iv_source(), IvSource::Mechanism);
    }

    #[test]
    fn names_round_trip_through_the_config_spelling() {
        #[derive(Deserialize)]
        struct T {
            p: Profile,
            i: IvSource,
        }
        for p in Profile::ALL {
            for i in IvSource::ALL {
                let t: T =
                    toml::from_str(&format!("p = {:?}\ni = {:?}", p.name(), i.name())).expect("parses");
                assert_eq!((t.p, t.i), (p, i));
            }
        }
        assert!(toml::from_str::<T>("p = \"thales\"\ni = \"mechanism\"").is_err());
    }
}
