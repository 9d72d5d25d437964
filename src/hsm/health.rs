//! Token health as reported to KMS: the status words and the probe a worker runs on its own
//! logged-in session.
//!
//! The probe is deep, as the XKS spec asks of GetHealthStatus (a 200 should mean that an
//! Encrypt or Decrypt right after it would succeed, shown with a dedicated test key, never a
//! key KMS uses): besides the login and the token's flags, it makes an AES-256 session key
//! (`CKA_TOKEN=false`, nothing is written to the token), encrypts and decrypts with it in the
//! configured IV mode exactly as requests do, and destroys it. A failed round trip reports the
//! token `UNAVAILABLE` with the token's answer in the log. A token that will not make such a
//! key for this login (a policy against key generation) cannot be checked this way; the probe
//! then reports what the other checks found, and says so once in the log, rather than calling
//! a token that serves requests unavailable.

use super::connection::{logged_in, State};
use super::gcm_probe::{code, iv_probe, scratch_key, Probe};
use super::token::Token;
use super::{classify, HsmError};
use cryptoki::session::Session;
use std::sync::atomic::Ordering;

/// Label of the health check's session key.
const SELF_TEST_LABEL: &[u8] = b"xks-bridge-health-self-test";

/// The health probe's round trip failed: the token is reported unavailable with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("self-test encryption under iv_source {iv_source:?} failed: {why}")]
pub struct SelfTestFailed {
    /// The configured IV mode the round trip used.
    pub iv_source: &'static str,
    /// What went wrong, as the GCM probe reports it.
    pub why: String,
}

/// Health of a token as reported to KMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStatus {
    /// Serving normally.
    Active,
    /// Serving, but something needs attention (PIN retry counter low, queue full).
    Degraded,
    /// Cannot serve.
    Unavailable,
}

impl TokenStatus {
    /// The spec's string.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStatus::Active => "ACTIVE",
            TokenStatus::Degraded => "DEGRADED",
            TokenStatus::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A health report for one token.
#[derive(Debug, Clone)]
pub struct TokenHealth {
    /// Token name from the config (the EKM id).
    pub name: String,
    /// Status.
    pub status: TokenStatus,
    /// Manufacturer id from the token.
    pub vendor: String,
    /// Model and versions from the token.
    pub model: String,
    /// Why the status is not ACTIVE (logged, not sent).
    pub detail: String,
}

impl Token {
    /// A health report built without a probe (for failures of the probe itself).
    pub fn health_without_probe(&self, status: TokenStatus, detail: &str) -> TokenHealth {
        let (vendor, model) = self.conn.ident.read().unwrap_or_else(|p| p.into_inner()).clone();
        TokenHealth {
            name: self.name.clone(),
            status,
            vendor,
            model,
            detail: detail.to_owned(),
        }
    }

    /// Health probe run by a worker on its own logged-in session.
    pub(super) fn probe(&self, session: &Session) -> Result<TokenHealth, HsmError> {
        if !logged_in(session)? {
            // The token forgot the login (restarted, or logged out by someone else): report it
            // as the token would have, so the worker handles it as a lost login.
            return Err(classify(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserNotLoggedIn,
                cryptoki::context::Function::GetSessionInfo,
            )));
        }
        let state = self.conn.state.read().unwrap_or_else(|p| p.into_inner());
        let State::Connected(c) = &*state else {
            return Ok(self.health_without_probe(TokenStatus::Unavailable, "not connected"));
        };
        let t = c.pkcs11.get_token_info(c.slot).map_err(classify)?;
        let (status, detail) = if t.user_pin_locked() || t.error_state() {
            (
                TokenStatus::Unavailable,
                "user PIN locked or token in error state",
            )
        } else if t.user_pin_count_low() || t.user_pin_final_try() {
            (TokenStatus::Degraded, "user PIN retry counter is low")
        } else {
            (TokenStatus::Active, "")
        };
        drop(state);
        if status == TokenStatus::Unavailable {
            return Ok(self.health_without_probe(status, detail));
        }
        if let Err(why) = self.self_test(session)? {
            return Ok(self.health_without_probe(TokenStatus::Unavailable, &why.to_string()));
        }
        Ok(self.health_without_probe(status, detail))
    }

    /// The GCM round trip under a session key of its own. `Err`: the session or the device
    /// failed (the worker handles it as for a request); `Ok(Err(why))`: the round trip failed.
    fn self_test(&self, s: &Session) -> Result<Result<(), SelfTestFailed>, HsmError> {
        let key = match scratch_key(s, SELF_TEST_LABEL) {
            Ok(k) => k,
            Err(e) => {
                let why = code(&e);
                let e = classify(e);
                if e.device_lost() || e.session_lost() {
                    return Err(e);
                }
                if !self.self_test_skipped.swap(true, Ordering::Relaxed) {
                    tracing::warn!(token = %self.name, refused = %why, "the token refused a session test key: GetHealthStatus checks the login and the token's flags only, not an encryption (said once)");
                }
                return Ok(Ok(()));
            }
        };
        let outcome = iv_probe(s, key, self.iv_source);
        // A session object dies with its session anyway; destroyed now so that none accumulate.
        let _ = s.destroy_object(key);
        Ok(match outcome {
            Probe::Works => Ok(()),
            Probe::Wrong(why) | Probe::Refused(why) | Probe::NotRun(why) => Err(SelfTestFailed {
                iv_source: self.iv_source.name(),
                why,
            }),
        })
    }
}
