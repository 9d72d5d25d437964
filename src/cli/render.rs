//! Human-readable output of admin replies.

use std::fmt::Write;
use xks_bridge::control::protocol::{AdminReply, DaemonState, DrainStage, KeyInfo, ScopeState, Status};
use xks_bridge::exit::Exit;

/// A reply that does not answer the request: a failure's message, or a protocol mismatch.
pub fn unexpected(reply: AdminReply) -> (i32, String) {
    match reply {
        AdminReply::Failed { error } => (Exit::Failed.code(), error),
        other => (
            Exit::Failed.code(),
            format!("unexpected answer from the daemon: {other:?}"),
        ),
    }
}

fn engaged(b: bool) -> &'static str {
    if b {
        "ENGAGED"
    } else {
        "released"
    }
}

fn durability(engaged: bool, durable: bool) -> &'static str {
    match (engaged, durable) {
        (_, true) => "",
        (true, false) => " (NOT durable: state file not yet written)",
        (false, false) => " (state file not yet written)",
    }
}

/// Who engaged a scope, locally and fleet-wide, one line each.
fn who(o: &mut String, state: &ScopeState) {
    for (layer, by) in [("locally", &state.by), ("FLEET-WIDE", &state.fleet_by)] {
        if let Some(by) = by {
            let _ = writeln!(
                o,
                "  {layer} by uid {} via {} at {}: {:?}",
                by.by_uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
                by.via,
                by.at,
                by.reason
            );
        }
    }
}

/// The `kill-switch status` text.
pub fn status(st: &Status) -> String {
    let mut o = String::new();
    if st.daemon == DaemonState::NotRunning {
        let _ = writeln!(o, "daemon: not running (state read from the state file)");
    }
    if let Some(d) = &st.draining {
        let what = match d.stage {
            DrainStage::Announcing => "/ping answers 503, requests still served",
            DrainStage::Closing => "listeners closed, finishing in-flight requests",
            DrainStage::Done => "every connection closed, exiting",
        };
        let _ = writeln!(
            o,
            "daemon: DRAINING for {} ms (drain delay {} ms): {what}",
            d.elapsed_ms, d.drain_delay_ms
        );
    }
    let _ = writeln!(
        o,
        "proxy: {}{}",
        engaged(st.proxy.engaged),
        durability(st.proxy.engaged, st.proxy.durable)
    );
    who(&mut o, &st.proxy);
    for k in &st.keystores {
        let _ = writeln!(
            o,
            "keystore {}: {}{}",
            k.prefix,
            engaged(k.state.engaged),
            durability(k.state.engaged, k.state.durable)
        );
        who(&mut o, &k.state);
    }
    for t in &st.tokens {
        let _ = writeln!(
            o,
            "token {}: connected={} open_sessions={} disabled keys={:?}",
            t.name, t.connected, t.open_sessions, t.disabled_keys
        );
        if !t.local_denies.is_empty() {
            let _ = writeln!(
                o,
                "  refused by this instance only (the token refused their marks): {:?}",
                t.local_denies
            );
        }
    }
    if let Some(e) = &st.state_write_error {
        let _ = writeln!(o, "state file: NOT durable, retrying: {e}");
    }
    let _ = writeln!(o, "recent events:");
    for e in st.history.iter().rev().take(10) {
        let _ = writeln!(
            o,
            "  {} {} {} by uid {} via {}: {:?}",
            e.by.at,
            e.action,
            e.scope,
            e.by.by_uid.map_or_else(|| "-".to_owned(), |u| u.to_string()),
            e.by.via,
            e.by.reason
        );
    }
    o
}

/// The `keys list` table.
pub fn key_table(keys: &[KeyInfo]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<40} {:<8} {:<18} {:<9} {:<11} {:<7} {:<8} {:<12} EXTRACTABLE",
        "ID", "SPEC", "USAGES", "STATE", "CREATED", "CURRENT", "VERSIONS", "ENCRYPTIONS"
    );
    for k in keys {
        let _ = writeln!(
            o,
            "{:<40} {:<8} {:<18} {:<9} {:<11} {:<7} {:<8} {:<12} {}",
            k.id,
            k.key_spec,
            k.usages.join(","),
            k.state,
            k.created.as_deref().unwrap_or("-"),
            format!("v{}", k.current_version),
            k.versions.len(),
            k.versions.iter().filter_map(|v| v.encryptions).sum::<u64>(),
            k.extractable
        );
    }
    o
}
