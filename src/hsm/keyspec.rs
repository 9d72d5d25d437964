//! The one decoder from a secret key's `CKA_KEY_TYPE` and `CKA_VALUE_LEN` to the key spec the
//! proxy reports (GetKeyMetadata, `keys list`/`show`) and checks before AES-256-GCM.

use cryptoki::object::KeyType;
use std::fmt;

/// What kind of key a token object is, as reported to operators and to KMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// An AES key; `bits` is 0 when neither the token nor a creation record knows the length.
    Aes {
        /// Key length in bits.
        bits: u64,
    },
    /// Any other key type, by its PKCS#11 name without the `CKK_` prefix.
    Other {
        /// `GENERIC_SECRET`, `DES3`, ...
        key_type: String,
        /// Key length in bits (0 when the token does not say).
        bits: u64,
    },
    /// The token did not report a key type.
    Unknown,
}

impl KeySpec {
    /// Decodes the two attributes. `value_len` is in bytes, as PKCS#11 reports it;
    /// `recorded_len` is the creation record's length, used when the token reports 0 (SoftHSM2
    /// does for unwrapped keys).
    pub(crate) fn decode(
        key_type: Option<KeyType>,
        value_len: u64,
        recorded_len: impl FnOnce() -> Option<u64>,
    ) -> KeySpec {
        match key_type {
            Some(t) if t == KeyType::AES => {
                let len = if value_len == 0 {
                    recorded_len().unwrap_or(0)
                } else {
                    value_len
                };
                KeySpec::Aes { bits: len * 8 }
            }
            Some(t) => KeySpec::Other {
                key_type: t.to_string().trim_start_matches("CKK_").to_owned(),
                bits: value_len * 8,
            },
            None => KeySpec::Unknown,
        }
    }

    /// XKS v1 serves AES-256 only; a token would happily run AES-128-GCM with a shorter key.
    pub fn is_aes256(&self) -> bool {
        *self == KeySpec::Aes { bits: 256 }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Aes { bits: 0 } => write!(f, "AES_UNKNOWN_SIZE"),
            KeySpec::Aes { bits } => write!(f, "AES_{bits}"),
            KeySpec::Other { key_type, bits: 0 } => write!(f, "{key_type}"),
            KeySpec::Other { key_type, bits } => write!(f, "{key_type}_{bits}"),
            KeySpec::Unknown => write!(f, "UNKNOWN"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_lengths_and_other_types_decode_to_one_spelling() {
        assert_eq!(
            KeySpec::decode(Some(KeyType::AES), 32, || None).to_string(),
            "AES_256"
        );
        assert!(KeySpec::decode(Some(KeyType::AES), 32, || None).is_aes256());
        assert!(!KeySpec::decode(Some(KeyType::AES), 16, || None).is_aes256());
        // A token that reports 0 falls back to the creation record.
        assert!(KeySpec::decode(Some(KeyType::AES), 0, || Some(32)).is_aes256());
        assert_eq!(
            KeySpec::decode(Some(KeyType::AES), 0, || None).to_string(),
            "AES_UNKNOWN_SIZE"
        );
        assert_eq!(
            KeySpec::decode(Some(KeyType::GENERIC_SECRET), 32, || None).to_string(),
            "GENERIC_SECRET_256"
        );
        assert_eq!(KeySpec::decode(None, 0, || None), KeySpec::Unknown);
    }
}
