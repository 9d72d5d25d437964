//! Reading a config file: parse the TOML, then anchor relative paths at the file's directory
//! (the daemon's working directory is not where the operator wrote the file).

use super::{Config, ConfigError};
use std::path::{Path, PathBuf};

impl Config {
    /// Reads, parses and validates a config file; relative paths are made relative to it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Self::load_unchecked(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file without the checks that need the daemon's files (TLS
    /// keys, secrets): operator commands only need the admin socket and state locations, and
    /// an operator in the admin group need not be able to read the daemon's private files.
    pub fn load_unchecked(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        // `--config config.toml` has an empty parent: relative paths are then relative to ".".
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state.directory);
        if let Some(a) = &mut self.audit {
            fix(&mut a.file);
        }
        if let Some(a) = &mut self.admin {
            fix(&mut a.socket);
        }
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.certificate);
            fix(&mut tls.private_key);
            if let Some(ca) = &mut tls.client_ca {
                fix(ca);
            }
        }
        for t in &mut self.tokens {
            t.pin.resolve(base);
        }
        for k in &mut self.keystores {
            for c in &mut k.credentials {
                c.secret.resolve(base);
            }
        }
    }
}
