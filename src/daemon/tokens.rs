//! Tokens at start: each one's PIN read, local key refusals from the state file reinstalled,
//! logged in (unless the whole-proxy switch is engaged), supervised, and given its worker pool.

use super::startup::{config_error, unavailable, StartError};
use crate::config::Config;
use crate::control::switch::Switch;
use crate::hsm::{supervisor, Hsm, HsmError, Token};
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
    for (i, t) in cfg.tokens.iter().enumerate() {
        let pin = t
            .load_pin()
            .map_err(|e| config_error(format!("tokens[{i}].pin: {e}")))?;
        let token = Arc::new(Token::new(t, pin, switch.gates().proxy().flag()));
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
        let pool = Hsm::start(token.clone(), t, crate::metrics::latency_histogram());
        pools.insert(t.name.clone(), pool);
        tokens.push(token);
    }
    Ok((tokens, pools))
}
