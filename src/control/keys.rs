//! Key-scope kill switch and key lifecycle verbs, run against the token through `hsm`'s API on
//! a blocking thread (PKCS#11 never runs on the async reactor).

use super::protocol::{AdminReply, KeyInfo, KeyOp};
use super::state_file::Engagement;
use crate::hsm::Token;
use crate::keyadmin;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::sync::Arc;

/// Where a key-scope engage landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkOutcome {
    /// The token holds the disabled-key mark: every instance sharing it refuses the key.
    OnToken,
    /// The token refused the mark; this instance refuses the key on its own.
    LocalOnly {
        /// The token's refusal.
        reason: String,
    },
}

/// Runs `f` on a blocking thread, connecting the token first when asked (offline commands).
async fn blocking<T: Send + 'static>(
    t: &Arc<Token>,
    connect_first: bool,
    f: impl FnOnce(&Token) -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let t = t.clone();
    tokio::task::spawn_blocking(move || {
        if connect_first && !t.is_connected() {
            t.connect().map_err(|e| format!("token {}: {e}", t.name))?;
        }
        f(&t)
    })
    .await
    .map_err(|e| format!("key task failed: {e}"))?
}

/// Disables a key: refused in memory first, then marked on the token.
pub async fn disable(
    t: &Arc<Token>,
    id: &str,
    by: &Engagement,
    connect_first: bool,
) -> Result<MarkOutcome, String> {
    let record = serde_json::to_string(by).unwrap_or_default();
    let id = id.to_owned();
    blocking(t, connect_first, move |t| {
        t.with_disabled_sync(|| {
            t.set_disabled(&id, true);
            let written = t
                .admin_session()
                .map_err(|e| e.to_string())
                .and_then(|s| keyadmin::disable(&s.session, &id, &record));
            match written {
                Ok(()) => Ok(MarkOutcome::OnToken),
                Err(e) if e.contains("no key with id") => {
                    t.set_disabled(&id, false);
                    Err(e)
                }
                Err(reason) => Ok(MarkOutcome::LocalOnly { reason }),
            }
        })
    })
    .await
}

/// Enables a key: the token mark goes first, then the in-memory refusal.
pub async fn enable(t: &Arc<Token>, id: &str, connect_first: bool) -> Result<(), String> {
    let id = id.to_owned();
    blocking(t, connect_first, move |t| {
        t.with_disabled_sync(|| {
            t.admin_session()
                .map_err(|e| e.to_string())
                .and_then(|s| keyadmin::enable(&s.session, &id))?;
            t.set_disabled(&id, false);
            Ok(())
        })
    })
    .await
}

/// Reinstalls keys refused locally (from the state file) at start.
pub fn install_local_denies<'a>(t: &Token, ids: impl IntoIterator<Item = &'a String>) {
    for id in ids {
        t.set_disabled(id, true);
    }
}

fn info(e: keyadmin::KeyEntry) -> KeyInfo {
    KeyInfo {
        id: e.id,
        key_spec: e.key_spec,
        usages: e.usages.iter().map(|u| (*u).to_owned()).collect(),
        state: e.state.to_owned(),
        created: e.created,
        extractable: e.extractable,
        sensitive: e.sensitive,
    }
}

/// Runs a lifecycle operation.
pub async fn run(t: &Arc<Token>, op: &KeyOp, connect_first: bool) -> AdminReply {
    let op = op.clone();
    let out = blocking(t, connect_first, move |t| {
        let s = t.admin_session().map_err(|e| e.to_string())?;
        let s = &s.session;
        let b64 = |what: &str, v: &str| {
            STANDARD
                .decode(v)
                .map_err(|_| format!("{what} is not valid Base64"))
        };
        let done = |action: &str, id: &str| AdminReply::KeyChanged {
            action: action.to_owned(),
            id: id.to_owned(),
        };
        match &op {
            KeyOp::Create { id, usage } => keyadmin::create(s, id, *usage).map(|_| done("created", id)),
            KeyOp::CreateKek { id, material } => {
                let m = zeroize::Zeroizing::new(b64("KEK material", material)?);
                let arr: &[u8; 32] = m
                    .as_slice()
                    .try_into()
                    .map_err(|_| "KEK material must be 32 bytes".to_owned())?;
                keyadmin::create_kek(s, id, arr).map(|_| done("created", id))
            }
            KeyOp::Import {
                id,
                kek,
                wrapped,
                usage,
            } => keyadmin::import(s, id, kek, &b64("wrapped key", wrapped)?, *usage)
                .map(|_| done("imported", id)),
            KeyOp::List => keyadmin::list(s).map(|l| AdminReply::KeyList {
                keys: l.into_iter().map(info).collect(),
            }),
            KeyOp::Show { id } => keyadmin::show(s, id).map(|k| AdminReply::KeyShown { key: info(k) }),
            KeyOp::Destroy { id } => keyadmin::destroy(s, id).map(|_| done("destroyed", id)),
        }
    })
    .await;
    out.unwrap_or_else(AdminReply::failed)
}
