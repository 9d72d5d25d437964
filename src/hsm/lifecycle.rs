//! Key lifecycle on the token, for the daemon (through [`super::Token::key_admin`]) and the
//! offline CLI (through [`super::setup::UserSession::key_admin`]): create inside the token,
//! store a KEK, import under a KEK with AES key wrap with padding (RFC 5649), list/show,
//! offline disable/enable, and destroy.
//!
//! Keys made here are sensitive, never extractable, private and persistent, and (where the
//! token accepts it) unmodifiable and uncopyable, so nobody can later weaken them on the token.

use super::keyspec::KeySpec;
use super::marks;
use super::token::Token;
use super::{classify, HsmError};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// Attempts at a new key, and at its creation record before the key is removed again.
const RECORD_ATTEMPTS: u32 = 3;
/// Pause between those attempts.
const RECORD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

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
    pub fn parse(s: &str) -> Result<Usage, String> {
        let mut u = Usage {
            encrypt: false,
            decrypt: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "encrypt" => u.encrypt = true,
                "decrypt" => u.decrypt = true,
                "none" | "" => {}
                other => return Err(format!("unknown usage {other:?} (use encrypt, decrypt or none)")),
            }
        }
        Ok(u)
    }
}

/// What `keys list` / `keys show` report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyEntry {
    /// External key id (`CKA_LABEL`).
    pub id: String,
    /// `AES_256`, ... ([`KeySpec`]'s spelling).
    pub key_spec: String,
    /// `ENCRYPT`, `DECRYPT`, `UNWRAP` ...
    pub usages: Vec<&'static str>,
    /// `ENABLED` or `DISABLED`.
    pub state: &'static str,
    /// Creation time, for keys created or imported by this proxy.
    pub created: Option<String>,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// The version Encrypt uses.
    pub current_version: u32,
    /// Every version, oldest first (`keys show` adds the counts).
    pub versions: Vec<super::version_admin::VersionEntry>,
}

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
fn key_template(id: &str, usage: Usage, unwrap: bool) -> Vec<Attribute> {
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
fn with_hardening(
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

/// Key administration on one logged-in read-write session. In the daemon it also tells the
/// token's key-handle cache and key state about every change.
pub struct KeyAdmin<'a> {
    pub(super) s: &'a Session,
    token: Option<&'a Token>,
}

impl<'a> KeyAdmin<'a> {
    pub(super) fn new(s: &'a Session, token: Option<&'a Token>) -> KeyAdmin<'a> {
        KeyAdmin { s, token }
    }

    /// A handle cached before this change may now name another object (or none).
    fn changed(&self) {
        if let Some(t) = self.token {
            t.keys_changed();
        }
    }

    pub(super) fn changed_keys(&self) {
        self.changed();
    }

    /// Versions were changed here: the daemon's table is read again now rather than at the
    /// next poll, so this instance never serves the old state after the command returned.
    pub(super) fn versions_changed(&self) {
        if let Some(t) = self.token {
            t.refresh_versions_now(self.s);
        }
    }

    fn refuse_existing(&self, id: &str) -> Result<(), HsmError> {
        match find_key(self.s, id) {
            Err(HsmError::KeyNotFound) => Ok(()),
            Ok(_) | Err(HsmError::AmbiguousKey(_)) => Err(HsmError::KeyExists(id.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// Makes a key with `make`, again (at most [`RECORD_ATTEMPTS`] times in all) when the token
    /// answers `CKR_GENERAL_ERROR` and left no key with the id behind: SoftHSM2 was seen to give
    /// that answer to one `C_GenerateKey` in a few hundred while the daemon's other sessions read
    /// the token, and to take the same call a moment later. Never retried when something with
    /// the label exists, so a retry cannot make two keys with one id.
    fn retrying_transient(
        &self,
        id: &str,
        make: impl Fn() -> Result<ObjectHandle, HsmError>,
    ) -> Result<ObjectHandle, HsmError> {
        let mut attempt = 1;
        loop {
            match make() {
                Err(
                    e @ HsmError::Device {
                        rv: RvError::GeneralError,
                        ..
                    },
                ) if attempt < RECORD_ATTEMPTS
                    && matches!(find_key(self.s, id), Err(HsmError::KeyNotFound)) =>
                {
                    tracing::warn!(key_id = id, attempt, error = %e, "the token refused to make the key; trying again");
                    std::thread::sleep(RECORD_RETRY_PAUSE);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Stores the creation record; if that fails, removes the key so nothing half-made remains.
    /// SoftHSM2 was seen to answer `CKR_GENERAL_ERROR` to one `C_CreateObject` in a few hundred
    /// while the daemon's other sessions read the token, and to take the same call a moment
    /// later: the write is tried [`RECORD_ATTEMPTS`] times before the key is given up. A
    /// duplicate record from an attempt that did land is harmless (the earliest time is used).
    fn record_creation(&self, id: &str, key: ObjectHandle) -> Result<(), HsmError> {
        self.changed();
        let mut last = None;
        for attempt in 0..RECORD_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(RECORD_RETRY_PAUSE);
            }
            match marks::put_creation_record(self.s, id, 32) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(key_id = id, attempt = attempt + 1, error = %e, "the token refused the key's creation record");
                    last = Some(e);
                }
            }
        }
        let _ = self.s.destroy_object(key);
        let e = last.map_or_else(|| "no attempt".to_owned(), |e| e.to_string());
        Err(HsmError::Refused(format!(
            "the token refused to store the creation record of {id:?} {RECORD_ATTEMPTS} times ({e}); the new key was removed and nothing changed: try again, and if it persists check that this login may create private data objects (xks-bridge doctor --write-tests)"
        )))
    }

    /// Generates an AES-256 key inside the token. Refuses an id already in use.
    pub fn create(&self, id: &str, usage: Usage) -> Result<(), HsmError> {
        self.refuse_existing(id)?;
        let mut t = key_template(id, usage, false);
        t.push(Attribute::ValueLen(32.into()));
        let h = self.retrying_transient(id, || {
            with_hardening(id, t.clone(), |t| {
                self.s.generate_key(&Mechanism::AesKeyGen, t).map_err(classify)
            })
        })?;
        self.record_creation(id, h)
    }

    /// Stores a key-encryption key (unwrap only) from material the custodian also holds.
    pub fn create_kek(&self, id: &str, material: &[u8; 32]) -> Result<(), HsmError> {
        self.refuse_existing(id)?;
        let usage = Usage {
            encrypt: false,
            decrypt: false,
        };
        let mut t = key_template(id, usage, true);
        t.push(Attribute::Value(material.to_vec()));
        let h = self.retrying_transient(id, || {
            with_hardening(id, t.clone(), |t| self.s.create_object(t).map_err(classify))
        })?;
        self.record_creation(id, h)
    }

    /// Unwraps RFC 5649-wrapped AES-256 material under the KEK labelled `kek` into a new key.
    /// On any failure nothing is left on the token.
    pub fn import(&self, id: &str, kek: &str, wrapped: &[u8], usage: Usage) -> Result<(), HsmError> {
        self.refuse_existing(id)?;
        let kek = find_key(self.s, kek).map_err(|e| match e {
            HsmError::KeyNotFound => {
                HsmError::Refused(format!("no key with id {kek:?} on the token to use as the KEK"))
            }
            e => e,
        })?;
        // RFC 5649 output for 32 bytes of material is exactly 40 bytes. The blob's integrity
        // check authenticates the length inside it, and 25-31 bytes (the only other sizes
        // giving 40) are not AES key sizes, so the token refuses to use such a key.
        // CKA_VALUE_LEN cannot be put in the unwrap template (SoftHSM2 treats it as read-only).
        if wrapped.len() != 40 {
            return Err(HsmError::Refused(format!(
                "wrapped blob is {} bytes; an RFC 5649-wrapped AES-256 key is 40",
                wrapped.len()
            )));
        }
        let t = key_template(id, usage, false);
        let h = self
            .retrying_transient(id, || {
                with_hardening(id, t.clone(), |t| {
                    self.s
                        .unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, t)
                        .map_err(classify)
                })
            })
            .map_err(|e| match e {
                HsmError::Device { .. } | HsmError::InvalidCiphertext | HsmError::KeyUsage(_) => {
                    HsmError::Refused(format!("unwrap failed (wrong KEK or corrupt wrapped blob): {e}"))
                }
                e => e,
            })?;
        let len = self.s.get_attributes(h, &[AttributeType::ValueLen]).map(|a| {
            a.iter().find_map(|x| match x {
                Attribute::ValueLen(l) => Some(u64::from(*l)),
                _ => None,
            })
        });
        match len {
            // SoftHSM2 leaves CKA_VALUE_LEN at 0 on unwrapped keys; a token that reports it
            // must say 32.
            Ok(Some(32 | 0) | None) => self.record_creation(id, h),
            other => {
                let _ = self.s.destroy_object(h);
                Err(HsmError::Refused(format!(
                    "the wrapped material is not a 256-bit AES key (length {other:?})"
                )))
            }
        }
    }

    /// Is `id` disabled, on the token or (in the daemon) by this process alone?
    fn is_disabled(&self, id: &str) -> Result<bool, HsmError> {
        if self.token.is_some_and(|t| t.is_refused(id)) {
            return Ok(true);
        }
        Ok(!marks::marks_for(self.s, id)?.is_empty())
    }

    /// Destroys a key, which must be disabled first. Irreversible. The key stays refused until
    /// the object is gone and every cached handle is invalidated; only then are its marks and
    /// refusals dropped, so a request for the id is refused before and "not found" after,
    /// never served.
    pub fn destroy(&self, id: &str) -> Result<(), HsmError> {
        let h = find_key(self.s, id)?;
        if !self.is_disabled(id)? {
            return Err(HsmError::Refused(format!(
                "key {id:?} is enabled; disable it first (keys disable {id})"
            )));
        }
        let destroyed = self.s.destroy_object(h).map_err(classify);
        // Evicted even on failure: the token may have half-done it.
        self.changed();
        destroyed?;
        marks::remove_creation_records(self.s, id);
        self.destroy_all_versions(id);
        let _ = marks::remove_marks(self.s, id);
        if let Some(t) = self.token {
            t.forget_destroyed(id);
        }
        Ok(())
    }

    /// Offline disable (no daemon runs): writes the key's mark. Idempotent.
    pub fn disable(&self, id: &str, record: &str) -> Result<(), HsmError> {
        find_key(self.s, id)?;
        marks::put_mark(self.s, id, record)
    }

    /// Offline enable (no daemon runs): removes the key's marks. Idempotent.
    pub fn enable(&self, id: &str) -> Result<(), HsmError> {
        find_key(self.s, id)?;
        marks::remove_marks(self.s, id)
    }

    /// Describes one key, with every version and its count.
    pub fn show(&self, id: &str) -> Result<KeyEntry, HsmError> {
        let ctx = self.list_context()?;
        let mut e = self.entry(find_key(self.s, id)?, &ctx)?;
        (e.current_version, e.versions) = self.versions(id)?;
        Ok(e)
    }

    /// Describes every secret key on the token, sorted by id.
    pub fn list(&self) -> Result<Vec<KeyEntry>, HsmError> {
        let ctx = self.list_context()?;
        let keys = self
            .s
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .map_err(classify)?;
        let mut out = Vec::new();
        for h in keys {
            let e = self.entry(h, &ctx)?;
            // Version objects (`<id>/v<n>`) are not keys of their own.
            if !e.id.contains('/') {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn list_context(&self) -> Result<ListContext, HsmError> {
        let mut disabled = marks::disabled_set(self.s)?;
        if let Some(t) = self.token {
            disabled.extend(t.refused_keys());
        }
        Ok(ListContext {
            disabled,
            created: marks::creation_records(self.s)?,
            versions: super::versions::read_all(self.s)?,
            counts: super::versions::all_counts(self.s)?,
        })
    }

    fn entry(&self, h: ObjectHandle, ctx: &ListContext) -> Result<KeyEntry, HsmError> {
        use AttributeType as A;
        let mut wanted = vec![A::Label, A::KeyType, A::ValueLen, A::Extractable, A::Sensitive];
        wanted.extend(USAGE_ATTRIBUTES);
        let attrs = self.s.get_attributes(h, &wanted).map_err(classify)?;
        let mut e = KeyEntry {
            id: String::new(),
            key_spec: String::new(),
            usages: usages(&attrs),
            state: "ENABLED",
            created: None,
            extractable: true,
            sensitive: false,
            current_version: 1,
            versions: Vec::new(),
        };
        let (mut kt, mut len) = (None, 0u64);
        for a in attrs {
            match a {
                Attribute::Label(l) => e.id = String::from_utf8_lossy(&l).into_owned(),
                Attribute::KeyType(t) => kt = Some(t),
                Attribute::ValueLen(l) => len = l.into(),
                Attribute::Extractable(x) => e.extractable = x,
                Attribute::Sensitive(x) => e.sensitive = x,
                _ => {}
            }
        }
        e.key_spec = KeySpec::decode(kt, len, || ctx.created.get(&e.id).map(|r| r.value_len)).to_string();
        if ctx.disabled.contains(&e.id) {
            e.state = "DISABLED";
        }
        e.created = ctx.created.get(&e.id).map(|r| r.created.clone());
        (e.current_version, e.versions) =
            super::version_admin::entries(&e.id, &ctx.versions, e.created.clone());
        for v in &mut e.versions {
            v.encryptions = Some(ctx.counts.get(&(e.id.clone(), v.number)).copied().unwrap_or(0));
        }
        Ok(e)
    }
}

struct ListContext {
    disabled: HashSet<String>,
    created: HashMap<String, marks::CreationRecord>,
    versions: HashMap<String, super::versions::KeyVersions>,
    counts: HashMap<(String, u32), u64>,
}
