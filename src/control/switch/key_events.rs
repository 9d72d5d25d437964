//! Key-level entries in the switch's state: keys this instance refuses because the token refused
//! their mark, and the history entries of key scope and lifecycle commands.

use super::{Engaged, Switch};
use crate::control::state_file::{write_state, Engagement, StateFileError};
use std::collections::BTreeMap;

impl Switch {
    /// Records that `key` on `token` is refused by this instance only (its token mark was
    /// refused). The caller has already made the token layer refuse it.
    pub fn deny_key_locally(&self, token: &str, key: &str, by: Engagement) -> Engaged {
        let mut inner = self.lock();
        inner
            .mem
            .local_key_denies
            .entry(token.to_owned())
            .or_default()
            .insert(key.to_owned(), by);
        Engaged {
            not_durable: self.persist(&mut inner),
        }
    }

    /// Removes a local key refusal from the file (before the caller lifts it in the token
    /// layer). Removing one that is not there is not an error.
    pub fn lift_key_locally(&self, token: &str, key: &str) -> Result<(), StateFileError> {
        let mut inner = self.lock();
        if !inner
            .mem
            .local_key_denies
            .get(token)
            .is_some_and(|m| m.contains_key(key))
        {
            return Ok(());
        }
        let mut next = inner.mem.clone();
        if let Some(m) = next.local_key_denies.get_mut(token) {
            m.remove(key);
            if m.is_empty() {
                next.local_key_denies.remove(token);
            }
        }
        write_state(&self.file, &next)?;
        inner.disk = next.clone();
        inner.mem = next;
        inner.last_error = None;
        Ok(())
    }

    /// Keys refused locally, by token.
    pub fn local_key_denies(&self) -> BTreeMap<String, BTreeMap<String, Engagement>> {
        self.lock().mem.local_key_denies.clone()
    }

    /// Adds a history entry (key scope and lifecycle events). A failed write leaves it in
    /// memory, written with the next successful write.
    pub fn record_event(&self, action: &str, scope: &str, by: Engagement) -> Option<String> {
        let mut inner = self.lock();
        inner.mem.push(action, scope, by);
        self.persist(&mut inner)
    }
}
