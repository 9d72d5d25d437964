//! Token health as reported to KMS: the status words and the probe a worker runs on its own
//! logged-in session.

use super::connection::{logged_in, State};
use super::token::Token;
use super::{classify, HsmError};
use cryptoki::session::Session;

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
        Ok(self.health_without_probe(status, detail))
    }
}
