//! Test harness shared by the integration-test binaries (`mod common; use common::*;`). Every
//! helper is re-exported here, so `common::NAME` reaches it whichever file defines it:
//!
//! - [`fixture`]: a private SoftHSM2 token made by `hsm-fixtures/setup.sh` ([`Fixture`]), its
//!   constants (keys, API base) and config-editing helpers ([`section`], [`entry`]).
//! - [`fleet`]: N daemons on one token behind HAProxy running the shipped config ([`Fleet`]),
//!   and signed load through it that counts failures ([`Load`]).
//! - [`proxy`]: a running `xks-bridge serve` child ([`TestProxy`]); [`Harness`] = fixture +
//!   daemon + signed session.
//! - [`client`]: an HTTPS client built on hyper + tokio-rustls that trusts the fixture CA
//!   ([`Client`], [`Resp`]) and request signing with the independent `aws-sigv4` crate
//!   ([`Signer`]).
//! - [`xks`]: the XKS operations as one-liners ([`Xks`]) and the request bodies.
//! - [`assert`]: assertions on XKS responses ([`assert_error`], [`assert_ok`], ...).
//! - [`cli`]: operator commands (`xks-bridge ... --config`), signals.
//! - [`process`]: the binary under test ([`BIN`]), children with captured output
//!   ([`Spawned`]), bounded runs and waits ([`run_bounded`], [`wait_until`], [`WAIT`]).
//! - [`host`]: tools, root and the unprivileged user tests need ([`require_tool`],
//!   [`as_nobody`]).
//! - [`shim`]: the fault-injecting PKCS#11 module ([`shim()`], [`shimmed_config`],
//!   [`set_control`]).
//! - [`token`]: PKCS#11 sessions on a fixture's token from the test ([`token_test`],
//!   [`with_token_session`]).
//!
//! Everything binds 127.0.0.1 only, lives in temp dirs, waits with timeouts and kills its
//! children on drop.
//!
//! Each test binary compiles this module on its own and uses a different part of it, so a
//! helper unused by one binary would warn there: `dead_code` is allowed per module below, and
//! only for that reason (clippy and every other lint still apply).

#[allow(dead_code)]
pub mod assert;
#[allow(dead_code)]
pub mod cli;
#[allow(dead_code)]
pub mod client;
#[allow(dead_code)]
pub mod fixture;
#[allow(dead_code)]
pub mod fleet;
#[allow(dead_code)]
pub mod host;
#[allow(dead_code)]
pub mod process;
#[allow(dead_code)]
pub mod proxy;
#[allow(dead_code)]
pub mod shim;
#[allow(dead_code)]
pub mod token;
#[allow(dead_code)]
pub mod xks;

// A binary that uses nothing from one module would warn that its re-export is unused.
#[allow(unused_imports)]
pub use {
    assert::*, cli::*, client::*, fixture::*, fleet::*, host::*, process::*, proxy::*, shim::*, token::*,
    xks::*,
};
