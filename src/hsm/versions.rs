//! Key versions on the token, and this instance's copy of them.
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
//! poll) into a `VersionTable`, so a rotation or a retirement through any instance takes effect
//! on all of them within a second. Counters are read only when a block is reserved and by
//! `keys show`.

use super::budget::Candidate;
use super::marks::put_data;
use super::{classify, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

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

/// One version as this instance knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionState {
    /// Nonces of committed candidates, the one to encrypt with first (empty: not committed).
    pub committed: Vec<Vec<u8>>,
    /// A retirement mark exists.
    pub retired: bool,
    /// Creation time of the committed candidate (RFC 3339).
    pub created: Option<String>,
    /// Same, in milliseconds since the Unix epoch (automatic rotation by age).
    pub created_ms: Option<u64>,
}

/// The versions of one key (version 1 appears only when it carries a mark).
pub type KeyVersions = BTreeMap<u32, VersionState>;

/// The current version: the highest committed, non-retired version; 1 when there is none.
pub fn current(v: Option<&KeyVersions>) -> u32 {
    v.and_then(|m| {
        m.iter()
            .rev()
            .find(|(n, s)| (**n == 1 || !s.committed.is_empty()) && !s.retired)
            .map(|(n, _)| *n)
    })
    .unwrap_or(1)
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
type LabelledValues = Vec<(ObjectHandle, String, Vec<u8>)>;

/// Data objects of one application: (label, value) of each object still there when read.
fn data_of(s: &Session, app: &[u8]) -> Result<Vec<(String, Vec<u8>)>, HsmError> {
    Ok(data_snapshot(s, app)?
        .0
        .into_iter()
        .map(|(_, l, v)| (l, v))
        .collect())
}

/// [`data_of`], and whether some object found vanished before it could be read.
fn data_snapshot(s: &Session, app: &[u8]) -> Result<(LabelledValues, bool), HsmError> {
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

/// Every instance's counter of version `n` of `id` (the largest value where a counter was
/// replaced by create-then-destroy and both copies are visible).
pub(super) fn counters(s: &Session, id: &str, n: u32) -> Result<super::budget::Counts, HsmError> {
    Ok(counters_and_own(s, id, n, None)?.0)
}

/// [`counters`], and the handles of `me`'s own counter objects, so that writing it next
/// ([`write_counter`]) needs no search of its own: on tokens whose searches walk every object
/// (SoftHSM2 with 1,000 keys: about 35 ms each) that is a third of a reservation's cost. Only
/// `me` writes its counter, so the handles stay right until it writes again.
pub(super) fn counters_and_own(
    s: &Session,
    id: &str,
    n: u32,
    me: Option<&str>,
) -> Result<(super::budget::Counts, Vec<ObjectHandle>), HsmError> {
    let prefix = format!("{}/", record_label(id, n));
    // A counter another instance is replacing can vanish between the search and the read; its
    // replacement was created before, but after this search. Skipping it would under-count,
    // so the whole read is repeated until no object vanished.
    for _ in 0..50 {
        let (objects, vanished) = data_snapshot(s, COUNTER_APP)?;
        if vanished {
            continue;
        }
        let mut out = super::budget::Counts::new();
        let mut own = Vec::new();
        for (h, l, v) in objects {
            let Some(instance) = l.strip_prefix(&prefix) else {
                continue;
            };
            if Some(instance) == me {
                own.push(h);
            }
            let Ok(bytes) = <[u8; 8]>::try_from(v.as_slice()) else {
                continue;
            };
            let e = out.entry(instance.to_owned()).or_insert(0);
            *e = (*e).max(u64::from_be_bytes(bytes));
        }
        return Ok((out, own));
    }
    Err(HsmError::Internal(
        "encryption counters kept changing during 50 reads".into(),
    ))
}

/// The count of every (key id, version) on the token: one pass over every counter (`keys
/// list`), summed over instances as [`counters`] does.
pub(super) fn all_counts(s: &Session) -> Result<HashMap<(String, u32), u64>, HsmError> {
    let mut out = HashMap::new();
    for ((id, n, _), v) in per_instance_counts(s)? {
        *out.entry((id, n)).or_insert(0u64) += v;
    }
    Ok(out)
}

/// (key id, version) and what one instance reserved under it.
pub(super) type OwnCount = ((String, u32), u64);

/// What `instance` reserved under every (key id, version) it has a counter for.
pub(super) fn own_counts(s: &Session, instance: &str) -> Result<Vec<OwnCount>, HsmError> {
    Ok(per_instance_counts(s)?
        .into_iter()
        .filter(|((_, _, i), _)| i == instance)
        .map(|((id, n, _), v)| ((id, n), v))
        .collect())
}

/// Every counter: (key id, version, instance) -> value, one pass over the counter objects.
fn per_instance_counts(s: &Session) -> Result<HashMap<(String, u32, String), u64>, HsmError> {
    for _ in 0..50 {
        let (objects, vanished) = data_snapshot(s, COUNTER_APP)?;
        if vanished {
            continue;
        }
        let mut per_instance: HashMap<(String, u32, String), u64> = HashMap::new();
        for (_, l, v) in objects {
            let Some((version_label, instance)) = l.rsplit_once('/') else {
                continue;
            };
            let Some((id, n)) = parse_record_label(version_label) else {
                continue;
            };
            let Ok(bytes) = <[u8; 8]>::try_from(v.as_slice()) else {
                continue;
            };
            let e = per_instance
                .entry((id.to_owned(), n, instance.to_owned()))
                .or_insert(0);
            *e = (*e).max(u64::from_be_bytes(bytes));
        }
        return Ok(per_instance);
    }
    Err(HsmError::Internal(
        "encryption counters kept changing during 50 reads".into(),
    ))
}

/// Stores `value` in this instance's counter. `C_SetAttributeValue` on `CKA_VALUE` where the
/// token allows it; SoftHSM2 2.6 refuses it for data objects (`CKR_ATTRIBUTE_READ_ONLY`), and
/// then a new object is created *before* the old one is destroyed, so a reader sees the old
/// value, both (and takes the larger), or the new one, never none ([`counters`] re-reads when
/// an object vanished under it). `existing`: the counter's objects as the caller just read
/// them ([`counters_and_own`]); `None` searches for them.
pub(super) fn write_counter(
    s: &Session,
    label: &str,
    value: u64,
    existing: Option<Vec<ObjectHandle>>,
) -> Result<(), HsmError> {
    let bytes = value.to_be_bytes().to_vec();
    let existing = match existing {
        Some(known) => known,
        None => find_data(s, COUNTER_APP, label)?,
    };
    if let [h] = existing.as_slice() {
        if s.update_attributes(*h, &[Attribute::Value(bytes.clone())])
            .is_ok()
        {
            return Ok(());
        }
    }
    put_data(s, COUNTER_APP, label, &bytes)?;
    for h in existing {
        let _ = s.destroy_object(h);
    }
    Ok(())
}

/// This instance's copy of every key's versions, refreshed by the poll and after each local
/// change. A poll that read the token while a local change was made is discarded (the change
/// counter moved), so it cannot briefly undo a rotation or a retirement made here.
#[derive(Default)]
pub(super) struct VersionTable {
    keys: RwLock<HashMap<String, KeyVersions>>,
    changes: AtomicU64,
}

impl VersionTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, KeyVersions>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn current(&self, id: &str) -> u32 {
        current(self.read().get(id))
    }

    pub(super) fn get(&self, id: &str, n: u32) -> Option<VersionState> {
        self.read().get(id).and_then(|m| m.get(&n)).cloned()
    }

    pub(super) fn change_count(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Installs a full read; `seen` is the change count read before it (`None`: installed
    /// unconditionally, e.g. a read made right after a local change).
    pub(super) fn install(&self, seen: Option<u64>, all: HashMap<String, KeyVersions>) -> bool {
        let mut k = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if seen.is_some_and(|s| s != self.changes.load(Ordering::SeqCst)) {
            return false;
        }
        if seen.is_none() {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        *k = all;
        true
    }
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

    #[test]
    fn the_current_version_is_the_highest_committed_and_not_retired() {
        let st = |c: bool, r: bool| VersionState {
            committed: if c { vec![vec![1]] } else { vec![] },
            retired: r,
            ..VersionState::default()
        };
        assert_eq!(current(None), 1);
        let mut m = KeyVersions::new();
        m.insert(2, st(true, false));
        m.insert(3, st(false, false));
        assert_eq!(current(Some(&m)), 2, "an uncommitted candidate is never current");
        m.insert(4, st(true, true));
        assert_eq!(current(Some(&m)), 2, "a retired version is never current");
        m.insert(5, st(true, false));
        assert_eq!(current(Some(&m)), 5);
        m.insert(1, st(false, true));
        assert_eq!(current(Some(&m)), 5);
    }
}
