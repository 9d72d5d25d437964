//! The switch as `status` and the metrics report it: the state in force, what the file holds, and
//! whether the two agree.

use super::Switch;
use crate::control::state_file::PersistedState;

/// The switch's view for `status` and metrics.
#[derive(Debug, Clone)]
pub struct SwitchView {
    /// The state in force (memory).
    pub state: PersistedState,
    /// Is the proxy gate closed right now? (Also closed during a release's reconnect.)
    pub proxy_closed: bool,
    /// Does the file hold exactly the state in force?
    pub durable: bool,
    /// The proxy scope as last written to the file (engaged locally or fleet-wide).
    pub proxy_on_disk: bool,
    /// The keystore prefixes engaged in the file (locally or fleet-wide).
    pub keystores_on_disk: Vec<String>,
    /// The last write error while not durable.
    pub last_error: Option<String>,
}

impl Switch {
    /// Is the whole proxy engaged (gate closed)?
    pub fn proxy_engaged(&self) -> bool {
        self.gates.proxy().is_closed()
    }

    /// A consistent view of the switch.
    pub fn view(&self) -> SwitchView {
        let inner = self.lock();
        SwitchView {
            state: inner.mem.clone(),
            proxy_closed: self.gates.proxy().is_closed(),
            durable: inner.mem == inner.disk,
            proxy_on_disk: inner.disk.proxy.is_some() || inner.disk.fleet.proxy.is_some(),
            keystores_on_disk: inner
                .disk
                .keystores
                .keys()
                .chain(inner.disk.fleet.keystores.keys())
                .cloned()
                .collect(),
            last_error: inner.last_error.clone(),
        }
    }
}
