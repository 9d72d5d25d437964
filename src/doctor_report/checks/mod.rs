//! One function per check: a finding in, a [`Check`](super::Check) (verdict, what was found,
//! the fix) out. The checks are grouped by what they look at.

mod capacity;
mod device;
mod gcm;
mod keys;
mod profile;
mod token_objects;

pub(super) use capacity::{latency_check, session_check, workers};
pub(super) use device::{library_check, mechanism_checks, scratch_check, token_check};
pub(super) use gcm::{bad_tag_check, iv_checks, working_iv_source};
pub(super) use keys::key_checks;
pub(super) use profile::{profile_check, suggested_profile};
pub(super) use token_objects::{data_object_check, handle_reuse_check, public_object_check};
