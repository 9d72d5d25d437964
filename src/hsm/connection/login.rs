//! Finding the token and logging in: the one slot that carries the configured label, the
//! user login on the connection's login session, and the check that a session is still logged
//! in (a token that forgot the login hides every private object).

use super::super::{classify, HsmError};
use super::Connector;
use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};

impl Connector {
    pub(super) fn log_in(&self, pkcs11: &Pkcs11) -> Result<(Slot, Session), HsmError> {
        let unavailable = |what: &str, e: CkError| HsmError::Unavailable(format!("{what}: {e}"));
        let slot = find_slot(pkcs11, &self.label)?;
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| unavailable("C_GetTokenInfo", e))?;
        let (hw, fw) = (info.hardware_version(), info.firmware_version());
        *self.ident.write().unwrap_or_else(|p| p.into_inner()) = (
            info.manufacturer_id().trim().to_owned(),
            format!("{} (hardware {hw}, firmware {fw})", info.model().trim()),
        );
        let session = pkcs11
            .open_ro_session(slot)
            .map_err(|e| unavailable("C_OpenSession", e))?;
        log_in_user(&session, &self.label, &self.pin)?;
        Ok((slot, session))
    }
}

/// The one slot whose token carries `label`; absent and duplicated labels are errors.
pub(in crate::hsm) fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, HsmError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| HsmError::Unavailable(format!("C_GetSlotList: {e}")))?;
    let mut matching: Vec<Slot> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    let mut unreadable: Vec<String> = Vec::new();
    for slot in slots {
        match pkcs11.get_token_info(slot) {
            Ok(i) if i.label().trim() == label => matching.push(slot),
            // A free slot (SoftHSM2 always shows one) is no candidate worth naming.
            Ok(i) if !i.token_initialized() => {}
            Ok(i) => others.push(format!("{:?}", i.label().trim())),
            Err(e) => unreadable.push(format!("slot {}: {e}", slot.id())),
        }
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        // What the module does show, so that a typo and a lost token read differently
        // (SoftHSM2 drops a token whose `token.object` a killed process left empty).
        [] => Err(HsmError::Unavailable(format!(
            "no token labelled {label:?} is present ({}{})",
            if others.is_empty() {
                "the module shows no initialised token".to_owned()
            } else {
                format!("initialised tokens: {}", others.join(", "))
            },
            if unreadable.is_empty() {
                String::new()
            } else {
                format!(
                    "; tokens whose information could not be read: {}",
                    unreadable.join(", ")
                )
            },
        ))),
        _ => Err(HsmError::Unavailable(format!(
            "{} tokens are labelled {label:?}; labels must be unique",
            matching.len(),
        ))),
    }
}

/// Logs the user in on `session` (already logged in through another session is fine).
pub(in crate::hsm) fn log_in_user(
    session: &Session,
    label: &str,
    pin: &SecretString,
) -> Result<(), HsmError> {
    let pin = AuthPin::from(pin.expose_secret());
    match session.login(cryptoki::session::UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => Err(super::super::classify::login_error(label, e)),
    }
}

/// Is `session` logged in as the user? A token that forgot the login (restarted, or logged out
/// by someone else) reports a public session, and hides every private object from it.
pub(in crate::hsm) fn logged_in(session: &Session) -> Result<bool, HsmError> {
    let info = session.get_session_info().map_err(classify)?;
    Ok(matches!(
        info.session_state(),
        SessionState::RoUser | SessionState::RwUser
    ))
}
