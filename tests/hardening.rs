//! Production hardening, end to end against the real `xks-bridge serve`: mutual TLS with a
//! client-name allow-list, hot reload (SIGHUP and `xks-bridge reload`) without dropping
//! connections, per-keystore quotas, bounded memory and connections under abuse, the idle and
//! header timeouts, root refusal, the systemd unit and the sd_notify protocol. One test binary;
//! each behaviour is a module under `tests/hardening/`.
//!
//! Certificates are made in the test with `rcgen`; everything listens on 127.0.0.1 and lives in
//! temp dirs; every wait is bounded.

mod common;

#[path = "hardening/budget.rs"]
mod budget;
#[path = "hardening/certs.rs"]
mod certs;
#[path = "hardening/connections.rs"]
mod connections;
#[path = "hardening/memory.rs"]
mod memory;
#[path = "hardening/metrics_listener.rs"]
mod metrics_listener;
#[path = "hardening/mtls.rs"]
mod mtls;
#[path = "hardening/quotas.rs"]
mod quotas;
#[path = "hardening/raw.rs"]
mod raw;
#[path = "hardening/reload.rs"]
mod reload;
#[path = "hardening/root.rs"]
mod root;
#[path = "hardening/systemd.rs"]
mod systemd;

use common::*;

/// A signed GetHealthStatus on `client`; `Err` on a transport failure.
fn signed_health(client: &mut Client, signer: &Signer) -> Result<Resp, String> {
    let path = format!("{BASE}/health");
    let body = health_body("hardening-health", "KmsHealthCheck").to_string();
    let mut headers = vec![("host".to_owned(), client.authority.clone())];
    headers.extend(signer.headers("POST", &client.authority, &path, body.as_bytes()));
    client.try_send_raw("POST", &path, &headers, body.into_bytes())
}

/// Rewrites the daemon's own config file in place.
fn rewrite_config(proxy: &TestProxy, cfg: &toml::Table) {
    std::fs::write(&proxy.config, toml::to_string(cfg).expect("serialize config")).expect("rewrite config");
}
