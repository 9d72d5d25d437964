//! The environment a PKCS#11 module reads when it is loaded (`SOFTHSM2_CONF`,
//! `ChrystokiConfigurationPath`, ...).
//!
//! Modules read these variables with `getenv`, so they must be in the process environment, and
//! changing the environment of a running process (`std::env::set_var`) races with every thread
//! that reads it, including threads of libraries the proxy does not control. Instead,
//! [`ensure`] restarts the current binary with the same arguments and the extra variables
//! (`execve` keeps the process id, so systemd and a supervising shell see no difference); the
//! restarted process finds them set and carries on.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Why the module environment cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ModuleEnvError {
    /// `execve` of this program failed (it only returns on failure).
    #[error("cannot restart with the PKCS#11 module environment: {0}")]
    Restart(#[source] std::io::Error),
    /// A name that is empty or holds `=` or NUL.
    #[error("module environment: {0:?} is not a variable name")]
    BadName(OsString),
    /// A value holding NUL.
    #[error("module environment: the value of {0:?} holds a NUL byte")]
    NulInValue(OsString),
    /// One name given two values.
    #[error("module environment: {name:?} is set to two different values ({first:?} and {second:?})")]
    TwoValues {
        /// The variable.
        name: OsString,
        /// The value given first.
        first: OsString,
        /// The value given later.
        second: OsString,
    },
}

/// Returns when every variable of `vars` already has its value in this process's environment;
/// otherwise replaces this process with the same program, arguments and environment plus
/// `vars`, and only returns (an error) if that fails or `vars` is unusable.
///
/// Call it before anything that must not happen twice: output, files written, input read.
pub fn ensure<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<(), ModuleEnvError>
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let missing = to_apply(vars, |k| std::env::var_os(k))?;
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = std::env::args_os();
    // /proc/self/exe, not current_exe(): it still names this program if its file has been
    // replaced or removed since it started (a package upgrade).
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    let err = cmd.args(args).envs(missing).exec();
    Err(ModuleEnvError::Restart(err))
}

/// The variables of `vars` whose value differs from `current`'s. Refuses what could make the
/// restarted process see a different value than asked for, which would restart it forever: a
/// name that is empty or holds `=` or NUL, a value with NUL, one name given two values.
fn to_apply<K, V>(
    vars: impl IntoIterator<Item = (K, V)>,
    current: impl Fn(&OsStr) -> Option<OsString>,
) -> Result<BTreeMap<OsString, OsString>, ModuleEnvError>
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    let mut wanted: BTreeMap<OsString, OsString> = BTreeMap::new();
    for (k, v) in vars {
        let (k, v) = (k.as_ref(), v.as_ref());
        if k.is_empty() || k.as_bytes().iter().any(|b| *b == b'=' || *b == 0) {
            return Err(ModuleEnvError::BadName(k.to_owned()));
        }
        if v.as_bytes().contains(&0) {
            return Err(ModuleEnvError::NulInValue(k.to_owned()));
        }
        match wanted.get(k) {
            Some(old) if old != v => {
                return Err(ModuleEnvError::TwoValues {
                    name: k.to_owned(),
                    first: old.clone(),
                    second: v.to_owned(),
                })
            }
            _ => {
                wanted.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    wanted.retain(|k, v| current(k).as_deref() != Some(v.as_os_str()));
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&OsStr) -> Option<OsString> {
        let m: BTreeMap<OsString, OsString> = pairs.iter().map(|(k, v)| (k.into(), v.into())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn only_variables_without_their_value_are_applied() {
        let got = to_apply(
            [("A", "1"), ("B", "2"), ("C", "3"), ("A", "1")],
            env(&[("A", "1"), ("B", "other")]),
        )
        .unwrap();
        let want: BTreeMap<OsString, OsString> = [("B".into(), "2".into()), ("C".into(), "3".into())].into();
        assert_eq!(got, want);
        assert!(to_apply([("A", "1")], env(&[("A", "1")])).unwrap().is_empty());
        assert!(to_apply(Vec::<(&str, &str)>::new(), env(&[])).unwrap().is_empty());
    }

    #[test]
    fn values_the_restarted_process_could_not_see_are_refused() {
        for bad in [("", "1"), ("A=B", "1"), ("A\0", "1"), ("A", "1\0")] {
            let e = to_apply([bad], env(&[])).unwrap_err().to_string();
            assert!(e.starts_with("module environment: "), "{e}");
        }
        let e = to_apply([("SOFTHSM2_CONF", "/a"), ("SOFTHSM2_CONF", "/b")], env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("two different values"), "{e}");
    }

    #[test]
    fn a_variable_already_set_means_no_restart() {
        // The test process's own PATH is set, so this returns instead of replacing the process.
        let path = std::env::var_os("PATH").expect("PATH is set");
        ensure([("PATH", path)]).unwrap();
    }
}
