//! The fleet-wide kill switch: several real daemons on one real SoftHSM2 token, each with its
//! own state directory and admin socket. An engage through one instance (or offline, with no
//! daemon on that config) must reach every instance through the token; a release must bring
//! them all back, including those that disconnected; local and fleet engagements never lift
//! each other.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an engage may take to reach another instance in these tests: the design target is
/// one second (0.5 s poll + 0.1 s watch); the margin absorbs a loaded CI machine.
const ENGAGE_REACH: Duration = Duration::from_secs(3);
/// A release reaches disconnected instances through their check every 2 s.
const RELEASE_REACH: Duration = Duration::from_secs(8);
/// Long enough for an instance disconnected by a fleet proxy engage to make at least two of
/// its release checks (one on the watch's next tick, then every 2 s).
const PROBE_CHECKS: Duration = Duration::from_millis(2500);

/// Config of instance `name`: its own state directory and admin socket, the fixture's token.
fn instance_config(fx: &Fixture, name: &str, two_keystores: bool) -> toml::Table {
    let mut cfg = fx.config();
    section(&mut cfg, "state").insert("directory".into(), format!("state-{name}").into());
    section(&mut cfg, "admin").insert("socket".into(), format!("admin-{name}.sock").into());
    if two_keystores {
        let mut second = entry(&mut cfg, "keystores", 0).clone();
        second.insert("uri_prefix".into(), "/other".into());
        cfg["keystores"]
            .as_array_mut()
            .expect("keystores")
            .push(toml::Value::Table(second));
    }
    cfg
}

fn fleet(fx: &Fixture, n: usize, two_keystores: bool) -> Vec<TestProxy> {
    (0..n)
        .map(|i| TestProxy::start_with(fx, &instance_config(fx, &format!("i{i}"), two_keystores), &[]))
        .collect()
}

fn encrypt_status(fx: &Fixture, p: &TestProxy, base: Option<&str>) -> u16 {
    let mut x = p.xks(fx);
    if let Some(b) = base {
        x.base = b.into();
    }
    x.encrypt(KEY_AES, &encrypt_body(b"fleet", None, false)).status
}

/// Waits until every instance satisfies `f`; the time it took, or a failure naming the
/// instances that did not.
#[track_caller]
fn all_within(ps: &[TestProxy], limit: Duration, what: &str, f: impl Fn(&TestProxy) -> bool) -> Duration {
    let t = Instant::now();
    let ok = wait_until(limit, || ps.iter().all(&f));
    let late: Vec<usize> = (0..ps.len()).filter(|&i| !f(&ps[i])).collect();
    assert!(ok, "instances {late:?} not {what} after {:?}", t.elapsed());
    t.elapsed()
}

/// Checks `f` on `p` again and again for `window`: a failure at the first check that fails.
#[track_caller]
fn holds_for(p: &TestProxy, window: Duration, what: &str, f: impl Fn(&TestProxy) -> bool) {
    let t = Instant::now();
    while t.elapsed() < window {
        assert!(
            f(p),
            "no longer {what} after {:?}: {}",
            t.elapsed(),
            status(&p.config)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After a whole-proxy release `p` acknowledged: in force when the command returned (gate open,
/// token connected again, requests no longer refused), and serving Encrypt within
/// [`ENGAGE_REACH`]: the first requests after the reconnect (new sessions, key lookups) may
/// miss the 150 ms HSM deadline on a loaded machine, which the release never promised.
#[track_caller]
fn released_here(fx: &Fixture, p: &TestProxy) {
    let s = status(&p.config);
    assert_eq!(s["proxy"]["engaged"], false, "{s}");
    assert_eq!(s["tokens"][0]["connected"], true, "{s}");
    assert_eq!(ping(p), 200, "released, yet out of rotation");
    assert_ne!(encrypt_status(fx, p, None), 400, "released, yet refusing");
    all_within(std::slice::from_ref(p), ENGAGE_REACH, "serving", |p| {
        encrypt_status(fx, p, None) == 200
    });
}

fn status(config: &Path) -> serde_json::Value {
    kill_switch_status(config)
}

#[test]
fn a_fleet_engage_through_one_instance_stops_every_instance_and_a_fleet_release_brings_them_back() {
    let fx = Fixture::new();
    let ps = fleet(&fx, 3, false);
    for p in &ps {
        assert_eq!(encrypt_status(&fx, p, None), 200);
    }
    let out = cli_ok(
        &ps[0].config,
        &["kill-switch", "engage", "--fleet", "--reason", "fleet drill 7"],
    );
    assert!(
        out.contains("fleet-wide") && out.contains("fleet mark written"),
        "{out}"
    );
    // The instance that ran the command refuses at once.
    assert_invalid_state(&ps[0].xks(&fx).encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    let took = all_within(&ps, ENGAGE_REACH, "refusing Encrypt", |p| {
        encrypt_status(&fx, p, None) == 400 && ping(p) != 200
    });
    eprintln!("fleet engage reached all 3 instances in {took:?}");
    for p in &ps[1..] {
        let s = status(&p.config);
        assert_eq!(s["proxy"]["engaged"], true, "{s}");
        assert!(s["proxy"]["by"].is_null(), "not engaged locally: {s}");
        assert_eq!(s["proxy"]["fleet_by"]["reason"], "fleet drill 7", "{s}");
        let human = cli_ok(&p.config, &["kill-switch", "status"]);
        assert!(
            human.contains("FLEET-WIDE") && human.contains("fleet drill 7"),
            "{human}"
        );
        // They log out of the token, as a local engage does.
        assert!(
            wait_until(ENGAGE_REACH, || status(&p.config)["tokens"][0]["connected"]
                == false),
            "{}",
            status(&p.config)
        );
    }

    // Released through another instance, itself disconnected by the engage.
    let out = cli_ok(
        &ps[2].config,
        &["kill-switch", "release", "--fleet", "--reason", "drill over"],
    );
    assert!(out.contains("released proxy"), "{out}");
    released_here(&fx, &ps[2]);
    let took = all_within(&ps, RELEASE_REACH, "serving again", |p| {
        encrypt_status(&fx, p, None) == 200 && ping(p) == 200
    });
    eprintln!("fleet release reached all 3 instances in {took:?}");
    for p in &ps {
        let s = status(&p.config);
        assert!(s["proxy"]["fleet_by"].is_null(), "{s}");
        let h = s["history"].as_array().expect("history").clone();
        assert!(
            h.iter()
                .any(|e| e["action"] == "release" && e["scope"] == "fleet:proxy"),
            "{s}"
        );
    }
}

/// The key scope travels through the token already (a private mark per key, polled every
/// 0.5 s): a key disabled through the second of three instances is refused by all three, the
/// other keys keep working, and a release through the third brings it back everywhere.
#[test]
fn a_key_disabled_through_one_instance_is_refused_by_all_three_and_released_through_another() {
    let fx = Fixture::new();
    let ps = fleet(&fx, 3, false);
    let key_status = |p: &TestProxy| p.xks(&fx).metadata(KEY_AES).json()["keyStatus"].clone();
    for p in &ps {
        assert_eq!(encrypt_status(&fx, p, None), 200);
    }
    cli_ok(
        &ps[1].config,
        &["kill-switch", "engage", "--key", KEY_AES, "--reason", "key drill"],
    );
    assert_invalid_state(&ps[1].xks(&fx).encrypt(KEY_AES, &encrypt_body(b"x", None, false)));
    let took = all_within(&ps, ENGAGE_REACH, "refusing the disabled key", |p| {
        encrypt_status(&fx, p, None) == 400 && key_status(p) == "DISABLED"
    });
    eprintln!("a key disable through instance 2 reached all 3 instances in {took:?}");
    for p in &ps {
        let r = p
            .xks(&fx)
            .encrypt(KEY_ENCRYPT_ONLY, &encrypt_body(b"another key", None, false));
        assert_eq!(r.status, 200, "another key refused: {}", r.text());
    }

    cli_ok(
        &ps[2].config,
        &[
            "kill-switch",
            "release",
            "--key",
            KEY_AES,
            "--reason",
            "drill over",
        ],
    );
    let took = all_within(&ps, ENGAGE_REACH, "serving the key again", |p| {
        key_status(p) == "ENABLED" && encrypt_status(&fx, p, None) == 200
    });
    eprintln!("the key release through instance 3 reached all 3 instances in {took:?}");
}

#[test]
fn a_fleet_keystore_engage_refuses_only_that_keystore_on_every_instance() {
    let fx = Fixture::new();
    let ps = fleet(&fx, 2, true);
    cli_ok(
        &ps[1].config,
        &[
            "kill-switch",
            "engage",
            "--fleet",
            "--keystore",
            PREFIX,
            "--reason",
            "tenant",
        ],
    );
    let took = all_within(&ps, ENGAGE_REACH, "refusing the keystore", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    eprintln!("fleet keystore engage reached both instances in {took:?}");
    for p in &ps {
        assert_eq!(encrypt_status(&fx, p, Some("/other/kms/xks/v1")), 200);
        assert_eq!(ping(p), 200, "a keystore engage must not take the instance out");
        let s = status(&p.config);
        let ks = s["keystores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["prefix"] == PREFIX)
            .cloned()
            .unwrap();
        assert_eq!(ks["engaged"], true, "{s}");
        assert_eq!(ks["fleet_by"]["reason"], "tenant", "{s}");
    }
    cli_ok(
        &ps[0].config,
        &["kill-switch", "release", "--fleet", "--keystore", PREFIX],
    );
    let took = all_within(&ps, ENGAGE_REACH, "serving the keystore", |p| {
        encrypt_status(&fx, p, None) == 200
    });
    eprintln!("fleet keystore release reached both instances in {took:?}");
}

#[test]
fn local_and_fleet_engagements_never_lift_each_other() {
    let fx = Fixture::new();
    let ps = fleet(&fx, 2, false);
    // A local engage on instance 1 outlives a fleet engage and release.
    cli_ok(
        &ps[1].config,
        &["kill-switch", "engage", "--reason", "local incident"],
    );
    cli_ok(
        &ps[0].config,
        &["kill-switch", "engage", "--fleet", "--reason", "fleet"],
    );
    all_within(&ps, ENGAGE_REACH, "refusing", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    cli_ok(&ps[0].config, &["kill-switch", "release", "--fleet"]);
    all_within(&ps[..1], RELEASE_REACH, "serving", |p| {
        encrypt_status(&fx, p, None) == 200
    });
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        encrypt_status(&fx, &ps[1], None),
        400,
        "the local engage must hold"
    );
    assert_eq!(status(&ps[1].config)["proxy"]["by"]["reason"], "local incident");

    // A local release does not lift a fleet engage.
    cli_ok(&ps[1].config, &["kill-switch", "release"]);
    released_here(&fx, &ps[1]);
    cli_ok(
        &ps[1].config,
        &["kill-switch", "engage", "--fleet", "--reason", "again"],
    );
    all_within(&ps, ENGAGE_REACH, "refusing", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    let (code, _, err) = cli(&ps[0].config, &["kill-switch", "release"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("stays ENGAGED by the fleet-wide engage"), "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        encrypt_status(&fx, &ps[0], None),
        400,
        "the fleet engage must hold"
    );
    cli_ok(&ps[0].config, &["kill-switch", "release", "--fleet"]);
    all_within(&ps, RELEASE_REACH, "serving", |p| {
        encrypt_status(&fx, p, None) == 200
    });
}

#[test]
fn a_fleet_engaged_instance_restarts_engaged_and_is_released_by_the_fleet_release() {
    let fx = Fixture::new();
    let mut ps = fleet(&fx, 2, false);
    cli_ok(
        &ps[0].config,
        &["kill-switch", "engage", "--fleet", "--reason", "restart drill"],
    );
    all_within(&ps, ENGAGE_REACH, "refusing", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    let b = ps.pop().expect("instance 1");
    let cfg_b = instance_config(&fx, "i1", false);
    // Stopped as systemd stops it: a kill -9 during the login of its release check would
    // empty SoftHSM2's token file (see `TestProxy::terminate`).
    b.terminate();
    let b = TestProxy::start_with(&fx, &cfg_b, &[]);
    assert_eq!(
        encrypt_status(&fx, &b, None),
        400,
        "restarted instance must stay engaged"
    );
    assert_eq!(status(&b.config)["proxy"]["fleet_by"]["reason"], "restart drill");
    cli_ok(&ps[0].config, &["kill-switch", "release", "--fleet"]);
    ps.push(b);
    all_within(&ps, RELEASE_REACH, "serving", |p| {
        encrypt_status(&fx, p, None) == 200
    });
}

#[test]
fn an_offline_fleet_engage_reaches_the_running_instances() {
    let fx = Fixture::new();
    let ps = fleet(&fx, 1, false);
    // A config with no daemon: the command writes the mark on the token itself.
    let offline = fx.write_config(&instance_config(&fx, "offline", false));
    let (code, out, err) = cli(
        &offline,
        &["kill-switch", "engage", "--fleet", "--reason", "from a jump host"],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("fleet mark written on token(s)"), "{out}");
    all_within(&ps, ENGAGE_REACH, "refusing", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    assert_eq!(
        status(&ps[0].config)["proxy"]["fleet_by"]["reason"],
        "from a jump host"
    );
    let (code, out, err) = cli(&offline, &["kill-switch", "release", "--fleet"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    all_within(&ps, RELEASE_REACH, "serving", |p| {
        encrypt_status(&fx, p, None) == 200
    });
}

#[test]
fn fleet_applies_to_proxy_and_keystore_scopes_only() {
    let fx = Fixture::new();
    let ps = fleet(&fx, 1, false);
    let (code, _, err) = cli(
        &ps[0].config,
        &["kill-switch", "engage", "--fleet", "--key", KEY_AES],
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("--fleet") || err.contains("cannot be used with"),
        "{err}"
    );
    assert_eq!(encrypt_status(&fx, &ps[0], None), 200);
}

/// A token that refuses the fleet mark: the instance that ran the command is engaged anyway
/// (fail closed), and the command says the fleet is not and exits 1.
#[test]
fn a_fleet_engage_no_token_takes_engages_this_instance_only_and_exits_1() {
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    section(&mut cfg, "state").insert("directory".into(), "state-shim".into());
    section(&mut cfg, "admin").insert("socket".into(), "admin-shim.sock".into());
    let p = TestProxy::start_with(&fx, &cfg, &[]);
    set_control(&control, "refuse_data_objects");
    let (code, out, err) = cli(&p.config, &["kill-switch", "engage", "--fleet", "--reason", "r"]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert!(out.contains("on THIS instance only"), "{out}");
    assert!(err.contains("no token took the fleet mark"), "{err}");
    // What the command reported holds: not only at once, but through the release checks a
    // disconnected instance makes (the first one on the watch's next tick, then every 2 s):
    // the token never carried a mark, and its absence is no release.
    let engaged = |p: &TestProxy| {
        let s = status(&p.config);
        encrypt_status(&fx, p, None) == 400 && s["proxy"]["fleet_by"]["reason"] == "r"
    };
    holds_for(&p, PROBE_CHECKS, "engaged by the unmarked fleet engage", engaged);
    // And through a restart: the instance reads the state file, then the token (no mark).
    drop(p);
    let p = TestProxy::start_with(&fx, &cfg, &[]);
    holds_for(&p, PROBE_CHECKS, "engaged after a restart", engaged);
    // Only a release --fleet on this instance lifts it.
    set_control(&control, "none");
    cli_ok(&p.config, &["kill-switch", "release", "--fleet"]);
    released_here(&fx, &p);
}

/// Logins recorded by the fault shim for `control` so far.
fn logins(control: &Path) -> usize {
    std::fs::read_to_string(control.with_extension("control.logins"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// An instance disconnected by a fleet engage looks for the release every 2 s, but logs in
/// only when the public fleet epoch changed (or every 30 s): each login is a write of
/// SoftHSM2's token file, which a kill -9 at that moment destroys. The release, which changes
/// the epoch, still reaches it at the next check.
#[test]
fn a_disconnected_instance_does_not_log_in_until_the_fleet_marks_change() {
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    section(&mut cfg, "state").insert("directory".into(), "state-shim".into());
    section(&mut cfg, "admin").insert("socket".into(), "admin-shim.sock".into());
    let ps = vec![
        TestProxy::start_with(&fx, &instance_config(&fx, "plain", false), &[]),
        TestProxy::start_with(&fx, &cfg, &[]),
    ];
    let before = logins(&control);
    cli_ok(
        &ps[0].config,
        &["kill-switch", "engage", "--fleet", "--reason", "quiet"],
    );
    all_within(&ps, ENGAGE_REACH, "refusing Encrypt", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    // Its first release check logs in (it has seen no epoch yet) ...
    assert!(
        wait_until(RELEASE_REACH, || logins(&control) > before),
        "no release check logged in: {}",
        ps[1].logs()
    );
    // ... and the next ones, every 2 s, do not, while nothing changes on the token.
    let checked = logins(&control);
    std::thread::sleep(Duration::from_secs(7));
    let quiet = logins(&control) - checked;
    assert_eq!(
        quiet, 0,
        "logins in 7 s of unchanged fleet marks (3 or 4 before the epoch)"
    );
    assert_eq!(encrypt_status(&fx, &ps[1], None), 400, "still engaged");
    // The release changes the epoch: the next check logs in, finds no mark, and releases.
    cli_ok(&ps[0].config, &["kill-switch", "release", "--fleet"]);
    all_within(&ps, RELEASE_REACH, "serving", |p| {
        encrypt_status(&fx, p, None) == 200
    });
}

/// SoftHSM2 refuses a data-object write now and then (`CKR_GENERAL_ERROR`) while other sessions
/// read the token, as the other instances' polls do: the fleet mark is tried again, and the
/// engage reaches the fleet instead of engaging the instance that ran it only.
#[test]
fn a_fleet_engage_survives_a_transient_refusal_of_its_mark() {
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    section(&mut cfg, "state").insert("directory".into(), "state-shim".into());
    section(&mut cfg, "admin").insert("socket".into(), "admin-shim.sock".into());
    let ps = vec![
        TestProxy::start_with(&fx, &cfg, &[]),
        TestProxy::start_with(&fx, &instance_config(&fx, "plain", false), &[]),
    ];
    set_control(&control, "data_general_error 2");
    let (code, out, err) = cli(
        &ps[0].config,
        &["kill-switch", "engage", "--fleet", "--reason", "transient"],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("fleet mark written"), "{out}");
    all_within(&ps, ENGAGE_REACH, "refusing Encrypt", |p| {
        encrypt_status(&fx, p, None) == 400
    });
    assert_eq!(status(&ps[1].config)["proxy"]["fleet_by"]["reason"], "transient");
    cli_ok(&ps[1].config, &["kill-switch", "release", "--fleet"]);
    all_within(&ps, RELEASE_REACH, "serving", |p| {
        encrypt_status(&fx, p, None) == 200
    });
}

/// A token can look absent for a moment (an HSM group failing over, a device re-enumerated;
/// here the fault shim hides it for 1.2 s). A fleet release from an instance disconnected by
/// the engage outlasts such a moment instead of failing.
#[test]
fn a_fleet_release_outlasts_a_token_that_looks_absent_for_a_moment() {
    let fx = Fixture::new();
    let (mut cfg, control) = shimmed_config(&fx);
    section(&mut cfg, "state").insert("directory".into(), "state-shim".into());
    section(&mut cfg, "admin").insert("socket".into(), "admin-shim.sock".into());
    let p = TestProxy::start_with(&fx, &cfg, &[]);
    cli_ok(
        &p.config,
        &["kill-switch", "engage", "--fleet", "--reason", "absent"],
    );
    assert!(
        wait_until(ENGAGE_REACH, || status(&p.config)["tokens"][0]["connected"]
            == false),
        "{}",
        status(&p.config)
    );
    set_control(&control, "token_not_present");
    let back = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            set_control(&control, "none");
        })
    };
    let (code, out, err) = cli(&p.config, &["kill-switch", "release", "--fleet"]);
    back.join().expect("control thread");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("released proxy"), "{out}");
    released_here(&fx, &p);
}
