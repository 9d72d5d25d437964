//! Validation rules for [`Config`]; each failure names the field it is about.

use super::error::{ConfigError, GroupError, Reason};
use super::{Config, KeystoreConfig, TokenConfig, SPEC_MIN_AAD, SPEC_MIN_PLAINTEXT};
use crate::xks::{valid_access_key_id, valid_key_id};
use std::collections::HashSet;

/// `field` breaks a rule; shorter than spelling out the `Err(ConfigError::invalid(..))`.
fn bad<T>(field: impl Into<String>, reason: impl Into<Reason>) -> Result<T, ConfigError> {
    Err(ConfigError::invalid(field, reason))
}

pub(crate) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    if cfg.server.listen.is_empty() {
        return bad("server.listen", "at least one address is required");
    }
    if cfg.server.fleet_size == 0 {
        return bad("server.fleet_size", "must be at least 1");
    }
    match (&cfg.tls, cfg.server.allow_plain_http) {
        (None, false) => return bad("tls", "required unless server.allow_plain_http = true"),
        (Some(_), true) => {
            return bad(
                "server.allow_plain_http",
                "cannot be combined with a [tls] section",
            )
        }
        (Some(tls), false) => {
            if let Some(ca) = &tls.client_ca {
                if !ca.is_file() {
                    return bad(
                        "tls.client_ca",
                        format!("{} is not a readable file", ca.display()),
                    );
                }
                if tls.client_names.is_empty() {
                    return bad(
                        "tls.client_names",
                        "required with client_ca (e.g. cks.kms.us-east-1.amazonaws.com)",
                    );
                }
            } else if !tls.client_names.is_empty() {
                return bad("tls.client_names", "only meaningful with tls.client_ca");
            }
            for (field, p) in [
                ("certificate", &tls.certificate),
                ("private_key", &tls.private_key),
            ] {
                if !p.is_file() {
                    return bad(
                        format!("tls.{field}"),
                        format!("{} is not a readable file", p.display()),
                    );
                }
            }
        }
        (None, true) => {}
    }
    validate_limits(cfg)?;
    let srv = &cfg.server;
    if srv
        .runtime_threads
        .is_some_and(|n| n == 0 || n > super::server::MAX_RUNTIME_THREADS)
    {
        return bad(
            "server.runtime_threads",
            format!(
                "1 to {} (unset: one per core less one)",
                super::server::MAX_RUNTIME_THREADS
            ),
        );
    }
    if srv.max_connections == 0 {
        return bad("server.max_connections", "must be at least 1");
    }
    if srv.tls_handshake_timeout_ms == 0 || srv.header_read_timeout_ms == 0 || srv.body_read_timeout_ms == 0 {
        return bad(
            "server.tls_handshake_timeout_ms / header_read_timeout_ms / body_read_timeout_ms",
            "must be positive",
        );
    }
    validate_budget(srv)?;
    if srv.max_header_bytes < 8192 {
        return bad("server.max_header_bytes", "must be at least 8192");
    }
    if let Some(policy) = &cfg.policy {
        let prefixes: Vec<&str> = cfg.keystores.iter().map(|k| k.uri_prefix.as_str()).collect();
        let errors = policy.compile().err().unwrap_or_default();
        let errors = if errors.is_empty() {
            policy.check_keystores(&prefixes).err().unwrap_or_default()
        } else {
            errors
        };
        if let Some(first) = errors.into_iter().next() {
            return Err(first.into());
        }
    }
    if let Some(a) = &cfg.audit {
        if a.file.file_name().is_none() || a.fsync_interval_ms == 0 {
            return bad(
                "audit.file / audit.fsync_interval_ms",
                "a file path and a positive interval are required",
            );
        }
        if a.checkpoint_every_records == 0 {
            return bad("audit.checkpoint_every_records", "must be at least 1");
        }
        // Below 100 ms the journal fills with checkpoints; above a day the unprotected tail of
        // a quiet proxy grows too long.
        if !(100..=86_400_000).contains(&a.checkpoint_interval_ms) {
            return bad("audit.checkpoint_interval_ms", "must be between 100 and 86400000");
        }
        if a.checkpoint_syslog.as_ref().is_some_and(|p| p.is_relative()) {
            return bad(
                "audit.checkpoint_syslog",
                "must be an absolute socket path (e.g. /dev/log)",
            );
        }
    }
    if let Some(m) = &cfg.metrics {
        if !m.listen.ip().is_loopback() && !m.allow_non_loopback {
            return bad(
                "metrics.listen",
                "not a loopback address; set metrics.allow_non_loopback = true to expose it",
            );
        }
    }
    if cfg.state.directory.as_os_str().is_empty() {
        return bad("state.directory", "must not be empty");
    }
    if let Some(a) = &cfg.admin {
        match a.socket.parent() {
            Some(d) if d.is_dir() => {}
            _ => {
                return bad(
                    "admin.socket",
                    format!("the directory of {} does not exist", a.socket.display()),
                )
            }
        }
        if let Some(g) = &a.group {
            group_id(g).map_err(|e| ConfigError::invalid("admin.group", e))?;
        }
    }
    if cfg.tokens.is_empty() {
        return bad("tokens", "at least one [[tokens]] entry is required");
    }
    let mut names = HashSet::new();
    for (i, t) in cfg.tokens.iter().enumerate() {
        validate_token(t).map_err(|e| e.within(format_args!("tokens[{i}]")))?;
        if !names.insert(t.name.as_str()) {
            return bad(
                format!("tokens[{i}].name"),
                format!("duplicate token name {:?}", t.name),
            );
        }
    }
    if cfg.keystores.is_empty() {
        return bad("keystores", "at least one [[keystores]] entry is required");
    }
    let mut prefixes = HashSet::new();
    for (i, k) in cfg.keystores.iter().enumerate() {
        validate_keystore(cfg, k).map_err(|e| e.within(format_args!("keystores[{i}]")))?;
        if !prefixes.insert(k.uri_prefix.as_str()) {
            return bad(
                format!("keystores[{i}].uri_prefix"),
                format!("duplicate prefix {:?}", k.uri_prefix),
            );
        }
    }
    Ok(())
}

fn validate_limits(cfg: &Config) -> Result<(), ConfigError> {
    let l = &cfg.limits;
    if l.max_plaintext_bytes < SPEC_MIN_PLAINTEXT {
        return bad(
            "limits.max_plaintext_bytes",
            format!("must be at least {SPEC_MIN_PLAINTEXT} (spec minimum)"),
        );
    }
    if !(SPEC_MIN_AAD..=65535).contains(&l.max_aad_bytes) {
        return bad(
            "limits.max_aad_bytes",
            format!("must be between {SPEC_MIN_AAD} (spec minimum) and 65535 (AAD framing limit)"),
        );
    }
    // Base64 of the largest plaintext and AAD, plus room for metadata with two 2048-char ARNs.
    let b64 = |n: usize| n.div_ceil(3) * 4;
    let needed = b64(l.max_plaintext_bytes) + b64(l.max_aad_bytes) + 8192;
    if l.max_body_bytes < needed {
        return bad(
            "limits.max_body_bytes",
            format!("must be at least {needed} to carry the largest allowed request"),
        );
    }
    Ok(())
}

fn validate_token(t: &TokenConfig) -> Result<(), ConfigError> {
    if t.name.is_empty() {
        return bad("name", "must not be empty");
    }
    if !t.module.is_file() {
        return bad("module", format!("{} is not a file", t.module.display()));
    }
    if t.token_label.is_empty() || t.token_label.len() > 32 {
        return bad("token_label", "must be 1-32 bytes (PKCS#11 label size)");
    }
    t.pin.validate().map_err(|e| ConfigError::invalid("pin", e))?;
    if !(1..=256).contains(&t.workers) {
        return bad("workers", "must be between 1 and 256");
    }
    if t.queue_depth == 0 {
        return bad("queue_depth", "must be at least 1");
    }
    if !(1..=240).contains(&t.request_timeout_ms) {
        return bad(
            "request_timeout_ms",
            "must be 1-240 (KMS gives a call 250 ms in all)",
        );
    }
    Ok(())
}

/// The bounds of a version budget, at keystore or key level.
fn check_budget(max: u64, rotate_after_days: Option<u32>) -> Result<(), ConfigError> {
    if max == 0 || max > super::budget::NIST_BOUND {
        return bad(
            "max_encryptions_per_version",
            format!(
                "{max} must be between 1 and 2^32 = {} (the NIST SP 800-38D bound for AES-GCM with random 96-bit IVs)",
                super::budget::NIST_BOUND
            ),
        );
    }
    if rotate_after_days == Some(0) {
        return bad("rotate_after_days", "must be at least 1");
    }
    Ok(())
}

fn validate_keystore(cfg: &Config, k: &KeystoreConfig) -> Result<(), ConfigError> {
    let p = &k.uri_prefix;
    let chars_ok = p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_'));
    if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/') || p.contains("//") || !chars_ok) {
        return bad(
            "uri_prefix",
            format!(
                "{p:?} must be empty or start with '/', use only A-Z a-z 0-9 / - _, \
                 and have no empty segment or trailing '/'"
            ),
        );
    }
    if k.api_base().len() > 128 {
        return bad(
            "uri_prefix",
            "the URI path (prefix + /kms/xks/v1) exceeds 128 characters",
        );
    }
    check_budget(k.max_encryptions_per_version, k.rotate_after_days)?;
    if cfg.token(&k.token).is_none() {
        return bad("token", format!("no [[tokens]] entry is named {:?}", k.token));
    }
    if k.credentials.is_empty() {
        return bad("credentials", "at least one credential is required");
    }
    let mut ids = HashSet::new();
    for (j, c) in k.credentials.iter().enumerate() {
        if !valid_access_key_id(&c.access_key_id) {
            return bad(
                format!("credentials[{j}].access_key_id"),
                "must be 20-30 characters of A-Z and 2-7",
            );
        }
        if !ids.insert(c.access_key_id.as_str()) {
            return bad(format!("credentials[{j}].access_key_id"), "listed twice");
        }
        c.secret
            .validate()
            .map_err(|e| ConfigError::invalid(format!("credentials[{j}].secret"), e))?;
    }
    if k.allowed_keys.is_empty() && k.key_pattern.is_none() {
        return bad(
            "allowed_keys",
            "set allowed_keys, key_pattern or both (which token keys AWS may use)",
        );
    }
    for (j, id) in k.allowed_keys.iter().enumerate() {
        if !valid_key_id(id) {
            return bad(
                format!("allowed_keys[{j}]"),
                format!("{id:?} is not a valid external key id"),
            );
        }
    }
    let pattern = match &k.key_pattern {
        Some(pat) => Some(glob::Pattern::new(pat).map_err(|e| ConfigError::invalid("key_pattern", e))?),
        None => None,
    };
    for (id, o) in &k.key_budgets {
        let field = format!("key_budgets.{id:?}");
        let served = k.allowed_keys.contains(id) || pattern.as_ref().is_some_and(|p| p.matches(id));
        if !served {
            return bad(
                field,
                "not a key this keystore serves (neither in allowed_keys nor matching key_pattern)",
            );
        }
        if o.max_encryptions_per_version.is_none() && o.rotate_after_days.is_none() {
            return bad(
                field,
                "sets neither max_encryptions_per_version nor rotate_after_days",
            );
        }
        check_budget(
            o.max_encryptions_per_version
                .unwrap_or(k.max_encryptions_per_version),
            o.rotate_after_days,
        )
        .map_err(|e| e.within(&field))?;
    }
    if let Some(rl) = &k.rate_limit {
        let burst_ok = rl.burst.is_none_or(|b| b.is_finite() && b >= 1.0);
        if !(rl.requests_per_second.is_finite() && rl.requests_per_second > 0.0 && burst_ok) {
            return bad("rate_limit", "requests_per_second must be > 0 and burst >= 1");
        }
    }
    for r in &k.allowed_regions {
        if r.is_empty()
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad("allowed_regions", format!("{r:?} is not a region name"));
        }
    }
    Ok(())
}

/// The XKS spec's secret access key: 43 to 64 characters of `A-Za-z0-9/+=`. KMS refuses to
/// store any other, so a proxy accepting one could never be reached; refusing it at load says
/// so before the operator pastes it into the console. The message never contains the value.
pub(crate) fn check_sigv4_secret(secret: &str) -> Result<(), Reason> {
    let len = secret.chars().count();
    if !(43..=64).contains(&len) {
        return Err(Reason::Rule(format!(
            "must be 43-64 characters of A-Za-z0-9/+= (the XKS spec), found {len} characters"
        )));
    }
    if !secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'='))
    {
        return Err(
            "must be 43-64 characters of A-Za-z0-9/+= (the XKS spec), found another character".into(),
        );
    }
    Ok(())
}

/// Resolves a group name (or a numeric gid) through the group database (NSS).
pub fn group_id(name: &str) -> Result<u32, GroupError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(GroupError::Unknown(name.to_owned())),
        Err(source) => Err(GroupError::Lookup {
            name: name.to_owned(),
            source,
        }),
    }
}

/// The connection budget's fields (`[server]`).
fn validate_budget(srv: &super::ServerConfig) -> Result<(), ConfigError> {
    match srv.max_unproven_connections {
        Some(0) => return bad("server.max_unproven_connections", "must be at least 1"),
        Some(n) if n > srv.max_connections => {
            return bad(
                "server.max_unproven_connections",
                format!("{n} exceeds server.max_connections ({})", srv.max_connections),
            )
        }
        _ => {}
    }
    for (field, v) in [
        ("first_request_timeout_ms", srv.first_request_timeout_ms),
        ("write_timeout_ms", srv.write_timeout_ms),
        ("tcp_keepalive_secs", srv.tcp_keepalive_secs),
        ("tcp_user_timeout_ms", srv.tcp_user_timeout_ms),
    ] {
        if v == 0 {
            return bad(format!("server.{field}"), "must be positive");
        }
    }
    if srv.tcp_keepalive_secs > 7200 {
        return bad("server.tcp_keepalive_secs", "at most 7200");
    }
    validate_drain(srv)
}

/// The drain timings (`[server]`).
fn validate_drain(srv: &super::ServerConfig) -> Result<(), ConfigError> {
    let max = super::MAX_DRAIN_MS;
    if srv.drain_delay_ms > max {
        return bad("server.drain_delay_ms", format!("at most {max}"));
    }
    if srv.drain_grace_ms == 0 || srv.drain_grace_ms > max {
        return bad("server.drain_grace_ms", format!("must be between 1 and {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_unit_waits_longer_than_a_default_drain() {
        let unit = include_str!("../../systemd/xks-bridge.service");
        let secs: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .and_then(|v| v.trim().parse().ok())
            .expect("TimeoutStopSec= in seconds");
        // Room beyond the drain for the audit flush and closing the token.
        let needed = super::super::DEFAULT_DRAIN_DELAY_MS + super::super::DEFAULT_DRAIN_GRACE_MS + 5_000;
        assert!(
            secs * 1000 >= needed,
            "TimeoutStopSec={secs} is shorter than a default drain ({needed} ms)"
        );
    }

    #[test]
    fn key_ids_follow_the_spec_alphabet() {
        assert!(valid_key_id("foo.bar-1_2"));
        assert!(!valid_key_id(""));
        assert!(!valid_key_id("a/b"));
        assert!(!valid_key_id(&"a".repeat(129)));
        assert!(valid_key_id(&"a".repeat(128)));
    }

    #[test]
    fn access_key_ids_are_base32_of_20_to_30_chars() {
        assert!(valid_access_key_id("ABCDEFGHIJKLMNOPQRST"));
        assert!(!valid_access_key_id("ABCDEFGHIJKLMNOPQRS"));
        assert!(!valid_access_key_id("ABCDEFGHIJKLMNOPQRS1"));
        assert!(!valid_access_key_id(&"A".repeat(31)));
    }

    #[test]
    fn sigv4_secrets_are_43_to_64_characters_of_the_base64_alphabet() {
        assert!(check_sigv4_secret(&"A".repeat(43)).is_ok());
        assert!(check_sigv4_secret(&"a/+=9".repeat(13)[..64]).is_ok());
        assert!(check_sigv4_secret(&"A".repeat(42)).is_err());
        assert!(check_sigv4_secret(&"A".repeat(65)).is_err());
        let dashed = format!("{}-", "A".repeat(44));
        let e = check_sigv4_secret(&dashed).unwrap_err().to_string();
        assert!(!e.contains(&dashed), "{e}");
        assert!(check_sigv4_secret(&format!("{}é", "A".repeat(44))).is_err());
    }
}
