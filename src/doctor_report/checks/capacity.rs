//! What load the token can carry: sessions at once, and encrypt latency against the deadline.

use crate::config::TokenConfig;
use crate::doctor_report::{check, Check, Verdict};
use crate::hsm::doctor::{Findings, SessionLimit};

fn limit(l: SessionLimit) -> String {
    match l {
        SessionLimit::Max(n) => n.to_string(),
        SessionLimit::Infinite => "unlimited".into(),
        SessionLimit::Unknown => "not reported".into(),
    }
}

/// Workers the token can carry: the configured number, or fewer if sessions ran out (the
/// daemon also holds a login session and a poll session).
pub(in crate::doctor_report) fn workers(cfg: &TokenConfig, f: &Findings) -> usize {
    if f.sessions.opened >= f.sessions.wanted {
        cfg.workers
    } else {
        f.sessions.opened.saturating_sub(2).max(1)
    }
}

pub(in crate::doctor_report) fn session_check(cfg: &TokenConfig, f: &Findings) -> Check {
    let s = &f.sessions;
    let found = format!(
        "max {} (read-write {}); opened {} of {} at once (workers {} + login + poll)",
        limit(f.token.max_sessions),
        limit(f.token.max_rw_sessions),
        s.opened,
        s.wanted,
        cfg.workers
    );
    if s.opened >= s.wanted {
        return check("sessions", Verdict::Ok, found, None);
    }
    let refusal = s.refusal.clone().unwrap_or_default();
    if s.opened >= 3 {
        check(
            "sessions",
            Verdict::Warn,
            format!("{found}; {refusal}"),
            Some(format!("set workers = {}", workers(cfg, f))),
        )
    } else {
        check(
            "sessions",
            Verdict::Fail,
            format!("{found}; {refusal}"),
            Some("the daemon needs at least 3 sessions at once".into()),
        )
    }
}

pub(in crate::doctor_report) fn latency_check(cfg: &TokenConfig, f: &Findings) -> Check {
    let name = "encrypt latency (scratch key, 32 bytes)";
    let Some(l) = &f.latency else {
        return check(
            name,
            Verdict::Warn,
            "not measured: encryption on the scratch key failed",
            Some("see the checks above".into()),
        );
    };
    let found = format!(
        "{} encryptions: {:.0} ops/s on one session, p50 {} us, p99 {} us (a session key: token keys may be slower)",
        l.ops, l.ops_per_sec, l.p50_us, l.p99_us
    );
    if l.p99_us / 1000 >= cfg.request_timeout_ms {
        return check(
            name,
            Verdict::Warn,
            found,
            Some(format!(
                "p99 is above request_timeout_ms ({}): raise it (at most 240) or use a faster token",
                cfg.request_timeout_ms
            )),
        );
    }
    check(name, Verdict::Ok, found, None)
}
