//! `keys list` and `keys show`: every secret key on the token (version objects aside) with
//! its spec, usages, state, creation time and versions with their counts, read in one pass of
//! marks, records, versions and counters rather than per key.

use super::key_objects::{find_key, usages, USAGE_ATTRIBUTES};
use super::keyspec::KeySpec;
use super::lifecycle::KeyAdmin;
use super::marks;
use super::{classify, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

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

impl KeyAdmin<'_> {
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
            counts: super::version_counters::all_counts(self.s)?,
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
    versions: HashMap<String, super::version_table::KeyVersions>,
    counts: HashMap<(String, u32), u64>,
}
