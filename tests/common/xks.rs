//! XKS requests: a signed session with the operations as one-liners ([`Xks`]), builders for
//! the request bodies, decoded Encrypt output ([`Sealed`]) and Base64 helpers.

use crate::common::client::{Client, Resp, Signer};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// A connection + signer + API base: the XKS operations as one-liners.
pub struct Xks {
    pub client: Client,
    pub signer: Signer,
    /// `<prefix>/kms/xks/v1`
    pub base: String,
}

impl Xks {
    /// POSTs `body` (JSON value) to `base + suffix`, signed.
    #[track_caller]
    pub fn post(&mut self, suffix: &str, body: &Value) -> Resp {
        self.post_bytes(suffix, body.to_string().as_bytes())
    }

    /// POSTs raw bytes to `base + suffix`, signed.
    #[track_caller]
    pub fn post_bytes(&mut self, suffix: &str, body: &[u8]) -> Resp {
        let path = format!("{}{suffix}", self.base);
        self.client.post_signed(&self.signer, &path, body)
    }

    pub fn health(&mut self) -> Resp {
        self.post("/health", &health_body("health-1", "KmsHealthCheck"))
    }

    pub fn metadata(&mut self, key: &str) -> Resp {
        self.post(&format!("/keys/{key}/metadata"), &metadata_body("md-1"))
    }

    pub fn encrypt(&mut self, key: &str, body: &Value) -> Resp {
        self.post(&format!("/keys/{key}/encrypt"), body)
    }

    pub fn decrypt(&mut self, key: &str, body: &Value) -> Resp {
        self.post(&format!("/keys/{key}/decrypt"), body)
    }

    /// Encrypts and asserts 200; returns the decoded output.
    #[track_caller]
    pub fn encrypt_ok(&mut self, key: &str, plaintext: &[u8], aad: Option<&[u8]>) -> Sealed {
        let r = self.encrypt(key, &encrypt_body(plaintext, aad, false));
        assert_eq!(r.status, 200, "encrypt: {}", r.text());
        Sealed::from_response(&r)
    }
}

/// `requestMetadata` for key operations.
pub fn key_op_metadata(request_id: &str, operation: &str) -> Value {
    json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/b3537ef1-d8dc-4780-9f5a-55776cbb2f7f",
        "kmsOperation": operation,
        "kmsRequestId": request_id,
        "kmsViaService": "ebs"
    })
}

/// GetHealthStatus body.
pub fn health_body(request_id: &str, operation: &str) -> Value {
    json!({"requestMetadata": {"kmsRequestId": request_id, "kmsOperation": operation}})
}

/// GetKeyMetadata body (what KMS sends for CreateKey).
pub fn metadata_body(request_id: &str) -> Value {
    json!({"requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsOperation": "CreateKey",
        "kmsRequestId": request_id
    }})
}

/// Encrypt body.
pub fn encrypt_body(plaintext: &[u8], aad: Option<&[u8]>, cdiv: bool) -> Value {
    let mut v = json!({
        "requestMetadata": key_op_metadata("enc-1", "Encrypt"),
        "plaintext": B64.encode(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    });
    if let Some(a) = aad {
        v["additionalAuthenticatedData"] = json!(B64.encode(a));
    }
    if cdiv {
        v["ciphertextDataIntegrityValueAlgorithm"] = json!("SHA_256");
    }
    v
}

/// Decoded Encrypt output.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub iv: Vec<u8>,
    pub tag: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub cdiv: Option<Vec<u8>>,
}

impl Sealed {
    pub fn from_response(r: &Resp) -> Sealed {
        let v = r.json();
        let opt = |name: &str| {
            v.get(name).map(|s| {
                B64.decode(s.as_str().expect("string field"))
                    .expect("standard Base64")
            })
        };
        Sealed {
            ciphertext: r.b64_field("ciphertext"),
            iv: r.b64_field("initializationVector"),
            tag: r.b64_field("authenticationTag"),
            metadata: opt("ciphertextMetadata"),
            cdiv: opt("ciphertextDataIntegrityValue"),
        }
    }

    /// The matching Decrypt body (metadata passed back as returned).
    pub fn decrypt_body(&self, aad: Option<&[u8]>) -> Value {
        let mut v = json!({
            "requestMetadata": key_op_metadata("dec-1", "Decrypt"),
            "ciphertext": B64.encode(&self.ciphertext),
            "encryptionAlgorithm": "AES_GCM",
            "initializationVector": B64.encode(&self.iv),
            "authenticationTag": B64.encode(&self.tag),
        });
        if let Some(a) = aad {
            v["additionalAuthenticatedData"] = json!(B64.encode(a));
        }
        if let Some(m) = &self.metadata {
            v["ciphertextMetadata"] = json!(B64.encode(m));
        }
        v
    }
}

/// Standard padded Base64.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Standard Base64 decode (panics on bad input).
pub fn unb64(s: &str) -> Vec<u8> {
    B64.decode(s).expect("standard Base64")
}
