//! The assembled request handler, independent of HTTP plumbing: the keystores and the dispatch
//! from a routed, authenticated request to its operation.

use crate::config::Limits;
use crate::error::Error;
use crate::gates::Gates;
use crate::keystore::Keystore;
use crate::ops;
use crate::request::RequestContext;
use crate::xks::Operation;
use std::sync::Arc;

/// Everything a request needs, shared by all connections.
pub struct App {
    /// Keystores in config order.
    pub keystores: Vec<Keystore>,
    /// Size limits.
    pub limits: Limits,
    /// Reported fleet size.
    pub fleet_size: u32,
    /// Whole-proxy and keystore kill switch, as flipped by the control plane.
    pub gates: Arc<Gates>,
    /// `<prefix>/kms/xks/v1` of each keystore, for routing.
    pub api_bases: Vec<String>,
}

impl App {
    /// Assembles the app.
    pub fn new(keystores: Vec<Keystore>, limits: Limits, fleet_size: u32, gates: Arc<Gates>) -> App {
        let api_bases = keystores.iter().map(|k| k.api_base.clone()).collect();
        App {
            keystores,
            limits,
            fleet_size,
            gates,
            api_bases,
        }
    }

    /// Runs an authenticated request's operation.
    pub async fn dispatch(
        &self,
        keystore: usize,
        op: Operation,
        key_id: &str,
        body: &[u8],
        ctx: &mut RequestContext,
    ) -> Result<Vec<u8>, Error> {
        let ks = self.keystores.get(keystore).ok_or(Error::InvalidUriPath)?;
        if self.gates.proxy().is_closed() {
            return Err(Error::InvalidState("the proxy kill switch is engaged".into()));
        }
        if self.gates.keystore_closed(&ks.prefix) {
            return Err(Error::InvalidState(
                "this keystore is disabled by its kill switch".into(),
            ));
        }
        if ks.quota.as_ref().is_some_and(|q| !q.try_take()) {
            return Err(Error::Throttled);
        }
        match op {
            Operation::Health => ops::health::handle(ks, self.fleet_size, body, ctx).await,
            Operation::Metadata => ops::metadata::handle(ks, key_id, body, ctx).await,
            Operation::Encrypt => ops::encrypt::handle(ks, key_id, body, &self.limits, ctx).await,
            Operation::Decrypt => ops::decrypt::handle(ks, key_id, body, &self.limits, ctx).await,
        }
    }
}
