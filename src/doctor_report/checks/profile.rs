//! Which vendor profile fits the token, and whether the configured one does.

use crate::config::{IvSource, PinFormat, Profile, TokenConfig};
use crate::doctor_report::{check, Check, Verdict};
use crate::hsm::doctor::{BadTag, Findings};
use crate::hsm::profile::quirks;

/// The profile to configure: the profile the token identifies as, if it behaves as that
/// profile says (IV mode, bad-tag code); else the configured one if it fits; else the first
/// vendor profile that matches what was found; else `generic`.
pub(in crate::doctor_report) fn suggested_profile(
    cfg: &TokenConfig,
    chosen: IvSource,
    f: &Findings,
) -> Profile {
    let fits_vendor = |p: Profile| p != Profile::Generic && fits(p, chosen, f);
    if let Some(p) = identified_profile(f).filter(|p| fits_vendor(*p)) {
        return p;
    }
    if configured_fits(cfg, chosen, f) {
        return cfg.profile;
    }
    Profile::ALL
        .into_iter()
        .find(|p| fits_vendor(*p))
        .unwrap_or(Profile::Generic)
}

/// Whether `p`'s IV mode is the one that works and `p` accepts the token's bad-tag code.
fn fits(p: Profile, chosen: IvSource, f: &Findings) -> bool {
    let accepts = match &f.bad_tag {
        BadTag::Refused { accepted_by, .. } => accepted_by.contains(&p),
        _ => true,
    };
    accepts && p.default_iv_source() == chosen
}

/// Whether the configured profile (with its `iv_source` override) works on this token.
fn configured_fits(cfg: &TokenConfig, chosen: IvSource, f: &Findings) -> bool {
    let accepts = match &f.bad_tag {
        BadTag::Refused { accepted_by, .. } => accepted_by.contains(&cfg.profile),
        _ => true,
    };
    accepts && (cfg.profile.default_iv_source() == chosen || cfg.iv_source == Some(chosen))
}

/// The vendor profile the module names itself as, by its manufacturer ID. Only SoftHSM2 is
/// identified: it is the one module checked here, and the one that behaves exactly as
/// `generic` does, so behaviour alone cannot name it. Vendor HSMs are told apart by behaviour.
fn identified_profile(f: &Findings) -> Option<Profile> {
    let softhsm = |s: &str| s.to_ascii_lowercase().contains("softhsm");
    (softhsm(&f.library.manufacturer) || softhsm(&f.token.manufacturer)).then_some(Profile::Softhsm)
}

pub(in crate::doctor_report) fn profile_check(
    cfg: &TokenConfig,
    chosen: IvSource,
    suggested: Profile,
    f: &Findings,
) -> Check {
    let q = quirks(cfg.profile);
    let iv = match cfg.iv_source {
        Some(i) if i != q.iv_source() => {
            format!("{} (iv_source overrides {})", i.name(), q.iv_source().name())
        }
        _ => q.iv_source().name().to_owned(),
    };
    let pin = match q.pin_format() {
        PinFormat::Any => "as the token takes it",
        PinFormat::UserColonPassword => "<user>:<password>",
    };
    let mut found = format!(
        "{:?}: IV mode {iv}; bad tag = {}; PIN {pin}; login: {}",
        cfg.profile.name(),
        q.bad_tag_names().join(" or "),
        q.login_role
    );
    for n in q.notes {
        found.push_str("; note: ");
        found.push_str(n);
    }
    // Information only: the proxy re-checks cached handles whatever the vendor does.
    let observed = f.handle_reuse.as_ref().and_then(|h| h.reused);
    if let (Some(expected), Some(seen)) = (q.reuses_handles, observed) {
        if expected != seen {
            found.push_str(&format!(
                "; destroyed handles reused: {seen}, where this profile expects {expected}"
            ));
        }
    }
    if suggested == cfg.profile {
        return check("profile", Verdict::Ok, found, None);
    }
    if configured_fits(cfg, chosen, f) {
        // Works as configured; the snippet names the token's own profile.
        found.push_str(&format!(
            "; the module identifies as {:?}: the snippet sets profile = \"{}\"",
            suggested.name(),
            suggested.name()
        ));
        return check("profile", Verdict::Ok, found, None);
    }
    check(
        "profile",
        Verdict::Warn,
        found,
        Some(format!(
            "this token behaves as profile \"{}\" (IV mode {}, its bad-tag code): set profile = \"{}\" (see the snippet)",
            suggested.name(),
            chosen.name(),
            suggested.name()
        )),
    )
}
