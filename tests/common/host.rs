//! What tests need from the machine: tools on PATH, root, and an unprivileged user.
//!
//! A test never passes without exercising its subject: when something it needs is missing it
//! fails, naming what to install (`scripts/install-deps.sh` installs all of it).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The unprivileged user (and group) tests switch to: `nobody`/`nogroup` on Debian.
pub const NOBODY: u32 = 65534;

/// Is `name` an executable on PATH?
pub fn have_tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Fails the test unless `name` is on PATH; `package` is the Debian package providing it.
#[track_caller]
pub fn require_tool(name: &str, package: &str) {
    assert!(
        have_tool(name),
        "this test needs `{name}` (Debian package {package}); scripts/install-deps.sh installs it"
    );
}

/// Does this process run as root?
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Fails the test unless it runs as root (it switches users, as CI's root can).
#[track_caller]
pub fn require_root(why: &str) {
    assert!(
        running_as_root(),
        "this test must run as root: {why} (CI runs the suite as root)"
    );
}

/// `setpriv` running `program` as [`NOBODY`] with no supplementary groups, or with exactly
/// `groups` (a `setpriv --groups=` list) when given. Needs root and `setpriv` (util-linux).
#[track_caller]
pub fn as_nobody(program: impl AsRef<std::ffi::OsStr>, groups: Option<&str>) -> Command {
    require_root("it runs a command as an unprivileged user");
    require_tool("setpriv", "util-linux");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"));
    match groups {
        Some(g) => cmd.arg(format!("--groups={g}")),
        None => cmd.arg("--clear-groups"),
    };
    cmd.arg(program);
    cmd
}

/// Lets [`NOBODY`] traverse every directory from `/tmp` down to `path` (temp dirs are 0700).
pub fn open_path_to(path: &Path) {
    let mut dir = Some(path);
    while let Some(d) = dir {
        if d.starts_with(std::env::temp_dir()) && d != std::env::temp_dir() && d.is_dir() {
            let mode = std::fs::metadata(d).expect("stat").permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711)).expect("chmod");
        }
        dir = d.parent();
    }
}

/// Gives `dir` and everything under it to [`NOBODY`] (`chown -R`), and lets it reach `dir`.
#[track_caller]
pub fn give_to_nobody(dir: &Path) {
    require_root("it hands files to an unprivileged user");
    let mut cmd = Command::new("chown");
    cmd.arg("-R").arg(format!("{NOBODY}:{NOBODY}")).arg(dir);
    let (code, out, err) = crate::common::process::run_bounded(cmd, crate::common::process::WAIT);
    assert_eq!(code, Some(0), "chown -R {NOBODY} {}: {out}{err}", dir.display());
    open_path_to(dir);
}
