use super::*;
use crate::control::switch::tests::by;

#[test]
fn local_and_fleet_engagements_hold_the_gate_independently_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ks.json");
    let ks = Switch::load(&f).unwrap();
    let fleet_ks = FleetScope::Keystore("/a".into());
    ks.engage_keystore("/a", by("local"));
    ks.engage_fleet(&fleet_ks, by("fleet"));
    ks.engage_fleet(&FleetScope::Proxy, by("fleet proxy"));
    assert!(ks.proxy_engaged() && !ks.proxy_engaged_locally());
    // Both layers survive a restart.
    let again = Switch::load(&f).unwrap();
    assert!(again.proxy_engaged() && again.gates().keystore_closed("/a"));
    assert_eq!(again.fleet_scopes(), vec![FleetScope::Proxy, fleet_ks.clone()]);
    // Releasing the local keystore engage leaves the fleet one in force, and vice versa.
    again
        .release_keystore("/a", by("r"), again.epoch("keystore:/a"))
        .unwrap();
    assert!(again.gates().keystore_closed("/a"));
    again
        .release_fleet_keystore("/a", by("r"), again.fleet_epoch(&fleet_ks))
        .unwrap();
    assert!(!again.gates().keystore_closed("/a"));
    // A local proxy release cannot open a gate the fleet holds.
    again.engage_proxy(by("local proxy"));
    let p = again.begin_proxy_release(by("r"), again.epoch("proxy")).unwrap();
    assert!(!again.finish_proxy_release(p));
    assert!(again.proxy_engaged());
    let p = again
        .begin_fleet_proxy_release(by("r"), again.fleet_epoch(&FleetScope::Proxy))
        .unwrap();
    assert!(again.finish_proxy_release(p));
    assert!(!again.proxy_engaged());
    let third = Switch::load(&f).unwrap();
    assert!(!third.proxy_engaged() && third.fleet_scopes().is_empty());
}

#[test]
fn a_fleet_release_that_started_before_a_fleet_engage_does_not_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    let ks = Switch::load(&dir.path().join("ks.json")).unwrap();
    let before = Instant::now();
    let seen = ks.fleet_epoch(&FleetScope::Proxy);
    ks.engage_fleet(&FleetScope::Proxy, by("e"));
    assert!(ks.fleet_changed_since(&FleetScope::Proxy, before));
    assert!(matches!(
        ks.begin_fleet_proxy_release(by("r"), seen),
        Err(ReleaseError::Superseded)
    ));
    assert!(ks.proxy_engaged());
}

#[test]
fn a_fleet_engage_no_token_took_stays_marked_as_such_until_released_here() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ks.json");
    let ks = Switch::load(&f).unwrap();
    ks.engage_fleet_unmarked(&FleetScope::Proxy, by("no token took it"));
    ks.engage_fleet(&FleetScope::Keystore("/a".into()), by("on the token"));
    assert!(ks.fleet_unmarked(&FleetScope::Proxy));
    assert!(!ks.fleet_unmarked(&FleetScope::Keystore("/a".into())));
    // A restart must not take it for an engage the token carries (and whose mark is gone).
    let again = Switch::load(&f).unwrap();
    assert!(again.proxy_engaged() && again.fleet_unmarked(&FleetScope::Proxy));
    // An engage whose mark a token took is an ordinary fleet engage again.
    again.engage_fleet(&FleetScope::Proxy, by("marked this time"));
    assert!(!again.fleet_unmarked(&FleetScope::Proxy));
    again.engage_fleet_unmarked(&FleetScope::Proxy, by("unmarked again"));
    let p = again
        .begin_fleet_proxy_release(by("r"), again.fleet_epoch(&FleetScope::Proxy))
        .unwrap();
    assert!(again.finish_proxy_release(p));
    let third = Switch::load(&f).unwrap();
    assert!(!third.proxy_engaged() && !third.fleet_unmarked(&FleetScope::Proxy));
    assert!(third.view().state.fleet.unmarked.is_empty());
}
