//! Where secrets (HSM PINs, SigV4 secret keys) come from: a file, an environment variable or a
//! systemd credential. Never from argv, and never inline in the config file, so that `ps`, shell
//! history and config backups do not leak them. Loaded values are `SecretString`s: zeroized on
//! drop and without a `Debug` that prints them.

use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Why a secret source is misnamed or cannot be read. No variant holds the secret itself: the
/// text is printed at start and by `check-config`.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// None of the three fields is set.
    #[error("name one of `file`, `env` or `systemd_credential`")]
    NoSource,
    /// More than one of the three fields is set.
    #[error("name only one of `file`, `env` or `systemd_credential`")]
    SeveralSources,
    /// Asked to load a source that names nothing ([`SecretSource::validate`] was skipped).
    #[error("no secret source configured")]
    NotConfigured,
    /// The named environment variable is absent (or not Unicode).
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    /// A systemd credential outside a unit started with `LoadCredential=`.
    #[error("systemd credential {0}: CREDENTIALS_DIRECTORY is not set")]
    NoCredentialsDirectory(String),
    /// The file (or credential file) cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read said.
        source: std::io::Error,
    },
    /// The source holds nothing but line ends; the source is described, as in
    /// [`SecretSource::describe`].
    #[error("{0} is empty")]
    Empty(String),
}

/// Exactly one of the three fields must be set.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// A file holding the secret; one trailing newline is ignored. Relative to the config file.
    pub file: Option<PathBuf>,
    /// An environment variable holding the secret.
    pub env: Option<String>,
    /// A credential passed by systemd's `LoadCredential=` (read from `$CREDENTIALS_DIRECTORY`).
    pub systemd_credential: Option<String>,
}

impl SecretSource {
    /// A source reading the given file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        SecretSource {
            file: Some(path.into()),
            env: None,
            systemd_credential: None,
        }
    }

    /// Checks that exactly one source is named.
    pub fn validate(&self) -> Result<(), SecretError> {
        let set = [
            self.file.is_some(),
            self.env.is_some(),
            self.systemd_credential.is_some(),
        ];
        match set.iter().filter(|s| **s).count() {
            1 => Ok(()),
            0 => Err(SecretError::NoSource),
            _ => Err(SecretError::SeveralSources),
        }
    }

    /// Makes a relative `file` path relative to `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        if let Some(f) = &self.file {
            if f.is_relative() {
                self.file = Some(base.join(f));
            }
        }
    }

    /// Reads the secret. Errors name the source but never contain its value.
    pub fn load(&self) -> Result<SecretString, SecretError> {
        let raw = if let Some(path) = &self.file {
            read_file(path)?
        } else if let Some(var) = &self.env {
            std::env::var(var).map_err(|_| SecretError::EnvUnset(var.clone()))?
        } else if let Some(name) = &self.systemd_credential {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
            read_file(&Path::new(&dir).join(name))?
        } else {
            return Err(SecretError::NotConfigured);
        };
        let mut raw = zeroize::Zeroizing::new(raw);
        let trimmed = raw.trim_end_matches(['\n', '\r']).to_owned();
        raw.clear();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.describe()));
        }
        Ok(SecretString::from(trimmed))
    }

    /// Human description of the source, for error messages and logs.
    pub fn describe(&self) -> String {
        match (&self.file, &self.env, &self.systemd_credential) {
            (Some(f), _, _) => format!("file {}", f.display()),
            (_, Some(e), _) => format!("environment variable {e}"),
            (_, _, Some(c)) => format!("systemd credential {c}"),
            _ => "nothing".into(),
        }
    }
}

fn read_file(path: &Path) -> Result<String, SecretError> {
    warn_if_readable_by_others(path);
    std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(path = %path.display(), "secret file is world-readable; chmod 600 it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn exactly_one_source_is_required() {
        assert!(SecretSource::file("x").validate().is_ok());
        let none = SecretSource {
            file: None,
            env: None,
            systemd_credential: None,
        };
        assert!(none.validate().is_err());
        let two = SecretSource {
            env: Some("A".into()),
            ..SecretSource::file("x")
        };
        assert!(two.validate().is_err());
    }

    #[test]
    fn file_secret_drops_the_trailing_newline_and_errors_never_show_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "hunter2\n").unwrap();
        assert_eq!(SecretSource::file(&p).load().unwrap().expose_secret(), "hunter2");
        std::fs::write(&p, "\n").unwrap();
        let err = SecretSource::file(&p).load().unwrap_err().to_string();
        assert!(err.contains("is empty"));
        let missing = SecretSource::file(dir.path().join("nope"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"));
    }

    #[test]
    fn systemd_credential_needs_the_credentials_directory() {
        let src = SecretSource {
            file: None,
            env: None,
            systemd_credential: Some("pin".into()),
        };
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            assert!(src
                .load()
                .unwrap_err()
                .to_string()
                .contains("CREDENTIALS_DIRECTORY"));
        }
    }
}
