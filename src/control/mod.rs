//! The operator side of the daemon: the kill-switch state machine ([`switch`]) and its state
//! file, the typed admin protocol ([`protocol`]), the verbs that execute it ([`verbs`]) for the
//! admin socket ([`socket`]), SIGUSR1 and the offline CLI alike, key-scope and key lifecycle
//! commands on the token ([`keys`]), the fleet-wide kill switch ([`fleet`]), and the
//! single-instance lock ([`lock`]).
//!
//! Layering: this module sits above the request path (`server`, `ops`, `hsm`); the request path
//! sees the switch only through [`crate::gates`].

pub mod dirs;
pub mod error;
pub mod fleet;
pub mod keys;
pub mod lock;
pub mod peer;
pub mod protocol;
pub mod socket;
pub mod state_file;
pub mod switch;
pub mod verbs;

pub use error::{ControlError, DirError, ReloadError, SocketError};
pub use protocol::{AdminReply, AdminRequest, KeyOp, Scope, Status};
pub use verbs::{Control, Reload};
