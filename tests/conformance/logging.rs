//! Logging hygiene (checklist 38): plaintext never reaches the logs, the kmsRequestId does.

use crate::common::*;
use serde_json::json;

const MARKER: &[u8] = b"XKS-SECRET-MARKER";

/// Checklist 38, with the daemon at RUST_LOG=debug: the marker plaintext and its Base64 (as
/// sent in Encrypt and returned by Decrypt) never appear in the logs; the kmsRequestIds do.
#[test]
fn marker_plaintext_never_appears_in_debug_logs_while_kms_request_id_does() {
    let mut h = Harness::start_with(|_, _| {}, &[("RUST_LOG", "debug")]);
    let enc_id = "kms-req-3f1c2a-encrypt-marker";
    let dec_id = "kms-req-3f1c2a-decrypt-marker";
    let bad_id = "kms-req-3f1c2a-failed-decrypt";
    let mut body = encrypt_body(MARKER, Some(b"aad-for-marker"), true);
    body["requestMetadata"]["kmsRequestId"] = json!(enc_id);
    let r = h.xks.encrypt(KEY_AES, &body);
    assert_ok(&r);
    let sealed = Sealed::from_response(&r);
    let mut body = sealed.decrypt_body(Some(b"aad-for-marker"));
    body["requestMetadata"]["kmsRequestId"] = json!(dec_id);
    let r = h.xks.decrypt(KEY_AES, &body);
    assert_eq!(assert_ok(&r)["plaintext"], b64(MARKER));
    // A failing decrypt and a decrypt-only key refusal log too; still no plaintext.
    body["requestMetadata"]["kmsRequestId"] = json!(bad_id);
    body["additionalAuthenticatedData"] = json!(b64(b"other"));
    assert_error(&h.xks.decrypt(KEY_AES, &body), 400, "InvalidCiphertextException");
    let mut body = encrypt_body(MARKER, None, false);
    body["requestMetadata"]["kmsRequestId"] = json!(bad_id);
    assert_error(
        &h.xks.encrypt(KEY_DECRYPT_ONLY, &body),
        400,
        "InvalidKeyUsageException",
    );

    assert!(h.proxy.wait_for_log(bad_id), "request ids never logged");
    let Harness { xks, proxy, fx } = h;
    drop(xks);
    let logs = proxy.stop();
    drop(fx);
    for id in [enc_id, dec_id, bad_id] {
        assert!(
            logs.contains(id),
            "kmsRequestId {id} missing from the logs:\n{logs}"
        );
    }
    assert!(
        logs.lines().any(|l| l.contains("DEBUG")),
        "RUST_LOG=debug produced no debug lines:\n{logs}"
    );
    let marker_b64 = b64(MARKER);
    let needles = [
        String::from_utf8(MARKER.to_vec()).unwrap(),
        marker_b64.clone(),
        marker_b64.trim_end_matches('=').to_owned(),
        hex::encode(MARKER),
        format!("{MARKER:?}"),
    ];
    for needle in needles {
        assert!(
            !logs.contains(&needle),
            "plaintext {needle:?} found in the logs:\n{logs}"
        );
    }
    // AAD contents are not logged either (digest section 14: lengths only).
    assert!(!logs.contains("aad-for-marker"), "AAD found in the logs:\n{logs}");
    assert!(
        !logs.contains(&b64(b"aad-for-marker")),
        "AAD found in the logs:\n{logs}"
    );
}
