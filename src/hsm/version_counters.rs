//! The per-instance encryption counters of key versions on the token: one private data object
//! per (key, version, instance) holding what that instance reserved (see `super::versions` for
//! the other objects of a version). They are read only when a block is reserved, by `keys show`
//! and `keys list`, and at start-up to find the keys reserved under before.

use super::marks::put_data;
use super::versions::{data_snapshot, find_data, parse_record_label, record_label, COUNTER_APP};
use super::HsmError;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use std::collections::HashMap;

/// Every instance's counter of version `n` of `id` (the largest value where a counter was
/// replaced by create-then-destroy and both copies are visible).
pub(super) fn counters(s: &Session, id: &str, n: u32) -> Result<super::budget::Counts, HsmError> {
    Ok(counters_and_own(s, id, n, None)?.0)
}

/// [`counters`], and the handles of `me`'s own counter objects, so that writing it next
/// ([`write_counter`]) needs no search of its own: on tokens whose searches walk every object
/// (SoftHSM2 with 1,000 keys: about 35 ms each) that is a third of a reservation's cost. Only
/// `me` writes its counter, so the handles stay right until it writes again.
pub(super) fn counters_and_own(
    s: &Session,
    id: &str,
    n: u32,
    me: Option<&str>,
) -> Result<(super::budget::Counts, Vec<ObjectHandle>), HsmError> {
    let prefix = format!("{}/", record_label(id, n));
    // A counter another instance is replacing can vanish between the search and the read; its
    // replacement was created before, but after this search. Skipping it would under-count,
    // so the whole read is repeated until no object vanished.
    for _ in 0..50 {
        let (objects, vanished) = data_snapshot(s, COUNTER_APP)?;
        if vanished {
            continue;
        }
        let mut out = super::budget::Counts::new();
        let mut own = Vec::new();
        for (h, l, v) in objects {
            let Some(instance) = l.strip_prefix(&prefix) else {
                continue;
            };
            if Some(instance) == me {
                own.push(h);
            }
            let Ok(bytes) = <[u8; 8]>::try_from(v.as_slice()) else {
                continue;
            };
            let e = out.entry(instance.to_owned()).or_insert(0);
            *e = (*e).max(u64::from_be_bytes(bytes));
        }
        return Ok((out, own));
    }
    Err(HsmError::Internal(
        "encryption counters kept changing during 50 reads".into(),
    ))
}

/// The count of every (key id, version) on the token: one pass over every counter (`keys
/// list`), summed over instances as [`counters`] does.
pub(super) fn all_counts(s: &Session) -> Result<HashMap<(String, u32), u64>, HsmError> {
    let mut out = HashMap::new();
    for ((id, n, _), v) in per_instance_counts(s)? {
        *out.entry((id, n)).or_insert(0u64) += v;
    }
    Ok(out)
}

/// (key id, version) and what one instance reserved under it.
pub(super) type OwnCount = ((String, u32), u64);

/// What `instance` reserved under every (key id, version) it has a counter for.
pub(super) fn own_counts(s: &Session, instance: &str) -> Result<Vec<OwnCount>, HsmError> {
    Ok(per_instance_counts(s)?
        .into_iter()
        .filter(|((_, _, i), _)| i == instance)
        .map(|((id, n, _), v)| ((id, n), v))
        .collect())
}

/// Every counter: (key id, version, instance) -> value, one pass over the counter objects.
fn per_instance_counts(s: &Session) -> Result<HashMap<(String, u32, String), u64>, HsmError> {
    for _ in 0..50 {
        let (objects, vanished) = data_snapshot(s, COUNTER_APP)?;
        if vanished {
            continue;
        }
        let mut per_instance: HashMap<(String, u32, String), u64> = HashMap::new();
        for (_, l, v) in objects {
            let Some((version_label, instance)) = l.rsplit_once('/') else {
                continue;
            };
            let Some((id, n)) = parse_record_label(version_label) else {
                continue;
            };
            let Ok(bytes) = <[u8; 8]>::try_from(v.as_slice()) else {
                continue;
            };
            let e = per_instance
                .entry((id.to_owned(), n, instance.to_owned()))
                .or_insert(0);
            *e = (*e).max(u64::from_be_bytes(bytes));
        }
        return Ok(per_instance);
    }
    Err(HsmError::Internal(
        "encryption counters kept changing during 50 reads".into(),
    ))
}

/// Stores `value` in this instance's counter. `C_SetAttributeValue` on `CKA_VALUE` where the
/// token allows it; SoftHSM2 2.6 refuses it for data objects (`CKR_ATTRIBUTE_READ_ONLY`), and
/// then a new object is created *before* the old one is destroyed, so a reader sees the old
/// value, both (and takes the larger), or the new one, never none ([`counters`] re-reads when
/// an object vanished under it). `existing`: the counter's objects as the caller just read
/// them ([`counters_and_own`]); `None` searches for them.
pub(super) fn write_counter(
    s: &Session,
    label: &str,
    value: u64,
    existing: Option<Vec<ObjectHandle>>,
) -> Result<(), HsmError> {
    let bytes = value.to_be_bytes().to_vec();
    let existing = match existing {
        Some(known) => known,
        None => find_data(s, COUNTER_APP, label)?,
    };
    if let [h] = existing.as_slice() {
        if s.update_attributes(*h, &[Attribute::Value(bytes.clone())])
            .is_ok()
        {
            return Ok(());
        }
    }
    put_data(s, COUNTER_APP, label, &bytes)?;
    for h in existing {
        let _ = s.destroy_object(h);
    }
    Ok(())
}
