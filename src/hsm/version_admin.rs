//! Operator verbs on key versions (`keys show`, `keys retire`, `keys unretire`, `keys destroy
//! --version`), on the key-administration session. Rotation is in `rotation.rs`: it waits a
//! settle time and must not hold the lifecycle lock the kill switch takes.

use super::key_objects::find_key;
use super::lifecycle::KeyAdmin;
use super::version_counters;
use super::version_table::{self, KeyVersions};
use super::versions::{self, RETIRED_APP};
use super::{classify, marks, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use serde::Serialize;
use std::collections::HashMap;

/// One version as `keys show` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionEntry {
    /// Version number (1 is the original key object).
    pub number: u32,
    /// Creation time, when known.
    pub created: Option<String>,
    /// `current`, `decrypt-only`, `retired` or `destroyed`.
    pub state: &'static str,
    /// Encryptions reserved under it, summed over instances (an upper bound of those made).
    pub encryptions: Option<u64>,
}

/// The versions of `id` from a full read of the token, oldest first, with their states.
pub(super) fn entries(
    id: &str,
    all: &HashMap<String, KeyVersions>,
    v1_created: Option<String>,
) -> (u32, Vec<VersionEntry>) {
    let key = all.get(id);
    let current = version_table::current(key);
    let mut out = vec![VersionEntry {
        number: 1,
        created: v1_created,
        state: state(1, current, key.and_then(|k| k.get(&1)).is_some_and(|v| v.retired)),
        encryptions: None,
    }];
    for (n, v) in key.into_iter().flatten() {
        if *n == 1 || v.committed.is_empty() {
            continue;
        }
        out.push(VersionEntry {
            number: *n,
            created: v.created.clone(),
            state: state(*n, current, v.retired),
            encryptions: None,
        });
    }
    (current, out)
}

fn state(n: u32, current: u32, retired: bool) -> &'static str {
    match (n == current, retired) {
        (_, true) => "retired",
        (true, false) => "current",
        (false, false) => "decrypt-only",
    }
}

impl KeyAdmin<'_> {
    /// Every version of `id` with its state and count, and the current version.
    pub fn versions(&self, id: &str) -> Result<(u32, Vec<VersionEntry>), HsmError> {
        find_key(self.s, id)?;
        let all = versions::read_all(self.s)?;
        let created = marks::creation_records(self.s)?.remove(id).map(|r| r.created);
        let (current, mut list) = entries(id, &all, created);
        for v in &mut list {
            v.encryptions = Some(version_counters::counters(self.s, id, v.number)?.values().sum());
            if v.number >= 2 && versions::key_objects(self.s, id, v.number)?.is_empty() {
                v.state = "destroyed";
            }
        }
        Ok((current, list))
    }

    /// The version must exist and be committed (version 1 always is).
    fn existing(&self, id: &str, n: u32, all: &HashMap<String, KeyVersions>) -> Result<(), HsmError> {
        find_key(self.s, id)?;
        let known = n == 1
            || all
                .get(id)
                .and_then(|k| k.get(&n))
                .is_some_and(|v| !v.committed.is_empty());
        if known {
            Ok(())
        } else {
            Err(HsmError::Refused(format!("key {id:?} has no version {n}")))
        }
    }

    /// Retires a version: it no longer decrypts, on every instance within a second. The
    /// current version cannot be retired (rotate first). Idempotent.
    pub fn retire(&self, id: &str, n: u32) -> Result<(), HsmError> {
        let all = versions::read_all(self.s)?;
        self.existing(id, n, &all)?;
        if version_table::current(all.get(id)) == n {
            return Err(HsmError::Refused(format!(
                "version {n} is the current version of {id:?}; rotate first (keys rotate {id})"
            )));
        }
        let label = versions::record_label(id, n);
        if versions::find_data(self.s, RETIRED_APP, &label)?.is_empty() {
            let rec = format!("{{\"retired\":{:?}}}", crate::clock::now_rfc3339());
            marks::put_data(self.s, RETIRED_APP, &label, rec.as_bytes())?;
        }
        self.versions_changed();
        Ok(())
    }

    /// Lifts a retirement: the version decrypts again (and is current again if it is the
    /// highest committed version).
    pub fn unretire(&self, id: &str, n: u32) -> Result<(), HsmError> {
        let all = versions::read_all(self.s)?;
        self.existing(id, n, &all)?;
        for h in versions::find_data(self.s, RETIRED_APP, &versions::record_label(id, n))? {
            self.s.destroy_object(h).map_err(classify)?;
        }
        self.versions_changed();
        Ok(())
    }

    /// Destroys the key object(s) of a retired version n >= 2; returns the encryptions it
    /// protected (the summed counters). Its record, commit, retirement mark and counters stay
    /// on the token, so its number is never reused and `keys show` keeps its history.
    /// Irreversible: ciphertext under it can never be decrypted again.
    pub fn destroy_version(&self, id: &str, n: u32) -> Result<u64, HsmError> {
        if n == 1 {
            return Err(HsmError::Refused(format!(
                "version 1 is the key object GetKeyMetadata reads; retire it, or destroy the whole key (keys destroy {id})"
            )));
        }
        let all = versions::read_all(self.s)?;
        self.existing(id, n, &all)?;
        if !versions::is_retired(self.s, id, n)? {
            return Err(HsmError::Refused(format!(
                "version {n} of {id:?} is not retired; retire it first (keys retire {id} --version {n})"
            )));
        }
        let protected = version_counters::counters(self.s, id, n)?.values().sum();
        let objects = versions::key_objects(self.s, id, n)?;
        let result = objects
            .into_iter()
            .try_for_each(|(h, _)| self.s.destroy_object(h).map_err(classify));
        // Cached handles may name the destroyed object: found again before any use.
        self.changed_keys();
        self.versions_changed();
        result.map(|()| protected)
    }

    /// Removes every version object and record of `id` (the whole key is being destroyed).
    pub(super) fn destroy_all_versions(&self, id: &str) {
        let prefix = format!("{id}/v");
        for app in [
            versions::RECORD_APP,
            versions::COMMIT_APP,
            RETIRED_APP,
            versions::COUNTER_APP,
        ] {
            if let Ok(found) = marks::data_objects(self.s, app) {
                for (label, (handles, _)) in found {
                    if label.starts_with(&prefix) {
                        handles.into_iter().for_each(|h| {
                            let _ = self.s.destroy_object(h);
                        });
                    }
                }
            }
        }
        let keys = self
            .s
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap_or_default();
        for h in keys {
            let label = self.s.get_attributes(h, &[AttributeType::Label]);
            let ours = label
                .unwrap_or_default()
                .into_iter()
                .any(|a| matches!(a, Attribute::Label(l) if l.starts_with(prefix.as_bytes())));
            if ours {
                let _ = self.s.destroy_object(h);
            }
        }
        self.versions_changed();
    }
}
