//! Key versions as the token holds them: the labels of version key objects and the data
//! objects that record, commit and retire versions, read and written on a [`Session`]. This
//! instance's copy of them is `super::version_table`; the per-instance counters are
//! `super::version_counters`.
//!
//! Version 1 of a key is the key object labelled with the key id, exactly as before versions
//! existed: nothing migrates. Version n >= 2 is its own AES-256 key object generated inside the
//! token with `CKA_LABEL = "<id>/v<n>"` and a random 16-byte `CKA_ID` (its nonce). Key ids are
//! `[A-Za-z0-9._-]`, so a '/' can never occur in one: version labels cannot collide with key
//! ids, and `keys list` skips every label containing '/'. Next to them, private `CKO_DATA`
//! objects (application, label):
//!
//! - `xks-bridge/key-version`, `<id>/v<n>`: a candidate's record (creation time, nonce, creator);
//! - `xks-bridge/version-committed`, `<id>/v<n>`: the winning candidate's nonce; only a committed
//!   version is ever used to encrypt;
//! - `xks-bridge/version-retired`, `<id>/v<n>`: the version no longer decrypts (removable);
//! - `xks-bridge/version-count`, `<id>/v<n>/<instance>`: encryptions reserved by one instance.
//!
//! Every instance sharing the token reads the first three every half second (the supervisor's
//! poll) into a `VersionTable` (`super::version_table`), so a rotation or a retirement through
//! any instance takes effect on all of them within a second. Counters are read only when a
//! block is reserved and by `keys show`.

use super::budget::Candidate;
use super::marks::put_data;
use super::version_table::KeyVersions;
use super::{classify, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `CKA_APPLICATION` of candidate records.
pub const RECORD_APP: &[u8] = b"xks-bridge/key-version";
/// `CKA_APPLICATION` of commits.
pub const COMMIT_APP: &[u8] = b"xks-bridge/version-committed";
/// `CKA_APPLICATION` of retirement marks.
pub const RETIRED_APP: &[u8] = b"xks-bridge/version-retired";
/// `CKA_APPLICATION` of per-instance counters.
pub const COUNTER_APP: &[u8] = b"xks-bridge/version-count";

/// Label of version `n` of `id`: the key id itself for version 1.
pub fn label(id: &str, n: u32) -> String {
    if n == 1 {
        id.to_owned()
    } else {
        format!("{id}/v{n}")
    }
}

/// Label of the marks and records of version `n` (also for version 1).
pub fn record_label(id: &str, n: u32) -> String {
    format!("{id}/v{n}")
}

/// Splits `<id>/v<n>` (records, marks) back into id and version.
pub fn parse_record_label(l: &str) -> Option<(&str, u32)> {
    let (id, v) = l.rsplit_once("/v")?;
    let n: u32 = v.parse().ok()?;
    (n >= 1 && !id.is_empty() && !id.contains('/')).then_some((id, n))
}

/// A candidate record's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) created: String,
    pub(super) created_ms: u64,
    pub(super) nonce: String,
    pub(super) instance: String,
}

impl Record {
    pub(super) fn candidate(&self) -> Option<Candidate> {
        Some(Candidate {
            created_ms: self.created_ms,
            nonce: hex::decode(&self.nonce).ok()?,
        })
    }
}

/// Reads every record, commit and retirement mark on the token.
pub(super) fn read_all(s: &Session) -> Result<HashMap<String, KeyVersions>, HsmError> {
    let mut out: HashMap<String, KeyVersions> = HashMap::new();
    let mut records: HashMap<(String, u32), Vec<Record>> = HashMap::new();
    for (l, v) in data_of(s, RECORD_APP)? {
        let Some((id, n)) = parse_record_label(&l) else {
            continue;
        };
        if let Ok(r) = serde_json::from_slice::<Record>(&v) {
            records.entry((id.to_owned(), n)).or_default().push(r);
        }
    }
    let mut commits: HashMap<(String, u32), Vec<Vec<u8>>> = HashMap::new();
    for (l, v) in data_of(s, COMMIT_APP)? {
        let Some((id, n)) = parse_record_label(&l) else {
            continue;
        };
        if let Ok(nonce) = hex::decode(v) {
            commits.entry((id.to_owned(), n)).or_default().push(nonce);
        }
    }
    for ((id, n), nonces) in commits {
        let recs = records.get(&(id.clone(), n)).cloned().unwrap_or_default();
        let mut committed: Vec<(Candidate, Option<Record>)> = nonces
            .into_iter()
            .map(|nonce| {
                let r = recs
                    .iter()
                    .find(|r| r.candidate().is_some_and(|c| c.nonce == nonce));
                let c = r.and_then(Record::candidate).unwrap_or(Candidate {
                    created_ms: u64::MAX,
                    nonce,
                });
                (c, r.cloned())
            })
            .collect();
        // Winner first: the order every instance agrees on.
        committed.sort_by(|a, b| (a.0.created_ms, &a.0.nonce).cmp(&(b.0.created_ms, &b.0.nonce)));
        committed.dedup_by(|a, b| a.0.nonce == b.0.nonce);
        let st = out.entry(id).or_default().entry(n).or_default();
        st.created = committed
            .first()
            .and_then(|c| c.1.as_ref().map(|r| r.created.clone()));
        st.created_ms = committed.first().and_then(|c| c.1.as_ref().map(|r| r.created_ms));
        st.committed = committed.into_iter().map(|c| c.0.nonce).collect();
    }
    for (l, _) in data_of(s, RETIRED_APP)? {
        let Some((id, n)) = parse_record_label(&l) else {
            continue;
        };
        out.entry(id.to_owned())
            .or_default()
            .entry(n)
            .or_default()
            .retired = true;
    }
    Ok(out)
}

/// The attributes of `h`, or `None` when the object vanished between the search and the read
/// (another instance destroyed a losing candidate, or replaced a counter): a fleet sharing the
/// token makes that an ordinary event, not an error.
fn attrs_or_gone(
    s: &Session,
    h: ObjectHandle,
    types: &[AttributeType],
) -> Result<Option<Vec<Attribute>>, HsmError> {
    match s.get_attributes(h, types) {
        Ok(a) => Ok(Some(a)),
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::ObjectHandleInvalid, _)) => Ok(None),
        Err(e) => Err(classify(e)),
    }
}

fn value(s: &Session, h: ObjectHandle) -> Result<Option<Vec<u8>>, HsmError> {
    Ok(attrs_or_gone(s, h, &[AttributeType::Value])?.map(|attrs| {
        attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Value(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default()
    }))
}

/// (handle, label, value) of data objects.
pub(super) type LabelledValues = Vec<(ObjectHandle, String, Vec<u8>)>;

/// Data objects of one application: (label, value) of each object still there when read.
fn data_of(s: &Session, app: &[u8]) -> Result<Vec<(String, Vec<u8>)>, HsmError> {
    Ok(data_snapshot(s, app)?
        .0
        .into_iter()
        .map(|(_, l, v)| (l, v))
        .collect())
}

/// [`data_of`], and whether some object found vanished before it could be read.
pub(super) fn data_snapshot(s: &Session, app: &[u8]) -> Result<(LabelledValues, bool), HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Application(app.to_vec()),
        ])
        .map_err(classify)?;
    let mut out = Vec::new();
    let mut vanished = false;
    for h in found {
        let Some(attrs) = attrs_or_gone(s, h, &[AttributeType::Label, AttributeType::Value])? else {
            vanished = true;
            continue;
        };
        let (mut label, mut value) = (String::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Label(l) => label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        out.push((h, label, value));
    }
    Ok((out, vanished))
}

/// Data objects of `app` labelled exactly `label`.
pub(super) fn find_data(s: &Session, app: &[u8], label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(app.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .map_err(classify)
}

/// The candidate records of version `n` of `id`, with their handles.
pub(super) fn records(s: &Session, id: &str, n: u32) -> Result<Vec<(ObjectHandle, Record)>, HsmError> {
    let mut out = Vec::new();
    for h in find_data(s, RECORD_APP, &record_label(id, n))? {
        let Some(v) = value(s, h)? else { continue };
        if let Ok(r) = serde_json::from_slice::<Record>(&v) {
            out.push((h, r));
        }
    }
    Ok(out)
}

/// The committed nonces of version `n` of `id`.
pub(super) fn commits(s: &Session, id: &str, n: u32) -> Result<Vec<Vec<u8>>, HsmError> {
    let mut out = Vec::new();
    for h in find_data(s, COMMIT_APP, &record_label(id, n))? {
        let Some(v) = value(s, h)? else { continue };
        if let Ok(nonce) = hex::decode(v) {
            out.push(nonce);
        }
    }
    Ok(out)
}

/// Writes a commit of `nonce` as version `n` of `id`.
pub(super) fn put_commit(s: &Session, id: &str, n: u32, nonce: &[u8]) -> Result<(), HsmError> {
    put_data(s, COMMIT_APP, &record_label(id, n), hex::encode(nonce).as_bytes()).map(|_| ())
}

/// Is version `n` of `id` retired on the token?
pub(super) fn is_retired(s: &Session, id: &str, n: u32) -> Result<bool, HsmError> {
    Ok(!find_data(s, RETIRED_APP, &record_label(id, n))?.is_empty())
}

/// The key objects of version `n >= 2` of `id` (several only if the residual risk of the
/// tie-break struck), with their `CKA_ID`.
pub(super) fn key_objects(s: &Session, id: &str, n: u32) -> Result<Vec<(ObjectHandle, Vec<u8>)>, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label(id, n).into_bytes()),
        ])
        .map_err(classify)?;
    let mut out = Vec::new();
    for h in found {
        let Some(attrs) = attrs_or_gone(s, h, &[AttributeType::Id])? else {
            continue;
        };
        let ckaid = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::Id(v) => Some(v),
                _ => None,
            })
            .unwrap_or_default();
        out.push((h, ckaid));
    }
    Ok(out)
}

/// Label of one instance's counter for version `n` of `id`.
pub fn counter_label(id: &str, n: u32, instance: &str) -> String {
    format!("{id}/v{n}/{instance}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_never_collide_with_key_ids() {
        assert_eq!(label("k", 1), "k");
        assert_eq!(label("k", 3), "k/v3");
        assert_eq!(parse_record_label("my.key-1/v12"), Some(("my.key-1", 12)));
        assert_eq!(parse_record_label("k/v0"), None);
        assert_eq!(parse_record_label("k/vx"), None);
        assert_eq!(parse_record_label("k/v2/inst"), None);
        assert_eq!(counter_label("k", 2, "abc"), "k/v2/abc");
        assert!(!crate::xks::valid_key_id("k/v2"));
    }
}
