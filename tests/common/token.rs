//! Direct token access: PKCS#11 sessions on a fixture's token from the test itself (to read
//! key attributes, or to create and delete keys the proxy refuses to create).
//!
//! SoftHSM2 finds its configuration only through the `SOFTHSM2_CONF` environment variable,
//! read at `C_Initialize`. A test binary runs its tests on parallel threads, so changing its
//! own environment is a data race with every thread that spawns a child; instead
//! [`token_test`] runs the test again in a child process of the same test binary, started
//! with `SOFTHSM2_CONF` naming a file of its own that [`with_token_session`] points at the
//! fixture's token before each `C_Initialize`.

use crate::common::fixture::{Fixture, SOFTHSM_MODULE, TOKEN_LABEL};
use crate::common::process::run_bounded;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// Set (to the directory holding its `softhsm2.conf`) in the child [`token_test`] starts.
const TOKEN_CHILD: &str = "XKS_TESTS_TOKEN_CHILD";
/// Bound on the child's run: a fixture, a daemon and the test itself.
const TOKEN_CHILD_LIMIT: Duration = Duration::from_secs(300);

/// Runs `body`, a whole test that uses [`with_token_session`], in a child process of this test
/// binary whose `SOFTHSM2_CONF` the token sessions can point at a fixture. The calling test
/// passes only if the child ran exactly this one test and it passed; the child's output is in
/// the failure message.
pub fn token_test(body: impl FnOnce()) {
    if std::env::var_os(TOKEN_CHILD).is_some() {
        body();
        return;
    }
    let thread = std::thread::current();
    let name = thread
        .name()
        .filter(|n| *n != "main")
        .expect("token_test needs the test's name (libtest names each test's thread after it)");
    let dir = tempfile::Builder::new()
        .prefix("xks-token-child-")
        .tempdir()
        .expect("temp dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(&conf, "").expect("placeholder softhsm2.conf");
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary's path"));
    cmd.args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(TOKEN_CHILD, dir.path())
        .env("SOFTHSM2_CONF", &conf)
        // For tests that load the fault shim in-process: it forwards to SoftHSM2 and reads its
        // control file, which the test writes (see `token_child_file`).
        .env("FAULTSHIM_REAL_MODULE", SOFTHSM_MODULE)
        .env("FAULTSHIM_CONTROL", dir.path().join("faultshim.control"));
    let (code, out, err) = run_bounded(cmd, TOKEN_CHILD_LIMIT);
    assert!(
        code == Some(0) && out.contains("test result: ok. 1 passed"),
        "{name} in its token process: exit {code:?}\n{out}\n{err}"
    );
}

/// Inside [`token_test`]: the child's `SOFTHSM2_CONF` file, pointed at `fx`'s token, and its
/// `FAULTSHIM_CONTROL` file, for a test that loads a module itself.
pub fn token_child_files(fx: &Fixture) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::var_os(TOKEN_CHILD)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("token_child_files runs only inside token_test(|| ...)"));
    let conf = dir.join("softhsm2.conf");
    std::fs::copy(fx.path("softhsm2.conf"), &conf).expect("point the child's softhsm2.conf at the fixture");
    (conf, dir.join("faultshim.control"))
}

static PKCS11_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with a logged-in read-write user session on the fixture's token, loading SoftHSM2
/// in this process. Only inside [`token_test`]. Serialized process-wide: SoftHSM2 reads its
/// configuration when it is initialised.
pub fn with_token_session<T>(fx: &Fixture, f: impl FnOnce(&cryptoki::session::Session) -> T) -> T {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let conf = std::env::var_os("SOFTHSM2_CONF")
        .filter(|_| std::env::var_os(TOKEN_CHILD).is_some())
        .unwrap_or_else(|| {
            panic!("with_token_session runs only inside token_test(|| ...): wrap the test body in it")
        });
    let _guard = PKCS11_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // SoftHSM2 reads the file SOFTHSM2_CONF names at every C_Initialize: point it at this
    // fixture's token directory.
    let fixture_conf = std::fs::read(fx.path("softhsm2.conf")).expect("fixture softhsm2.conf");
    std::fs::write(&conf, fixture_conf).expect("write the token process's softhsm2.conf");
    let pkcs11 = Pkcs11::new(SOFTHSM_MODULE).expect("load SoftHSM2");
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e}"),
    }
    let out = {
        let slot = pkcs11
            .get_slots_with_token()
            .expect("C_GetSlotList")
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim() == TOKEN_LABEL)
            })
            .expect("fixture token present");
        let session = pkcs11.open_rw_session(slot).expect("C_OpenSession");
        let pin = std::fs::read_to_string(fx.path("secrets/token.pin")).expect("token.pin");
        session
            .login(UserType::User, Some(&AuthPin::from(pin.trim_end())))
            .expect("user login");
        let out = f(&session);
        let _ = session.logout();
        out
    };
    pkcs11.finalize().expect("C_Finalize");
    out
}

/// Generates a secret key on the token: `key_type` AES or GENERIC_SECRET, `len` bytes,
/// persistent, private, sensitive, not extractable, usable for encrypt and decrypt.
pub fn generate_secret_key(
    s: &cryptoki::session::Session,
    label: &str,
    key_type: cryptoki::object::KeyType,
    len: u64,
) -> cryptoki::object::ObjectHandle {
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let mechanism = if key_type == KeyType::AES {
        Mechanism::AesKeyGen
    } else {
        Mechanism::GenericSecretKeyGen
    };
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(key_type),
        Attribute::ValueLen(len.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    s.generate_key(&mechanism, &template).expect("C_GenerateKey")
}

/// Handles of the secret keys labelled `label`.
pub fn find_keys(s: &cryptoki::session::Session, label: &str) -> Vec<cryptoki::object::ObjectHandle> {
    use cryptoki::object::{Attribute, ObjectClass};
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .expect("C_FindObjects")
}

/// OpenSC's `pkcs11-tool`, logged in as the user on `fx`'s token, ready for its action
/// arguments: how an operator (or software other than the proxy) works on the token by hand.
pub fn pkcs11_tool(fx: &Fixture) -> Command {
    crate::common::host::require_tool("pkcs11-tool", "opensc");
    let pin = std::fs::read_to_string(fx.path("secrets/token.pin")).expect("token.pin");
    let mut c = Command::new("pkcs11-tool");
    c.args([
        "--module",
        SOFTHSM_MODULE,
        "--token-label",
        TOKEN_LABEL,
        "--login",
        "--pin",
    ])
    .arg(pin.trim_end())
    .env("SOFTHSM2_CONF", fx.path("softhsm2.conf"));
    c
}

/// Runs a [`pkcs11_tool`] command to success; returns its stdout.
#[track_caller]
pub fn pkcs11_tool_ok(fx: &Fixture, args: &[&str]) -> String {
    let mut c = pkcs11_tool(fx);
    c.args(args);
    let (code, out, err) = run_bounded(c, crate::common::process::WAIT);
    assert_eq!(code, Some(0), "pkcs11-tool {args:?}: {out}\n{err}");
    out
}
