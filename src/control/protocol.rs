//! The admin protocol: typed requests and replies shared by the daemon's admin socket, the
//! SIGUSR1 handler and the CLI (online and offline), so both sides agree on every field and
//! nothing reads JSON by string keys. One JSON line each way per connection.

use super::state_file::{Engagement, Event};
pub use crate::hsm::Usage;
use serde::{Deserialize, Serialize};

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

/// Key lifecycle operations (`id` is the external key id).
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
    /// Destroy a disabled key.
    Destroy { id: String },
    /// Create version n+1 inside the token and make it current on every instance.
    Rotate { id: String, reason: Option<String> },
    /// A version no longer decrypts (not the current one).
    Retire {
        id: String,
        version: u32,
        reason: Option<String>,
    },
    /// A retired version decrypts again.
    Unretire {
        id: String,
        version: u32,
        reason: Option<String>,
    },
    /// Destroy a retired version's key object.
    DestroyVersion { id: String, version: u32 },
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
            KeyOp::Destroy { .. } => "destroy",
            KeyOp::Rotate { .. } => "rotate",
            KeyOp::Retire { .. } => "retire-version",
            KeyOp::Unretire { .. } => "unretire-version",
            KeyOp::DestroyVersion { .. } => "destroy-version",
        }
    }

    /// The key the operation is about.
    pub fn id(&self) -> Option<&str> {
        match self {
            KeyOp::Create { id, .. }
            | KeyOp::CreateKek { id, .. }
            | KeyOp::Import { id, .. }
            | KeyOp::Show { id }
            | KeyOp::Destroy { id }
            | KeyOp::Rotate { id, .. }
            | KeyOp::Retire { id, .. }
            | KeyOp::Unretire { id, .. }
            | KeyOp::DestroyVersion { id, .. } => Some(id),
            KeyOp::List => None,
        }
    }

    /// The operator's reason, for the audit trail.
    pub fn reason(&self) -> Option<String> {
        match self {
            KeyOp::Rotate { reason, .. } | KeyOp::Retire { reason, .. } | KeyOp::Unretire { reason, .. } => {
                reason.clone()
            }
            _ => None,
        }
    }

    /// The audit scope: `key:<id>`, or `key:<id>/v<n>` for a version verb.
    pub fn scope(&self) -> String {
        match self {
            KeyOp::Retire { id, version, .. }
            | KeyOp::Unretire { id, version, .. }
            | KeyOp::DestroyVersion { id, version } => format!("key:{id}/v{version}"),
            other => format!("key:{}", other.id().unwrap_or("-")),
        }
    }

    /// Does it change the token?
    pub fn changes_token(&self) -> bool {
        !matches!(self, KeyOp::List | KeyOp::Show { .. })
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
        /// Every instance sharing the token (a token-resident mark), not only this one.
        #[serde(default)]
        fleet: bool,
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
        /// Every instance sharing the token (a token-resident mark), not only this one.
        #[serde(default)]
        fleet: bool,
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
    /// Take the instance out of its load balancer's rotation, then stop (as SIGTERM does).
    Drain {
        /// Why (logged with the caller's uid).
        reason: Option<String>,
    },
}

/// What a `drain` request started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// A drain (from a signal or an earlier command) was already under way; nothing changed.
    pub already_draining: bool,
    /// Time since the drain began, when it was already under way.
    pub elapsed_ms: u64,
    /// How long `/ping` answers 503 before the listeners close (`server.drain_delay_ms`).
    pub drain_delay_ms: u64,
    /// How long open connections then get before the process exits anyway.
    pub drain_grace_ms: u64,
    /// Connections open when the request arrived.
    pub open_connections: usize,
    /// The daemon's process id, to follow its exit.
    pub pid: u32,
}

/// Engage or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Cut AWS off.
    Engage,
    /// Let AWS back in.
    Release,
}

impl Action {
    /// `engage` or `release`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Engage => "engage",
            Action::Release => "release",
        }
    }
}

/// What an engage or release did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeReport {
    /// Engage or release.
    pub action: Action,
    /// Where.
    pub scope: Scope,
    /// Is the requested state in force now?
    pub in_force: bool,
    /// Is it written where a restart finds it (state file or token)?
    pub durable: bool,
    /// What the operator must know (not durable, local-only key refusal, superseded…).
    pub note: Option<String>,
    /// Time from receipt to reply.
    pub elapsed_ms: f64,
    /// For a fleet-wide change: which tokens carry (engage) or no longer carry (release) the
    /// fleet mark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetReach>,
}

impl ChangeReport {
    /// A release's report, timed from `started` (`fleet`: where a fleet-wide release removed
    /// its mark). The local and the fleet-wide release both build theirs here, so the two
    /// cannot drift apart in what they tell the operator.
    pub fn release(
        scope: &Scope,
        in_force: bool,
        note: Option<String>,
        started: std::time::Instant,
        fleet: Option<FleetReach>,
    ) -> ChangeReport {
        ChangeReport {
            action: Action::Release,
            scope: scope.clone(),
            in_force,
            durable: true,
            note,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            fleet,
        }
    }
}

/// Where a fleet-wide change was written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FleetReach {
    /// Tokens whose fleet mark was written (engage) or removed (release).
    pub written: Vec<String>,
    /// Tokens that could not be written, with the token's answer.
    pub failed: Vec<TokenFailure>,
}

/// A token that refused or could not take a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFailure {
    /// Config name.
    pub token: String,
    /// What went wrong.
    pub error: String,
}

/// One key as `keys list` / `keys show` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// External key id (`CKA_LABEL`).
    pub id: String,
    /// `AES_256`, ...
    pub key_spec: String,
    /// `ENCRYPT`, `DECRYPT`, `UNWRAP` ...
    pub usages: Vec<String>,
    /// `ENABLED` or `DISABLED`.
    pub state: String,
    /// Creation time, for keys created or imported by this tool.
    pub created: Option<String>,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// The version Encrypt uses now.
    pub current_version: u32,
    /// Every version, oldest first.
    pub versions: Vec<KeyVersionInfo>,
}

/// One key version as `keys show` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionInfo {
    /// Version number (1 is the original key object).
    pub number: u32,
    /// Creation time, when known.
    pub created: Option<String>,
    /// `current`, `decrypt-only`, `retired` or `destroyed`.
    pub state: String,
    /// Encryptions counted under it (reserved, summed over instances: an upper bound).
    pub encryptions: Option<u64>,
}

/// One scope's state in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopeState {
    /// Are requests refused?
    pub engaged: bool,
    /// Does the state file hold this state?
    pub durable: bool,
    /// Who engaged on this instance, when, why.
    pub by: Option<Engagement>,
    /// Who engaged fleet-wide (every instance sharing the token), when, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_by: Option<Engagement>,
}

/// One keystore in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeystoreState {
    /// URI prefix.
    pub prefix: String,
    /// Its switch.
    #[serde(flatten)]
    pub state: ScopeState,
}

/// One token in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenState {
    /// Config name.
    pub name: String,
    /// Logged in and serving.
    pub connected: bool,
    /// PKCS#11 sessions open.
    pub open_sessions: usize,
    /// Every key this instance refuses (token marks and local refusals).
    pub disabled_keys: Vec<String>,
    /// Keys refused by this instance only, because the token refused their mark.
    pub local_denies: Vec<String>,
}

/// Whether a daemon answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DaemonState {
    /// The running daemon answered.
    Running,
    /// No daemon runs; read from the state file.
    NotRunning,
}

/// The whole kill-switch picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Who answered.
    pub daemon: DaemonState,
    /// Whole-proxy switch.
    pub proxy: ScopeState,
    /// Keystores of the running configuration.
    pub keystores: Vec<KeystoreState>,
    /// Tokens (empty when no daemon runs).
    pub tokens: Vec<TokenState>,
    /// The last state-file write error while some state is not durable.
    pub state_write_error: Option<String>,
    /// Recent events, oldest first.
    pub history: Vec<Event>,
    /// The drain under way, if any (absent from an offline status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<DrainStatus>,
}

/// Where a drain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainStage {
    /// `/ping` answers 503; requests are still served.
    Announcing,
    /// Listeners closed; in-flight requests are being answered.
    Closing,
    /// Every connection is closed; the process is exiting.
    Done,
}

/// A drain under way, in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainStatus {
    /// Its phase.
    pub stage: DrainStage,
    /// Time since it began.
    pub elapsed_ms: u64,
    /// `server.drain_delay_ms`: when the listeners close.
    pub drain_delay_ms: u64,
}

/// One admin reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum AdminReply {
    /// An engage or release ran.
    Changed(ChangeReport),
    /// The status.
    Status(Status),
    /// The config was reloaded.
    Reloaded {
        /// What changed.
        summary: String,
    },
    /// `keys list`.
    KeyList {
        /// The keys.
        keys: Vec<KeyInfo>,
    },
    /// `keys show`.
    KeyShown {
        /// The key.
        key: KeyInfo,
    },
    /// A lifecycle change was made.
    KeyChanged {
        /// `create`, `import`, `destroy`...
        action: String,
        /// The key.
        id: String,
    },
    /// A drain is under way.
    Draining(DrainReport),
    /// `keys rotate`: the new current version.
    KeyRotated {
        /// The key.
        id: String,
        /// Its new current version.
        version: u32,
    },
    /// `keys destroy --version`.
    VersionDestroyed {
        /// The key.
        id: String,
        /// The destroyed version.
        version: u32,
        /// Encryptions it protected (counted upper bound).
        encryptions: u64,
    },
    /// The request failed; nothing was changed unless the message says otherwise.
    Failed {
        /// For the operator.
        error: String,
    },
}

impl AdminReply {
    /// A failure reply.
    pub fn failed(e: impl std::fmt::Display) -> AdminReply {
        AdminReply::Failed { error: e.to_string() }
    }
}
