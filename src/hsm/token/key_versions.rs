//! The token's view of its keys' versions: the version table as last read, the installs after
//! a local change or a poll, and this instance's id in encryption counter labels.

use super::super::version_table;
use super::super::versions;
use super::super::HsmError;
use super::Token;
use cryptoki::session::Session;

impl Token {
    /// Sets the id this instance writes its encryption counters under (once; later calls are
    /// ignored). See docs/key-versions.md.
    pub fn set_instance_id(&self, id: String) {
        let _ = self.instance.set(id);
    }

    pub(in crate::hsm) fn instance_id(&self) -> Result<&str, HsmError> {
        self.instance
            .get()
            .map(String::as_str)
            .ok_or_else(|| HsmError::Internal("no instance id: encryption counters cannot be written".into()))
    }

    /// The version of `key_id` Encrypt uses now (1 for keys that were never rotated).
    pub fn current_version(&self, key_id: &str) -> u32 {
        self.versions.current(key_id)
    }

    /// Reads every key's versions on `s` and installs them now (after a local change).
    pub(in crate::hsm) fn refresh_versions_now(&self, s: &Session) {
        match versions::read_all(s) {
            Ok(all) => {
                self.versions.install(None, all);
            }
            Err(e) => {
                tracing::warn!(token = %self.name, error = %e, "cannot read key versions after a change; the next poll will")
            }
        }
    }

    /// The poll's half of the versions: installs a read unless a local change overlapped it.
    pub(in crate::hsm) fn install_polled_versions(
        &self,
        seen: u64,
        all: std::collections::HashMap<String, version_table::KeyVersions>,
    ) {
        self.versions.install(Some(seen), all);
    }

    /// Change counter of the version table, read before a poll reads the token.
    pub(in crate::hsm) fn version_changes(&self) -> u64 {
        self.versions.change_count()
    }
}
