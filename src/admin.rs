//! The local admin API: a Unix socket (mode 0600, or 0660 with a configured group) that
//! carries one JSON request line and one JSON response line per connection. Every connection's
//! peer credentials (`SO_PEERCRED`) are checked: root, the daemon's own user, or (if configured)
//! the admin group. Never reachable over the network. The wire types and the key operations
//! shared with the CLI's direct (no daemon) mode live here too.

use crate::control::Control;
use crate::hsm::{KeyAdmin, Usage};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Largest request line accepted (a wrapped key import is the biggest legitimate request).
const MAX_REQUEST: u64 = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Kill switch scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", content = "target", rename_all = "kebab-case")]
pub enum Scope {
    /// The whole proxy.
    Proxy,
    /// One logical keystore, by URI prefix.
    Keystore(String),
    /// One key, by external key id.
    Key(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Proxy => write!(f, "proxy"),
            Scope::Keystore(p) => write!(f, "keystore:{p}"),
            Scope::Key(k) => write!(f, "key:{k}"),
        }
    }
}

/// Key lifecycle operations (fields: `id` is the external key id, `usage` the key usages,
/// `kek` the KEK's id, `material`/`wrapped` Base64 bytes, `reason` free text).
#[allow(missing_docs)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum KeyOp {
    /// Generate an AES-256 key inside the token.
    Create { id: String, usage: Usage },
    /// Store an unwrap-only KEK from material the custodian holds (Base64).
    CreateKek { id: String, material: String },
    /// Unwrap RFC 5649-wrapped material (Base64) under a KEK.
    Import {
        id: String,
        kek: String,
        wrapped: String,
        usage: Usage,
    },
    /// All keys.
    List,
    /// One key.
    Show { id: String },
    /// Key-scope kill switch on.
    Disable { id: String, reason: Option<String> },
    /// Key-scope kill switch off.
    Enable { id: String, reason: Option<String> },
    /// Destroy a disabled key.
    Destroy { id: String },
}

impl KeyOp {
    /// Short name for logs and history.
    pub fn name(&self) -> &'static str {
        match self {
            KeyOp::Create { .. } => "create",
            KeyOp::CreateKek { .. } => "create-kek",
            KeyOp::Import { .. } => "import",
            KeyOp::List => "list",
            KeyOp::Show { .. } => "show",
            KeyOp::Disable { .. } => "disable",
            KeyOp::Enable { .. } => "enable",
            KeyOp::Destroy { .. } => "destroy",
        }
    }

    /// The key the operation is about.
    pub fn id(&self) -> Option<&str> {
        match self {
            KeyOp::Create { id, .. }
            | KeyOp::CreateKek { id, .. }
            | KeyOp::Import { id, .. }
            | KeyOp::Show { id }
            | KeyOp::Disable { id, .. }
            | KeyOp::Enable { id, .. }
            | KeyOp::Destroy { id } => Some(id),
            KeyOp::List => None,
        }
    }

    /// The operator's reason, where the operation carries one.
    pub fn reason(&self) -> Option<String> {
        match self {
            KeyOp::Disable { reason, .. } | KeyOp::Enable { reason, .. } => reason.clone(),
            _ => None,
        }
    }
}

/// One admin request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Engage the kill switch.
    Engage {
        /// Where.
        #[serde(flatten)]
        scope: Scope,
        /// Why.
        reason: Option<String>,
        /// Token of a key scope when several are configured.
        token: Option<String>,
    },
    /// Release the kill switch.
    Release {
        /// Where.
        #[serde(flatten)]
        scope: Scope,
        /// Why.
        reason: Option<String>,
        /// Token of a key scope when several are configured.
        token: Option<String>,
    },
    /// Report the kill switch state.
    Status,
    /// Re-read the config file (credentials, policy, TLS) without dropping connections.
    Reload,
    /// Key lifecycle.
    Keys {
        /// Which token (optional with a single token).
        token: Option<String>,
        /// What to do.
        op: KeyOp,
    },
}

/// One admin response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminResponse {
    /// Did it work?
    pub ok: bool,
    /// Error text when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Result data.
    #[serde(default)]
    pub data: Value,
}

impl AdminResponse {
    /// Success with data.
    pub fn ok(data: Value) -> Self {
        AdminResponse {
            ok: true,
            error: None,
            data,
        }
    }
    /// Failure with a message.
    pub fn err(e: impl Into<String>) -> Self {
        AdminResponse {
            ok: false,
            error: Some(e.into()),
            data: Value::Null,
        }
    }
}

/// Runs a key operation through the token's key administration (in the daemon, disable and
/// enable go through the key-scope kill switch instead; here they are the offline form).
pub fn run_key_op(k: &KeyAdmin<'_>, op: &KeyOp) -> Result<Value, String> {
    let b64 = |what: &str, v: &str| {
        STANDARD
            .decode(v)
            .map_err(|_| format!("{what} is not valid Base64"))
    };
    match op {
        KeyOp::Create { id, usage } => k.create(id, *usage).map(|_| json!({ "created": id })),
        KeyOp::CreateKek { id, material } => {
            let m = zeroize::Zeroizing::new(b64("KEK material", material)?);
            let arr: &[u8; 32] = m
                .as_slice()
                .try_into()
                .map_err(|_| "KEK material must be 32 bytes".to_owned())?;
            k.create_kek(id, arr).map(|_| json!({ "created": id }))
        }
        KeyOp::Import {
            id,
            kek,
            wrapped,
            usage,
        } => k
            .import(id, kek, &b64("wrapped key", wrapped)?, *usage)
            .map(|_| json!({ "imported": id })),
        KeyOp::List => k.list().map(|l| json!(l)),
        KeyOp::Show { id } => k.show(id).map(|e| json!(e)),
        KeyOp::Destroy { id } => k.destroy(id).map(|_| json!({ "destroyed": id })),
        KeyOp::Disable { id, reason } => {
            let record =
                json!({ "reason": reason, "via": "offline", "at": crate::kill_switch::now_rfc3339() });
            k.disable(id, &record.to_string())
                .map(|_| json!({ "disabled": id }))
        }
        KeyOp::Enable { id, .. } => k.enable(id).map(|_| json!({ "enabled": id })),
    }
    .map_err(|e| key_op_error(op, e))
}

/// The operator's wording of a key operation's failure.
fn key_op_error(op: &KeyOp, e: crate::hsm::HsmError) -> String {
    use crate::hsm::HsmError;
    match (e, op.id()) {
        (HsmError::KeyNotFound, Some(id)) => format!("no key with id {id:?} on the token"),
        (HsmError::AmbiguousKey(n), Some(id)) => {
            format!("{n} keys carry the id {id:?}; resolve the duplicate on the token")
        }
        (e, _) => e.to_string(),
    }
}

/// Resolves a group name (or a numeric gid) through /etc/group.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("no group named {name:?}"))
}

/// Is `gid` among the supplementary groups of process `pid`? SO_PEERCRED carries only the
/// primary gid; /proc/<pid>/status lists the others.
fn has_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

/// The daemon's effective uid (the owner of /proc/self), without unsafe FFI.
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)
}

/// Binds the admin socket (replacing a stale socket file) and serves it until the process
/// ends.
pub fn serve(path: &Path, group: Option<&str>, control: Arc<Control>) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() || m.file_type().is_dir() => {
            return Err(format!(
                "admin.socket: {} exists and is not a socket",
                path.display()
            ))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| format!("admin.socket: {e}"))?,
        Err(_) => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("admin.socket: cannot bind {}: {e}", path.display()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("admin.socket: {e}"))?;
    let gid = group.map(group_id).transpose()?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("admin.socket: {e}"))?;
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(|e| format!("admin.socket: chown: {e}"))?;
    }
    let uid = own_uid();
    tracing::info!(socket = %path.display(), mode = format!("{mode:o}"), "admin socket ready");
    // The admin API runs on its own thread and runtime: under full request load an engage
    // must not queue behind request tasks for a turn on the shared runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("admin.socket: cannot start its runtime: {e}"))?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "admin socket unusable"),
                };
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            let c = control.clone();
                            tokio::spawn(async move { handle(stream, c, uid, gid).await });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .map_err(|e| format!("admin.socket: cannot start its thread: {e}"))?;
    Ok(())
}

async fn handle(stream: UnixStream, control: Arc<Control>, own_uid: u32, gid: Option<u32>) {
    let Ok(cred) = stream.peer_cred() else { return };
    let in_group = gid.is_some_and(|g| g == cred.gid() || cred.pid().is_some_and(|pid| has_group(pid, g)));
    let allowed = cred.uid() == 0 || cred.uid() == own_uid || in_group;
    let (rd, mut wr) = stream.into_split();
    // The request is read even when it will be refused, so the client gets the refusal
    // instead of a reset connection.
    let mut line = String::new();
    let read = tokio::time::timeout(
        IO_TIMEOUT,
        BufReader::new(rd.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await;
    let resp = if !allowed {
        tracing::warn!(
            peer_uid = cred.uid(),
            peer_gid = cred.gid(),
            "admin request refused: peer not authorised"
        );
        AdminResponse::err("permission denied: not the daemon's user, root or the admin group")
    } else {
        match read {
            Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
                Ok(req) => control.execute(req, Some(cred.uid()), "admin-socket").await,
                Err(e) => AdminResponse::err(format!("malformed admin request: {e}")),
            },
            _ => AdminResponse::err("no request received"),
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(IO_TIMEOUT, wr.write_all(&out)).await;
}

/// Why the CLI could not reach a daemon.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket: no daemon runs (safe to act directly).
    NoDaemon(PathBuf),
    /// A daemon is there but the exchange failed.
    Failed(String),
}

/// Sends one request to the daemon's admin socket.
pub async fn request(path: &Path, req: &AdminRequest) -> Result<AdminResponse, ClientError> {
    use std::io::ErrorKind;
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Err(ClientError::NoDaemon(path.to_owned()))
        }
        Err(e) => {
            return Err(ClientError::Failed(format!(
                "cannot connect to {}: {e}",
                path.display()
            )))
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push(b'\n');
    let exchange = async {
        wr.write_all(&line).await?;
        let mut resp = String::new();
        BufReader::new(rd).read_line(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| ClientError::Failed("the daemon did not answer within 30 s".into()))?
        .map_err(|e| ClientError::Failed(format!("admin socket: {e}")))?;
    serde_json::from_str(&resp).map_err(|e| ClientError::Failed(format!("unreadable daemon answer: {e}")))
}
