//! `keys …`: key lifecycle on the token (through the daemon or offline), key versions, and
//! the custodian's offline wrapping tool.

use super::kill_switch::change;
use super::{emit, load, reach, render, CliResult, EXIT_FAILED};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use xks_bridge::config::EXIT_BAD_CONFIG;
use xks_bridge::control::protocol::{AdminReply, AdminRequest, KeyOp, Scope, Usage};

/// One version of one key (`keys retire`, `keys unretire`).
#[derive(Args)]
pub struct VersionArgs {
    /// External key id.
    id: String,
    /// Version number.
    #[arg(long)]
    version: u32,
    /// Why (audit trail).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    target: KeyTarget,
}

/// Options shared by `keys` subcommands that touch the token.
#[derive(Args)]
pub struct KeyTarget {
    /// Configuration file of the daemon.
    #[arg(long)]
    config: PathBuf,
    /// Token to act on, when several are configured.
    #[arg(long)]
    token: Option<String>,
}

/// `keys` subcommands.
#[derive(Subcommand)]
pub enum KeysCmd {
    /// Generate an AES-256 key inside the token (sensitive, never extractable).
    Create {
        /// External key id (the key's CKA_LABEL).
        #[arg(long)]
        id: String,
        /// Usages: encrypt,decrypt (default), encrypt, decrypt or none.
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Create a key-encryption key for imports; its material is written once to --out for the
    /// key custodian, and stored on the token as unwrap-only.
    CreateKek {
        /// Id of the KEK on the token.
        #[arg(long)]
        id: String,
        /// File receiving the 32 raw KEK bytes (must not exist; created 0600).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Custodian side of an import, offline: wrap 32 bytes of AES key material under a KEK
    /// with AES key wrap with padding (RFC 5649).
    Wrap {
        /// File with the 32 raw KEK bytes.
        #[arg(long)]
        kek_file: PathBuf,
        /// File with the 32 raw bytes of key material.
        #[arg(long)]
        material_file: PathBuf,
        /// Output file (wrapped blob, 40 bytes).
        #[arg(long)]
        out: PathBuf,
    },
    /// Unwrap an RFC 5649-wrapped AES-256 key under a KEK into a new key.
    Import {
        /// External key id of the new key.
        #[arg(long)]
        id: String,
        /// File with the wrapped blob.
        #[arg(long)]
        wrapped: PathBuf,
        /// Id of the KEK on the token.
        #[arg(long)]
        kek: String,
        /// Usages of the new key.
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// List keys: id, usages, state, creation date, extractability.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Show one key as JSON, with its versions (number, creation time, state, encryptions
    /// counted) and current_version.
    Show {
        /// External key id.
        id: String,
        /// JSON output (the only format; accepted for symmetry with `keys list --json`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Create a new version of a key inside the token and make it current on every instance
    /// sharing the token (within a second). Prints the new version.
    Rotate {
        /// External key id.
        id: String,
        /// Why (audit trail).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Retire a key version: ciphertext made with it no longer decrypts (reversible with
    /// `keys unretire`). The current version cannot be retired: rotate first.
    Retire(VersionArgs),
    /// Let a retired key version decrypt again.
    Unretire(VersionArgs),
    /// Disable a key (the key-scope kill switch).
    Disable {
        /// External key id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Enable a disabled key.
    Enable {
        /// External key id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Destroy a disabled key (every version), or with --version one retired version.
    /// Ciphertext under it becomes unrecoverable.
    Destroy {
        /// External key id.
        id: String,
        /// Destroy only this (retired) version; --confirm must then be `<id>/v<version>`.
        #[arg(long)]
        version: Option<u32>,
        /// Repeat the id (or `<id>/v<version>`) to confirm.
        #[arg(long)]
        confirm: String,
        #[command(flatten)]
        target: KeyTarget,
    },
}

fn usage(s: &str) -> Result<Usage, (i32, String)> {
    Usage::parse(s).map_err(|e| (EXIT_BAD_CONFIG, format!("--usage: {e}")))
}

fn read_32(path: &Path, what: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, (i32, String)> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| (EXIT_FAILED, format!("{what} {}: {e}", path.display())))?,
    );
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err((
            EXIT_FAILED,
            format!("{what} {} must hold exactly 32 raw bytes", path.display()),
        ));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), (i32, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            (
                EXIT_FAILED,
                format!("{}: {e} (refusing to overwrite)", path.display()),
            )
        })?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| (EXIT_FAILED, format!("{}: {e}", path.display())))
}

/// Runs a `keys` command.
pub fn keys(cmd: KeysCmd) -> CliResult {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (target, op, json_out) = match cmd {
        KeysCmd::Wrap {
            kek_file,
            material_file,
            out,
        } => {
            let kek = read_32(&kek_file, "KEK file")?;
            let material = read_32(&material_file, "material file")?;
            let wrapped = aes_kw::KekAes256::from(*kek)
                .wrap_with_padding_vec(&material[..])
                .map_err(|e| (EXIT_FAILED, format!("wrap failed: {e}")))?;
            write_new_private(&out, &wrapped)?;
            outln!(
                "wrapped {} bytes into {} ({} bytes, RFC 5649)",
                material.len(),
                out.display(),
                wrapped.len()
            );
            return Ok(());
        }
        KeysCmd::Create { id, usage: u, target } => (
            target,
            KeyOp::Create {
                id,
                usage: usage(&u)?,
            },
            false,
        ),
        KeysCmd::CreateKek { id, out, target } => {
            let mut material = zeroize::Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut material[..]).map_err(|e| (EXIT_FAILED, format!("no randomness: {e}")))?;
            write_new_private(&out, &material[..])?;
            let op = KeyOp::CreateKek {
                id,
                material: b64(&material[..]),
            };
            let req = key_request(&target, op);
            let r = run_keys(&target, req, false);
            if r.is_err() {
                let _ = std::fs::remove_file(&out);
            } else {
                outln!(
                    "KEK material written to {} — hand it to the key custodian, then destroy it",
                    out.display()
                );
            }
            return r;
        }
        KeysCmd::Import {
            id,
            wrapped,
            kek,
            usage: u,
            target,
        } => {
            let blob =
                std::fs::read(&wrapped).map_err(|e| (EXIT_FAILED, format!("{}: {e}", wrapped.display())))?;
            (
                target,
                KeyOp::Import {
                    id,
                    kek,
                    wrapped: b64(&blob),
                    usage: usage(&u)?,
                },
                false,
            )
        }
        KeysCmd::List { json, target } => (target, KeyOp::List, json),
        KeysCmd::Show { id, target, .. } => (target, KeyOp::Show { id }, true),
        KeysCmd::Rotate { id, reason, target } => (target, KeyOp::Rotate { id, reason }, false),
        KeysCmd::Retire(VersionArgs {
            id,
            version,
            reason,
            target,
        }) => (target, KeyOp::Retire { id, version, reason }, false),
        KeysCmd::Unretire(VersionArgs {
            id,
            version,
            reason,
            target,
        }) => (target, KeyOp::Unretire { id, version, reason }, false),
        KeysCmd::Disable { id, reason, target } => {
            let req = AdminRequest::Engage {
                scope: Scope::Key(id),
                reason,
                token: target.token.clone(),
                fleet: false,
            };
            return run_keys(&target, req, false);
        }
        KeysCmd::Enable { id, reason, target } => {
            let req = AdminRequest::Release {
                scope: Scope::Key(id),
                reason,
                token: target.token.clone(),
                fleet: false,
            };
            return run_keys(&target, req, false);
        }
        KeysCmd::Destroy {
            id,
            version: Some(version),
            confirm,
            target,
        } => {
            if confirm != format!("{id}/v{version}") {
                return Err((
                    EXIT_BAD_CONFIG,
                    format!("--confirm must be exactly {id}/v{version} to destroy that version"),
                ));
            }
            (target, KeyOp::DestroyVersion { id, version }, false)
        }
        KeysCmd::Destroy {
            id,
            version: None,
            confirm,
            target,
        } => {
            if confirm != id {
                return Err((EXIT_BAD_CONFIG, "--confirm must repeat the key id exactly".into()));
            }
            (target, KeyOp::Destroy { id }, false)
        }
    };
    let req = key_request(&target, op);
    run_keys(&target, req, json_out)
}

fn key_request(target: &KeyTarget, op: KeyOp) -> AdminRequest {
    AdminRequest::Keys {
        token: target.token.clone(),
        op,
    }
}

fn run_keys(target: &KeyTarget, req: AdminRequest, json_out: bool) -> CliResult {
    let cfg = load(&target.config)?;
    match reach::send(&cfg, req)? {
        AdminReply::KeyList { keys } if json_out => {
            outln!("{}", serde_json::to_string_pretty(&keys).unwrap_or_default());
        }
        AdminReply::KeyList { keys } => emit(&render::key_table(&keys)),
        AdminReply::KeyShown { key } => {
            outln!("{}", serde_json::to_string_pretty(&key).unwrap_or_default());
        }
        AdminReply::KeyChanged { action, id } => outln!("{action}: {id}"),
        AdminReply::KeyRotated { id, version } => outln!("rotated: {id} version {version} is current"),
        AdminReply::VersionDestroyed {
            id,
            version,
            encryptions,
        } => outln!(
            "destroyed: version {version} of {id}; it protected at most {encryptions} encryptions, whose ciphertext can no longer be decrypted"
        ),
        reply @ AdminReply::Changed(_) => return change(reply),
        other => return Err(render::unexpected(other)),
    }
    Ok(())
}
