//! Key-scope kill switch and key lifecycle verbs, run against the token through `hsm`'s API on
//! a blocking thread (PKCS#11 never runs on the async reactor).

use super::error::ControlError;
use super::protocol::{AdminReply, KeyInfo, KeyOp, KeyVersionInfo};
use super::state_file::Engagement;
pub use crate::hsm::MarkOutcome;
use crate::hsm::{HsmError, KeyEntry, Token};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::sync::Arc;

/// Runs `f` on a blocking thread, connecting the token first when asked (offline commands).
async fn blocking<T: Send + 'static>(
    t: &Arc<Token>,
    connect_first: bool,
    f: impl FnOnce(&Token) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    let t = t.clone();
    tokio::task::spawn_blocking(move || {
        if connect_first && !t.is_connected() {
            t.connect().map_err(|source| ControlError::Connect {
                token: t.name.clone(),
                source,
            })?;
        }
        f(&t)
    })
    .await
    .map_err(ControlError::KeyTask)?
}

/// Disables a key: refused in memory first, then marked on the token.
pub async fn disable(
    t: &Arc<Token>,
    id: &str,
    by: &Engagement,
    connect_first: bool,
) -> Result<MarkOutcome, ControlError> {
    let record = serde_json::to_string(by).unwrap_or_default();
    let id = id.to_owned();
    blocking(t, connect_first, move |t| {
        t.disable_key(&id, &record)
            .map_err(|e| ControlError::for_key(Some(&id), e))
    })
    .await
}

/// Enables a key: the token mark goes first, then the in-memory refusal.
pub async fn enable(t: &Arc<Token>, id: &str, connect_first: bool) -> Result<(), ControlError> {
    let id = id.to_owned();
    blocking(t, connect_first, move |t| {
        t.enable_key(&id).map_err(|e| ControlError::for_key(Some(&id), e))
    })
    .await
}

/// Reinstalls keys refused locally (from the state file) at start.
pub fn install_local_denies<'a>(t: &Token, ids: impl IntoIterator<Item = &'a String>) {
    for id in ids {
        t.deny_locally(id);
    }
}

fn info(e: KeyEntry) -> KeyInfo {
    KeyInfo {
        id: e.id,
        key_spec: e.key_spec,
        usages: e.usages.iter().map(|u| (*u).to_owned()).collect(),
        state: e.state.to_owned(),
        created: e.created,
        extractable: e.extractable,
        sensitive: e.sensitive,
        current_version: e.current_version,
        versions: e
            .versions
            .into_iter()
            .map(|v| KeyVersionInfo {
                number: v.number,
                created: v.created,
                state: v.state.to_owned(),
                encryptions: v.encryptions,
            })
            .collect(),
    }
}

/// Runs a lifecycle operation.
pub async fn run(t: &Arc<Token>, op: &KeyOp, connect_first: bool) -> AdminReply {
    let op = op.clone();
    let out = blocking(t, connect_first, move |t| {
        let b64 = |what: &str, v: &str| {
            STANDARD
                .decode(v)
                .map_err(|_| HsmError::Refused(format!("{what} is not valid Base64")))
        };
        let done = |action: &str, id: &str| AdminReply::KeyChanged {
            action: action.to_owned(),
            id: id.to_owned(),
        };
        if let KeyOp::Rotate { id, .. } = &op {
            // Not under the lifecycle lock: the settle takes a second and a disable must not
            // wait behind it.
            return t
                .rotate_key(id)
                .map(|version| AdminReply::KeyRotated {
                    id: id.clone(),
                    version,
                })
                .map_err(|e| ControlError::for_key(Some(id), e));
        }
        t.key_admin(|k| match &op {
            KeyOp::Create { id, usage } => k.create(id, *usage).map(|_| done("created", id)),
            KeyOp::CreateKek { id, material } => {
                let m = zeroize::Zeroizing::new(b64("KEK material", material)?);
                let arr: &[u8; 32] = m
                    .as_slice()
                    .try_into()
                    .map_err(|_| HsmError::Refused("KEK material must be 32 bytes".into()))?;
                k.create_kek(id, arr).map(|_| done("created", id))
            }
            KeyOp::Import {
                id,
                kek,
                wrapped,
                usage,
            } => k
                .import(id, kek, &b64("wrapped key", wrapped)?, *usage)
                .map(|_| done("imported", id)),
            KeyOp::List => k.list().map(|l| AdminReply::KeyList {
                keys: l.into_iter().map(info).collect(),
            }),
            KeyOp::Show { id } => k.show(id).map(|e| AdminReply::KeyShown { key: info(e) }),
            KeyOp::Destroy { id } => k.destroy(id).map(|_| done("destroyed", id)),
            KeyOp::Retire { id, version, .. } => k
                .retire(id, *version)
                .map(|_| done(&format!("retired version {version} of"), id)),
            KeyOp::Unretire { id, version, .. } => k
                .unretire(id, *version)
                .map(|_| done(&format!("unretired version {version} of"), id)),
            KeyOp::DestroyVersion { id, version } => {
                k.destroy_version(id, *version)
                    .map(|encryptions| AdminReply::VersionDestroyed {
                        id: id.clone(),
                        version: *version,
                        encryptions,
                    })
            }
            KeyOp::Rotate { .. } => Err(HsmError::Internal("rotate handled above".into())),
        })
        .map_err(|e| ControlError::for_key(op.id(), e))
    })
    .await;
    out.unwrap_or_else(AdminReply::failed)
}
