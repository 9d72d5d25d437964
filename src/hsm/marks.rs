//! The private `CKO_DATA` objects the proxy keeps next to keys, both labelled with the key id:
//! `xks-bridge/disabled-key` marks and `xks-bridge/key-created` records.
//!
//! A disabled key is marked by a private token object of class `CKO_DATA` with
//! `CKA_APPLICATION = "xks-bridge/disabled-key"` and `CKA_LABEL = <key id>`. Keeping the mark on
//! the token (rather than in a proxy file) means every proxy instance sharing the token, as
//! with an HSM cluster, agrees on it, and it survives any instance's restart. PKCS#11 has no
//! "disabled" attribute, and flipping `CKA_ENCRYPT`/`CKA_DECRYPT` instead would destroy the
//! usage information GetKeyMetadata must keep reporting. Marks stay destroyable: enabling a
//! key deletes them.
//!
//! Creation records hold the creation time (RFC 3339) of keys created or imported by this
//! proxy (PKCS#11 has no creation timestamp, and SoftHSM2 cannot read back `CKA_START_DATE`
//! reliably) and the key length, because some tokens (SoftHSM2) leave `CKA_VALUE_LEN` at 0 on
//! unwrapped keys and GetKeyMetadata must still report `AES_256`.

use super::{classify, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// `CKA_APPLICATION` of disabled-key marks.
pub const DISABLED_APP: &[u8] = b"xks-bridge/disabled-key";
/// `CKA_APPLICATION` of creation records.
pub const CREATED_APP: &[u8] = b"xks-bridge/key-created";

/// A creation record's content.
#[derive(Serialize, Deserialize)]
pub(super) struct CreationRecord {
    pub(super) created: String,
    pub(super) value_len: u64,
}

/// Creates a private token data object; the token's own answer is kept (callers decide whether
/// a refusal is fatal).
pub(super) fn put_data(s: &Session, app: &[u8], label: &str, value: &[u8]) -> Result<ObjectHandle, HsmError> {
    put_data_object(s, true, app, label, value)
}

/// Creates a token data object, private (readable only logged in) or public (the fleet epoch).
pub(super) fn put_data_object(
    s: &Session,
    private: bool,
    app: &[u8],
    label: &str,
    value: &[u8],
) -> Result<ObjectHandle, HsmError> {
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(private),
        Attribute::Application(app.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .map_err(classify)
}

/// Data objects of one application, by label: (their handles, the first one's value).
pub(super) type DataObjects = HashMap<String, (Vec<ObjectHandle>, Vec<u8>)>;

pub(super) fn data_objects(s: &Session, app: &[u8]) -> Result<DataObjects, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(app.to_vec()),
        ])
        .map_err(classify)?;
    let mut out = DataObjects::new();
    for h in found {
        let (mut label, mut value) = (String::new(), Vec::new());
        let attrs = s
            .get_attributes(h, &[AttributeType::Label, AttributeType::Value])
            .map_err(classify)?;
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

/// Labels of all disabled keys (the marks on the token). Only meaningful on a logged-in
/// session: a public session sees no private object and would report "none disabled".
pub(super) fn disabled_set(s: &Session) -> Result<HashSet<String>, HsmError> {
    Ok(data_objects(s, DISABLED_APP)?.into_keys().collect())
}

/// The marks of one key.
pub(super) fn marks_for(s: &Session, id: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(DISABLED_APP.to_vec()),
        Attribute::Label(id.as_bytes().to_vec()),
    ])
    .map_err(classify)
}

/// Writes a mark for `id` unless one exists. `record` (who/when/why, JSON) is its value.
pub(super) fn put_mark(s: &Session, id: &str, record: &str) -> Result<(), HsmError> {
    if marks_for(s, id)?.is_empty() {
        put_data(s, DISABLED_APP, id, record.as_bytes())?;
    }
    Ok(())
}

/// Deletes every mark of `id`.
pub(super) fn remove_marks(s: &Session, id: &str) -> Result<(), HsmError> {
    for m in marks_for(s, id)? {
        s.destroy_object(m).map_err(classify)?;
    }
    Ok(())
}

/// Stores a creation record for `id`.
pub(super) fn put_creation_record(s: &Session, id: &str, value_len: u64) -> Result<(), HsmError> {
    let rec = CreationRecord {
        created: crate::clock::now_rfc3339(),
        value_len,
    };
    let bytes = serde_json::to_vec(&rec).map_err(|e| HsmError::Internal(e.to_string()))?;
    put_data(s, CREATED_APP, id, &bytes).map(|_| ())
}

/// Every creation record, by key id.
pub(super) fn creation_records(s: &Session) -> Result<HashMap<String, CreationRecord>, HsmError> {
    Ok(data_objects(s, CREATED_APP)?
        .into_iter()
        .filter_map(|(k, (_, v))| Some((k, serde_json::from_slice::<CreationRecord>(&v).ok()?)))
        .collect())
}

/// The creation time of `id` (milliseconds since the epoch) from its creation record, if it
/// has a readable one.
pub(super) fn created_ms(s: &Session, id: &str) -> Result<Option<u64>, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(CREATED_APP.to_vec()),
            Attribute::Label(id.as_bytes().to_vec()),
        ])
        .map_err(classify)?;
    let mut earliest = None;
    for h in found {
        let Ok(attrs) = s.get_attributes(h, &[AttributeType::Value]) else {
            continue; // removed since the search
        };
        for a in attrs {
            if let Attribute::Value(v) = a {
                let ms = serde_json::from_slice::<CreationRecord>(&v)
                    .ok()
                    .and_then(|r| crate::clock::rfc3339_to_ms(&r.created));
                if let Some(ms) = ms {
                    earliest = Some(earliest.map_or(ms, |e: u64| e.min(ms)));
                }
            }
        }
    }
    Ok(earliest)
}

/// Deletes the creation records of `id` (best effort: the key itself is already gone).
pub(super) fn remove_creation_records(s: &Session, id: &str) {
    let found = s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(CREATED_APP.to_vec()),
        Attribute::Label(id.as_bytes().to_vec()),
    ]);
    for h in found.unwrap_or_default() {
        let _ = s.destroy_object(h);
    }
}

/// Key length (bytes) recorded when this proxy created or imported the key.
pub(super) fn recorded_value_len(s: &Session, id: &str) -> Option<u64> {
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
