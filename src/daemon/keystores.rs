//! The request handler built from a config: keystores with their credentials (secrets read
//! now), key selection, quota, policy and kill-switch gate, and the TLS acceptor. Shared by
//! start-up and reload.

use super::startup::{config_error, StartError};
use crate::app::App;
use crate::auth::{Credential, CredentialSet};
use crate::config::Config;
use crate::gates::Gates;
use crate::hsm::Hsm;
use crate::keystore::Keystore;
use crate::ratelimit::TokenBucket;
use crate::server::tls;
use std::collections::HashMap;
use std::sync::Arc;

/// Everything a reload may change: keystores (secrets re-read), limits, TLS.
pub(super) fn build_app(
    cfg: &Config,
    pools: &HashMap<String, Hsm>,
    gates: &Arc<Gates>,
) -> Result<(App, Option<tls::Tls>), StartError> {
    let mut keystores = Vec::new();
    for (i, k) in cfg.keystores.iter().enumerate() {
        let mut creds = Vec::new();
        for (j, c) in k.credentials.iter().enumerate() {
            let secret = c
                .load_secret()
                .map_err(|e| config_error(format!("keystores[{i}].credentials[{j}].secret: {e}")))?;
            creds.push(Credential::new(c.access_key_id.clone(), secret));
        }
        let pattern = match &k.key_pattern {
            Some(p) => Some(
                glob::Pattern::new(p)
                    .map_err(|e| config_error(format!("keystores[{i}].key_pattern: {e}")))?,
            ),
            None => None,
        };
        let hsm = pools
            .get(&k.token)
            .cloned()
            .ok_or_else(|| config_error(format!("keystores[{i}].token: unknown")))?;
        let set = CredentialSet::new(creds, k.allowed_regions.clone());
        let mut ks = Keystore::new(
            k.uri_prefix.clone(),
            set,
            hsm,
            k.allowed_keys.clone(),
            pattern,
            gates.keystore(&k.uri_prefix),
        );
        ks.quota = k.rate_limit.as_ref().map(TokenBucket::new);
        ks.budgets = k.key_budgets();
        keystores.push(ks);
    }
    let policy = match &cfg.policy {
        Some(p) => Some(Arc::new(p.compile().map_err(|errs| {
            config_error(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?)),
        None => None,
    };
    for ks in &mut keystores {
        ks.policy = policy.clone();
    }
    let tls = match &cfg.tls {
        Some(t) => Some(tls::Tls::from_config(t).map_err(|e| config_error(e.to_string()))?),
        None => None,
    };
    Ok((
        App::new(
            keystores,
            cfg.limits.clone(),
            cfg.server.fleet_size,
            gates.clone(),
        ),
        tls,
    ))
}
