//! Operator commands: `kill-switch …` and `keys …`. Each talks to the running daemon over its
//! admin socket; when no daemon answers there, it acts directly (state file or token) and says
//! so. `keys wrap` is the key custodian's offline tool (no token, no daemon).

use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use xks_bridge::config::{Config, EXIT_BAD_CONFIG};
use xks_bridge::control::protocol::{AdminReply, AdminRequest, ChangeReport, KeyOp, Scope, Usage};
use xks_bridge::exit::Exit;

mod doctor;
mod drain;
mod reach;
mod render;

pub use doctor::{doctor, DoctorArgs};
pub use drain::{drain, DrainArgs};

type CliResult = Result<(), (i32, String)>;
const EXIT_FAILED: i32 = Exit::Failed as i32;

/// Where a kill switch command applies.
#[derive(Args)]
pub struct ScopeArgs {
    /// Only this keystore (its URI prefix, e.g. /tenant-a).
    #[arg(long, conflicts_with = "key")]
    keystore: Option<String>,
    /// Only this key (its external key id).
    #[arg(long)]
    key: Option<String>,
    /// Token holding the key, when several are configured.
    #[arg(long)]
    token: Option<String>,
    /// Why (recorded with your uid and the time).
    #[arg(long)]
    reason: Option<String>,
    /// Every instance sharing the token, not only this one: writes (or removes) a mark on the
    /// token that every instance honours within a second. Proxy and keystore scopes only.
    #[arg(long, conflicts_with = "key")]
    fleet: bool,
    /// Configuration file of the daemon.
    #[arg(long)]
    config: PathBuf,
}

/// `kill-switch` subcommands.
#[derive(Subcommand)]
pub enum KillSwitchCmd {
    /// Cut AWS off: the whole proxy (default), one keystore or one key.
    Engage(ScopeArgs),
    /// Restore access at the same scope.
    Release(ScopeArgs),
    /// Show what is engaged, by whom, when and why.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Configuration file of the daemon.
        #[arg(long)]
        config: PathBuf,
    },
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
    Retire {
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
    },
    /// Let a retired key version decrypt again.
    Unretire {
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
    },
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

/// Operator commands parse the config but do not insist on reading the daemon's private files.
fn load(path: &Path) -> Result<Config, (i32, String)> {
    Config::load_unchecked(path).map_err(|e| (EXIT_BAD_CONFIG, e))
}

fn scope_of(a: &ScopeArgs) -> Scope {
    match (&a.keystore, &a.key) {
        (Some(p), _) => Scope::Keystore(p.clone()),
        (None, Some(k)) => Scope::Key(k.clone()),
        (None, None) => Scope::Proxy,
    }
}

/// `audit` subcommands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain of an audit trail; reports the first broken link. With a single
    /// file, its rotated predecessors (`FILE.<first>-<last>`) are included in chain order.
    ///
    /// The chain alone detects lines edited, deleted, inserted or reordered without the chain
    /// being recomputed. It does not detect: a missing start of the trail (unless
    /// `--require-start`), lines cut from the end, or a rewrite whose author recomputed the
    /// later links (anyone who can write the file can). Those are detected only against chain
    /// positions kept elsewhere: `--anchor` and `--checkpoints`.
    Verify {
        /// Fail unless the trail begins with its first record (seq 1, genesis link): detects
        /// removal of the start.
        #[arg(long)]
        require_start: bool,
        /// Fail unless the chain passes through record SEQ with hash HASH (as printed by an
        /// earlier `verify` as the last hash, or from a checkpoint). Repeatable.
        #[arg(long, value_name = "SEQ:HASH")]
        anchor: Vec<xks_bridge::audit::Checkpoint>,
        /// A list of checkpoints: `SEQ:HASH` lines, or the daemon's `audit checkpoint` lines
        /// as found in the journal, syslog or stderr (other lines are skipped). Fails on a
        /// mismatch or a checkpoint past the end of the trail; checkpoints before the first
        /// record given are reported and skipped.
        #[arg(long, value_name = "FILE")]
        checkpoints: Option<PathBuf>,
        /// Trail files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// What `audit verify` checks beyond the chain itself.
pub struct VerifyChecks {
    /// `--require-start`.
    pub require_start: bool,
    /// `--anchor`: each must be matched.
    pub anchors: Vec<xks_bridge::audit::Checkpoint>,
    /// `--checkpoints`: each must be matched or lie before the first record given.
    pub checkpoints: Option<PathBuf>,
}

/// Verifies audit trail files; exit 0 when intact (an incomplete last line from a crash is
/// reported but is not tampering) and every requested check passes, 1 otherwise.
pub fn audit_verify(files: &[PathBuf], checks: &VerifyChecks) -> CliResult {
    use xks_bridge::audit::PointOutcome;
    let files = match files {
        [one] => xks_bridge::audit::trail_files(one)
            .map_err(|e| (EXIT_FAILED, format!("{}: {e}", one.display())))?,
        many => many.to_vec(),
    };
    let listed = match &checks.checkpoints {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| xks_bridge::audit::parse_checkpoints(&t))
            .map_err(|e| (EXIT_FAILED, format!("--checkpoints {}: {e}", path.display())))?,
        None => Vec::new(),
    };
    let points: Vec<_> = checks.anchors.iter().chain(&listed).cloned().collect();
    let (report, results) = xks_bridge::audit::verify_points(&files, &points);
    emit(&format!("{report}\n"));
    let mut failures = Vec::new();
    if !report.is_intact() {
        failures.push("the chain is broken".to_owned());
    }
    if checks.require_start && !report.anchored {
        emit("the trail does not begin with its first record (seq 1, genesis link): its start is missing\n");
        failures.push("--require-start".to_owned());
    }
    let (anchors, listed) = results.split_at(checks.anchors.len());
    for r in anchors {
        emit(&format!("anchor: {r}\n"));
        if r.outcome != PointOutcome::Matched {
            failures.push(format!("--anchor {}", r.point));
        }
    }
    let mut matched = 0;
    for r in listed {
        match r.outcome {
            PointOutcome::Matched => matched += 1,
            PointOutcome::BeforeTrail => emit(&format!("{r}\n")),
            _ => {
                emit(&format!("{r}\n"));
                failures.push(format!("checkpoint {}", r.point));
            }
        }
    }
    if checks.checkpoints.is_some() {
        emit(&format!("{matched} of {} checkpoints match\n", listed.len()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err((
            EXIT_FAILED,
            format!("audit trail verification failed: {}", failures.join(", ")),
        ))
    }
}

/// Asks the running daemon to reload its configuration.
pub fn reload(config: &Path) -> CliResult {
    let cfg = load(config)?;
    match reach::send(&cfg, AdminRequest::Reload)? {
        AdminReply::Reloaded { summary } => {
            outln!("reloaded: {summary}");
            Ok(())
        }
        other => Err(render::unexpected(other)),
    }
}

pub fn kill_switch(cmd: KillSwitchCmd) -> CliResult {
    match cmd {
        KillSwitchCmd::Engage(a) => {
            let cfg = load(&a.config)?;
            let req = AdminRequest::Engage {
                scope: scope_of(&a),
                reason: a.reason.clone(),
                token: a.token.clone(),
                fleet: a.fleet,
            };
            change(reach::send(&cfg, req)?)
        }
        KillSwitchCmd::Release(a) => {
            let cfg = load(&a.config)?;
            let req = AdminRequest::Release {
                scope: scope_of(&a),
                reason: a.reason.clone(),
                token: a.token.clone(),
                fleet: a.fleet,
            };
            change(reach::send(&cfg, req)?)
        }
        KillSwitchCmd::Status { json, config } => {
            let cfg = load(&config)?;
            match reach::send(&cfg, AdminRequest::Status)? {
                AdminReply::Status(st) => {
                    if json {
                        outln!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
                    } else {
                        emit(&render::status(&st));
                    }
                    Ok(())
                }
                other => Err(render::unexpected(other)),
            }
        }
    }
}

/// Prints an engage/release report; the exit status says whether it is in force and durable.
fn change(reply: AdminReply) -> CliResult {
    let AdminReply::Changed(r) = reply else {
        return Err(render::unexpected(reply));
    };
    let ChangeReport {
        action,
        scope,
        in_force,
        durable,
        note,
        elapsed_ms,
        fleet,
    } = &r;
    let verb = match action {
        xks_bridge::control::protocol::Action::Engage => "engaged",
        xks_bridge::control::protocol::Action::Release => "released",
    };
    let reach = fleet.as_ref().map(|f| {
        let mark = match action {
            xks_bridge::control::protocol::Action::Engage => "fleet mark written on token(s)",
            xks_bridge::control::protocol::Action::Release => "fleet mark removed from token(s)",
        };
        format!(" [fleet-wide; {mark}: {}]", f.written.join(", "))
    });
    let reach = reach.unwrap_or_default();
    match (in_force, durable) {
        (true, true) => {
            outln!("{verb} {scope}{reach} ({elapsed_ms:.1} ms)");
            if let Some(n) = note {
                eprintln!("note: {n}");
            }
            Ok(())
        }
        (true, false) if fleet.as_ref().is_some_and(|f| f.written.is_empty()) => {
            outln!("{verb} {scope} on THIS instance only ({elapsed_ms:.1} ms)");
            Err((
                EXIT_FAILED,
                note.clone()
                    .unwrap_or_else(|| "no token took the fleet mark".into()),
            ))
        }
        (true, false) => {
            outln!("{verb} {scope}{reach} ({elapsed_ms:.1} ms) - in force, NOT durable");
            Err((
                Exit::NotDurable.code(),
                note.clone()
                    .unwrap_or_else(|| "the state file could not be written".into()),
            ))
        }
        (false, _) => Err((
            EXIT_FAILED,
            format!(
                "not {verb}: {}",
                note.clone().unwrap_or_else(|| "superseded".into())
            ),
        )),
    }
}

fn emit(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(s.as_bytes());
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
        KeysCmd::Retire {
            id,
            version,
            reason,
            target,
        } => (target, KeyOp::Retire { id, version, reason }, false),
        KeysCmd::Unretire {
            id,
            version,
            reason,
            target,
        } => (target, KeyOp::Unretire { id, version, reason }, false),
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
