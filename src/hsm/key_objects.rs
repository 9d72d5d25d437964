//! What an external key is on the token: the template and hardening every key object gets
//! (sensitive, never extractable, private, persistent and, where the token accepts it,
//! unmodifiable and uncopyable, so nobody can later weaken it), how one is found by its id,
//! and its usages as GetKeyMetadata and `keys list` report them. Used by the lifecycle
//! commands, the workers' key lookups and version creation.

use super::{classify, HsmError};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::Serialize;

/// Key usages to give a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// CKA_ENCRYPT
    pub encrypt: bool,
    /// CKA_DECRYPT
    pub decrypt: bool,
}

impl Usage {
    /// Parses `encrypt,decrypt`, `encrypt`, `decrypt` or `none` (command-line input).
    pub fn parse(s: &str) -> Result<Usage, UnknownUsage> {
        let mut u = Usage {
            encrypt: false,
            decrypt: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "encrypt" => u.encrypt = true,
                "decrypt" => u.decrypt = true,
                "none" | "" => {}
                other => return Err(UnknownUsage(other.to_owned())),
            }
        }
        Ok(u)
    }
}

/// A usage word [`Usage::parse`] does not know; carries the word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown usage {0:?} (use encrypt, decrypt or none)")]
pub struct UnknownUsage(pub String);

fn label_template(class: ObjectClass, label: &str) -> [Attribute; 2] {
    [
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The one secret key labelled `id`; absent and duplicated labels are errors.
pub(super) fn find_key(s: &Session, id: &str) -> Result<ObjectHandle, HsmError> {
    let found = s
        .find_objects(&label_template(ObjectClass::SECRET_KEY, id))
        .map_err(classify)?;
    match found.as_slice() {
        [h] => Ok(*h),
        [] => Err(HsmError::KeyNotFound),
        many => Err(HsmError::AmbiguousKey(many.len())),
    }
}

/// Usage flags in the order GetKeyMetadata and `keys list` report them.
pub(super) fn usages(attrs: &[Attribute]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for a in attrs {
        match a {
            Attribute::Encrypt(true) => out.push("ENCRYPT"),
            Attribute::Decrypt(true) => out.push("DECRYPT"),
            Attribute::Wrap(true) => out.push("WRAP"),
            Attribute::Unwrap(true) => out.push("UNWRAP"),
            Attribute::Sign(true) => out.push("SIGN"),
            Attribute::Verify(true) => out.push("VERIFY"),
            Attribute::Derive(true) => out.push("DERIVE"),
            _ => {}
        }
    }
    out
}

/// The usage attributes, in [`usages`]'s order.
pub(super) const USAGE_ATTRIBUTES: [AttributeType; 7] = [
    AttributeType::Encrypt,
    AttributeType::Decrypt,
    AttributeType::Wrap,
    AttributeType::Unwrap,
    AttributeType::Sign,
    AttributeType::Verify,
    AttributeType::Derive,
];

/// Attributes every external key gets: persistent, private, sensitive, never extractable.
pub(super) fn key_template(id: &str, usage: Usage, unwrap: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(usage.encrypt),
        Attribute::Decrypt(usage.decrypt),
        Attribute::Wrap(false),
        Attribute::Unwrap(unwrap),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(id.as_bytes().to_vec()),
    ]
}

/// Runs `make` with `CKA_MODIFIABLE=false` and `CKA_COPYABLE=false` added to `template`; if the
/// token refuses those attributes, with `CKA_MODIFIABLE=false` alone (PKCS#11 2.20 tokens do not
/// know `CKA_COPYABLE`), then with neither. `CKA_DESTROYABLE` is left at its default: `keys
/// destroy` needs it.
pub(super) fn with_hardening(
    id: &str,
    template: Vec<Attribute>,
    make: impl Fn(&[Attribute]) -> Result<ObjectHandle, HsmError>,
) -> Result<ObjectHandle, HsmError> {
    let extras: [&[Attribute]; 3] = [
        &[Attribute::Modifiable(false), Attribute::Copyable(false)],
        &[Attribute::Modifiable(false)],
        &[],
    ];
    let mut last = None;
    for extra in extras {
        let mut t = template.clone();
        t.extend_from_slice(extra);
        match make(&t) {
            Err(HsmError::Device {
                rv:
                    rv @ (RvError::AttributeTypeInvalid
                    | RvError::AttributeValueInvalid
                    | RvError::AttributeReadOnly
                    | RvError::TemplateInconsistent),
                function,
            }) => {
                tracing::warn!(key_id = id, refused = ?rv, attributes = ?extra, "token refused hardening attributes; trying with fewer");
                last = Some(HsmError::Device { rv, function });
            }
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| HsmError::Internal("no key template tried".into())))
}

/// The usages every version of a key shares: version 1's, read from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct VersionUsages {
    pub(super) encrypt: bool,
    pub(super) decrypt: bool,
    wrap: bool,
    unwrap: bool,
}

impl VersionUsages {
    pub(super) fn of(s: &Session, v1: ObjectHandle) -> Result<VersionUsages, HsmError> {
        use AttributeType as A;
        let attrs = s
            .get_attributes(v1, &[A::Encrypt, A::Decrypt, A::Wrap, A::Unwrap])
            .map_err(classify)?;
        let mut u = VersionUsages {
            encrypt: false,
            decrypt: false,
            wrap: false,
            unwrap: false,
        };
        for a in attrs {
            match a {
                Attribute::Encrypt(x) => u.encrypt = x,
                Attribute::Decrypt(x) => u.decrypt = x,
                Attribute::Wrap(x) => u.wrap = x,
                Attribute::Unwrap(x) => u.unwrap = x,
                _ => {}
            }
        }
        Ok(u)
    }
}

/// Generates the AES-256 key object of a version candidate inside the token: the same
/// protection as every external key, version 1's usages, and the candidate's nonce as `CKA_ID`.
pub(super) fn create_version_key(
    s: &Session,
    label: &str,
    nonce: &[u8],
    u: VersionUsages,
) -> Result<ObjectHandle, HsmError> {
    let usage = Usage {
        encrypt: u.encrypt,
        decrypt: u.decrypt,
    };
    let mut t = key_template(label, usage, u.unwrap);
    t.retain(|a| !matches!(a, Attribute::Wrap(_)));
    t.push(Attribute::Wrap(u.wrap));
    t.push(Attribute::Id(nonce.to_vec()));
    t.push(Attribute::ValueLen(32.into()));
    with_hardening(label, t, |t| {
        // A refused attempt may still have left an object (a token bug, but one that would give
        // this nonce two different keys): nothing but this attempt's object may carry it.
        for h in s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(nonce.to_vec()),
            ])
            .map_err(classify)?
        {
            s.destroy_object(h).map_err(classify)?;
        }
        s.generate_key(&Mechanism::AesKeyGen, t).map_err(classify)
    })
}
