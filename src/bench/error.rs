//! What stops a benchmark, and what one request is counted as when it fails. The text of each
//! [`BenchError`] is the line `xks-bridge bench` prints (and `tests/bench_cli.rs` and the docs
//! quote), so `Display` keeps it exactly; the exit status is a property of the variant, so a
//! caller cannot pair a message with the wrong status.

use super::plan::SECRET_ENV;
use super::{EXIT_BAD_ARGS, EXIT_FAILED};
use crate::config::ConfigError;
use crate::hsm::raw::RawError;
use crate::hsm::HsmError;
use crate::module_env::ModuleEnvError;
use crate::secret::SecretError;
use std::path::PathBuf;

/// Why a benchmark cannot start or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Both ways of ending the run were given.
    #[error("give --duration or --requests, not both")]
    BothStops,
    /// An option that neither the command line nor quickstart.json supplied.
    #[error("{option} is required (or --quickstart)")]
    Required {
        /// The option, with its dashes.
        option: &'static str,
    },
    /// Per-instance shares need a proxy in front of the instances.
    #[error("--instance-metrics needs a proxy endpoint, not --raw-token")]
    MetricsWithRawToken,
    /// The token run has no metadata or health operation to issue.
    #[error("--raw-token measures encrypt and decrypt only; drop metadata/health from --mix")]
    RawTokenOps,
    /// The token run needs a config naming the token.
    #[error("--raw-token needs --config (or --quickstart)")]
    RawTokenConfig,
    /// The key id could not be a path segment of a request.
    #[error("--key-id: {key_id:?} is not a valid XKS key id")]
    KeyId {
        /// As given.
        key_id: String,
    },
    /// `--endpoint` is not `scheme://host[:port]`.
    #[error("--endpoint: {0}")]
    Endpoint(#[source] EndpointError),
    /// The URI path holds characters the spec does not allow.
    #[error("--uri-path must be a path of A-Za-z0-9/-_ such as /prefix/kms/xks/v1")]
    UriPath,
    /// The region could not appear in a credential scope.
    #[error("--region: {region:?} is not a region name")]
    Region {
        /// As given.
        region: String,
    },
    /// The access key id could not appear in a credential scope.
    #[error("--access-key-id must be letters and digits")]
    AccessKeyId,
    /// https without a CA to trust.
    #[error("--ca-file is required for https (or --quickstart)")]
    CaFileForHttps,
    /// `--secret-file` cannot be read.
    #[error("--secret-file: {0}")]
    SecretFile(#[source] SecretError),
    /// `XKS_BENCH_SECRET` is set but unusable; the error names the variable.
    #[error("{0}")]
    SecretEnv(#[source] SecretError),
    /// No source of the SigV4 secret.
    #[error("no secret: use --secret-file, {} or --quickstart", SECRET_ENV)]
    NoSecret,
    /// quickstart.json cannot be read.
    #[error("--quickstart: cannot read {}: {source}", path.display())]
    QuickstartRead {
        /// The file given.
        path: PathBuf,
        /// What the read said.
        source: std::io::Error,
    },
    /// quickstart.json is not JSON of the expected shape.
    #[error("--quickstart: {}: {source}", path.display())]
    QuickstartParse {
        /// The file given.
        path: PathBuf,
        /// The parser's message, which names the line and column.
        source: serde_json::Error,
    },
    /// A count out of its bounds, or not an integer.
    #[error("{option}: expected an integer from {min} to {max}, got {text:?}")]
    Count {
        /// The option, with its dashes.
        option: &'static str,
        /// Smallest accepted value.
        min: String,
        /// Largest accepted value.
        max: String,
        /// As given.
        text: String,
    },
    /// A duration that is not a usable number of seconds.
    #[error("{option}: expected a number of seconds, got {text:?}")]
    Seconds {
        /// The option, with its dashes.
        option: &'static str,
        /// As given.
        text: String,
    },
    /// A `--mix` entry without `=`.
    #[error("--mix: {part:?} is not name=weight")]
    MixPair {
        /// The entry.
        part: String,
    },
    /// A `--mix` entry naming no XKS operation.
    #[error("--mix: unknown operation {name:?} (encrypt, decrypt, metadata, health)")]
    MixUnknown {
        /// The name given.
        name: String,
    },
    /// An operation weighted twice in `--mix`.
    #[error("--mix: {name} is named twice")]
    MixTwice {
        /// The operation.
        name: String,
    },
    /// A `--mix` weight out of bounds, or not an integer.
    #[error("--mix: weight of {name} must be an integer 0..={max}")]
    MixWeight {
        /// The operation.
        name: String,
        /// Largest accepted weight.
        max: u32,
    },
    /// Every weight is 0: nothing to send.
    #[error("--mix: at least one operation needs a weight above 0")]
    MixEmpty,
    /// An `--instance-metrics` value that does not parse as a URL.
    #[error("--instance-metrics: {text:?} is not a URL")]
    MetricsUrl {
        /// As given.
        text: String,
    },
    /// An `--instance-metrics` URL that is not `http://` (the metrics listener has no TLS).
    #[error("--instance-metrics: {text:?} must start with http://")]
    MetricsScheme {
        /// As given.
        text: String,
    },
    /// An `--instance-metrics` URL without a host.
    #[error("--instance-metrics: {text:?} names no host")]
    MetricsHost {
        /// As given.
        text: String,
    },
    /// An https endpoint reached the connector without a CA (the plan requires one).
    #[error("https needs a CA file")]
    NoCaFile,
    /// The CA file cannot be read or is not PEM.
    #[error("--ca-file: {}: {source}", path.display())]
    CaFile {
        /// The file given.
        path: PathBuf,
        /// What reading it said.
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds nothing rustls can trust.
    #[error("--ca-file: {} holds no usable certificate", path.display())]
    NoCertificate {
        /// The file given.
        path: PathBuf,
    },
    /// rustls refused the client configuration.
    #[error("tls: {0}")]
    Tls(#[source] rustls::Error),
    /// The endpoint's host cannot be checked against a certificate.
    #[error("--endpoint: {host:?} is not a valid TLS server name: {source}")]
    ServerName {
        /// The host of `--endpoint`.
        host: String,
        /// Why rustls refused it.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The config given to `--raw-token` is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config names no token.
    #[error("{}: no token configured", config.display())]
    NoToken {
        /// The config file.
        config: PathBuf,
    },
    /// The module's environment cannot be applied.
    #[error(transparent)]
    ModuleEnv(#[from] ModuleEnvError),
    /// The token's PIN cannot be read.
    #[error("token {token:?} pin: {source}")]
    Pin {
        /// The token's `name` in the config.
        token: String,
        /// Why.
        source: SecretError,
    },
    /// The token cannot be opened, logged in to, or holds no such key.
    #[error("token {token_label:?}, key {key:?}: {source}")]
    TokenOpen {
        /// The token label.
        token_label: String,
        /// The key label (`--key-id`).
        key: String,
        /// What the token said.
        source: HsmError,
    },
    /// A session for a token thread, or for the setup, could not be opened.
    #[error("C_OpenSession: {0}")]
    OpenSession(#[source] RawError),
    /// The token refused to make the ciphertexts decrypt traffic replays.
    #[error("setup encrypt (to make ciphertexts for decrypt) failed: {0}")]
    SealToken(#[source] RawError),
    /// A token thread panicked.
    #[error("a token thread panicked")]
    ThreadPanicked,
    /// Plaintexts and AAD need the system's randomness.
    #[error("no randomness available: {0}")]
    Randomness(#[source] getrandom::Error),
    /// The client's runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A connection could not be made before the run.
    #[error("cannot connect: {kind}: {detail}")]
    Connect {
        /// The failure's name.
        kind: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A connecting task died.
    #[error("cannot connect: {0}")]
    ConnectTask(#[source] tokio::task::JoinError),
    /// No connection to make the decrypt ciphertexts on.
    #[error("no connection")]
    NoConnection,
    /// A setup Encrypt did not get an answer.
    #[error("setup Encrypt (to make ciphertexts for decrypt) failed: {kind}: {detail}")]
    SetupRequest {
        /// The failure's name.
        kind: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// A setup Encrypt was answered with an error or an answer that fails the checks.
    #[error("setup Encrypt (to make ciphertexts for decrypt) failed: {0}")]
    SetupAnswer(#[source] Rejection),
    /// A connection task died mid-run.
    #[error("a connection task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The run finished, but not every request succeeded.
    #[error("{failed} of {total} requests failed")]
    RequestsFailed {
        /// Failed requests, warmup included.
        failed: u64,
        /// All requests, warmup included.
        total: u64,
    },
}

impl BenchError {
    /// The exit status: [`EXIT_BAD_ARGS`] when the command line (or what it names) is wrong,
    /// [`EXIT_FAILED`] when the run could not start or a request failed.
    pub fn exit_code(&self) -> i32 {
        use BenchError::*;
        match self {
            BothStops
            | Required { .. }
            | MetricsWithRawToken
            | RawTokenOps
            | RawTokenConfig
            | KeyId { .. }
            | Endpoint(_)
            | UriPath
            | Region { .. }
            | AccessKeyId
            | CaFileForHttps
            | SecretFile(_)
            | SecretEnv(_)
            | NoSecret
            | QuickstartRead { .. }
            | QuickstartParse { .. }
            | Count { .. }
            | Seconds { .. }
            | MixPair { .. }
            | MixUnknown { .. }
            | MixTwice { .. }
            | MixWeight { .. }
            | MixEmpty
            | MetricsUrl { .. }
            | MetricsScheme { .. }
            | MetricsHost { .. }
            | NoCaFile
            | CaFile { .. }
            | NoCertificate { .. }
            | Tls(_)
            | ServerName { .. }
            | Config(_)
            | NoToken { .. }
            | ModuleEnv(_)
            | Pin { .. } => EXIT_BAD_ARGS,
            TokenOpen { .. }
            | OpenSession(_)
            | SealToken(_)
            | ThreadPanicked
            | Randomness(_)
            | Runtime(_)
            | Connect { .. }
            | ConnectTask(_)
            | NoConnection
            | SetupRequest { .. }
            | SetupAnswer(_)
            | Task(_)
            | RequestsFailed { .. } => EXIT_FAILED,
        }
    }
}

/// Why an `--endpoint` value is not `scheme://host[:port]`; each names the value as given.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL at all.
    #[error("{0:?} is not a URL")]
    NotUrl(String),
    /// Neither `https://` nor `http://`.
    #[error("{0:?} must start with https:// or http://")]
    Scheme(String),
    /// No host.
    #[error("{0:?} names no host")]
    NoHost(String),
    /// User info, a path or a query.
    #[error("{0:?} must be scheme://host[:port] only; the path goes in --uri-path")]
    NotAuthorityOnly(String),
}

/// Why a failed request failed: the `Display` is the name the report counts it under, so it
/// stays one word (or `HTTP <status>`).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The proxy's own `errorName`.
    #[error("{0}")]
    Named(String),
    /// An error status whose body names no error.
    #[error("HTTP {0}")]
    Status(u16),
    /// A field is missing, of the wrong type, or not Base64.
    #[error("MalformedResponse")]
    MalformedResponse,
    /// Decrypt traffic without a ciphertext made during setup.
    #[error("NoCiphertextToDecrypt")]
    NoCiphertextToDecrypt,
    /// A decrypt returned another plaintext than was encrypted.
    #[error("WrongPlaintext")]
    WrongPlaintext,
    /// An IV of neither 12 nor 16 bytes.
    #[error("WrongIvLength")]
    WrongIvLength,
    /// A tag of other than 16 bytes.
    #[error("WrongTagLength")]
    WrongTagLength,
    /// A ciphertext longer or shorter than its plaintext.
    #[error("WrongCiphertextLength")]
    WrongCiphertextLength,
    /// Ciphertext metadata above the spec's 20 bytes.
    #[error("MetadataTooLong")]
    MetadataTooLong,
    /// Metadata and health have no token call to measure.
    #[error("UnsupportedInRawMode")]
    UnsupportedInRawMode,
    /// The token refused the call; the name is the function and its return value.
    #[error(transparent)]
    Token(#[from] RawError),
}

/// Why an instance's `xks_bridge_requests_total` could not be read; the text is the report's
/// note for the instance.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Resolving, connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The host resolved to nothing.
    #[error("no address")]
    NoAddress,
    /// Any answer but 200: its status line.
    #[error("{0}")]
    Status(String),
}
