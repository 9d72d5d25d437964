//! Key lifecycle on the token, shared by the daemon (through the admin socket) and the CLI
//! (directly, when no daemon runs): create inside the token, import under a KEK with AES key wrap
//! with padding (RFC 5649), list/show, disable/enable (the key-scope kill switch) and destroy.
//!
//! Two kinds of private `CKO_DATA` objects accompany keys, both labelled with the key id:
//! `xks-bridge/disabled-key` marks (below) and `xks-bridge/key-created` records holding the
//! creation time (RFC 3339) of keys created or imported by this tool (PKCS#11 has no creation
//! timestamp, and SoftHSM2 cannot read back `CKA_START_DATE` reliably).
//!
//! A disabled key is marked by a private token object of class `CKO_DATA` with
//! `CKA_APPLICATION = "xks-bridge/disabled-key"` and `CKA_LABEL = <key id>`. Keeping the mark on
//! the token (rather than in a proxy file) means every proxy instance sharing the token, as
//! with an HSM cluster, agrees on it, and it survives any instance's restart. PKCS#11 has no
//! "disabled" attribute, and flipping `CKA_ENCRYPT`/`CKA_DECRYPT` instead would destroy the
//! usage information GetKeyMetadata must keep reporting.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// `CKA_APPLICATION` of disabled-key marks.
pub const DISABLED_APP: &[u8] = b"xks-bridge/disabled-key";
/// `CKA_APPLICATION` of creation records.
pub const CREATED_APP: &[u8] = b"xks-bridge/key-created";

/// Key usages to give a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Usage {
    /// CKA_ENCRYPT
    pub encrypt: bool,
    /// CKA_DECRYPT
    pub decrypt: bool,
}

impl Usage {
    /// Parses `encrypt,decrypt`, `encrypt`, `decrypt` or `none`.
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
    /// `AES_256`, ...
    pub key_spec: String,
    /// `ENCRYPT`, `DECRYPT`, `UNWRAP` ...
    pub usages: Vec<&'static str>,
    /// `ENABLED` or `DISABLED`.
    pub state: &'static str,
    /// Creation time, for keys created or imported by this tool.
    pub created: Option<String>,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
}

fn ck(what: &'static str) -> impl Fn(cryptoki::error::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn label_template(class: ObjectClass, label: &str) -> [Attribute; 2] {
    [
        Attribute::Class(class),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The one secret key labelled `id`; absent and duplicated labels are errors.
pub fn find_key(s: &Session, id: &str) -> Result<ObjectHandle, String> {
    let found = s
        .find_objects(&label_template(ObjectClass::SECRET_KEY, id))
        .map_err(ck("C_FindObjects"))?;
    match found.as_slice() {
        [h] => Ok(*h),
        [] => Err(format!("no key with id {id:?} on the token")),
        many => Err(format!(
            "{} keys carry the id {id:?}; resolve the duplicate on the token",
            many.len()
        )),
    }
}

fn refuse_existing(s: &Session, id: &str) -> Result<(), String> {
    let found = s
        .find_objects(&label_template(ObjectClass::SECRET_KEY, id))
        .map_err(ck("C_FindObjects"))?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("a key with id {id:?} already exists"))
    }
}

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

/// Generates an AES-256 key inside the token. Refuses an id already in use.
pub fn create(s: &Session, id: &str, usage: Usage) -> Result<ObjectHandle, String> {
    refuse_existing(s, id)?;
    let mut t = key_template(id, usage, false);
    t.push(Attribute::ValueLen(32.into()));
    let h = s
        .generate_key(&Mechanism::AesKeyGen, &t)
        .map_err(ck("C_GenerateKey"))?;
    record_creation(s, id, h)
}

/// The creation record's content. `value_len` is kept because some tokens (SoftHSM2) leave
/// `CKA_VALUE_LEN` at 0 on unwrapped keys, and GetKeyMetadata must still report `AES_256`.
#[derive(Serialize, serde::Deserialize)]
struct CreationRecord {
    created: String,
    value_len: u64,
}

/// Stores the creation record; if that fails, removes the key so nothing half-made remains.
fn record_creation(s: &Session, id: &str, key: ObjectHandle) -> Result<ObjectHandle, String> {
    let rec = CreationRecord {
        created: crate::clock::now_rfc3339(),
        value_len: 32,
    };
    let bytes = serde_json::to_vec(&rec).map_err(|e| e.to_string())?;
    match put_data(s, CREATED_APP, id, &bytes) {
        Ok(()) => Ok(key),
        Err(e) => {
            let _ = s.destroy_object(key);
            Err(e)
        }
    }
}

fn put_data(s: &Session, app: &[u8], label: &str, value: &[u8]) -> Result<(), String> {
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Application(app.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .map(|_| ())
    .map_err(ck("C_CreateObject"))
}

/// Data objects of one application, by label: (their handles, the first one's value).
type DataObjects = HashMap<String, (Vec<ObjectHandle>, Vec<u8>)>;

fn data_objects(s: &Session, app: &[u8]) -> Result<DataObjects, String> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(app.to_vec()),
        ])
        .map_err(ck("C_FindObjects"))?;
    let mut out = DataObjects::new();
    for h in found {
        let (mut label, mut value) = (String::new(), Vec::new());
        let attrs = s
            .get_attributes(h, &[AttributeType::Label, AttributeType::Value])
            .map_err(ck("C_GetAttributeValue"))?;
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        out.entry(label).or_insert_with(|| (Vec::new(), value)).0.push(h);
    }
    Ok(out)
}

/// Stores a key-encryption key (unwrap only) from material the custodian also holds.
pub fn create_kek(s: &Session, id: &str, material: &[u8; 32]) -> Result<ObjectHandle, String> {
    refuse_existing(s, id)?;
    let mut t = key_template(
        id,
        Usage {
            encrypt: false,
            decrypt: false,
        },
        true,
    );
    t.push(Attribute::Value(material.to_vec()));
    let h = s.create_object(&t).map_err(ck("C_CreateObject"))?;
    record_creation(s, id, h)
}

/// Unwraps RFC 5649-wrapped AES-256 material under the KEK labelled `kek` into a new key.
/// On any failure nothing is left on the token.
pub fn import(
    s: &Session,
    id: &str,
    kek: &str,
    wrapped: &[u8],
    usage: Usage,
) -> Result<ObjectHandle, String> {
    refuse_existing(s, id)?;
    let kek = find_key(s, kek)?;
    // RFC 5649 output for 32 bytes of material is exactly 40 bytes. The blob's integrity check
    // authenticates the length inside it, and 25-31 bytes (the only other sizes giving 40) are
    // not AES key sizes, so the token refuses to use such a key. CKA_VALUE_LEN cannot be put in
    // the unwrap template (SoftHSM2 treats it as read-only there).
    if wrapped.len() != 40 {
        return Err(format!(
            "wrapped blob is {} bytes; an RFC 5649-wrapped AES-256 key is 40",
            wrapped.len()
        ));
    }
    let t = key_template(id, usage, false);
    let h = s
        .unwrap_key(&Mechanism::AesKeyWrapPad, kek, wrapped, &t)
        .map_err(|e| format!("unwrap failed (wrong KEK or corrupt wrapped blob): {e}"))?;
    let len = s.get_attributes(h, &[AttributeType::ValueLen]).map(|a| {
        a.iter().find_map(|x| match x {
            Attribute::ValueLen(l) => Some(u64::from(*l)),
            _ => None,
        })
    });
    match len {
        // SoftHSM2 leaves CKA_VALUE_LEN at 0 on unwrapped keys; a token that reports it must say 32.
        Ok(Some(32 | 0) | None) => record_creation(s, id, h),
        other => {
            let _ = s.destroy_object(h);
            Err(format!(
                "the wrapped material is not a 256-bit AES key (length {other:?})"
            ))
        }
    }
}

/// Key length recorded when this tool created or imported the key, for tokens that do not
/// report `CKA_VALUE_LEN` on unwrapped keys.
pub fn recorded_value_len(s: &Session, id: &str) -> Option<u64> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(CREATED_APP.to_vec()),
            Attribute::Label(id.as_bytes().to_vec()),
        ])
        .ok()?;
    let attrs = s.get_attributes(*found.first()?, &[AttributeType::Value]).ok()?;
    attrs.into_iter().find_map(|a| match a {
        Attribute::Value(v) => serde_json::from_slice::<CreationRecord>(&v)
            .ok()
            .map(|r| r.value_len),
        _ => None,
    })
}

/// Labels of all disabled keys (the marks on the token).
pub fn disabled_set(s: &Session) -> Result<HashSet<String>, String> {
    Ok(data_objects(s, DISABLED_APP)?.into_keys().collect())
}

fn marks_for(s: &Session, id: &str) -> Result<Vec<ObjectHandle>, String> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(DISABLED_APP.to_vec()),
        Attribute::Label(id.as_bytes().to_vec()),
    ])
    .map_err(ck("C_FindObjects"))
}

/// Disables a key (idempotent). `record` (who/when/why, JSON) is stored in the mark's value.
pub fn disable(s: &Session, id: &str, record: &str) -> Result<(), String> {
    find_key(s, id)?;
    if !marks_for(s, id)?.is_empty() {
        return Ok(());
    }
    put_data(s, DISABLED_APP, id, record.as_bytes())
}

/// Enables a key (idempotent): removes every mark for it.
pub fn enable(s: &Session, id: &str) -> Result<(), String> {
    find_key(s, id)?;
    for m in marks_for(s, id)? {
        s.destroy_object(m).map_err(ck("C_DestroyObject"))?;
    }
    Ok(())
}

/// Destroys a key, which must be disabled first. Irreversible.
pub fn destroy(s: &Session, id: &str) -> Result<(), String> {
    let h = find_key(s, id)?;
    if marks_for(s, id)?.is_empty() {
        return Err(format!(
            "key {id:?} is enabled; disable it first (keys disable {id})"
        ));
    }
    s.destroy_object(h).map_err(ck("C_DestroyObject"))?;
    let created = data_objects(s, CREATED_APP)?
        .remove(id)
        .map(|(h, _)| h)
        .unwrap_or_default();
    for m in marks_for(s, id)?.into_iter().chain(created) {
        let _ = s.destroy_object(m);
    }
    Ok(())
}

/// Describes one key.
pub fn show(s: &Session, id: &str) -> Result<KeyEntry, String> {
    let ctx = ListContext::read(s)?;
    entry(s, find_key(s, id)?, &ctx)
}

struct ListContext {
    disabled: HashSet<String>,
    created: HashMap<String, CreationRecord>,
}

impl ListContext {
    fn read(s: &Session) -> Result<ListContext, String> {
        let created = data_objects(s, CREATED_APP)?
            .into_iter()
            .filter_map(|(k, (_, v))| Some((k, serde_json::from_slice::<CreationRecord>(&v).ok()?)))
            .collect();
        Ok(ListContext {
            disabled: disabled_set(s)?,
            created,
        })
    }
}

/// Describes every AES secret key on the token, sorted by id.
pub fn list(s: &Session) -> Result<Vec<KeyEntry>, String> {
    let ctx = ListContext::read(s)?;
    let keys = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .map_err(ck("C_FindObjects"))?;
    let mut out = Vec::new();
    for h in keys {
        out.push(entry(s, h, &ctx)?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn entry(s: &Session, h: ObjectHandle, ctx: &ListContext) -> Result<KeyEntry, String> {
    use AttributeType as A;
    let wanted = [
        A::Label,
        A::KeyType,
        A::ValueLen,
        A::Encrypt,
        A::Decrypt,
        A::Wrap,
        A::Unwrap,
        A::Sign,
        A::Verify,
        A::Derive,
        A::Extractable,
        A::Sensitive,
        A::StartDate,
    ];
    let mut e = KeyEntry {
        id: String::new(),
        key_spec: "UNKNOWN".into(),
        usages: vec![],
        state: "ENABLED",
        created: None,
        extractable: true,
        sensitive: false,
    };
    let (mut kt, mut len) = (None, 0u64);
    for a in s.get_attributes(h, &wanted).map_err(ck("C_GetAttributeValue"))? {
        match a {
            Attribute::Label(l) => e.id = String::from_utf8_lossy(&l).into_owned(),
            Attribute::KeyType(t) => kt = Some(t),
            Attribute::ValueLen(l) => len = l.into(),
            Attribute::Encrypt(true) => e.usages.push("ENCRYPT"),
            Attribute::Decrypt(true) => e.usages.push("DECRYPT"),
            Attribute::Wrap(true) => e.usages.push("WRAP"),
            Attribute::Unwrap(true) => e.usages.push("UNWRAP"),
            Attribute::Sign(true) => e.usages.push("SIGN"),
            Attribute::Verify(true) => e.usages.push("VERIFY"),
            Attribute::Derive(true) => e.usages.push("DERIVE"),
            Attribute::Extractable(x) => e.extractable = x,
            Attribute::Sensitive(x) => e.sensitive = x,
            _ => {}
        }
    }
    if len == 0 && kt == Some(KeyType::AES) {
        len = ctx.created.get(&e.id).map_or(0, |r| r.value_len);
    }
    e.key_spec = match kt {
        Some(t) if t == KeyType::AES => format!("AES_{}", len * 8),
        Some(t) => t.to_string().trim_start_matches("CKK_").to_owned(),
        None => "UNKNOWN".into(),
    };
    if ctx.disabled.contains(&e.id) {
        e.state = "DISABLED";
    }
    e.created = ctx.created.get(&e.id).map(|r| r.created.clone());
    Ok(e)
}
