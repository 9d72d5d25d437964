//! One owner per state directory: an exclusive `flock` on `<state.directory>/xks-bridge.lock`,
//! held for the owner's whole life, with the owner's pid written inside. The daemon takes it
//! before touching its admin socket or its ports; the offline CLI takes it before acting on the
//! state file or the token, so it never acts behind a running daemon's back. The kernel drops
//! the lock when the process dies, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the state directory.
pub const LOCK_FILE: &str = "xks-bridge.lock";

/// A held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("another xks-bridge process (pid {}) holds {}", pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string()), path.display())]
    Held {
        /// The holder's pid, as it wrote it.
        pid: Option<u32>,
        /// The lock file.
        path: PathBuf,
    },
    /// The file could not be opened or locked.
    #[error("cannot lock {}: {detail}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// OS message.
        detail: String,
    },
}

impl InstanceLock {
    /// Takes the lock of `state_dir` without waiting, and writes this process's pid into it.
    pub fn acquire(state_dir: &Path) -> Result<InstanceLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |e: std::io::Error| LockError::Io {
            path: path.clone(),
            detail: e.to_string(),
        };
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nofollow())
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    pid: read_pid(&mut file),
                    path,
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(InstanceLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid the holder of `state_dir`'s lock wrote, if the file can be read.
pub fn holder_pid(state_dir: &Path) -> Option<u32> {
    let mut f = File::open(state_dir.join(LOCK_FILE)).ok()?;
    read_pid(&mut f)
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// `O_NOFOLLOW`: the lock file is never a symlink planted by someone else.
fn nofollow() -> i32 {
    // Linux's value on every architecture this runs on (asm-generic and x86).
    0o400000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_and_learns_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = InstanceLock::acquire(dir.path()).unwrap();
        match InstanceLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(holder_pid(dir.path()), Some(std::process::id()));
        drop(held);
        InstanceLock::acquire(dir.path()).expect("free again once dropped");
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            InstanceLock::acquire(dir.path()),
            Err(LockError::Io { .. })
        ));
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
