//! The probes that use the token: GCM on a scratch session key (the three IV modes, a tampered
//! tag, a latency sample, the last two in the IV mode that works), the write tests (private data objects, handle reuse), sessions at once and
//! the configured keys' attributes.

use super::super::classify::{classify, classify_for};
use super::super::gcm_probe::{code, encrypt_as, gcm_decrypt};
use super::super::key_objects::{usages, USAGE_ATTRIBUTES};
use super::super::keyspec::KeySpec;
use super::super::marks;
use super::super::profile::{ckr_name, quirks, Quirks};
use super::super::HsmError;
use super::{BadTag, HandleReuse, KeyFacts, Latency, Plan, SessionFacts, WriteProbe, PROBE_APP};
use crate::config::{IvSource, Profile};
use cryptoki::context::Function;
use cryptoki::context::Pkcs11;
use cryptoki::error::Error as CkError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use std::time::{Duration, Instant};

pub(super) use super::super::gcm_probe::{iv_probe, scratch_key};

/// A ciphertext encrypted under `mode` with one bit of its tag flipped: what `C_Decrypt` says,
/// and whether the profile `q` counts that as a bad tag.
pub(super) fn bad_tag(s: &Session, key: ObjectHandle, mode: IvSource, q: &Quirks) -> BadTag {
    let pt = b"doctor: tampered tag";
    let (iv, mut ct) = match encrypt_as(s, key, mode, pt) {
        Ok(v) => v,
        Err(p) => {
            return BadTag::NotRun {
                reason: format!("encrypt under iv_source {:?} failed: {p:?}", mode.name()),
            }
        }
    };
    if let Some(last) = ct.last_mut() {
        *last ^= 0x01;
    }
    match gcm_decrypt(s, key, &iv, &ct) {
        Ok(_) => BadTag::Accepted,
        Err(e) => {
            let (rv, function, accepted_by) = match &e {
                CkError::Pkcs11(rv, f) => (
                    ckr_name(*rv),
                    format!("C_{f:?}"),
                    Profile::ALL
                        .into_iter()
                        .filter(|p| matches!(f, Function::Decrypt) && quirks(*p).is_bad_tag(*rv))
                        .collect(),
                ),
                other => (other.to_string(), String::new(), Vec::new()),
            };
            BadTag::Refused {
                code: rv,
                function,
                invalid_ciphertext: matches!(classify_for(q, e), HsmError::InvalidCiphertext),
                accepted_by,
            }
        }
    }
}

pub(super) fn sample(s: &Session, key: ObjectHandle, mode: IvSource, length: Duration) -> Option<Latency> {
    let pt = [0x5au8; 32];
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < length {
        let t = Instant::now();
        encrypt_as(s, key, mode, &pt).ok()?;
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_micros() as u64
    };
    Some(Latency {
        ops: times.len() as u64,
        ops_per_sec: times.len() as f64 / total.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    })
}

fn destroy(s: &Session, h: ObjectHandle) -> Result<(), WriteProbe> {
    s.destroy_object(h).map_err(|e| WriteProbe::LeftBehind {
        handle: h.handle(),
        code: code(&e),
    })
}

fn put_probe(s: &Session, n: u32) -> Result<ObjectHandle, WriteProbe> {
    marks::put_data(s, PROBE_APP, &format!("xks-bridge-doctor-{n}"), b"probe").map_err(refused)
}

/// A token's refusal to create a probe object, named by its `CKR_` code.
fn refused(e: HsmError) -> WriteProbe {
    WriteProbe::Refused {
        code: match e {
            HsmError::Device { rv, function } => format!("{} from C_{function:?}", ckr_name(rv)),
            other => other.to_string(),
        },
    }
}

/// A private `CKO_DATA` token object, as the disabled-key marks are, created and destroyed.
pub(super) fn data_object_probe(s: &Session) -> WriteProbe {
    match put_probe(s, 0).and_then(|h| destroy(s, h)) {
        Ok(()) => WriteProbe::Done,
        Err(w) => w,
    }
}

/// A public `CKO_DATA` token object, as the fleet epoch is (`hsm::fleet_epoch`), created and
/// destroyed.
pub(super) fn public_object_probe(s: &Session) -> WriteProbe {
    let made =
        marks::put_data_object(s, false, PROBE_APP, "xks-bridge-doctor-public", b"probe").map_err(refused);
    match made.and_then(|h| destroy(s, h)) {
        Ok(()) => WriteProbe::Done,
        Err(w) => w,
    }
}

/// Creates and destroys one object, then creates another: does it get the first one's number?
pub(super) fn handle_reuse_probe(s: &Session) -> HandleReuse {
    let run = || -> Result<bool, WriteProbe> {
        let first = put_probe(s, 1)?;
        destroy(s, first)?;
        let second = put_probe(s, 2)?;
        destroy(s, second)?;
        Ok(first.handle() == second.handle())
    };
    match run() {
        Ok(reused) => HandleReuse {
            probe: WriteProbe::Done,
            reused: Some(reused),
        },
        Err(w) => HandleReuse {
            probe: w,
            reused: None,
        },
    }
}

/// Opens up to `wanted` read-only sessions at once (the daemon's login, workers and poll
/// sessions), then closes them all.
pub(super) fn session_probe(p: &Pkcs11, slot: Slot, wanted: usize) -> SessionFacts {
    let mut open = Vec::new();
    let mut refusal = None;
    while open.len() < wanted {
        match p.open_ro_session(slot) {
            Ok(s) => open.push(s),
            Err(e) => {
                refusal = Some(code(&e));
                break;
            }
        }
    }
    let opened = open.len();
    drop(open);
    SessionFacts {
        wanted,
        opened,
        refusal,
    }
}

pub(super) fn key_facts(s: &Session, plan: &Plan<'_>) -> Result<Vec<KeyFacts>, HsmError> {
    let mut labels: Vec<(String, bool)> = plan.named_keys.iter().map(|k| (k.clone(), true)).collect();
    for h in s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .map_err(classify)?
    {
        for a in s.get_attributes(h, &[AttributeType::Label]).map_err(classify)? {
            if let Attribute::Label(l) = a {
                let l = String::from_utf8_lossy(&l).into_owned();
                if (plan.pattern)(&l) && !labels.iter().any(|(k, _)| *k == l) {
                    labels.push((l, false));
                }
            }
        }
    }
    labels.sort();
    labels
        .into_iter()
        .map(|(l, named)| one_key(s, l, named))
        .collect()
}

fn one_key(s: &Session, label: String, named: bool) -> Result<KeyFacts, HsmError> {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(classify)?;
    let mut k = KeyFacts {
        label,
        named,
        found: found.len(),
        key_spec: KeySpec::Unknown.to_string(),
        sensitive: None,
        extractable: None,
        private: None,
        modifiable: None,
        usages: Vec::new(),
    };
    let [h] = found.as_slice() else {
        return Ok(k);
    };
    let mut wanted = vec![
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Private,
        AttributeType::Modifiable,
    ];
    wanted.extend(USAGE_ATTRIBUTES);
    let attrs = s.get_attributes(*h, &wanted).map_err(classify)?;
    let (mut kt, mut len) = (None, 0u64);
    for a in &attrs {
        match a {
            Attribute::KeyType(t) => kt = Some(*t),
            Attribute::ValueLen(l) => len = u64::from(*l),
            Attribute::Sensitive(b) => k.sensitive = Some(*b),
            Attribute::Extractable(b) => k.extractable = Some(*b),
            Attribute::Private(b) => k.private = Some(*b),
            Attribute::Modifiable(b) => k.modifiable = Some(*b),
            _ => {}
        }
    }
    k.key_spec = KeySpec::decode(kt, len, || marks::recorded_value_len(s, &k.label)).to_string();
    k.usages = usages(&attrs);
    Ok(k)
}
