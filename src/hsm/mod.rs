//! The token, seen from async code. [`Hsm`] queues jobs to a fixed pool of OS threads
//! (`worker`), each owning one logged-in PKCS#11 session of one [`token::Token`]; PKCS#11 is
//! blocking FFI and never runs on a tokio worker. A full queue answers [`HsmError::Busy`], a
//! missed deadline [`HsmError::Timeout`]. Nothing here knows about XKS.
//!
//! Every PKCS#11 call of the crate lives under this module: the daemon's workers and
//! supervisor, key versions and their encryption budget ([`versions`], [`version_table`],
//! `version_counters`, [`budget`], [`rotation`], `rotator`, [`version_admin`];
//! docs/key-versions.md), key lifecycle ([`lifecycle`],
//! [`key_objects`], [`key_listing`], [`marks`]), token setup for the quickstart and the offline CLI ([`setup`]), the benchmark's
//! raw-token ceiling ([`raw`]) and the probes of `xks-bridge doctor` ([`doctor`]). What differs
//! between HSM vendors behind the same PKCS#11 names (tag-failure codes, login role) is one
//! table, [`profile`].

mod beacon;
pub mod budget;
mod cache;
mod classify;
mod connection;
mod crypto;
pub mod doctor;
pub mod fleet;
pub mod fleet_epoch;
mod gcm_probe;
pub mod health;
pub mod key_listing;
pub mod key_objects;
pub mod keyspec;
pub mod keystate;
pub mod lifecycle;
pub mod marks;
pub mod profile;
pub mod raw;
pub mod rotation;
mod rotator;
pub mod setup;
pub mod supervisor;
pub mod token;
pub mod version_admin;
mod version_counters;
pub mod version_table;
pub mod versions;
mod worker;

pub use budget::VersionBudget;
pub use classify::classify;
pub use health::{TokenHealth, TokenStatus};
pub use key_listing::KeyEntry;
pub use key_objects::{UnknownUsage, Usage};
pub use keyspec::KeySpec;
pub use keystate::MarkOutcome;
pub use lifecycle::KeyAdmin;
pub use token::{KeyInfo, Token};
pub use version_admin::VersionEntry;
pub use worker::IDLE_CHECK;

/// A caller's own refusal switch for one job (for example a keystore kill switch owned above
/// this module): the worker refuses the job's next PKCS#11 call once it reads `true`.
pub type Gate = std::sync::Arc<std::sync::atomic::AtomicBool>;

use crate::config::TokenConfig;
use crossbeam_channel::{Sender, TrySendError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// Everything the token layer can report. Built from PKCS#11 return values in exactly one
/// place: [`classify()`].
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// No secret key with that label on the token.
    #[error("no key with this label on the token")]
    KeyNotFound,
    /// More than one secret key carries the label; the proxy never picks one silently.
    #[error("{0} keys share this label")]
    AmbiguousKey(usize),
    /// The key's attributes or type forbid the operation.
    #[error("key usage not permitted: {0}")]
    KeyUsage(String),
    /// GCM authentication failed.
    #[error("GCM authentication failed")]
    InvalidCiphertext,
    /// The job queue is full.
    #[error("HSM job queue full")]
    Busy,
    /// The job did not finish before its deadline.
    #[error("HSM deadline exceeded")]
    Timeout,
    /// The token is not connected (absent, wrong PIN, recovering); the reason says which.
    #[error("token unavailable: {0}")]
    Unavailable(String),
    /// The token refused the PIN (incorrect, wrong length, expired, locked). Never retried in
    /// a loop: HSMs lock PINs.
    #[error("{0}")]
    LoginRefused(String),
    /// The key is disabled (a mark on the token, or refused by this process alone).
    #[error("the key is disabled")]
    KeyDisabled,
    /// The caller's gate closed while the job was queued or between two calls of one job.
    #[error("the caller's gate closed")]
    GateClosed,
    /// The key's attributes are weaker than an external key's (extractable, not sensitive or
    /// not private): it could have left the HSM, so it is never used.
    #[error("key attributes are too weak for an external key: {0}")]
    WeakKey(String),
    /// A key with this id already exists (create, import).
    #[error("a key with id {0:?} already exists")]
    KeyExists(String),
    /// A cached key handle was found before a lifecycle change and may now name another
    /// object; the worker finds the key again by label before any use.
    #[error("cached key handle is stale")]
    StaleHandle,
    /// A lifecycle request the token state or its own arguments rule out.
    #[error("{0}")]
    Refused(String),
    /// The ciphertext names a key version that does not exist (never committed, or destroyed).
    #[error("key version {0} does not exist")]
    UnknownVersion(u32),
    /// The key version is retired: it no longer decrypts (until an operator unretires it).
    #[error("key version {0} is retired")]
    VersionRetired(u32),
    /// The version used up its encryption budget; `rotating` when a new version is being
    /// created (retry shortly), else none can be created.
    #[error("key version {version} used up its encryption budget")]
    VersionExhausted {
        /// The exhausted version.
        version: u32,
        /// A new version is being settled.
        rotating: bool,
    },
    /// The token refused to store an encryption counter (a login that may not create data
    /// objects, a full token): encrypting anyway could pass the budget uncounted.
    #[error("the token refused the encryption counter: {0}")]
    CounterRefused(String),
    /// The proxy kill switch disconnected the token on purpose.
    #[error("token disconnected by the kill switch")]
    Disconnected,
    /// Any other PKCS#11 failure, with the failing function.
    #[error("{function} failed: {rv:?}")]
    Device {
        /// The PKCS#11 return value.
        rv: cryptoki::error::RvError,
        /// The PKCS#11 function that returned it.
        function: cryptoki::context::Function,
    },
    /// A failure outside PKCS#11 return values (library loading, conversions).
    #[error("{0}")]
    Internal(String),
}

/// Output of an encryption: the IV and `ciphertext || tag`.
pub struct Sealed {
    /// IV used (random from the token, or generated by the mechanism): 12 bytes, or 16 when
    /// the HSM returns a 16-byte IV after the tag (Luna).
    pub iv: Vec<u8>,
    /// Ciphertext followed by the 16-byte tag, as PKCS#11 returns it.
    pub ciphertext_and_tag: Vec<u8>,
}

/// One unit of work for a worker thread.
pub(crate) enum Op {
    Encrypt {
        key_id: String,
        version: u32,
        budget: VersionBudget,
        gate: Option<Gate>,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    },
    Decrypt {
        key_id: String,
        version: u32,
        gate: Option<Gate>,
        iv: Vec<u8>,
        aad: Vec<u8>,
        ciphertext_and_tag: Vec<u8>,
    },
    KeyInfo {
        label: String,
    },
    Health,
}

pub(crate) enum Reply {
    Sealed(Sealed),
    Plain(Zeroizing<Vec<u8>>),
    KeyInfo(KeyInfo),
    Health(TokenHealth),
}

pub(crate) struct Job {
    pub op: Op,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<Reply, HsmError>>,
}

/// Async handle to one token's worker pool. Cheap to clone.
#[derive(Clone)]
pub struct Hsm {
    token: Arc<Token>,
    jobs: Sender<Job>,
    timeout: Duration,
    /// Submit-to-reply time of every job (exported as a metric).
    call_latency: prometheus_client::metrics::histogram::Histogram,
    /// Steps of the pool's workers (see [`Hsm::progress`]).
    progress: Arc<AtomicU64>,
}

impl Hsm {
    /// Starts the worker pool for a token. The token should already be connected (or be
    /// retried by its supervisor); workers open their sessions lazily. `call_latency` is the
    /// histogram each job's latency goes to (the metrics layer owns its buckets).
    pub fn start(
        token: Arc<Token>,
        cfg: &TokenConfig,
        call_latency: prometheus_client::metrics::histogram::Histogram,
    ) -> Hsm {
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue_depth);
        let progress = Arc::new(AtomicU64::new(0));
        for i in 0..cfg.workers {
            let name = format!("hsm-{}-{i}", cfg.name);
            worker::spawn(name, token.clone(), rx.clone(), progress.clone());
        }
        Hsm {
            token,
            jobs: tx,
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            call_latency,
            progress,
        }
    }

    /// Jobs waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.jobs.len()
    }

    /// The job latency histogram.
    pub fn call_latency(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.call_latency
    }

    /// The token behind this pool.
    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    async fn submit(&self, op: Op) -> Result<Reply, HsmError> {
        if self.token.killed() {
            return Err(HsmError::Disconnected);
        }
        let deadline = Instant::now() + self.timeout;
        let (reply, rx) = oneshot::channel();
        self.jobs
            .try_send(Job { op, deadline, reply })
            .map_err(|e| match e {
                TrySendError::Full(_) => HsmError::Busy,
                TrySendError::Disconnected(_) => HsmError::Unavailable("worker pool stopped".into()),
            })?;
        let started = Instant::now();
        let outcome = tokio::time::timeout_at(deadline.into(), rx).await;
        self.call_latency.observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HsmError::Internal("worker dropped the job".into())),
            Err(_) => Err(HsmError::Timeout),
        }
    }

    /// AES-256-GCM encryption under version `version` of key `key_id`, with the already-framed
    /// AAD; one encryption is counted against `budget`. `gate`, when given, is re-read by the
    /// worker before each PKCS#11 call of the job.
    pub async fn encrypt(
        &self,
        key_id: &str,
        version: u32,
        budget: VersionBudget,
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
        gate: Option<Gate>,
    ) -> Result<Sealed, HsmError> {
        match self
            .submit(Op::Encrypt {
                key_id: key_id.to_owned(),
                version,
                budget,
                gate,
                aad,
                plaintext,
            })
            .await?
        {
            Reply::Sealed(s) => Ok(s),
            _ => Err(HsmError::Internal("unexpected worker reply".into())),
        }
    }

    /// AES-256-GCM decryption under version `version` of `key_id`; `ciphertext_and_tag` is the
    /// ciphertext followed by the tag. `gate` as for [`Hsm::encrypt`].
    pub async fn decrypt(
        &self,
        key_id: &str,
        version: u32,
        iv: Vec<u8>,
        aad: Vec<u8>,
        ciphertext_and_tag: Vec<u8>,
        gate: Option<Gate>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let op = Op::Decrypt {
            key_id: key_id.to_owned(),
            version,
            gate,
            iv,
            aad,
            ciphertext_and_tag,
        };
        match self.submit(op).await? {
            Reply::Plain(p) => Ok(p),
            _ => Err(HsmError::Internal("unexpected worker reply".into())),
        }
    }

    /// The key's type, size and usage attributes, read from the token.
    pub async fn key_info(&self, label: &str) -> Result<KeyInfo, HsmError> {
        match self
            .submit(Op::KeyInfo {
                label: label.to_owned(),
            })
            .await?
        {
            Reply::KeyInfo(k) => Ok(k),
            _ => Err(HsmError::Internal("unexpected worker reply".into())),
        }
    }

    /// How many times the pool's workers have come back to the queue: after each job and after
    /// each idle check ([`IDLE_CHECK`]). It keeps rising while any worker is alive and
    /// not stuck inside one PKCS#11 call, whether the queue is empty or full; it stands still
    /// when every worker is wedged (or gone). Needs no queue slot, unlike a probe job.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// A health probe that goes through the worker pool, so it proves the workers, their
    /// sessions and the login are alive; never fails, it reports.
    pub async fn health(&self) -> TokenHealth {
        match self.submit(Op::Health).await {
            Ok(Reply::Health(h)) => h,
            Ok(_) => self
                .token
                .health_without_probe(TokenStatus::Unavailable, "unexpected reply"),
            Err(HsmError::Busy) => self
                .token
                .health_without_probe(TokenStatus::Degraded, "queue full"),
            Err(e) => self
                .token
                .health_without_probe(TokenStatus::Unavailable, &e.to_string()),
        }
    }
}
