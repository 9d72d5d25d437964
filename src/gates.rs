//! The kill switch as the request path sees it: in-memory flags that the control plane flips
//! and everything below it only reads. Keeping them here, below `server`, `ops` and `hsm`, lets
//! the request path and the HSM workers check the switch without importing the control plane.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// One on/off flag shared between the control plane (writer) and readers on hot paths.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// A gate in the given state.
    pub fn new(closed: bool) -> Gate {
        Gate(Arc::new(AtomicBool::new(closed)))
    }

    /// Is the switch engaged (requests refused)?
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Engages (`true`) or releases (`false`).
    pub fn set(&self, closed: bool) {
        self.0.store(closed, Ordering::SeqCst);
    }

    /// The shared flag, for layers that only take an `AtomicBool`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

/// The proxy gate and one gate per keystore prefix.
#[derive(Debug, Default)]
pub struct Gates {
    proxy: Gate,
    keystores: RwLock<HashMap<String, Gate>>,
}

impl Gates {
    /// Gates with the proxy in the given state and no keystore engaged.
    pub fn new(proxy_closed: bool) -> Gates {
        Gates {
            proxy: Gate::new(proxy_closed),
            keystores: RwLock::default(),
        }
    }

    /// The whole-proxy gate.
    pub fn proxy(&self) -> &Gate {
        &self.proxy
    }

    /// The gate of one keystore, created released on first use, so a keystore added by a
    /// reload and the control plane share the same flag.
    pub fn keystore(&self, prefix: &str) -> Gate {
        if let Some(g) = self
            .keystores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix)
        {
            return g.clone();
        }
        self.keystores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(prefix.to_owned())
            .or_default()
            .clone()
    }

    /// Is this keystore engaged?
    pub fn keystore_closed(&self, prefix: &str) -> bool {
        self.keystores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(prefix)
            .is_some_and(Gate::is_closed)
    }
}
