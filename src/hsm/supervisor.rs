//! A background thread per token: reconnects when the token is unavailable (exponential
//! backoff 0.5 s to 30 s, never after a refused PIN: every attempt would count against the
//! HSM's retry counter), stays idle while the kill switch is engaged, and refreshes the
//! disabled-key marks from the token every half second so instances sharing a token agree
//! within a second.

use super::token::{CountedSession, Token};
use super::HsmError;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(500);
/// How often the thread looks at the kill switch, so it never delays a disconnect.
const TICK: Duration = super::IDLE_CHECK;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the supervisor thread of `token`.
pub fn spawn(token: Arc<Token>) {
    let name = format!("hsm-{}-supervisor", token.name);
    if let Err(e) = std::thread::Builder::new().name(name).spawn(move || run(&token)) {
        tracing::error!(error = %e, "cannot start token supervisor thread");
    }
}

fn run(token: &Token) {
    let mut backoff = POLL;
    let mut poller: Option<CountedSession<'_>> = None;
    let mut login_refused = false;
    let mut next = Instant::now() + POLL;
    loop {
        std::thread::sleep(TICK);
        if token.killed()
            || poller
                .as_ref()
                .is_some_and(|p| p.generation != token.generation())
        {
            poller = None;
        }
        if Instant::now() < next {
            continue;
        }
        let connected = token.is_connected();
        next = Instant::now()
            + if connected || token.killed() {
                POLL
            } else {
                backoff
            };
        if token.killed() {
            login_refused = false;
            continue;
        }
        if connected {
            backoff = POLL;
            refresh_disabled(token, &mut poller);
            continue;
        }
        if login_refused {
            continue;
        }
        match token.connect() {
            Ok(()) => tracing::info!(token = %token.name, "token reconnected"),
            Err(HsmError::LoginRefused(msg)) => {
                tracing::error!(token = %token.name, "{msg}; not retrying, to avoid locking the PIN");
                login_refused = true;
            }
            Err(e) => {
                tracing::warn!(token = %token.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "token still unavailable");
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn refresh_disabled<'t>(token: &'t Token, poller: &mut Option<CountedSession<'t>>) {
    if poller
        .as_ref()
        .is_some_and(|p| p.generation != token.generation())
    {
        *poller = None;
    }
    if poller.is_none() {
        *poller = token.open_session().ok();
    }
    let Some(p) = poller.as_ref() else { return };
    let _guard = token.disabled_sync.lock().unwrap_or_else(|e| e.into_inner());
    match crate::keyadmin::disabled_set(&p.session) {
        Ok(set) => *token.disabled.write().unwrap_or_else(|e| e.into_inner()) = set,
        Err(e) => {
            tracing::warn!(token = %token.name, error = %e, "cannot read disabled-key marks");
            *poller = None;
        }
    }
}
