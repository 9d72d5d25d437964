//! Tokens at start: each one's PIN read, local key refusals from the state file reinstalled,
//! logged in (unless the whole-proxy switch is engaged), supervised, and given its worker pool.

use super::startup::{config_error, unavailable, StartError};
use crate::config::Config;
use crate::control::switch::Switch;
use crate::hsm::{rotation, supervisor, Hsm, HsmError, Token};
use std::collections::HashMap;
use std::sync::Arc;

/// The tokens and their worker pools, by token name.
pub(super) async fn start(
    cfg: &Config,
    switch: &Switch,
) -> Result<(Vec<Arc<Token>>, HashMap<String, Hsm>), StartError> {
    let mut pools = HashMap::new();
    let mut tokens = Vec::new();
    let local_denies = switch.local_key_denies();
    let instance = instance_id(&cfg.state.directory)?;
    for (i, t) in cfg.tokens.iter().enumerate() {
        let pin = t
            .load_pin()
            .map_err(|e| config_error(format!("tokens[{i}].pin: {e}")))?;
        let token = Arc::new(Token::new(t, pin, switch.gates().proxy().flag()));
        token.set_instance_id(instance.clone());
        if let Some(local) = local_denies.get(&t.name) {
            crate::control::keys::install_local_denies(&token, local.keys());
        }
        if !switch.proxy_engaged() {
            let connect_token = token.clone();
            let connected = tokio::task::spawn_blocking(move || connect_token.connect())
                .await
                .map_err(|e| unavailable(format!("token connect task failed: {e}")))?;
            match connected {
                Ok(()) => tracing::info!(token = %t.name, label = %t.token_label, "logged in to token"),
                Err(HsmError::LoginRefused(msg)) => return Err(unavailable(format!("tokens[{i}]: {msg}"))),
                Err(e) => {
                    tracing::error!(token = %t.name, error = %e, "token unavailable at start; retrying in the background")
                }
            }
        }
        supervisor::spawn(token.clone());
        rotation::spawn(token.clone());
        let pool = Hsm::start(token.clone(), t, crate::metrics::latency_histogram());
        pools.insert(t.name.clone(), pool);
        tokens.push(token);
    }
    Ok((tokens, pools))
}

/// First reservations at start for the keys the keystores on `token` name explicitly, and for
/// keys matched only by a pattern that this instance reserved for before (at most
/// [`PREFETCH_PATTERN_KEYS`], the busiest first): a pattern may match thousands of keys, but
/// those used before a restart are the ones KMS will ask for again.
pub(super) fn prefetch(cfg: &Config, token: &Arc<Token>) {
    let keystores: Vec<_> = cfg.keystores.iter().filter(|k| k.token == token.name).collect();
    let mut keys: Vec<_> = keystores
        .iter()
        .flat_map(|k| {
            k.allowed_keys
                .iter()
                .map(|id| (id.clone(), k.version_budget_of(id)))
        })
        .collect();
    let patterns: Vec<_> = keystores
        .iter()
        .filter_map(|k| {
            let p = glob::Pattern::new(k.key_pattern.as_deref()?).ok()?;
            Some((p, *k))
        })
        .collect();
    if !patterns.is_empty() {
        for id in token.previously_reserved(PREFETCH_PATTERN_KEYS) {
            if keys.iter().any(|(k, _)| *k == id) {
                continue;
            }
            if let Some((_, k)) = patterns.iter().find(|(p, _)| p.matches(&id)) {
                let budget = k.version_budget_of(&id);
                keys.push((id, budget));
            }
        }
    }
    token.prefetch_reservations(&keys);
}

/// Keys matched by a pattern that get their first reservation at start (see [`prefetch`]).
const PREFETCH_PATTERN_KEYS: usize = 32;

/// The longest the start waits for its reservations before serving anyway.
const PREFETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits (at most [`PREFETCH_WAIT`] in all) for the start-up reservations of `tokens`: until
/// then the listeners are bound but not accepting, so clients queue in the kernel rather than
/// get `DependencyTimeoutException` behind the reservations.
pub(super) async fn wait_prefetched(tokens: &[Arc<Token>]) {
    let tokens = tokens.to_vec();
    let waited = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + PREFETCH_WAIT;
        tokens
            .iter()
            .all(|t| t.wait_prefetched(until.saturating_duration_since(std::time::Instant::now())))
    })
    .await;
    if !matches!(waited, Ok(true)) {
        tracing::info!(
            waited_s = PREFETCH_WAIT.as_secs(),
            "start-up encryption reservations still running; serving anyway (the first Encrypts may wait for them)"
        );
    }
}

/// File in the state directory holding this instance's id.
const INSTANCE_FILE: &str = "instance-id";

/// This instance's id in the token's encryption counters: generated once (16 random bytes,
/// hex) and kept in the state directory, so a restart continues its own counters. One daemon
/// per state directory (the instance lock) makes it unique per running instance; a state
/// directory copied to another machine must have this file removed (docs/key-versions.md).
fn instance_id(dir: &std::path::Path) -> Result<String, StartError> {
    let path = dir.join(INSTANCE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) if is_instance_id(s.trim()) => return Ok(s.trim().to_owned()),
        Ok(_) => {
            return Err(unavailable(format!(
                "state.directory: {} is not an instance id (32 hex digits); remove it to generate a new one",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(unavailable(format!("state.directory: {}: {e}", path.display()))),
    }
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| unavailable(format!("no randomness for the instance id: {e}")))?;
    let id = hex::encode(raw);
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(id.as_bytes())?;
            f.as_file().sync_all()?;
            Ok(f)
        })
        .map_err(|e| unavailable(format!("state.directory: cannot write {}: {e}", path.display())))?;
    tmp.persist(&path)
        .map_err(|e| unavailable(format!("state.directory: cannot write {}: {e}", path.display())))?;
    Ok(id)
}

fn is_instance_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}
