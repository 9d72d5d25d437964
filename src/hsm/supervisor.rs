//! A background thread per token: reconnects when the token is unavailable (backoff 0.5 s,
//! 1 s, then every 1.5 s), stays idle while the kill switch is engaged, and refreshes the
//! disabled-key and fleet marks from the token every half second so instances sharing a token agree
//! within a second.
//!
//! The backoff is short on purpose: KMS sees failures for as long as the token is down *plus*
//! the wait for the next attempt, so the proxy serves again at most 1.5 s after the token
//! returns, whatever the outage lasted. An attempt costs little (load, `C_Initialize`, slot
//! list, `C_OpenSession`; the PIN is only presented to a token that answers, and a refused PIN
//! has its own slow schedule below). "Still unavailable" is logged at the first failure, when
//! the reason changes, and then once a minute.
//!
//! Before each reconnect it retires the failed connection (`Token::retire_failed`: sessions
//! closed, module finalized when nothing else uses it), so the attempt starts from a fresh
//! `C_Initialize`.
//!
//! A refused PIN (incorrect, locked, expired) gets bounded, backed-off retries, because every
//! attempt counts against the HSM's retry counter: after the first refusal it tries again in
//! 30 s, then once more 60 s later, and after the third refusal it stops, with an error log,
//! until the daemon restarts (or the proxy kill switch is released, which reconnects once).
//! Requests and health checks never log in; while the PIN is refused they answer "unavailable".

use super::beacon;
use super::connection::{logged_in, CountedSession};
use super::fleet::{self, FleetSnapshot};
use super::token::Token;
use super::{marks, versions, HsmError};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(500);
/// How often the thread looks at the kill switch, so it never delays a disconnect.
const TICK: Duration = super::IDLE_CHECK;
const MAX_BACKOFF: Duration = Duration::from_millis(1500);
/// Repeats of an unchanged "still unavailable" warning are logged at most this often.
const QUIET: Duration = Duration::from_secs(60);
/// Delays before the second and third login after a refused PIN; there is no fourth.
const LOGIN_RETRIES: [Duration; 2] = [Duration::from_secs(30), Duration::from_secs(60)];
/// How long a retiring connection waits for the workers to close their sessions.
const RETIRE_WAIT: Duration = Duration::from_secs(1);

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
    let mut beacon = beacon::Watch::new();
    // Refused logins since the last successful connection.
    let mut refusals = 0usize;
    let mut next = Instant::now() + POLL;
    // Reason and time of the last "still unavailable" warning, and the failures since.
    let mut last_warning: Option<(String, Instant)> = None;
    let mut unlogged_failures = 0u64;
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
            refusals = 0;
            continue;
        }
        if connected {
            backoff = POLL;
            refusals = 0;
            refresh_marks(token, &mut poller, &mut beacon);
            continue;
        }
        if refusals > LOGIN_RETRIES.len() {
            continue;
        }
        token.retire_failed(RETIRE_WAIT);
        if token.killed() {
            continue;
        }
        match token.connect() {
            Ok(()) => {
                tracing::info!(token = %token.name, "token reconnected");
                (last_warning, unlogged_failures) = (None, 0);
            }
            Err(HsmError::LoginRefused(msg)) => {
                refusals += 1;
                match LOGIN_RETRIES.get(refusals - 1) {
                    Some(delay) => {
                        tracing::error!(token = %token.name, attempt = refusals, retry_in_s = delay.as_secs(), "{msg}; retrying later, at most {} attempts in all, to avoid locking the PIN", LOGIN_RETRIES.len() + 1);
                        next = Instant::now() + *delay;
                    }
                    None => {
                        tracing::error!(token = %token.name, attempts = refusals, "{msg}; giving up to avoid locking the PIN: fix the PIN, then restart the daemon (or release the proxy kill switch)")
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                let repeat = last_warning
                    .as_ref()
                    .is_some_and(|(r, at)| *r == reason && at.elapsed() < QUIET);
                if repeat {
                    unlogged_failures += 1;
                } else {
                    tracing::warn!(token = %token.name, error = %reason, retry_in_ms = backoff.as_millis() as u64, failures_not_logged = unlogged_failures, "token still unavailable");
                    (last_warning, unlogged_failures) = (Some((reason, Instant::now())), 0);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Reads the disabled-key marks and installs them unless a local disable/enable overlapped
/// the read (then the next tick tries again), and the fleet marks. A session that is not
/// logged in sees no private object, so its "no marks" is never installed: the previous marks
/// stay.
fn refresh_marks<'t>(token: &'t Token, poller: &mut Option<CountedSession<'t>>, beacon: &mut beacon::Watch) {
    let seen = token.key_state_changes();
    let seen_versions = token.version_changes();
    let read_started = Instant::now();
    let _call = token.conn.enter();
    if token.killed()
        || poller
            .as_ref()
            .is_some_and(|p| p.generation != token.generation())
    {
        *poller = None;
    }
    if poller.is_none() {
        match token.open_session() {
            Ok(s) => *poller = Some(s),
            // Noticed without any traffic: reconnect now rather than at the next request.
            Err(e) if e.device_lost() => token.mark_failed(&e),
            Err(_) => {}
        }
    }
    let Some(p) = poller.as_ref() else { return };
    match logged_in(p.session()) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(token = %token.name, "poll session is not logged in; disabled-key marks kept as last read");
            return;
        }
        Err(e) => {
            tracing::warn!(token = %token.name, error = %e, "cannot check the poll session's login");
            *poller = None;
            return;
        }
    }
    // Nothing announced since the last full read: the searches below would find what they
    // found then (see `beacon`).
    if beacon.unchanged(p.session()) {
        return;
    }
    // Key versions ride on the same poll: a rotation or retirement made through any instance
    // sharing the token is in force here within a second.
    match versions::read_all(p.session()) {
        Ok(all) => token.install_polled_versions(seen_versions, all),
        Err(e) => {
            beacon.reset();
            tracing::warn!(token = %token.name, error = %e, "cannot read key versions")
        }
    }
    match marks::disabled_set(p.session()).and_then(|set| Ok((set, fleet::read(p.session())?))) {
        Ok((set, fleet_marks)) => {
            if !token.install_polled_marks(seen, set) {
                tracing::debug!(token = %token.name, "marks read during a local key-state change discarded");
            }
            token.install_fleet(FleetSnapshot {
                marks: fleet_marks,
                read_started,
            });
        }
        Err(e) => {
            beacon.reset();
            tracing::warn!(token = %token.name, error = %e, "cannot read disabled-key marks");
            *poller = None;
        }
    }
    beacon.full_read_done();
}
