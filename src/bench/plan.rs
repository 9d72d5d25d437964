//! Turns [`BenchArgs`] (and an optional quickstart.json) into a checked [`Plan`]. Every
//! problem is a [`BenchError`] naming the option; the caller exits 64 with it. Explicit options win
//! over quickstart.json; the secret comes from `--secret-file`, then `XKS_BENCH_SECRET`, then
//! quickstart.json.

use super::args::{BenchArgs, BenchOptions};
use super::endpoint::Endpoint;
use super::error::BenchError;
use super::mix::{Mix, Op};
use super::schedule::Stop;
use crate::secret::SecretSource;
use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// Environment variable that may hold the SigV4 secret.
pub const SECRET_ENV: &str = "XKS_BENCH_SECRET";
/// Region used when neither the options nor quickstart.json name one.
const DEFAULT_REGION: &str = "us-east-1";
/// Bounds that keep a typo from exhausting memory or descriptors.
const MAX_CONNECTIONS: usize = 1024;
const MAX_THREADS: usize = 256;
const MAX_PAYLOAD: usize = 1 << 20;

/// A checked benchmark.
pub struct Plan {
    /// Operation weights.
    pub mix: Mix,
    /// Plaintext bytes per Encrypt/Decrypt.
    pub payload_bytes: usize,
    /// AAD bytes per Encrypt/Decrypt.
    pub aad_bytes: usize,
    /// External key id (token label).
    pub key_id: String,
    /// How the run ends.
    pub stop: Stop,
    /// Unmeasured lead-in.
    pub warmup: Duration,
    /// JSON instead of text.
    pub json: bool,
    /// Proxy or token.
    pub target: Target,
    /// Metrics endpoints of the instances behind the endpoint (per-instance distribution).
    pub instance_metrics: Vec<super::instances::MetricsUrl>,
}

/// What is measured.
pub enum Target {
    /// An XKS proxy over HTTP(S).
    Proxy(ProxyTarget),
    /// The PKCS#11 token named by an xks-bridge config.
    Token(TokenTarget),
}

/// Everything needed to reach and sign for a proxy.
pub struct ProxyTarget {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// `<prefix>/kms/xks/v1`, no trailing slash.
    pub uri_path: String,
    /// SigV4 access key id.
    pub access_key_id: String,
    /// SigV4 secret.
    pub secret: SecretString,
    /// SigV4 region.
    pub region: String,
    /// CA to trust (https only).
    pub ca_file: Option<PathBuf>,
    /// Concurrent connections.
    pub connections: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Runtime threads; `None` = one per CPU.
    pub client_threads: Option<usize>,
    /// Offer TLS session resumption on reconnects.
    pub resumption: bool,
}

/// The token to measure directly.
pub struct TokenTarget {
    /// xks-bridge config naming the token.
    pub config: PathBuf,
    /// Worker threads, one session each.
    pub threads: usize,
}

/// The fields of quickstart.json the bench uses.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct QuickstartFile {
    endpoint: Option<String>,
    uri_path: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    region: Option<String>,
    ca_certificate: Option<PathBuf>,
    config: Option<PathBuf>,
    #[serde(default)]
    keys: QuickstartKeys,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct QuickstartKeys {
    encrypt_decrypt: Option<String>,
}

/// Checks the options; the error names the bad option.
pub fn resolve(args: BenchArgs) -> Result<Plan, BenchError> {
    let args = *args.options;
    let mut qs = match &args.quickstart {
        Some(p) => read_quickstart(p)?,
        None => QuickstartFile::default(),
    };
    let mix = Mix::parse(&args.mix)?;
    let stop = match (&args.duration, &args.requests) {
        (Some(_), Some(_)) => return Err(BenchError::BothStops),
        (None, Some(n)) => Stop::Requests(count("--requests", n, 1, u64::MAX)?),
        (Some(d), None) => Stop::After(seconds("--duration", d, false)?),
        (None, None) => Stop::After(Duration::from_secs(10)),
    };
    let key_id = args
        .key_id
        .clone()
        .or(qs.keys.encrypt_decrypt.take())
        .ok_or(BenchError::Required { option: "--key-id" })?;
    if args.raw_token && !args.instance_metrics.is_empty() {
        return Err(BenchError::MetricsWithRawToken);
    }
    let instance_metrics = args
        .instance_metrics
        .iter()
        .map(|u| super::instances::MetricsUrl::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let target = if args.raw_token {
        token_target(&args, &mut qs, &mix)?
    } else {
        // The key id is a path segment of every request.
        if !crate::xks::valid_key_id(&key_id) {
            return Err(BenchError::KeyId { key_id });
        }
        Target::Proxy(proxy_target(&args, &mut qs)?)
    };
    Ok(Plan {
        mix,
        payload_bytes: count("--payload-bytes", &args.payload_bytes, 0, MAX_PAYLOAD)?,
        aad_bytes: count("--aad-bytes", &args.aad_bytes, 0, MAX_PAYLOAD)?,
        key_id,
        stop,
        warmup: seconds("--warmup", &args.warmup, true)?,
        json: args.json,
        target,
        instance_metrics,
    })
}

fn token_target(args: &BenchOptions, qs: &mut QuickstartFile, mix: &Mix) -> Result<Target, BenchError> {
    if mix.weight(Op::Metadata) > 0 || mix.weight(Op::Health) > 0 {
        return Err(BenchError::RawTokenOps);
    }
    let config = args
        .config
        .clone()
        .or(qs.config.take())
        .ok_or(BenchError::RawTokenConfig)?;
    Ok(Target::Token(TokenTarget {
        config,
        threads: count("--threads", &args.threads, 1, MAX_THREADS)?,
    }))
}

fn proxy_target(args: &BenchOptions, qs: &mut QuickstartFile) -> Result<ProxyTarget, BenchError> {
    let endpoint = args
        .endpoint
        .clone()
        .or(qs.endpoint.take())
        .ok_or(BenchError::Required { option: "--endpoint" })?;
    let endpoint = Endpoint::parse(&endpoint).map_err(BenchError::Endpoint)?;
    let uri_path = args
        .uri_path
        .clone()
        .or(qs.uri_path.take())
        .ok_or(BenchError::Required { option: "--uri-path" })?;
    // The spec's alphabet for XksProxyUriPath; anything else could not be sent unescaped.
    let spec_chars = uri_path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_".contains(&b));
    if !uri_path.starts_with('/') || !spec_chars {
        return Err(BenchError::UriPath);
    }
    let ca_file = args.ca_file.clone().or(qs.ca_certificate.take());
    let region = args
        .region
        .clone()
        .or(qs.region.take())
        .unwrap_or_else(|| DEFAULT_REGION.to_owned());
    // Both go into every signature (and the region into the key ARN of every body).
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(BenchError::Region { region });
    }
    let access_key_id =
        args.access_key_id
            .clone()
            .or(qs.access_key_id.take())
            .ok_or(BenchError::Required {
                option: "--access-key-id",
            })?;
    if access_key_id.is_empty() || !access_key_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(BenchError::AccessKeyId);
    }
    if endpoint.tls && ca_file.is_none() {
        return Err(BenchError::CaFileForHttps);
    }
    let client_threads = match &args.client_threads {
        Some(n) => Some(count("--client-threads", n, 1, MAX_THREADS)?),
        None => None,
    };
    Ok(ProxyTarget {
        endpoint,
        uri_path: uri_path.trim_end_matches('/').to_owned(),
        access_key_id,
        secret: secret(args, qs)?,
        region,
        ca_file,
        connections: count("--connections", &args.connections, 1, MAX_CONNECTIONS)?,
        timeout: seconds("--timeout", &args.timeout, false)?,
        client_threads,
        resumption: !args.no_resumption,
    })
}

fn secret(args: &BenchOptions, qs: &mut QuickstartFile) -> Result<SecretString, BenchError> {
    if let Some(f) = &args.secret_file {
        return SecretSource::file(f).load().map_err(BenchError::SecretFile);
    }
    if std::env::var_os(SECRET_ENV).is_some() {
        let src = SecretSource {
            file: None,
            env: Some(SECRET_ENV.into()),
            systemd_credential: None,
        };
        return src.load().map_err(BenchError::SecretEnv);
    }
    qs.secret_access_key
        .take()
        .map(SecretString::from)
        .ok_or(BenchError::NoSecret)
}

fn read_quickstart(path: &Path) -> Result<QuickstartFile, BenchError> {
    // The file holds the SigV4 secret: wipe the text once parsed.
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| BenchError::QuickstartRead {
                path: path.to_owned(),
                source,
            })?,
        );
    serde_json::from_str(&text).map_err(|source| BenchError::QuickstartParse {
        path: path.to_owned(),
        source,
    })
}

fn count<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    option: &'static str,
    text: &str,
    min: T,
    max: T,
) -> Result<T, BenchError> {
    text.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n >= min && *n <= max)
        .ok_or_else(|| BenchError::Count {
            option,
            min: min.to_string(),
            max: max.to_string(),
            text: text.to_owned(),
        })
}

fn seconds(option: &'static str, text: &str, zero_ok: bool) -> Result<Duration, BenchError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (*s > 0.0 || (zero_ok && *s == 0.0)) && *s <= 1e7)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| BenchError::Seconds {
            option,
            text: text.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked_with_the_option_named() {
        assert_eq!(count("--connections", "8", 1usize, 1024).unwrap(), 8);
        for bad in ["0", "-1", "x", "2000", ""] {
            let e = count("--connections", bad, 1usize, 1024).unwrap_err().to_string();
            assert!(e.starts_with("--connections"), "{e}");
        }
        assert_eq!(seconds("--warmup", "0", true).unwrap(), Duration::ZERO);
        assert_eq!(
            seconds("--duration", "0.5", false).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(seconds("--duration", bad, false).is_err(), "{bad}");
        }
    }
}
