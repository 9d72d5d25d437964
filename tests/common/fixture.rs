//! The SoftHSM2 token fixture: a private token with the four quickstart keys, TLS material, a
//! SigV4 credential and a config, made by `hsm-fixtures/setup.sh` in its own temp dir, plus
//! helpers to edit the config.

use crate::common::client::Signer;
use crate::common::process::{run_bounded, BIN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Where SoftHSM2 is installed on the test machine.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The fixture's keystore prefix and API base.
pub const PREFIX: &str = "/quickstart";
pub const BASE: &str = "/quickstart/kms/xks/v1";
/// The fixture's four keys.
pub const KEY_AES: &str = "quickstart-aes";
pub const KEY_ENCRYPT_ONLY: &str = "quickstart-encrypt-only";
pub const KEY_DECRYPT_ONLY: &str = "quickstart-decrypt-only";
pub const KEY_NO_USAGE: &str = "quickstart-no-usage";
pub const TOKEN_LABEL: &str = "xks-bridge-quickstart";

/// A private SoftHSM2 token with the four quickstart keys, TLS material, a SigV4 credential
/// and a config, in its own temp dir.
pub struct Fixture {
    _tmp: TempDir,
    /// The fixture directory (holds config.toml, secrets/, tls/, tokens/, softhsm2.conf).
    pub dir: PathBuf,
    /// The keystore's access key id.
    pub access_key_id: String,
    /// The keystore's secret access key.
    pub secret: String,
    /// How long `setup.sh` took.
    pub setup_time: Duration,
}

static CONFIG_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Fixture {
    /// Runs `hsm-fixtures/setup.sh` into a fresh temp dir.
    pub fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("xks-fixture-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().join("fx");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-fixtures/setup.sh");
        let start = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg(&dir)
            .env("XKS_BRIDGE_BIN", BIN)
            .env_remove("SOFTHSM2_CONF");
        let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
        let setup_time = start.elapsed();
        assert_eq!(code, Some(0), "setup.sh failed: {out}\n{err}");
        // Tests share two cores with parallel daemons and debug builds: give HSM jobs the largest
        // deadline the config allows (240 ms) so a busy CI machine does not turn a healthy
        // request into DependencyTimeoutException. Deadline behaviour itself is tested with
        // explicit settings (tests/faults.rs).
        let cfg_path = dir.join("config.toml");
        let mut cfg: toml::Table = std::fs::read_to_string(&cfg_path)
            .expect("fixture config")
            .parse()
            .expect("TOML");
        cfg["tokens"].as_array_mut().expect("tokens")[0]
            .as_table_mut()
            .expect("token table")
            .insert("request_timeout_ms".into(), 240.into());
        std::fs::write(&cfg_path, toml::to_string(&cfg).expect("serialize")).expect("write fixture config");
        let secret = std::fs::read_to_string(dir.join("secrets/sigv4-secret")).expect("sigv4 secret");
        let mut fx = Fixture {
            _tmp: tmp,
            dir,
            access_key_id: String::new(),
            secret: secret.trim_end().to_owned(),
            setup_time,
        };
        let cfg = fx.config();
        fx.access_key_id = cfg["keystores"][0]["credentials"][0]["access_key_id"]
            .as_str()
            .expect("access_key_id in fixture config")
            .to_owned();
        fx
    }

    /// A path inside the fixture directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The fixture's CA certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.path("tls/ca.pem")
    }

    /// The fixture's config, parsed, ready to be edited.
    pub fn config(&self) -> toml::Table {
        let text = std::fs::read_to_string(self.path("config.toml")).expect("fixture config");
        text.parse().expect("fixture config is TOML")
    }

    /// Writes `cfg` next to the fixture's config (so its relative paths keep working).
    pub fn write_config(&self, cfg: &toml::Table) -> PathBuf {
        let n = CONFIG_SEQ.fetch_add(1, Ordering::SeqCst);
        let path = self.path(&format!("test-config-{n}.toml"));
        std::fs::write(&path, toml::to_string(cfg).expect("serialize config")).expect("write config");
        path
    }

    /// Writes a private file (a secret) inside the fixture and returns its path.
    pub fn write_secret(&self, name: &str, value: &str) -> PathBuf {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path(&format!("secrets/{name}"));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .expect("write secret");
        path
    }

    /// A signer for the fixture's own credential.
    pub fn signer(&self) -> Signer {
        Signer::new(&self.access_key_id, &self.secret)
    }
}

/// `cfg.<section>` as a mutable table, created if absent.
pub fn section<'a>(cfg: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    cfg.entry(name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("section is a table")
}

/// `cfg.<array>[i]` as a mutable table (e.g. `keystores[0]`).
pub fn entry<'a>(cfg: &'a mut toml::Table, array: &str, i: usize) -> &'a mut toml::Table {
    cfg[array].as_array_mut().expect("array of tables")[i]
        .as_table_mut()
        .expect("table")
}

/// A TOML array of strings.
pub fn toml_strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| toml::Value::String(s.to_string())).collect())
}
