//! Operator commands: `kill-switch …` and `keys …`. Each talks to the running daemon over its
//! admin socket; when no daemon answers there, it acts directly (state file or token) and says
//! so. `keys wrap` is the key custodian's offline tool (no token, no daemon).

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use xks_bridge::admin::{self, AdminRequest, AdminResponse, ClientError, KeyOp, Scope};
use xks_bridge::config::{Config, TokenConfig, EXIT_BAD_CONFIG};
use xks_bridge::keyadmin::Usage;
use xks_bridge::kill_switch::{now_rfc3339, Engagement, KillSwitch};
use xks_bridge::tokensetup;

type CliResult = Result<(), (i32, String)>;
const EXIT_FAILED: i32 = 1;

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
    /// Show one key (JSON).
    Show {
        /// External key id.
        id: String,
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
    /// Destroy a disabled key. Ciphertext under it becomes unrecoverable.
    Destroy {
        /// External key id.
        id: String,
        /// Repeat the id to confirm.
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
    Verify {
        /// Trail files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Verifies audit trail files; exit 0 when intact (an incomplete last line from a crash is
/// reported but is not tampering), 1 when a link is broken.
pub fn audit_verify(files: &[PathBuf]) -> CliResult {
    let files = match files {
        [one] => xks_bridge::audit::trail_files(one)
            .map_err(|e| (EXIT_FAILED, format!("{}: {e}", one.display())))?,
        many => many.to_vec(),
    };
    let report = xks_bridge::audit::verify(&files);
    emit(&format!("{report}\n"));
    if report.is_intact() {
        Ok(())
    } else {
        Err((EXIT_FAILED, "audit trail verification failed".into()))
    }
}

/// Asks the running daemon to reload its configuration.
pub fn reload(config: &Path) -> CliResult {
    let cfg = load(config)?;
    let data = send_or_offline(&cfg, AdminRequest::Reload)?;
    emit(&format!(
        "reloaded: {}\n",
        data["reloaded"].as_str().unwrap_or("?")
    ));
    Ok(())
}

/// Runs a `kill-switch` command.
pub fn kill_switch(cmd: KillSwitchCmd) -> CliResult {
    match cmd {
        KillSwitchCmd::Engage(a) => {
            let cfg = load(&a.config)?;
            let req = AdminRequest::Engage {
                scope: scope_of(&a),
                reason: a.reason.clone(),
                token: a.token.clone(),
            };
            let data = send_or_offline(&cfg, req)?;
            outln!("engaged {} ({})", scope_of(&a), describe_elapsed(&data));
        }
        KillSwitchCmd::Release(a) => {
            let cfg = load(&a.config)?;
            let req = AdminRequest::Release {
                scope: scope_of(&a),
                reason: a.reason.clone(),
                token: a.token.clone(),
            };
            let data = send_or_offline(&cfg, req)?;
            outln!("released {} ({})", scope_of(&a), describe_elapsed(&data));
        }
        KillSwitchCmd::Status { json, config } => {
            let cfg = load(&config)?;
            let data = send_or_offline(&cfg, AdminRequest::Status)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&data).unwrap_or_default());
            } else {
                print_status(&data);
            }
        }
    }
    Ok(())
}

fn describe_elapsed(data: &Value) -> String {
    match data.get("elapsed_ms").and_then(Value::as_f64) {
        Some(ms) => format!("{ms:.1} ms"),
        None => data
            .get("note")
            .and_then(Value::as_str)
            .unwrap_or("done")
            .to_owned(),
    }
}

fn print_status(d: &Value) {
    use std::fmt::Write;
    let mut o = String::new();
    let engaged = |v: &Value| {
        if v.as_bool().unwrap_or(false) {
            "ENGAGED"
        } else {
            "released"
        }
    };
    if d.get("daemon").and_then(Value::as_str) == Some("not running") {
        let _ = writeln!(o, "daemon: not running (state read from the state file)");
    }
    let _ = writeln!(o, "proxy: {}", engaged(&d["proxy"]["engaged"]));
    if let Some(by) = d["proxy"].get("by").filter(|b| !b.is_null()) {
        let _ = writeln!(
            o,
            "  by uid {} via {} at {}: {}",
            by["by_uid"], by["via"], by["at"], by["reason"]
        );
    }
    for k in d["keystores"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "keystore {}: {}", k["prefix"], engaged(&k["engaged"]));
    }
    for t in d["tokens"].as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "token {}: connected={} open_sessions={} disabled keys={}",
            t["name"], t["connected"], t["open_sessions"], t["disabled_keys"]
        );
    }
    let _ = writeln!(o, "recent events:");
    for e in d["history"].as_array().into_iter().flatten().rev().take(10) {
        let _ = writeln!(
            o,
            "  {} {} {} by uid {} via {}: {}",
            e["at"], e["action"], e["scope"], e["by_uid"], e["via"], e["reason"]
        );
    }
    emit(&o);
}

/// Writes to stdout, ignoring a closed pipe (`| head`) instead of panicking.
fn emit(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(s.as_bytes());
}

/// Sends to the daemon; when none runs, performs the request directly.
fn send_or_offline(cfg: &Config, req: AdminRequest) -> Result<Value, (i32, String)> {
    let Some(admin_cfg) = &cfg.admin else {
        offline_module_env(cfg, &req)?;
        eprintln!("warning: no [admin] socket configured; acting directly. A running daemon will not notice until it restarts (send it SIGUSR1 to engage the proxy switch now).");
        return offline(cfg, req);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (EXIT_FAILED, e.to_string()))?;
    match rt.block_on(admin::request(&admin_cfg.socket, &req)) {
        Ok(AdminResponse { ok: true, data, .. }) => Ok(data),
        Ok(AdminResponse { error, .. }) => Err((EXIT_FAILED, error.unwrap_or_else(|| "failed".into()))),
        Err(ClientError::NoDaemon(p)) => {
            offline_module_env(cfg, &req)?;
            eprintln!(
                "note: no daemon answers on {}; acting directly on the state file / token",
                p.display()
            );
            offline(cfg, req)
        }
        Err(ClientError::Failed(e)) => Err((69, e)),
    }
}

fn offline_by(reason: Option<String>) -> Engagement {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    Engagement {
        reason: reason.unwrap_or_else(|| "no reason given".into()),
        by_uid: uid,
        via: "offline".into(),
        at: now_rfc3339(),
    }
}

fn offline(cfg: &Config, req: AdminRequest) -> Result<Value, (i32, String)> {
    let fail = |e: String| (EXIT_FAILED, e);
    std::fs::create_dir_all(&cfg.state.directory).map_err(|e| fail(format!("state.directory: {e}")))?;
    let ks = KillSwitch::load(&cfg.state.kill_switch_file()).map_err(fail)?;
    match req {
        AdminRequest::Reload => Err(fail("no running daemon to reload".into())),
        AdminRequest::Status => {
            let st = ks.snapshot();
            let keystores: Vec<Value> = cfg
                .keystores
                .iter()
                .map(|k| json!({"prefix": k.uri_prefix, "engaged": st.keystores.contains_key(&k.uri_prefix)}))
                .collect();
            Ok(
                json!({"daemon": "not running", "proxy": {"engaged": st.proxy.is_some(), "by": st.proxy}, "keystores": keystores, "tokens": [], "history": st.history}),
            )
        }
        AdminRequest::Engage {
            scope: Scope::Proxy,
            reason,
            ..
        } => ks
            .engage_proxy(offline_by(reason))
            .map(|_| json!({"note": "state file written"}))
            .map_err(fail),
        AdminRequest::Release {
            scope: Scope::Proxy,
            reason,
            ..
        } => ks
            .release_proxy(offline_by(reason))
            .map(|_| json!({"note": "state file written"}))
            .map_err(fail),
        AdminRequest::Engage {
            scope: Scope::Keystore(p),
            reason,
            ..
        } => {
            known_prefix(cfg, &p)?;
            ks.engage_keystore(&p, offline_by(reason))
                .map(|_| json!({"note": "state file written"}))
                .map_err(fail)
        }
        AdminRequest::Release {
            scope: Scope::Keystore(p),
            reason,
            ..
        } => {
            known_prefix(cfg, &p)?;
            ks.release_keystore(&p, offline_by(reason))
                .map(|_| json!({"note": "state file written"}))
                .map_err(fail)
        }
        AdminRequest::Engage {
            scope: Scope::Key(id),
            reason,
            token,
        } => offline_keys(cfg, token.as_deref(), &KeyOp::Disable { id, reason }, &ks),
        AdminRequest::Release {
            scope: Scope::Key(id),
            reason,
            token,
        } => offline_keys(cfg, token.as_deref(), &KeyOp::Enable { id, reason }, &ks),
        AdminRequest::Keys { token, op } => offline_keys(cfg, token.as_deref(), &op, &ks),
    }
}

fn known_prefix(cfg: &Config, p: &str) -> Result<(), (i32, String)> {
    if cfg.keystores.iter().any(|k| k.uri_prefix == p) {
        Ok(())
    } else {
        Err((EXIT_FAILED, format!("no keystore has the URI prefix {p:?}")))
    }
}

/// The token an offline key operation works on: the one named, or the only one configured.
fn offline_token<'a>(cfg: &'a Config, token: Option<&str>) -> Result<&'a TokenConfig, (i32, String)> {
    match (token, cfg.tokens.as_slice()) {
        (Some(n), ts) => ts
            .iter()
            .find(|t| t.name == n)
            .ok_or_else(|| (EXIT_FAILED, format!("no token named {n:?}"))),
        (None, [t]) => Ok(t),
        (None, _) => Err((
            EXIT_FAILED,
            "several tokens are configured; name one with --token".into(),
        )),
    }
}

/// Puts the module environment of the token an offline request will load in place. It may
/// restart the process, so it runs before the note that the request is performed directly.
fn offline_module_env(cfg: &Config, req: &AdminRequest) -> Result<(), (i32, String)> {
    let token = match req {
        AdminRequest::Keys { token, .. }
        | AdminRequest::Engage {
            scope: Scope::Key(_),
            token,
            ..
        }
        | AdminRequest::Release {
            scope: Scope::Key(_),
            token,
            ..
        } => token.as_deref(),
        _ => return Ok(()),
    };
    let t = offline_token(cfg, token)?;
    xks_bridge::module_env::ensure(&t.module_env).map_err(|e| (EXIT_BAD_CONFIG, e))
}

fn offline_keys(
    cfg: &Config,
    token: Option<&str>,
    op: &KeyOp,
    ks: &KillSwitch,
) -> Result<Value, (i32, String)> {
    let fail = |e: String| (EXIT_FAILED, e);
    let t = offline_token(cfg, token)?;
    // A no-op after send_or_offline's call; kept so the module never loads without it.
    xks_bridge::module_env::ensure(&t.module_env).map_err(|e| (EXIT_BAD_CONFIG, e))?;
    let pin = t.pin.load().map_err(|e| (EXIT_BAD_CONFIG, format!("pin: {e}")))?;
    let p = tokensetup::load(&t.module).map_err(fail)?;
    let out = {
        let s = tokensetup::open_user_session(&p, &t.token_label, secrecy::ExposeSecret::expose_secret(&pin))
            .map_err(fail)?;
        admin::run_key_op(&s, op).map_err(fail)?
    };
    let _ = p.finalize();
    if !matches!(op, KeyOp::List | KeyOp::Show { .. }) {
        let action = match op {
            KeyOp::Disable { .. } => "engage",
            KeyOp::Enable { .. } => "release",
            other => other.name(),
        };
        ks.record_key_event(action, op.id().unwrap_or("-"), offline_by(op.reason()))
            .map_err(fail)?;
    }
    Ok(out)
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
            let r = run_keys(&target, op, false);
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
        KeysCmd::Show { id, target } => (target, KeyOp::Show { id }, true),
        KeysCmd::Disable { id, reason, target } => (target, KeyOp::Disable { id, reason }, false),
        KeysCmd::Enable { id, reason, target } => (target, KeyOp::Enable { id, reason }, false),
        KeysCmd::Destroy { id, confirm, target } => {
            if confirm != id {
                return Err((EXIT_BAD_CONFIG, "--confirm must repeat the key id exactly".into()));
            }
            (target, KeyOp::Destroy { id }, false)
        }
    };
    run_keys(&target, op, json_out)
}

fn run_keys(target: &KeyTarget, op: KeyOp, json_out: bool) -> CliResult {
    let cfg = load(&target.config)?;
    let is_list = matches!(op, KeyOp::List);
    let name = op.name();
    let data = send_or_offline(
        &cfg,
        AdminRequest::Keys {
            token: target.token.clone(),
            op,
        },
    )?;
    if json_out {
        outln!("{}", serde_json::to_string_pretty(&data).unwrap_or_default());
    } else if is_list {
        outln!(
            "{:<40} {:<8} {:<18} {:<9} {:<11} EXTRACTABLE",
            "ID",
            "SPEC",
            "USAGES",
            "STATE",
            "CREATED"
        );
        for k in data.as_array().into_iter().flatten() {
            let usages: Vec<&str> = k["usages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            outln!(
                "{:<40} {:<8} {:<18} {:<9} {:<11} {}",
                k["id"].as_str().unwrap_or("?"),
                k["key_spec"].as_str().unwrap_or("?"),
                usages.join(","),
                k["state"].as_str().unwrap_or("?"),
                k["created"].as_str().unwrap_or("-"),
                k["extractable"]
            );
        }
    } else {
        outln!("{name}: {data}");
    }
    Ok(())
}
