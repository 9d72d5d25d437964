//! The embedded default: on first run, a private SoftHSM2 token with four AES-256 keys, a
//! private CA and a `localhost`/`127.0.0.1` server certificate (generated in-process with
//! rcgen), random SigV4 credentials and a config file, all inside one directory. Later runs
//! reuse the directory. After binding, `quickstart.json` and the KMS console configuration file
//! are (re)written so scripts can drive the instance.

use crate::config::Config;
use crate::hsm::{setup, HsmError, Usage};
use crate::module_env::ModuleEnvError;
use serde_json::json;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Keystore prefix of the quickstart instance.
pub const PREFIX: &str = "/quickstart";
/// Token label of the quickstart token.
pub const TOKEN_LABEL: &str = "xks-bridge-quickstart";
/// Region the printed sample request signs for.
pub const REGION: &str = "us-east-1";
/// The four keys: (json name, label, usage).
pub const KEYS: [(&str, &str, Usage); 4] = [
    (
        "encryptDecrypt",
        "quickstart-aes",
        Usage {
            encrypt: true,
            decrypt: true,
        },
    ),
    (
        "encryptOnly",
        "quickstart-encrypt-only",
        Usage {
            encrypt: true,
            decrypt: false,
        },
    ),
    (
        "decryptOnly",
        "quickstart-decrypt-only",
        Usage {
            encrypt: false,
            decrypt: true,
        },
    ),
    (
        "noUsage",
        "quickstart-no-usage",
        Usage {
            encrypt: false,
            decrypt: false,
        },
    ),
];

/// Why the quickstart directory cannot be set up or published; the text is what
/// `xks-bridge quickstart` prints before exiting 73.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// The directory cannot be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        /// The directory given.
        path: PathBuf,
        /// What creating it said.
        source: std::io::Error,
    },
    /// The directory's absolute path cannot be found.
    #[error("{}: {source}", path.display())]
    Canonicalize {
        /// The directory given.
        path: PathBuf,
        /// What resolving it said.
        source: std::io::Error,
    },
    /// A previous run stopped half-way: reusing its token without its config would lose the PINs.
    #[error(
        "{} holds an incomplete quickstart (no config.toml); remove the directory and run again",
        dir.display()
    )]
    Incomplete {
        /// The quickstart directory.
        dir: PathBuf,
    },
    /// No SoftHSM2 module to make the token with.
    #[error("SoftHSM2 is not installed (libsofthsm2.so not found); install the softhsm2 package")]
    NoSoftHsm,
    /// `SOFTHSM2_CONF` cannot be applied.
    #[error(transparent)]
    ModuleEnv(#[from] ModuleEnvError),
    /// A part of the layout (`tokens`, `tls/ca.pem`, ...) cannot be created.
    #[error("{part}: {source}")]
    Part {
        /// The part, as named in the message.
        part: &'static str,
        /// What creating it said.
        source: std::io::Error,
    },
    /// A private file cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What writing it said.
        source: std::io::Error,
    },
    /// The token cannot be loaded, initialised or logged in to.
    #[error(transparent)]
    Token(#[from] HsmError),
    /// A key cannot be created on the token.
    #[error("key {label:?}: {source}")]
    Key {
        /// The key's label.
        label: &'static str,
        /// What the token said.
        source: HsmError,
    },
    /// rcgen refused to make the CA or server certificate.
    #[error("certificate generation: {0}")]
    Certificate(#[source] rcgen::Error),
    /// PINs and credentials need the system's randomness.
    #[error("no randomness available: {0}")]
    Randomness(#[source] getrandom::Error),
    /// The config has no keystore to publish.
    #[error("config has no keystore")]
    NoKeystore,
    /// The keystore has no credential to publish.
    #[error("keystore has no credential")]
    NoCredential,
    /// The credential's secret is not in a file, so it cannot be printed or published.
    #[error("quickstart secret must come from a file")]
    SecretNotInFile,
    /// The secret file cannot be read.
    #[error("{}: {source}", path.display())]
    ReadSecret {
        /// The secret file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
}

/// Paths inside the quickstart directory.
pub struct Layout {
    /// The directory (absolute).
    pub dir: PathBuf,
}

impl Layout {
    /// Creates the directory (0700) if needed and makes its path absolute.
    pub fn new(dir: &Path) -> Result<Layout, QuickstartError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| QuickstartError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let dir = fs::canonicalize(dir).map_err(|source| QuickstartError::Canonicalize {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Layout { dir })
    }
    /// The generated config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// SoftHSM2's configuration file for this directory's token.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }
    fn secret(&self, name: &str) -> PathBuf {
        self.dir.join("secrets").join(name)
    }
    fn tls(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(name)
    }
}

/// Creates everything on first run; returns the config path either way.
pub fn ensure_setup(layout: &Layout, listen: SocketAddr) -> Result<PathBuf, QuickstartError> {
    let config = layout.config();
    if config.is_file() {
        return Ok(config);
    }
    if layout.dir.join("tokens").exists() {
        return Err(QuickstartError::Incomplete {
            dir: layout.dir.clone(),
        });
    }
    let module = setup::find_softhsm_module().ok_or(QuickstartError::NoSoftHsm)?;
    // SoftHSM2 reads SOFTHSM2_CONF when the module initialises. Applying it may restart the
    // process, which must happen before anything is created (the restarted run would find a
    // half-made directory); the file it names is written below, before the module is loaded.
    crate::module_env::ensure([("SOFTHSM2_CONF", layout.softhsm_conf())])?;
    for sub in ["tokens", "secrets", "tls"] {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(layout.dir.join(sub))
            .map_err(|source| QuickstartError::Part { part: sub, source })?;
    }
    let conf = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        layout.dir.join("tokens").display()
    );
    write_private(&layout.softhsm_conf(), conf.as_bytes())?;

    let (so_pin, user_pin) = (random_hex(16)?, random_hex(16)?);
    write_private(&layout.secret("so.pin"), so_pin.as_bytes())?;
    write_private(&layout.secret("token.pin"), user_pin.as_bytes())?;
    let p = setup::load(&module)?;
    p.init_softhsm_token(TOKEN_LABEL, &so_pin, &user_pin)?;
    {
        let s = p.open_user_session(TOKEN_LABEL, &secrecy::SecretString::from(user_pin.clone()))?;
        for (_, label, usage) in KEYS {
            s.key_admin()
                .create(label, usage)
                .map_err(|source| QuickstartError::Key { label, source })?;
        }
    }
    p.finalize();

    write_tls(layout)?;
    let access_key_id = random_access_key_id()?;
    write_private(&layout.secret("sigv4-secret"), random_secret()?.as_bytes())?;
    let keys: Vec<String> = KEYS.iter().map(|(_, l, _)| format!("{l:?}")).collect();
    let toml = format!(
        r#"# Generated by `xks-bridge quickstart`. See README.md for every option.
[server]
listen = ["{listen}"]
# No load balancer in front: Ctrl-C stops at once (behind one, keep the 5000 ms default).
drain_delay_ms = 0
{root_line}
[tls]
certificate = "tls/server.pem"
private_key = "tls/server.key"

[logging]
format = "text"
level = "info"

[state]
directory = "state"

[admin]
socket = "admin.sock"

[metrics]
listen = "127.0.0.1:0"

[audit]
file = "audit/audit.jsonl"

[[tokens]]
name = "quickstart-softhsm"
module = "{module}"
module_env = {{ SOFTHSM2_CONF = "{conf}" }}
token_label = "{TOKEN_LABEL}"
pin = {{ file = "secrets/token.pin" }}
profile = "softhsm"

[[keystores]]
uri_prefix = "{PREFIX}"
token = "quickstart-softhsm"
allowed_keys = [{keys}]
credentials = [
  {{ access_key_id = "{access_key_id}", secret = {{ file = "secrets/sigv4-secret" }} }},
]
"#,
        module = module.display(),
        conf = layout.softhsm_conf().display(),
        root_line = if running_as_root() {
            "# quickstart was run as root; a production daemon runs as its own user (see systemd/)\nallow_root = true\n"
        } else {
            ""
        },
        keys = keys.join(", "),
    );
    write_private(&config, toml.as_bytes())?;
    Ok(config)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn write_tls(layout: &Layout) -> Result<(), QuickstartError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let err = QuickstartError::Certificate;
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "xks-bridge quickstart CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(3650);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ])
    .map_err(err)?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(825);
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(err)?;
    // The CA key is not kept: nothing else will ever be signed by this CA.
    fs::write(layout.tls("ca.pem"), ca_cert.pem()).map_err(|source| QuickstartError::Part {
        part: "ca.pem",
        source,
    })?;
    fs::write(layout.tls("server.pem"), leaf_cert.pem()).map_err(|source| QuickstartError::Part {
        part: "server.pem",
        source,
    })?;
    write_private(&layout.tls("server.key"), key.serialize_pem().as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), QuickstartError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| QuickstartError::Write {
            path: path.to_owned(),
            source,
        })?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|source| QuickstartError::Write {
            path: path.to_owned(),
            source,
        })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], QuickstartError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(QuickstartError::Randomness)?;
    Ok(b)
}

fn random_hex(chars: usize) -> Result<String, QuickstartError> {
    Ok(hex::encode(random_bytes::<32>()?)[..chars].to_owned())
}

/// 26 characters of the base32 alphabet (`A-Z2-7`), as the spec requires for access key ids.
pub fn random_access_key_id() -> Result<String, QuickstartError> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    Ok(random_bytes::<26>()?
        .iter()
        .map(|b| ALPHABET[(*b & 31) as usize] as char)
        .collect())
}

/// 256 random bits in standard Base64: 44 characters of `A-Za-z0-9+/=`.
pub fn random_secret() -> Result<String, QuickstartError> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>()?))
}

/// Writes `quickstart.json` and the KMS console file for a running instance, and returns the
/// banner to print.
pub fn publish(
    layout: &Layout,
    cfg: &Config,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
) -> Result<String, QuickstartError> {
    let ks = cfg.keystores.first().ok_or(QuickstartError::NoKeystore)?;
    let cred = ks.credentials.first().ok_or(QuickstartError::NoCredential)?;
    let secret_path = cred.secret.file.clone().ok_or(QuickstartError::SecretNotInFile)?;
    let secret = fs::read_to_string(&secret_path).map_err(|source| QuickstartError::ReadSecret {
        path: secret_path.clone(),
        source,
    })?;
    let secret = secret.trim_end();
    let endpoint = format!("https://{addr}");
    let uri_path = ks.api_base();
    let ca = layout.tls("ca.pem");
    let mut keys = serde_json::Map::new();
    for (name, label, _) in KEYS {
        keys.insert(name.into(), json!(label));
    }
    let qs = json!({
        "endpoint": endpoint, "uriPath": uri_path, "accessKeyId": cred.access_key_id,
        "secretAccessKey": secret, "region": REGION, "caCertificate": ca, "config": layout.config(),
        "keys": keys,
    });
    let console = json!({
        "XksProxyUriPath": uri_path,
        "XksProxyAuthenticationCredential": { "AccessKeyId": cred.access_key_id, "RawSecretAccessKey": secret },
    });
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    write_private(&layout.dir.join("quickstart.json"), &pretty(&qs))?;
    write_private(&layout.dir.join("kms-xks-proxy-config.json"), &pretty(&console))?;
    let body = r#"{"requestMetadata":{"kmsRequestId":"quickstart-1","kmsOperation":"KmsHealthCheck"}}"#;
    Ok(format!(
        "\nxks-bridge quickstart is serving\n\
         \x20 endpoint        {endpoint}\n\
         \x20 URI path        {uri_path}\n\
         \x20 access key id   {akid}\n\
         \x20 secret key      {secret}   (stored in {secret_file})\n\
         \x20 CA certificate  {ca}\n\
         \x20 keys            {k0} (encrypt+decrypt), {k1}, {k2}, {k3}\n\
         \x20 config          {config}\n\
         \x20 for scripts     {dir}/quickstart.json\n\
         \x20 for KMS console {dir}/kms-xks-proxy-config.json\n\
         \x20 metrics         {metrics}\n\
         \x20 audit trail     {dir}/audit/audit.jsonl  (verify: xks-bridge audit verify FILE)\n\n\
         Try a signed request (GetHealthStatus):\n\n\
         curl --aws-sigv4 \"aws:amz:{REGION}:kms-xks-proxy\" --user \"{akid}:$(cat {secret_file})\" \\\n\
         \x20 --cacert {ca} -H 'Content-Type: application/json' \\\n\
         \x20 -d '{body}' \\\n\
         \x20 {endpoint}{uri_path}/health\n",
        akid = cred.access_key_id,
        secret_file = secret_path.display(),
        ca = ca.display(),
        k0 = KEYS[0].1,
        k1 = KEYS[1].1,
        k2 = KEYS[2].1,
        k3 = KEYS[3].1,
        config = layout.config().display(),
        dir = layout.dir.display(),
        metrics = metrics
            .map(|m| format!("http://{m}/metrics"))
            .unwrap_or_else(|| "disabled".into()),
    ))
}
