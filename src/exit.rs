//! The process exit statuses of every command, in one place (sysexits values where one fits),
//! so scripts and systemd's `RestartPreventExitStatus=` can rely on them.

/// Why a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done, and what was reported is in force.
    Ok = 0,
    /// The command ran and failed (the message says whether anything changed).
    Failed = 1,
    /// Bad config or arguments (EX_USAGE); running as root without `allow_root`.
    BadConfig = 64,
    /// Something outside the config is unavailable: the token refused the PIN, a port or the
    /// state directory is taken by another daemon, the daemon cannot be reached (EX_UNAVAILABLE).
    Unavailable = 69,
    /// The async runtime could not start (EX_OSERR).
    OsError = 71,
    /// The quickstart could not create its files (EX_CANTCREAT).
    CantCreate = 73,
    /// An engage is in force but not yet durable: retried in the background (EX_TEMPFAIL).
    NotDurable = 75,
}

impl Exit {
    /// The numeric status.
    pub fn code(self) -> i32 {
        self as i32
    }
}
