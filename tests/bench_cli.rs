//! `xks-bridge bench` end to end: against a real quickstart instance (HTTPS, SigV4, SoftHSM2)
//! and directly against its token. Asserts counts, verification and exit statuses, never
//! timings. Everything binds 127.0.0.1, lives in temp dirs, waits with timeouts and kills its
//! children on drop.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_xks-bridge");
/// Bound on every wait: the quickstart's first start (token and key generation) and each run.
const WAIT: Duration = Duration::from_secs(120);

/// Fails the test unless the SoftHSM2 module the quickstart uses is installed.
#[track_caller]
fn require_softhsm() {
    assert!(
        xks_bridge::hsm::setup::find_softhsm_module().is_some(),
        "this test needs the SoftHSM2 PKCS#11 module (Debian package softhsm2); \
         scripts/install-deps.sh installs it"
    );
}

/// Kills the child when the test ends, passed or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a child to exit, failing the test after [`WAIT`].
fn wait(child: &mut Guard, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not finish within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A serving quickstart; `quickstart.json` exists once `start` returns.
struct Quickstart {
    _child: Guard,
    dir: tempfile::TempDir,
}

impl Quickstart {
    fn start() -> Quickstart {
        require_softhsm();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = Guard(
            Command::new(BIN)
                .args(["quickstart", "--listen", "127.0.0.1:0", "--dir"])
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn quickstart"),
        );
        let stdout = child.0.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        // Drains stdout for the child's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // The banner is printed after quickstart.json is written.
                Ok(line) if line.contains("quickstart is serving") => break,
                Ok(_) => {}
                Err(_) => panic!("quickstart did not print its banner within {WAIT:?}"),
            }
        }
        Quickstart { _child: child, dir }
    }

    fn json(&self) -> PathBuf {
        self.dir.path().join("quickstart.json")
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn report(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `xks-bridge bench ARGS` with `env` set (and XKS_BENCH_SECRET unset unless given).
fn bench(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.arg("bench")
        .args(args)
        .env_remove("XKS_BENCH_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Guard(cmd.spawn().expect("spawn bench"));
    let mut out = child.0.stdout.take().expect("stdout");
    let mut err = child.0.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait(&mut child, "bench");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn count(v: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

fn micros(v: &Value, key: &str) -> f64 {
    v["latency_us"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("latency_us.{key} missing in {v}"))
}

#[test]
fn a_mixed_run_counts_every_request_and_verifies_every_answer() {
    let qs = Quickstart::start();
    let qs_json = qs.json();
    let run = bench(
        &[
            "--quickstart",
            qs_json.to_str().expect("utf-8 path"),
            "--requests",
            "400",
            "--connections",
            "4",
            "--mix",
            "encrypt=1,decrypt=1,metadata=1,health=1",
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.report();
    assert_eq!(count(&r, &["errors_total"]), 0, "{r}");
    assert_eq!(count(&r, &["warmup", "errors"]), 0, "{r}");
    assert_eq!(count(&r, &["total"]), 400, "{r}");
    for op in ["encrypt", "decrypt", "metadata", "health"] {
        assert!(count(&r, &["operations", op]) > 0, "{op} never ran: {r}");
    }
    assert!(r["throughput_per_s"].as_f64().is_some_and(|t| t > 0.0), "{r}");
    assert!(micros(&r, "p50") <= micros(&r, "p99"), "{r}");
    assert!(micros(&r, "p99") <= micros(&r, "max"), "{r}");
}

#[test]
fn failures_are_counted_by_error_name_and_fail_the_run() {
    let qs = Quickstart::start();
    let qs_json = qs.json();
    let qs_json = qs_json.to_str().expect("utf-8 path");
    let common = [
        "--quickstart",
        qs_json,
        "--requests",
        "10",
        "--warmup",
        "0",
        "--json",
    ];
    // A secret from the environment wins over quickstart.json's: every signature is wrong.
    let mut args = common.to_vec();
    args.extend(["--mix", "health=1"]);
    let run = bench(&args, &[("XKS_BENCH_SECRET", "not-the-secret")]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let r = run.report();
    assert_eq!(count(&r, &["errors", "AuthenticationFailedException"]), 10, "{r}");
    // The encrypt-only key encrypts the setup ciphertexts but refuses every decrypt.
    let mut args = common.to_vec();
    args.extend([
        "--key-id",
        "quickstart-encrypt-only",
        "--mix",
        "encrypt=1,decrypt=1",
        "--connections",
        "1",
    ]);
    let r = bench(&args, &[]).report();
    assert_eq!(count(&r, &["errors", "InvalidKeyUsageException"]), 5, "{r}");
    assert_eq!(count(&r, &["errors_total"]), 5, "{r}");
}

#[test]
fn raw_token_mode_measures_the_token_directly() {
    require_softhsm();
    // A token nobody else uses: SoftHSM2's file store is not built for two busy processes.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut setup = Command::new(BIN)
        .args(["quickstart", "--setup-only", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Guard)
        .expect("spawn quickstart --setup-only");
    let status = wait(&mut setup, "quickstart --setup-only");
    assert!(status.success(), "quickstart --setup-only failed: {status}");
    let config = dir.path().join("config.toml");
    let run = bench(
        &[
            "--config",
            config.to_str().expect("utf-8 path"),
            "--key-id",
            "quickstart-aes",
            "--raw-token",
            "--requests",
            "200",
            "--threads",
            "2",
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.report();
    assert_eq!(r["mode"], "raw-token", "{r}");
    assert_eq!(count(&r, &["errors_total"]), 0, "{r}");
    assert_eq!(count(&r, &["total"]), 200, "{r}");
    assert_eq!(count(&r, &["threads"]), 2, "{r}");
    assert!(micros(&r, "p50") <= micros(&r, "p99"), "{r}");
}

/// (endpoint, extra arguments, environment, what stderr must name)
type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn bad_arguments_exit_64_naming_the_option() {
    let target = |endpoint| {
        [
            "--endpoint",
            endpoint,
            "--uri-path",
            "/kms/xks/v1",
            "--access-key-id",
            "AKIAEXAMPLE",
            "--key-id",
            "k",
            "--ca-file",
            "/nonexistent/ca.pem",
        ]
    };
    let ok_endpoint = "https://127.0.0.1:9";
    let secret = [("XKS_BENCH_SECRET", "s")];
    let cases: [Case; 7] = [
        (ok_endpoint, &["--connections", "0"], &secret, "--connections"),
        (ok_endpoint, &["--mix", "sign=1"], &secret, "--mix"),
        (
            ok_endpoint,
            &["--duration", "1", "--requests", "5"],
            &secret,
            "--requests",
        ),
        (
            ok_endpoint,
            &["--payload-bytes", "many"],
            &secret,
            "--payload-bytes",
        ),
        (ok_endpoint, &[], &[], "XKS_BENCH_SECRET"),
        (ok_endpoint, &[], &secret, "--ca-file"),
        ("ftp://127.0.0.1", &[], &secret, "--endpoint"),
    ];
    for (endpoint, extra, env, named) in cases {
        let args: Vec<&str> = target(endpoint).iter().chain(extra).copied().collect();
        let run = bench(&args, env);
        assert_eq!(run.code, 64, "{args:?}: {}\n{}", run.stdout, run.stderr);
        assert!(
            run.stderr.contains(named),
            "{args:?} should name {named}: {}",
            run.stderr
        );
    }
    let run = bench(&["--quickstart", "/nonexistent/quickstart.json"], &[]);
    assert_eq!(run.code, 64, "{}", run.stderr);
}
