//! xks-bridge: an AWS KMS External Key Store (XKS) proxy in front of a PKCS#11 token.
//!
//! A request's path, one module per step (no module calls back up the chain):
//!
//! 1. [`server`] accepts TCP, completes TLS ([`server::tls`]), reads the body through a cap.
//! 2. [`server::routes`] turns method + path into a [`server::routes::Route`] (keystore,
//!    operation, key id); credentials are per URI prefix, so routing precedes authentication.
//! 3. [`auth`] verifies SigV4 against that keystore's credentials.
//! 4. [`xks`] deserializes the wire types; [`ops`] validates sizes and Base64, builds the AAD
//!    with [`aead`] and calls the token through the async [`hsm::Hsm`] handle.
//! 5. [`hsm`] queues the job to an OS worker thread that owns one logged-in PKCS#11 session.
//! 6. Every failure becomes an [`error::Error`]; its single mapping to an XKS error name and
//!    HTTP status lives in [`error`].
//!
//! `ops` knows nothing of HTTP; `hsm` knows nothing of XKS.
//!
//! The layers, top to bottom; a module imports only modules below it (checked by
//! `tests/architecture.rs`, which fails on any import cycle between top-level modules and on
//! `cryptoki` outside [`hsm`]):
//!
//! | Layer | Modules |
//! |---|---|
//! | assembly | [`daemon`] (start sequence, reload, signals), [`quickstart`], [`mod@bench`], [`doctor_report`] (verdicts on what `hsm`'s doctor probes found) |
//! | operator side | [`control`]: kill-switch state machine, state file, admin protocol, socket, key verbs, instance lock; [`doctor_report`]: judging a token examined by `hsm::doctor` |
//! | request path | [`server`] → [`app`] → [`ops`] → [`keystore`], [`auth`], [`authz`], [`ratelimit`], [`request`] |
//! | sinks | [`metrics`], [`audit`], [`logging`] |
//! | token | [`hsm`]: the only module that calls PKCS#11 |
//! | foundations | [`config`], [`secret`], [`gates`] (kill-switch flags as the request path reads them), [`error`], [`xks`] (wire types, operation names, id syntax), [`aead`], [`clock`], [`exit`], [`module_env`] (a PKCS#11 module's environment, applied by re-executing) |
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aead;
pub mod app;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod bench;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor_report;
pub mod error;
pub mod exit;
pub mod gates;
pub mod hsm;
pub mod keystore;
pub mod logging;
pub mod metrics;
pub mod module_env;
pub mod ops;
pub mod quickstart;
pub mod ratelimit;
pub mod request;
pub mod secret;
pub mod server;
pub mod xks;
