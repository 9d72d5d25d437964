//! The key-scope kill switch and key administration: which keys are refused (the token's
//! disabled-key marks and this process's own refusals), disabling and enabling a key, and the
//! poll's installs of the marks.

use super::super::key_objects::find_key;
use super::super::keystate::MarkOutcome;
use super::super::lifecycle::KeyAdmin;
use super::super::{marks, HsmError};
use super::Token;

impl Token {
    /// Is this key refused (a disabled mark on the token, or refused by this process)?
    pub fn is_refused(&self, key_id: &str) -> bool {
        self.keys.is_refused(key_id)
    }

    /// Every refused key, sorted: the token's marks and this process's own refusals.
    pub fn refused_keys(&self) -> Vec<String> {
        self.keys.refused_keys()
    }

    /// Keys this process refuses without a mark on the token (for the control layer's state
    /// file).
    pub fn local_denies(&self) -> Vec<String> {
        self.keys.local_denies()
    }

    /// Refuses `key_id` in this process only, without touching the token (the control layer
    /// reinstalls its persisted list with this at start).
    pub fn deny_locally(&self, key_id: &str) {
        self.keys.deny_locally(key_id);
    }

    /// Lifts this process's own refusal of `key_id`; a mark on the token still refuses it.
    pub fn lift_local(&self, key_id: &str) {
        self.keys.lift_local(key_id);
    }

    /// Disables a key (the key-scope kill switch). The refusal takes effect in memory before
    /// the token is written; then the mark is written with `record` (who/when/why, JSON) as its
    /// value. A token that refuses the write (or cannot be reached) leaves the key refused by
    /// this process alone: [`MarkOutcome::LocalOnly`]. A key the token does not hold is
    /// [`HsmError::KeyNotFound`], and is not left refused. Blocking: call it off the async
    /// runtime.
    pub fn disable_key(&self, key_id: &str, record: &str) -> Result<MarkOutcome, HsmError> {
        let _lifecycle = self.keys.lock_lifecycle();
        let added = self.keys.deny_locally(key_id);
        let written = self.with_admin_session(|s| {
            match find_key(s, key_id) {
                Ok(_) | Err(HsmError::AmbiguousKey(_)) => {}
                Err(e) => return Err(e),
            }
            Ok(marks::put_mark(s, key_id, record))
        });
        match written {
            Ok(Ok(())) => {
                self.keys.marked_on_token(key_id);
                Ok(MarkOutcome::OnToken)
            }
            Err(HsmError::KeyNotFound) => {
                if added {
                    self.keys.lift_local(key_id);
                }
                Err(HsmError::KeyNotFound)
            }
            Ok(Err(e)) | Err(e) => {
                tracing::error!(token = %self.name, key_id, error = %e, "disabled-key mark not written; the key is refused by this process only");
                Ok(MarkOutcome::LocalOnly {
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Enables a key: removes its marks from the token, then lifts every refusal of it. A
    /// token that cannot remove the mark leaves the key refused (the error says why).
    pub fn enable_key(&self, key_id: &str) -> Result<(), HsmError> {
        let _lifecycle = self.keys.lock_lifecycle();
        let refused = self.keys.is_refused(key_id);
        self.with_admin_session(|s| {
            match find_key(s, key_id) {
                Ok(_) | Err(HsmError::AmbiguousKey(_)) => {}
                // A refused id whose key is gone may still be lifted.
                Err(HsmError::KeyNotFound) if refused => {}
                Err(e) => return Err(e),
            }
            marks::remove_marks(s, key_id)
        })?;
        self.keys.forget(key_id);
        Ok(())
    }

    /// Runs `f` with key administration on a new read-write session of the connection.
    /// Blocking: call it off the async runtime.
    pub fn key_admin<T>(&self, f: impl FnOnce(&KeyAdmin<'_>) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let _lifecycle = self.keys.lock_lifecycle();
        self.with_admin_session(|s| f(&KeyAdmin::new(s, Some(self))))
    }

    /// `key_id`'s object is destroyed and cached handles invalidated: its refusal has nothing
    /// left to protect (a new key created under the id later starts enabled).
    pub(in crate::hsm) fn forget_destroyed(&self, key_id: &str) {
        self.keys.forget(key_id);
    }

    /// A lifecycle change: cached handles must be checked again before use.
    pub(in crate::hsm) fn keys_changed(&self) {
        self.cache.invalidate();
    }

    /// The poll's half of the key state: installs marks read on a logged-in session unless a
    /// local change overlapped the read; a changed set invalidates the handle cache (another
    /// instance may be destroying or replacing a key).
    pub(in crate::hsm) fn install_polled_marks(
        &self,
        seen: u64,
        marks: std::collections::HashSet<String>,
    ) -> bool {
        match self.keys.install_polled(seen, marks) {
            Some(changed) => {
                if changed {
                    self.cache.invalidate();
                }
                true
            }
            None => false,
        }
    }

    /// Change counter of the key state, read before a poll reads the token.
    pub(in crate::hsm) fn key_state_changes(&self) -> u64 {
        self.keys.change_count()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::token;
    use super::*;

    /// A disable on a token that cannot be reached still refuses the key, in this process.
    #[test]
    fn disable_without_a_token_connection_is_local_only() {
        let t = token();
        let outcome = t.disable_key("k", "{}").expect("refused locally");
        assert!(matches!(outcome, MarkOutcome::LocalOnly { .. }), "{outcome:?}");
        assert!(t.is_refused("k"));
        assert_eq!(t.local_denies(), ["k"]);
    }
}
