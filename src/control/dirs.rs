//! Directories the daemon trusts with the kill-switch state, the audit trail and the admin
//! socket must be its own: a directory another user owns, or one any group or other user may
//! write to, would let someone else replace the state file, rewrite the trail or plant a
//! socket. Checked at start, with a message naming the directory.

use super::error::DirError;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Refuses `dir` when it is owned by a user other than `uid` (root-owned is accepted: the
/// daemon cannot be protected from root anyway) or is writable by group or others.
pub fn check_private_dir(dir: &Path, what: &'static str, uid: u32) -> Result<(), DirError> {
    let m = std::fs::metadata(dir).map_err(|source| DirError::Unreadable {
        what,
        dir: dir.to_owned(),
        source,
    })?;
    if !m.is_dir() {
        return Err(DirError::NotADirectory {
            what,
            dir: dir.to_owned(),
        });
    }
    if m.uid() != uid && m.uid() != 0 {
        return Err(DirError::ForeignOwner {
            what,
            dir: dir.to_owned(),
            owner: m.uid(),
            uid,
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(DirError::Writable {
            what,
            dir: dir.to_owned(),
            mode: m.mode() & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_world_writable_directories_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata(dir.path()).unwrap().uid();
        check_private_dir(dir.path(), "state.directory", uid).unwrap();
        for mode in [0o770, 0o707, 0o1777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = check_private_dir(dir.path(), "state.directory", uid)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("state.directory: ") && e.contains("writable"),
                "{e}"
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        check_private_dir(dir.path(), "admin.socket", uid).unwrap();
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::Uid::effective().as_raw();
        let daemon_uid = if me == 0 {
            // As root, hand the directory to another user and check it as the daemon's root.
            std::os::unix::fs::chown(dir.path(), Some(4242), None).unwrap();
            0
        } else {
            me + 4242
        };
        let e = check_private_dir(dir.path(), "audit.file", daemon_uid)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("audit.file: ") && e.contains("owned by uid"), "{e}");
    }
}
