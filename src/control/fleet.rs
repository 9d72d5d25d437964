//! The fleet-wide kill switch: one command on any instance cuts AWS off every instance sharing
//! the token, with no coordination service. The token is the one thing the instances already
//! share, so an engage is a token-resident mark (`hsm::fleet`) that every instance reads with
//! its disabled-key marks (every 0.5 s) and honours by engaging the same scope locally,
//! persisted in its own state file under `fleet` (a restart stays engaged even if the token is
//! unreachable then).
//!
//! Releasing reaches instances in two ways:
//! - keystore scope: the instances stay connected, so the next poll sees the mark gone and
//!   the watch releases the scope here (within about a second);
//! - proxy scope: an instance engaged fleet-wide has logged out and finalized the module, so it
//!   cannot see the mark. Every [`PROBE_EVERY`] it opens a connection of its own and reads the
//!   public fleet epoch (`hsm::fleet_epoch`) without logging in; when that changed since its
//!   last full check (or is unreadable, or that check is [`FULL_CHECK_EVERY`](crate::hsm::fleet_epoch::FULL_CHECK_EVERY) old), it logs in,
//!   reads the fleet marks, and logs out again; when no token carries the proxy mark any more
//!   it releases and reconnects. A refused PIN stops these checks (HSMs lock PINs after a few
//!   refusals) until the instance is released by hand. While the proxy is also engaged
//!   locally on an instance, that instance does not check: a local engage means "no login".
//!
//! A token read that began before this instance last changed a scope is never acted on: it
//! may predate the change's own token write (see [`super::switch::Switch::fleet_changed_since`]).
//! An engage that no token took the mark of holds on the instance that ran it only, and no
//! token read releases it (no mark is what the token showed from the start): only a
//! `release --fleet` on that instance does.

use super::error::ControlError;
use super::protocol::{Action, AdminReply, ChangeReport, DaemonState, FleetReach, Scope, TokenFailure};
use super::state_file::Engagement;
use super::switch::{FleetScope, ReleaseError};
use super::verbs::{not_durable_note, Control};
use crate::hsm::fleet_epoch::FleetEpoch;
use crate::hsm::{HsmError, Token};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod release_check;

/// How often the watch compares the marks read by the token polls with the switch.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// How often an instance disconnected by a fleet proxy engage checks whether it was released.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// The `via` of engagements and releases the watch makes from token marks.
const VIA_MARK: &str = "fleet mark on the token";

fn fleet_scope(scope: &Scope) -> Result<FleetScope, ControlError> {
    match scope {
        Scope::Proxy => Ok(FleetScope::Proxy),
        Scope::Keystore(p) => Ok(FleetScope::Keystore(p.clone())),
        Scope::Key(_) => Err(ControlError::FleetKeyScope),
    }
}

/// The record a mark carries; a record this version cannot read still engages (fail closed).
fn record_of(bytes: &[u8]) -> Engagement {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Engagement {
        reason: "fleet mark with an unreadable record".into(),
        by_uid: None,
        via: VIA_MARK.into(),
        at: crate::clock::now_rfc3339(),
    })
}

/// The release a watch makes when it finds a fleet mark gone.
fn mark_removed() -> Engagement {
    Engagement {
        reason: "the fleet mark was removed from the token".into(),
        by_uid: None,
        via: VIA_MARK.into(),
        at: crate::clock::now_rfc3339(),
    }
}

/// State of the watch between ticks.
#[derive(Default)]
pub(super) struct Watch {
    last_probe: std::sync::Mutex<Option<Instant>>,
    /// Each token's fleet epoch at the last release check that logged in, and when.
    epochs: std::sync::Mutex<Option<(Vec<FleetEpoch>, Instant)>>,
    /// Set after a refused PIN: no more probes until this instance is released by hand.
    probes_stopped: AtomicBool,
    /// Mark labels this version does not understand, warned about once each.
    unknown: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Control {
    /// `kill-switch engage --fleet`: writes the mark on every token, then engages here.
    pub(super) async fn engage_fleet(self: &Arc<Self>, scope: &Scope, by: Engagement) -> AdminReply {
        let started = Instant::now();
        let fs = match fleet_scope(scope) {
            Ok(s) => s,
            Err(e) => return AdminReply::failed(e),
        };
        if let FleetScope::Keystore(p) = &fs {
            if let Err(e) = self.known_prefix(p) {
                return AdminReply::failed(e);
            }
        }
        tracing::warn!(scope = %fs.label(), by_uid = ?by.by_uid, via = %by.via, reason = ?by.reason, "FLEET kill switch ENGAGE");
        let record = serde_json::to_vec(&by).unwrap_or_default();
        // The marks go first, then the engage here: a poll of this instance that read the
        // token between the two would otherwise see the scope engaged but unmarked and
        // release it. Closing the proxy gate also starts the disconnect, which must not
        // finalize the module under the mark writes.
        let reach = {
            let _g = self.proxy_lock.lock().await;
            let label = fs.label();
            self.on_tokens(move |t| t.write_fleet_mark(&label, &record).map(|_| true))
                .await
        };
        // With no mark on any token, no token read can show the engage: the watch must not
        // take the mark's absence for a release of what this command reports in force.
        let engaged = if reach.written.is_empty() {
            self.switch.engage_fleet_unmarked(&fs, by)
        } else {
            self.switch.engage_fleet(&fs, by)
        };
        if fs == FleetScope::Proxy {
            let this = self.clone();
            tokio::spawn(async move { this.disconnect_all().await });
        }
        let mut notes = Vec::new();
        if reach.written.is_empty() {
            notes.push(format!(
                "no token took the fleet mark ({}): only THIS instance is engaged",
                failures(&reach)
            ));
        } else if !reach.failed.is_empty() {
            notes.push(format!(
                "some tokens did not take the fleet mark ({}); instances that share only those tokens are NOT engaged",
                failures(&reach)
            ));
        }
        notes.extend(not_durable_note(engaged.not_durable.clone()));
        AdminReply::Changed(ChangeReport {
            action: Action::Engage,
            scope: scope.clone(),
            in_force: true,
            durable: engaged.not_durable.is_none() && !reach.written.is_empty(),
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            fleet: Some(reach),
        })
    }

    /// `kill-switch release --fleet`: removes the mark from every token, then releases here.
    /// A mark left on any token keeps the fleet engaged, so nothing is released unless every
    /// token answered.
    pub(super) async fn release_fleet(self: &Arc<Self>, scope: &Scope, by: Engagement) -> AdminReply {
        let started = Instant::now();
        let fs = match fleet_scope(scope) {
            Ok(s) => s,
            Err(e) => return AdminReply::failed(e),
        };
        let seen = self.switch.fleet_epoch(&fs);
        tracing::warn!(scope = %fs.label(), by_uid = ?by.by_uid, via = %by.via, reason = ?by.reason, "FLEET kill switch RELEASE");
        let _g = self.proxy_lock.lock().await;
        let label = fs.label();
        let reach = self.on_tokens(move |t| t.remove_fleet_mark(&label)).await;
        if !reach.failed.is_empty() {
            return AdminReply::failed(format!(
                "the fleet mark could not be removed from every token ({}); the fleet stays ENGAGED where a mark remains, and this instance is not released",
                failures(&reach)
            ));
        }
        let report = |in_force: bool, note: Option<String>, reach: FleetReach| {
            AdminReply::Changed(ChangeReport::release(scope, in_force, note, started, Some(reach)))
        };
        let others = match &fs {
            FleetScope::Proxy => format!(
                "other instances disconnected by the fleet engage notice within {} s",
                PROBE_EVERY.as_secs() + 1
            ),
            FleetScope::Keystore(_) => "other instances notice within a second".to_owned(),
        };
        match self.release_fleet_here(&fs, by, seen).await {
            Ok(FleetRelease::Released) => report(true, Some(others), reach),
            Ok(FleetRelease::LocalHolds) => report(
                true,
                Some(format!(
                    "{others}; THIS instance stays ENGAGED by its own local engage (release it without --fleet)"
                )),
                reach,
            ),
            Err(ReleaseError::Superseded) => report(
                false,
                Some(ReleaseError::Superseded.to_string()),
                reach,
            ),
            Err(e) => AdminReply::failed(format!("the fleet marks are removed, but this instance could not record the release: {e}")),
        }
    }

    /// Releases a fleet scope on this instance; the caller holds `proxy_lock`.
    async fn release_fleet_here(
        self: &Arc<Self>,
        fs: &FleetScope,
        by: Engagement,
        seen: super::switch::Epoch,
    ) -> Result<FleetRelease, ReleaseError> {
        match fs {
            FleetScope::Keystore(p) => {
                self.switch.release_fleet_keystore(p, by, seen)?;
                Ok(if self.switch.gates().keystore_closed(p) {
                    FleetRelease::LocalHolds
                } else {
                    FleetRelease::Released
                })
            }
            FleetScope::Proxy => {
                let pending = self.switch.begin_fleet_proxy_release(by, seen)?;
                if self.switch.proxy_engaged_locally() {
                    let _ = self.switch.finish_proxy_release(pending);
                    return Ok(FleetRelease::LocalHolds);
                }
                if self.daemon == DaemonState::Running {
                    self.reconnect_tokens().await;
                    self.adopt_marks();
                }
                if self.switch.finish_proxy_release(pending) {
                    Ok(FleetRelease::Released)
                } else {
                    Err(ReleaseError::Superseded)
                }
            }
        }
    }

    /// Runs `f` on every token on a blocking thread: which tokens it succeeded on, which not.
    async fn on_tokens(
        &self,
        f: impl Fn(&Token) -> Result<bool, HsmError> + Send + Sync + 'static,
    ) -> FleetReach {
        let tokens = self.tokens.clone();
        tokio::task::spawn_blocking(move || {
            let mut reach = FleetReach::default();
            for t in &tokens {
                match f(t) {
                    Ok(_) => reach.written.push(t.name.clone()),
                    Err(e) => reach.failed.push(TokenFailure {
                        token: t.name.clone(),
                        error: e.to_string(),
                    }),
                }
            }
            reach
        })
        .await
        .unwrap_or_else(|e| FleetReach {
            written: Vec::new(),
            failed: vec![TokenFailure {
                token: "-".into(),
                error: format!("token task failed: {e}"),
            }],
        })
    }

    /// Engages here every fleet scope a fresh token read shows marked and this instance does
    /// not yet honour. Synchronous: the daemon calls it once before serving, and a release
    /// calls it after reconnecting, before the gate opens. Returns whether the proxy scope
    /// was engaged (the caller starts the disconnect).
    pub(super) fn adopt_marks(self: &Arc<Self>) -> bool {
        let mut proxy = false;
        for (scope, (record, read_started)) in self.marked_scopes() {
            if self.switch.fleet_engagement(&scope).is_some()
                || self.switch.fleet_changed_since(&scope, read_started)
            {
                continue;
            }
            let by = record_of(&record);
            tracing::warn!(scope = %scope.label(), by_uid = ?by.by_uid, via = %by.via, at = %by.at, reason = ?by.reason, "FLEET kill switch ENGAGE seen on the token");
            let engaged = self.switch.engage_fleet(&scope, by.clone());
            if let Some(e) = engaged.not_durable {
                tracing::error!(scope = %scope.label(), error = %e, "fleet engage in force but NOT durable");
            }
            self.audit_in_background("engage", &format!("fleet:{}", scope.label()), by);
            proxy |= scope == FleetScope::Proxy;
        }
        proxy
    }

    /// Every fleet scope marked on a token as last read by the polls, with the mark's record
    /// and when that read began (the oldest read among tokens carrying it).
    fn marked_scopes(&self) -> BTreeMap<FleetScope, (Vec<u8>, Instant)> {
        let mut out: BTreeMap<FleetScope, (Vec<u8>, Instant)> = BTreeMap::new();
        for snap in self.tokens.iter().filter_map(|t| t.fleet_snapshot()) {
            for (label, record) in snap.marks {
                let Some(scope) = FleetScope::parse(&label) else {
                    let mut unknown = self.fleet_watch.unknown.lock().unwrap_or_else(|p| p.into_inner());
                    if unknown.insert(label.clone()) {
                        tracing::warn!(label = %label, "ignoring a fleet mark this version does not know");
                    }
                    continue;
                };
                let entry = out.entry(scope).or_insert((record, snap.read_started));
                entry.1 = entry.1.min(snap.read_started);
            }
        }
        out
    }

    /// Releases here the fleet keystore scopes whose marks every token's last read no longer
    /// shows (reads that began after this instance's last change of the scope).
    async fn release_unmarked_keystores(self: &Arc<Self>) {
        for scope in self.switch.fleet_scopes() {
            let FleetScope::Keystore(p) = &scope else { continue };
            if self.switch.fleet_unmarked(&scope) {
                continue;
            }
            let seen = self.switch.fleet_epoch(&scope);
            let label = scope.label();
            let snaps: Vec<_> = self.tokens.iter().map(|t| t.fleet_snapshot()).collect();
            let all_fresh_and_unmarked = !snaps.is_empty()
                && snaps.iter().all(|s| {
                    s.as_ref().is_some_and(|s| {
                        !s.marks.contains_key(&label)
                            && !self.switch.fleet_changed_since(&scope, s.read_started)
                    })
                });
            if !all_fresh_and_unmarked {
                continue;
            }
            let by = mark_removed();
            match self.switch.release_fleet_keystore(p, by.clone(), seen) {
                Ok(()) => {
                    tracing::warn!(scope = %label, "FLEET kill switch RELEASE seen on the token");
                    self.audit_in_background("release", &format!("fleet:{label}"), by);
                }
                Err(ReleaseError::Superseded) => {}
                Err(e) => {
                    tracing::error!(scope = %label, error = %e, "fleet release seen on the token but not recorded; the keystore stays ENGAGED here")
                }
            }
        }
    }

    /// One pass of the watch.
    async fn fleet_tick(self: &Arc<Self>) {
        if self.adopt_marks() {
            self.disconnect_all().await;
        }
        self.release_unmarked_keystores().await;
        self.probe_proxy_release().await;
    }

    /// Starts the watch (the running daemon only): a first pass now, before serving, then one
    /// every 0.1 s.
    pub fn start_fleet_watch(self: &Arc<Self>) {
        if self.adopt_marks() {
            let this = self.clone();
            tokio::spawn(async move { this.disconnect_all().await });
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(WATCH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match weak.upgrade() {
                    Some(c) => c.fleet_tick().await,
                    None => return,
                }
            }
        });
    }

    fn audit_in_background(self: &Arc<Self>, action: &str, scope: &str, by: Engagement) {
        let (this, action, scope) = (self.clone(), action.to_owned(), scope.to_owned());
        tokio::spawn(async move { this.audit_admin(false, &action, &scope, &by).await });
    }
}

/// Where a fleet release left this instance.
enum FleetRelease {
    Released,
    /// The fleet scope is released, but a local engage of the same scope still holds.
    LocalHolds,
}

fn failures(reach: &FleetReach) -> String {
    reach
        .failed
        .iter()
        .map(|f| format!("{}: {}", f.token, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}
