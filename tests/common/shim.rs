//! `hsm-fixtures/faultshim`: a PKCS#11 module that forwards to SoftHSM2 and injects the faults
//! its control file names; compiled once per test process. Helpers point a fixture's token at
//! it and change the fault while a daemon runs.

use crate::common::fixture::{entry, Fixture, SOFTHSM_MODULE};
use crate::common::host::require_tool;
use crate::common::process::run_bounded;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// `hsm-fixtures/faultshim`, compiled once per test process into a temp dir.
pub fn shim() -> &'static Path {
    static SHIM: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, lib) = SHIM.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("xks-faultshim-")
            .tempdir()
            .expect("temp dir");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-fixtures/faultshim/faultshim.c");
        let lib = dir.path().join("libfaultshim.so");
        require_tool("cc", "build-essential");
        let mut cc = Command::new("cc");
        cc.args(["-shared", "-fPIC", "-O2", "-Wall", "-fvisibility=hidden", "-o"])
            .arg(&lib)
            .arg(&src)
            .args(["-ldl", "-lpthread"]);
        let (code, out, err) = run_bounded(cc, Duration::from_secs(120));
        assert_eq!(code, Some(0), "compiling the fault shim failed: {out}\n{err}");
        (dir, lib)
    });
    lib
}

/// Replaces the shim's control file atomically.
pub fn set_control(path: &Path, fault: &str) {
    let tmp = path.with_extension("test-tmp");
    std::fs::write(&tmp, format!("{fault}\n")).expect("write control file");
    std::fs::rename(&tmp, path).expect("install control file");
}

/// Points `tokens[0]` at the shim, which forwards to SoftHSM2 and reads `control`.
pub fn shim_token(cfg: &mut toml::Table, control: &Path) {
    let token = entry(cfg, "tokens", 0);
    token.insert("module".into(), shim().display().to_string().into());
    let env = token
        .entry("module_env")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("module_env is a table");
    env.insert("FAULTSHIM_REAL_MODULE".into(), SOFTHSM_MODULE.into());
    env.insert("FAULTSHIM_CONTROL".into(), control.display().to_string().into());
}

/// The fixture config with its token behind the shim, and the shim's control file (`none`).
pub fn shimmed_config(fx: &Fixture) -> (toml::Table, PathBuf) {
    let control = fx.path("faultshim.control");
    set_control(&control, "none");
    let mut cfg = fx.config();
    shim_token(&mut cfg, &control);
    (cfg, control)
}
