//! Keeping the state file in step with the state in force: a write that fails leaves the change
//! in force but not durable, and the background retry writes it until it sticks.

use super::{Inner, Switch};
use crate::control::state_file::write_state;

impl Switch {
    /// Writes the state in force; on failure it stays in memory as not durable.
    pub(super) fn persist(&self, inner: &mut Inner) -> Option<String> {
        match write_state(&self.file, &inner.mem) {
            Ok(()) => {
                inner.disk = inner.mem.clone();
                inner.last_error = None;
                None
            }
            Err(e) => {
                let e = e.to_string();
                tracing::error!(error = %e, "kill switch state NOT durable; retrying in the background");
                inner.last_error = Some(e.clone());
                Some(e)
            }
        }
    }

    /// Writes the state in force if the file lags behind it. Returns `true` when durable.
    pub fn retry_pending(&self) -> bool {
        let mut inner = self.lock();
        if inner.mem == inner.disk {
            return true;
        }
        let ok = self.persist(&mut inner).is_none();
        if ok {
            tracing::warn!("kill switch state is durable again");
        }
        ok
    }

    /// Does the state file hold the state in force?
    pub fn is_durable(&self) -> bool {
        let inner = self.lock();
        inner.mem == inner.disk
    }
}
