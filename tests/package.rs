//! The Debian package, as `scripts/package.sh` builds it: its files, modes and conffiles, the
//! packaged unit (`systemd-analyze verify`, ExecStart in /usr/bin), maintainer scripts that
//! create the user and directories but never start or enable the service, and purge-only
//! removal of configuration and state, man pages that render, completions, dashboard and
//! alert rules.
//!
//! Cost: one release build (`cargo build --release`, several minutes on two cores the first
//! time, seconds when nothing changed) and `cargo install cargo-deb` if it is missing.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The package, extracted once for every test: (scratch root, `dpkg-deb -c` listing).
struct Extracted {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// Path (without the leading `.`) to (mode string, owner/group).
    listing: BTreeMap<String, (String, String)>,
}

fn package() -> &'static Extracted {
    static PKG: OnceLock<Extracted> = OnceLock::new();
    PKG.get_or_init(build_and_extract)
}

fn build_and_extract() -> Extracted {
    require_tool("dpkg-deb", "dpkg");
    let mut cmd = Command::new(repo().join("scripts/package.sh"));
    cmd.env("CARGO", env!("CARGO"));
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(45 * 60));
    assert_eq!(code, Some(0), "scripts/package.sh failed:\n{out}\n{err}");
    let deb = PathBuf::from(out.lines().last().expect("package.sh prints the package path"));
    assert!(deb.is_file(), "{deb:?} is not a file; stdout:\n{out}");
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("xks-bridge_{}", env!("CARGO_PKG_VERSION"))) && name.ends_with(".deb"),
        "{name}"
    );

    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    for (flag, dir) in [("-x", root.clone()), ("-e", root.join("DEBIAN"))] {
        let mut c = Command::new("dpkg-deb");
        c.arg(flag).arg(&deb).arg(&dir);
        let (code, out, err) = run_bounded(c, WAIT);
        assert_eq!(code, Some(0), "dpkg-deb {flag}: {out}{err}");
    }
    let mut c = Command::new("dpkg-deb");
    c.arg("-c").arg(&deb);
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "dpkg-deb -c: {out}{err}");
    // "-rwxr-xr-x root/root  123 2024-01-01 00:00 ./usr/bin/xks-bridge"
    let listing = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.strip_prefix('.')?.to_owned();
            Some((path, (f[0].to_owned(), f[1].to_owned())))
        })
        .collect();
    Extracted {
        _tmp: tmp,
        root,
        listing,
    }
}

fn entry<'a>(pkg: &'a Extracted, path: &str) -> &'a (String, String) {
    pkg.listing
        .get(path)
        .unwrap_or_else(|| panic!("{path} is not in the package: {:#?}", pkg.listing.keys()))
}

fn read(pkg: &Extracted, path: &str) -> String {
    let p = pkg.root.join(path.trim_start_matches('/'));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

#[test]
fn package_holds_every_file_with_its_mode_and_owner() {
    let pkg = package();
    for (path, mode) in [
        ("/usr/bin/xks-bridge", "-rwxr-xr-x"),
        ("/usr/lib/systemd/system/xks-bridge.service", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/xks-bridge.conf", "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/xks-bridge.conf", "-rw-r--r--"),
        // Not world-readable; postinst gives it to group xks-bridge on first install.
        ("/etc/xks-bridge/config.toml", "-rw-r-----"),
        ("/usr/share/man/man1/xks-bridge.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/xks-bridge-serve.1.gz", "-rw-r--r--"),
        (
            "/usr/share/man/man1/xks-bridge-kill-switch-engage.1.gz",
            "-rw-r--r--",
        ),
        ("/usr/share/bash-completion/completions/xks-bridge", "-rw-r--r--"),
        ("/usr/share/zsh/vendor-completions/_xks-bridge", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/xks-bridge.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/xks-bridge/prometheus-alerts.yml", "-rw-r--r--"),
        ("/usr/share/xks-bridge/grafana/xks-bridge.json", "-rw-r--r--"),
        ("/usr/share/xks-bridge/haproxy/haproxy.cfg", "-rw-r--r--"),
    ] {
        let (m, owner) = entry(pkg, path);
        assert_eq!(m, mode, "mode of {path}");
        assert!(owner == "root/root" || owner == "0/0", "owner of {path}: {owner}");
    }
    // Shipped byte for byte from the repository.
    for (installed, source) in [
        ("/etc/xks-bridge/config.toml", "systemd/config.example.toml"),
        (
            "/usr/lib/sysusers.d/xks-bridge.conf",
            "systemd/xks-bridge.sysusers.conf",
        ),
        (
            "/usr/lib/tmpfiles.d/xks-bridge.conf",
            "systemd/xks-bridge.tmpfiles.conf",
        ),
        (
            "/usr/share/xks-bridge/prometheus-alerts.yml",
            "docs/prometheus-alerts.yml",
        ),
        (
            "/usr/share/xks-bridge/grafana/xks-bridge.json",
            "deploy/grafana/xks-bridge.json",
        ),
    ] {
        let want = std::fs::read_to_string(repo().join(source)).expect(source);
        assert_eq!(read(pkg, installed), want, "{installed} differs from {source}");
    }
    // Nothing lands in /usr/local or outside the directories above.
    for path in pkg.listing.keys() {
        assert!(
            ["/usr/bin/", "/usr/lib/", "/usr/share/", "/etc/xks-bridge/"]
                .iter()
                .any(|p| path.starts_with(p) || p.starts_with(path.as_str())),
            "unexpected path {path}"
        );
    }
    // The packaged binary is the one this commit builds.
    let mut c = Command::new(pkg.root.join("usr/bin/xks-bridge"));
    c.arg("--version");
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), format!("xks-bridge {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn config_is_a_conffile() {
    let pkg = package();
    let conffiles = read(pkg, "DEBIAN/conffiles");
    assert!(
        conffiles.lines().any(|l| l == "/etc/xks-bridge/config.toml"),
        "DEBIAN/conffiles: {conffiles:?}"
    );
}

#[test]
fn packaged_unit_runs_usr_bin_and_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze", "systemd");
    let pkg = package();
    let unit = read(pkg, "/usr/lib/systemd/system/xks-bridge.service");
    let directives: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        directives.contains(&"ExecStart=/usr/bin/xks-bridge serve --config /etc/xks-bridge/config.toml"),
        "{unit}"
    );
    assert!(
        directives.contains(&"ExecReload=/usr/bin/xks-bridge reload --config /etc/xks-bridge/config.toml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/"), "{unit}");
    // Everything else is the repository's hardened unit.
    let source = std::fs::read_to_string(repo().join("systemd/xks-bridge.service")).expect("unit");
    let strip = |u: &str| -> Vec<String> {
        u.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace("/usr/local/bin/", "/usr/bin/"))
            .collect()
    };
    assert_eq!(strip(&unit), strip(&source));

    // systemd-analyze checks that ExecStart's binary exists: point it at the extracted one.
    let tmp = tempfile::tempdir().expect("temp dir");
    let copy = tmp.path().join("xks-bridge.service");
    let bin = pkg.root.join("usr/bin/xks-bridge");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/xks-bridge ", &format!("{} ", bin.display())),
    )
    .expect("write unit copy");
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify").arg(&copy);
    let (code, out, err) = run_bounded(cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "systemd-analyze verify: {out}\n{err}");
    let complaints: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| l.contains("xks-bridge.service"))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze verify: {complaints:#?}");
}

/// Runs maintainer script `name` with `args` and every command it may call replaced by a stub
/// that logs its arguments; returns the log, one command per line.
fn run_script(pkg: &Extracted, name: &str, args: &[&str]) -> String {
    let script = pkg.root.join("DEBIAN").join(name);
    let tmp = tempfile::tempdir().expect("temp dir");
    let log = tmp.path().join("log");
    let stubs = tmp.path().join("bin");
    std::fs::create_dir(&stubs).unwrap();
    for tool in [
        "systemctl",
        "deb-systemd-invoke",
        "deb-systemd-helper",
        "systemd-sysusers",
        "systemd-tmpfiles",
        "adduser",
        "install",
        "chgrp",
        "chmod",
        "rm",
        "getent",
    ] {
        let p = stubs.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n", log.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut c = Command::new("sh");
    c.arg(&script)
        .args(args)
        .env("PATH", format!("{}:/usr/bin:/bin", stubs.display()));
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "{name} {args:?}: {out}{err}");
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn postinst_creates_user_and_directories_and_never_starts_or_enables_the_service() {
    let pkg = package();
    let postinst = read(pkg, "DEBIAN/postinst");
    // Statically, whether or not systemd runs here: the only systemctl verbs are
    // daemon-reload and try-restart (which never starts a stopped service).
    // (`echo` lines are the message telling the administrator what to run.)
    for line in postinst
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with("echo "))
    {
        if let Some(rest) = line.split("systemctl ").nth(1) {
            let verb = rest.split_whitespace().next().unwrap_or_default();
            assert!(
                ["daemon-reload", "try-restart"].contains(&verb),
                "postinst runs `systemctl {rest}`"
            );
        }
        assert!(!line.contains("deb-systemd-invoke"), "postinst: {line}");
        assert!(!line.contains("deb-systemd-helper enable"), "postinst: {line}");
    }
    // First install (no previous version): user, then directories; nothing else.
    let log = run_script(pkg, "postinst", &["configure"]);
    let calls: Vec<&str> = log.lines().collect();
    assert!(
        calls.starts_with(&[
            "systemd-sysusers xks-bridge.conf",
            "systemd-tmpfiles --create xks-bridge.conf"
        ]),
        "{calls:#?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("start") && !c.contains("try-restart") || c.contains("enable")),
        "{calls:#?}"
    );
}

#[test]
fn remove_keeps_configuration_and_state_and_purge_deletes_them() {
    let pkg = package();
    let removed = run_script(pkg, "postrm", &["remove"]);
    assert!(!removed.contains("rm "), "postrm remove deletes files: {removed}");
    let purged = run_script(pkg, "postrm", &["purge"]);
    let rm: Vec<&str> = purged.lines().filter(|l| l.starts_with("rm ")).collect();
    assert_eq!(rm.len(), 1, "{purged}");
    for dir in ["/etc/xks-bridge", "/var/lib/xks-bridge"] {
        assert!(
            rm[0].split_whitespace().any(|w| w == dir),
            "purge keeps {dir}: {purged}"
        );
    }
    // prerm stops the service on removal, not on upgrade.
    assert!(run_script(pkg, "prerm", &["upgrade", "0.2.0"]).is_empty());
}

#[test]
fn man_pages_render() {
    require_tool("man", "man-db");
    let pkg = package();
    let dir = pkg.root.join("usr/share/man/man1");
    let pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("man1")
        .map(|e| e.unwrap().path())
        .collect();
    assert!(pages.len() > 10, "{pages:?}");
    for page in pages {
        let mut c = Command::new("man");
        c.arg("--warnings")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80");
        let (code, out, err) = run_bounded(c, WAIT);
        assert_eq!(code, Some(0), "man -l {page:?}: {err}");
        assert!(err.trim().is_empty(), "man -l {page:?} warns: {err}");
        for section in ["NAME", "SYNOPSIS", "OPTIONS"] {
            assert!(out.contains(section), "{page:?} has no {section}:\n{out}");
        }
    }
    let mut c = Command::new("man");
    c.arg("-l")
        .arg(dir.join("xks-bridge.1.gz"))
        .env("MANPAGER", "cat");
    let (_, out, _) = run_bounded(c, WAIT);
    for sub in ["serve", "check-config", "kill-switch", "keys", "reload"] {
        assert!(out.contains(sub), "xks-bridge(1) does not list {sub}:\n{out}");
    }
}

#[test]
fn completions_cover_the_subcommands() {
    let pkg = package();
    for path in [
        "/usr/share/bash-completion/completions/xks-bridge",
        "/usr/share/zsh/vendor-completions/_xks-bridge",
        "/usr/share/fish/vendor_completions.d/xks-bridge.fish",
    ] {
        let text = read(pkg, path);
        for sub in ["serve", "check-config", "kill-switch", "reload"] {
            assert!(text.contains(sub), "{path} does not complete {sub}");
        }
        assert!(
            !text.contains("generate-docs"),
            "{path} offers the hidden generate-docs"
        );
    }
    require_tool("bash", "bash");
    let mut c = Command::new("bash");
    c.arg("-n")
        .arg(pkg.root.join("usr/share/bash-completion/completions/xks-bridge"));
    let (code, out, err) = run_bounded(c, WAIT);
    assert_eq!(code, Some(0), "bash -n: {out}{err}");
}
