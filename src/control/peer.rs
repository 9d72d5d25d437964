//! Who may use the admin socket: root, the daemon's own user, or a member of the configured
//! admin group. Membership comes from the group database through NSS (`getgrouplist`), so
//! supplementary groups count, LDAP/SSSD groups work, and nothing depends on `/proc` (which
//! the shipped unit hides with `ProtectProc=invisible`) or on a pid that may have been reused.

use nix::unistd::{getgrouplist, Gid, Uid, User};
use std::ffi::CString;

pub use crate::config::group_id;

/// Is the user `uid` (primary group `gid`) a member of `group`, primary or supplementary?
pub fn user_in_group(uid: u32, gid: u32, group: u32) -> bool {
    if gid == group {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = CString::new(user.name) else {
        return false;
    };
    getgrouplist(&name, user.gid)
        .map(|gs| gs.contains(&Gid::from_raw(group)))
        .unwrap_or(false)
}

/// May this peer use the socket?
pub fn allowed(peer_uid: u32, peer_gid: u32, own_uid: u32, admin_gid: Option<u32>) -> bool {
    peer_uid == 0 || peer_uid == own_uid || admin_gid.is_some_and(|g| user_in_group(peer_uid, peer_gid, g))
}

/// This process's effective uid.
pub fn own_uid() -> u32 {
    Uid::effective().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_daemon_user_are_allowed_strangers_are_not() {
        assert!(allowed(0, 0, 1000, None));
        assert!(allowed(1000, 1000, 1000, None));
        assert!(!allowed(65534, 65534, 1000, None));
        // A group the stranger is not in.
        assert!(!allowed(65534, 65534, 1000, Some(4242)));
        // Primary group match.
        assert!(allowed(65534, 4242, 1000, Some(4242)));
    }

    #[test]
    fn group_names_and_numbers_resolve() {
        assert_eq!(group_id("0"), Ok(0));
        assert_eq!(group_id("root"), Ok(0));
        assert!(group_id("no-such-group-xks").is_err());
    }
}
