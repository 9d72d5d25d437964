//! Key lifecycle on the token, for the daemon (through [`super::Token::key_admin`]) and the
//! offline CLI (through [`super::setup::UserSession::key_admin`]): create inside the token,
//! store a KEK, import under a KEK with AES key wrap with padding (RFC 5649), offline
//! disable/enable, and destroy. Listing is `key_listing`; what a key object is, `key_objects`.

use super::key_objects::{find_key, key_template, with_hardening, Usage};
use super::marks;
use super::token::Token;
use super::{classify, HsmError};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

/// Attempts at a new key, and at its creation record before the key is removed again.
const RECORD_ATTEMPTS: u32 = 3;
/// Pause between those attempts.
const RECORD_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Key administration on one logged-in read-write session. In the daemon it also tells the
/// token's key-handle cache and key state about every change.
pub struct KeyAdmin<'a> {
    pub(super) s: &'a Session,
    pub(super) token: Option<&'a Token>,
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
            "the token refused to store the creation record of {id:?} {RECORD_ATTEMPTS} times ({e}); the new key was removed and nothing changed: try again, and if it persists check that this login may create private data objects (xks-bridge doctor)"
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
}
