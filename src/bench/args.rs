//! The `bench` command line. Values that need parsing are taken as text and checked by
//! [`super::plan`], so that every bad value exits 64 with a message naming the option (clap's
//! own parse errors would exit 2). Secrets never come from argv.

use clap::Args;
use std::path::PathBuf;

/// `xks-bridge bench` options. Boxed: the CLI's subcommand enum stays small whatever is added
/// here (clippy::large_enum_variant).
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Every option.
    #[command(flatten)]
    pub options: Box<BenchOptions>,
}

/// Load generator for any XKS proxy, or (with `--raw-token`) for the PKCS#11 token itself.
#[derive(Debug, Clone, Args)]
pub struct BenchOptions {
    /// quickstart.json of a running quickstart: endpoint, credentials, CA, key and config.
    #[arg(long, value_name = "FILE")]
    pub quickstart: Option<PathBuf>,
    /// Proxy endpoint, `https://HOST[:PORT]` (or `http://` for a plain-HTTP proxy).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// XKS URI path, e.g. `/prefix/kms/xks/v1`.
    #[arg(long, value_name = "PATH")]
    pub uri_path: Option<String>,
    /// SigV4 access key id.
    #[arg(long, value_name = "ID")]
    pub access_key_id: Option<String>,
    /// File holding the SigV4 secret access key (else env XKS_BENCH_SECRET, else quickstart.json).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// SigV4 region [default: quickstart.json's, else us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// PEM CA certificate(s) to trust [default: quickstart.json's caCertificate].
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// External key id (token label) [default: quickstart.json's keys.encryptDecrypt].
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
    /// Operation weights, e.g. `encrypt=3,decrypt=1,metadata=0,health=0`.
    #[arg(long, default_value = "encrypt=1,decrypt=1")]
    pub mix: String,
    /// Plaintext bytes per Encrypt and Decrypt.
    #[arg(long, value_name = "N", default_value = "32")]
    pub payload_bytes: String,
    /// Additional authenticated data bytes per Encrypt and Decrypt.
    #[arg(long, value_name = "N", default_value = "0")]
    pub aad_bytes: String,
    /// Concurrent keep-alive connections, one request in flight on each.
    #[arg(long, value_name = "N", default_value = "8")]
    pub connections: String,
    /// Measure for this many seconds [default: 10 unless --requests is given].
    #[arg(long, value_name = "SECS")]
    pub duration: Option<String>,
    /// Measure exactly this many requests (operations with --raw-token).
    #[arg(long, value_name = "N")]
    pub requests: Option<String>,
    /// Seconds of unmeasured traffic before measuring.
    #[arg(long, value_name = "SECS", default_value = "1")]
    pub warmup: String,
    /// Per-request timeout in seconds; a request that takes longer counts as `Timeout`.
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub timeout: String,
    /// Async runtime threads of the load generator [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub client_threads: Option<String>,
    /// Disable TLS session resumption (every reconnect is a full handshake).
    #[arg(long)]
    pub no_resumption: bool,
    /// An instance's metrics endpoint (`http://HOST:PORT/metrics`), repeatable: when the
    /// endpoint is a load balancer, report each instance's share of the requests.
    #[arg(long, value_name = "URL")]
    pub instance_metrics: Vec<String>,
    /// Print one JSON object instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Measure the PKCS#11 token directly (AES-256-GCM C_Encrypt / C_Decrypt), no proxy.
    #[arg(long)]
    pub raw_token: bool,
    /// xks-bridge config naming the token for --raw-token [default: quickstart.json's config].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// OS threads for --raw-token, each with its own session.
    #[arg(long, value_name = "N", default_value = "1")]
    pub threads: String,
}
