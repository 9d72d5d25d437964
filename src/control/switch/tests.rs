use super::*;
use crate::control::state_file::Engagement;

pub(super) fn by(reason: &str) -> Engagement {
    Engagement {
        reason: reason.into(),
        by_uid: Some(1000),
        via: "test".into(),
        at: crate::clock::now_rfc3339(),
    }
}

#[test]
fn engaged_state_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ks.json");
    let ks = Switch::load(&f).unwrap();
    assert!(!ks.proxy_engaged());
    assert_eq!(ks.engage_proxy(by("incident 42")).not_durable, None);
    assert_eq!(
        ks.engage_keystore("/tenant-a", by("offboarded")).not_durable,
        None
    );
    let again = Switch::load(&f).unwrap();
    assert!(again.proxy_engaged());
    assert!(again.gates().keystore_closed("/tenant-a"));
    assert!(!again.gates().keystore_closed("/tenant-b"));
    let p = again
        .begin_proxy_release(by("resolved"), again.epoch("proxy"))
        .unwrap();
    assert!(
        again.proxy_engaged(),
        "the gate stays closed until the release finishes"
    );
    assert!(again.finish_proxy_release(p));
    again
        .release_keystore("/tenant-a", by("back"), again.epoch("keystore:/tenant-a"))
        .unwrap();
    let third = Switch::load(&f).unwrap();
    assert!(!third.proxy_engaged() && !third.gates().keystore_closed("/tenant-a"));
    assert_eq!(third.view().state.history.len(), 4);
}

#[test]
fn an_engage_during_a_release_is_not_undone_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let ks = Switch::load(&dir.path().join("ks.json")).unwrap();
    ks.engage_proxy(by("first"));
    let p = ks.begin_proxy_release(by("release"), ks.epoch("proxy")).unwrap();
    ks.engage_proxy(by("engage while reconnecting"));
    assert!(!ks.finish_proxy_release(p));
    assert!(ks.proxy_engaged());
    let v = ks.view();
    assert!(v.state.proxy.is_some() && v.proxy_on_disk && v.durable);
}

#[test]
fn a_release_that_started_before_an_engage_does_not_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    let ks = Switch::load(&dir.path().join("ks.json")).unwrap();
    ks.engage_keystore("/a", by("first"));
    let seen = ks.epoch("keystore:/a");
    ks.engage_keystore("/a", by("second, while the release is on its way"));
    assert!(matches!(
        ks.release_keystore("/a", by("release"), seen),
        Err(ReleaseError::Superseded)
    ));
    assert!(ks.gates().keystore_closed("/a"));
    let seen = ks.epoch("proxy");
    ks.engage_proxy(by("p"));
    assert!(matches!(
        ks.begin_proxy_release(by("r"), seen),
        Err(ReleaseError::Superseded)
    ));
    assert!(ks.proxy_engaged());
}

#[test]
fn a_failed_engage_write_is_in_force_not_durable_and_not_dropped_by_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("state");
    std::fs::create_dir(&sub).unwrap();
    let f = sub.join("ks.json");
    let ks = Switch::load(&f).unwrap();
    // Replace the directory by a file: every write fails, for root too.
    std::fs::remove_dir(&sub).unwrap();
    std::fs::write(&sub, b"not a directory").unwrap();
    let e = ks.engage_keystore("/a", by("x"));
    assert!(e.not_durable.is_some());
    assert!(ks.gates().keystore_closed("/a"));
    assert!(!ks.view().durable);
    // An unrelated action fails to write too, and does not release /a.
    assert!(ks
        .release_keystore("/b", by("unrelated"), ks.epoch("keystore:/b"))
        .is_err());
    assert!(ks.gates().keystore_closed("/a"));
    assert!(!ks.retry_pending());
    // The directory comes back: the retry makes it durable.
    std::fs::remove_file(&sub).unwrap();
    std::fs::create_dir(&sub).unwrap();
    assert!(ks.retry_pending());
    assert!(ks.view().durable);
    assert!(read_state(&f).unwrap().keystores.contains_key("/a"));
}

#[test]
fn a_release_that_cannot_be_written_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("state");
    std::fs::create_dir(&sub).unwrap();
    let ks = Switch::load(&sub.join("ks.json")).unwrap();
    ks.engage_proxy(by("x"));
    std::fs::remove_dir_all(&sub).unwrap();
    std::fs::write(&sub, b"file").unwrap();
    assert!(ks.begin_proxy_release(by("y"), ks.epoch("proxy")).is_err());
    assert!(ks.proxy_engaged());
    assert!(ks.view().state.proxy.is_some());
}

#[test]
fn racing_engages_and_releases_always_end_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let ks = Arc::new(Switch::load(&dir.path().join("ks.json")).unwrap());
    for round in 0..200u64 {
        let (a, b) = (ks.clone(), ks.clone());
        let release = std::thread::spawn(move || {
            let before = std::time::Instant::now();
            let seen = a.epoch("proxy");
            let after = std::time::Instant::now();
            if let Ok(p) = a.begin_proxy_release(by("r"), seen) {
                std::thread::sleep(std::time::Duration::from_micros(round % 7 * 50));
                a.finish_proxy_release(p);
            }
            (before, after)
        });
        std::thread::sleep(std::time::Duration::from_micros(round % 5 * 60));
        let engage = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            b.engage_proxy(by("e"));
            (started, std::time::Instant::now())
        });
        let (release_before, release_after) = release.join().unwrap();
        let (engage_started, engage_acknowledged) = engage.join().unwrap();
        let v = ks.view();
        if release_before > engage_acknowledged {
            // The release started after the engage was acknowledged: it wins.
            assert!(!v.proxy_closed && v.state.proxy.is_none(), "round {round}");
        } else if release_after < engage_started {
            // The release started before the engage: whether it was still reconnecting
            // or had not yet written its state, the engage must hold.
            assert!(v.proxy_closed, "round {round}: engage undone");
            assert!(v.state.proxy.is_some() && v.proxy_on_disk, "round {round}");
        }
        assert_eq!(v.proxy_closed, v.state.proxy.is_some(), "round {round}");
    }
}
