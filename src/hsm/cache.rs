//! The key-handle cache: label → object handle, so a request costs no `C_FindObjects`.
//!
//! A handle is only a number, and some HSMs reuse the number of a destroyed object for the
//! next one created. An entry is therefore stamped with the cache generation, which every
//! lifecycle change of this process (create, import, destroy), every change of the disabled
//! marks seen on the token (another instance's lifecycle goes through disable first) and every
//! reconnect bumps; an entry from an older generation is looked up again by label and its
//! `CKA_LABEL` compared before use. Keys whose attributes are weaker than an external key's are
//! refused here, at lookup, with [`HsmError::WeakKey`].
//!
//! `CKA_UNIQUE_ID` (PKCS#11 3.0) is not used: SoftHSM 2.6 does not implement it, and the label
//! comparison after a re-find gives the same guarantee for the proxy's own keys.

use super::key_objects::find_key;
use super::keyspec::KeySpec;
use super::{classify, marks, HsmError};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// A key found on the token and checked.
#[derive(Debug, Clone)]
pub(super) struct CachedKey {
    pub(super) handle: ObjectHandle,
    pub(super) spec: KeySpec,
    generation: u64,
}

#[derive(Default)]
pub(super) struct KeyCache {
    entries: RwLock<HashMap<String, CachedKey>>,
    generation: AtomicU64,
}

impl KeyCache {
    /// Every cached handle must be checked again before its next use.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets every entry (reconnect, disconnect).
    pub(super) fn clear(&self) {
        self.invalidate();
        self.entries.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Was `key` found after the last lifecycle change? Checked right before each call that
    /// uses its handle.
    pub(super) fn is_current(&self, key: &CachedKey) -> bool {
        key.generation == self.generation.load(Ordering::SeqCst)
    }

    pub(super) fn evict(&self, label: &str) {
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label);
    }

    /// The key `target` names: from the cache while no lifecycle change happened since it was
    /// found, else found (and checked) again on `session`.
    pub(super) fn lookup(&self, session: &Session, target: &KeyRef) -> Result<CachedKey, HsmError> {
        let current = self.generation.load(Ordering::SeqCst);
        let label = target.cache_key();
        if let Some(k) = self.entries.read().unwrap_or_else(|p| p.into_inner()).get(label) {
            if k.generation == current {
                return Ok(k.clone());
            }
        }
        self.evict(label);
        let handle = match &target.ckaid {
            None => find_key(session, &target.label)?,
            Some(id) => find_key_with_id(session, &target.label, id)?,
        };
        let spec = check(session, handle, &target.label)?;
        let key = CachedKey {
            handle,
            spec,
            generation: current,
        };
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(label.to_owned(), key.clone());
        Ok(key)
    }
}

/// Which key object a job uses: version 1 by its label alone (the key id), a later version by
/// its label and the `CKA_ID` of its committed candidate.
#[derive(Debug, Clone)]
pub(super) struct KeyRef {
    pub(super) label: String,
    pub(super) ckaid: Option<Vec<u8>>,
    /// `label`, or `label#<hex CKA_ID>`: the cache's key.
    key: String,
}

impl KeyRef {
    pub(super) fn new(label: String, ckaid: Option<Vec<u8>>) -> KeyRef {
        let key = match &ckaid {
            None => label.clone(),
            Some(id) => format!("{label}#{}", hex::encode(id)),
        };
        KeyRef { label, ckaid, key }
    }

    pub(super) fn cache_key(&self) -> &str {
        &self.key
    }
}

/// The one secret key labelled `label` whose `CKA_ID` is `id`.
fn find_key_with_id(s: &Session, label: &str, id: &[u8]) -> Result<ObjectHandle, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(classify)?;
    // Several handles for one (label, 128-bit random CKA_ID) are copies of one object: SoftHSM2
    // can list an object another process created twice until it re-indexes, and no other
    // object can carry the nonce (`create_version_key` clears leftovers before each attempt).
    found.first().copied().ok_or(HsmError::KeyNotFound)
}

/// Reads the handle's label, type, length and protection attributes: the label must still be
/// the key id (a reused handle names another object), and the key must never have been
/// exposable outside the HSM.
fn check(s: &Session, h: ObjectHandle, label: &str) -> Result<KeySpec, HsmError> {
    use AttributeType as A;
    let attrs = s
        .get_attributes(
            h,
            &[
                A::Label,
                A::KeyType,
                A::ValueLen,
                A::Extractable,
                A::Sensitive,
                A::Private,
            ],
        )
        .map_err(classify)?;
    let (mut found_label, mut key_type, mut len) = (None, None, 0u64);
    let mut weak = Vec::new();
    for a in attrs {
        match a {
            Attribute::Label(l) => found_label = Some(l),
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::ValueLen(l) => len = l.into(),
            Attribute::Extractable(true) => weak.push("CKA_EXTRACTABLE=true"),
            Attribute::Sensitive(false) => weak.push("CKA_SENSITIVE=false"),
            Attribute::Private(false) => weak.push("CKA_PRIVATE=false"),
            _ => {}
        }
    }
    if found_label.as_deref() != Some(label.as_bytes()) {
        return Err(HsmError::KeyNotFound);
    }
    if !weak.is_empty() {
        tracing::error!(key_id = label, attributes = %weak.join(", "), "key refused: its attributes allow it to leave the HSM");
        return Err(HsmError::WeakKey(weak.join(", ")));
    }
    Ok(KeySpec::decode(key_type, len, || {
        marks::recorded_value_len(s, label)
    }))
}
