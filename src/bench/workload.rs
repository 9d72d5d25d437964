//! What each request says and how its answer is judged. Decrypt traffic replays ciphertexts the
//! bench made itself during setup, so every decrypted plaintext can be compared with the one that
//! was encrypted; every other answer is checked for the fields and sizes the spec requires.

use super::error::{BenchError, Rejection};
use super::mix::Op;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

/// Distinct plaintexts per run: enough that a proxy returning a cached answer is caught.
pub const POOL_SIZE: usize = 16;
const TAG_BYTES: usize = 16;
const MAX_METADATA_BYTES: usize = 20;

/// A ciphertext made during setup, with the fields to send back (Base64, verbatim).
struct Sealed {
    plaintext: Vec<u8>,
    decrypt_fields: String,
}

/// Request bodies, paths and expectations for one run.
pub struct Workload {
    paths: [String; 4],
    key_op_metadata: String,
    plaintexts: Vec<(Vec<u8>, String)>,
    aad_field: String,
    sealed: Vec<Sealed>,
}

impl Workload {
    /// Random plaintexts of `payload_bytes` and one random AAD of `aad_bytes`.
    pub fn new(
        uri_path: &str,
        key_id: &str,
        region: &str,
        payload_bytes: usize,
        aad_bytes: usize,
    ) -> Result<Workload, BenchError> {
        let key = format!("{uri_path}/keys/{key_id}");
        let mut plaintexts = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            let p = random(payload_bytes)?;
            let b64 = B64.encode(&p);
            plaintexts.push((p, b64));
        }
        let aad_field = match aad_bytes {
            0 => String::new(),
            n => format!(r#","additionalAuthenticatedData":"{}""#, B64.encode(random(n)?)),
        };
        Ok(Workload {
            paths: [
                format!("{key}/encrypt"),
                format!("{key}/decrypt"),
                format!("{key}/metadata"),
                format!("{uri_path}/health"),
            ],
            // What KMS sends for key operations; the ARNs are placeholders no proxy resolves.
            key_op_metadata: format!(
                r#""awsPrincipalArn":"arn:aws:iam::111122223333:role/xks-bench","kmsKeyArn":"arn:aws:kms:{region}:111122223333:key/xks-bench""#
            ),
            plaintexts,
            aad_field,
            sealed: Vec::new(),
        })
    }

    /// Path of an operation.
    pub fn path(&self, op: Op) -> &str {
        &self.paths[op as usize]
    }

    /// Setup: Encrypt bodies for every plaintext of the pool, in order.
    pub fn setup_requests(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        (0..self.plaintexts.len()).map(|i| self.body(Op::Encrypt, i, &format!("bench-setup-{i}")))
    }

    /// Setup: keeps the answer to the `i`th setup Encrypt for decrypt traffic.
    pub fn add_sealed(&mut self, i: usize, answer: &[u8]) -> Result<(), Rejection> {
        let v: Value = serde_json::from_slice(answer).map_err(|_| Rejection::MalformedResponse)?;
        self.check_encrypt(i, &v)?;
        let field = |name: &str| v.get(name).and_then(Value::as_str).unwrap_or_default();
        let metadata = match v.get("ciphertextMetadata").and_then(Value::as_str) {
            Some(m) => format!(r#","ciphertextMetadata":"{m}""#),
            None => String::new(),
        };
        self.sealed.push(Sealed {
            plaintext: self.plaintexts[i].0.clone(),
            // Safe to splice into JSON: check_encrypt proved each value is Base64.
            decrypt_fields: format!(
                r#""ciphertext":"{}","initializationVector":"{}","authenticationTag":"{}"{metadata}"#,
                field("ciphertext"),
                field("initializationVector"),
                field("authenticationTag")
            ),
        });
        Ok(())
    }

    /// The body of request `i` of `op`; `request_id` makes each one unique, as KMS's are.
    pub fn body(&self, op: Op, i: usize, request_id: &str) -> Vec<u8> {
        let kms_op = match op {
            Op::Encrypt => "Encrypt",
            Op::Decrypt => "Decrypt",
            Op::Metadata => "DescribeKey",
            Op::Health => "KmsHealthCheck",
        };
        let md = match op {
            Op::Health => String::new(),
            _ => format!(",{}", self.key_op_metadata),
        };
        let head =
            format!(r#"{{"requestMetadata":{{"kmsRequestId":"{request_id}","kmsOperation":"{kms_op}"{md}}}"#);
        let tail = match op {
            Op::Encrypt => {
                let pt = &self.plaintexts[i % self.plaintexts.len()].1;
                format!(
                    r#","plaintext":"{pt}","encryptionAlgorithm":"AES_GCM"{}}}"#,
                    self.aad_field
                )
            }
            Op::Decrypt => match self.sealed.get(i % self.sealed.len().max(1)) {
                Some(s) => format!(
                    r#",{},"encryptionAlgorithm":"AES_GCM"{}}}"#,
                    s.decrypt_fields, self.aad_field
                ),
                None => "}".to_owned(),
            },
            Op::Metadata | Op::Health => "}".to_owned(),
        };
        (head + &tail).into_bytes()
    }

    /// Judges an answer; the error's text is the name a report counts it under.
    pub fn check(&self, op: Op, i: usize, status: u16, body: &[u8]) -> Result<(), Rejection> {
        let v: Option<Value> = serde_json::from_slice(body).ok();
        if status != 200 {
            return Err(error_name(status, v.as_ref()));
        }
        let v = v.ok_or(Rejection::MalformedResponse)?;
        match op {
            Op::Encrypt => self.check_encrypt(i % self.plaintexts.len(), &v),
            Op::Decrypt => {
                let expected = self
                    .sealed
                    .get(i % self.sealed.len().max(1))
                    .ok_or(Rejection::NoCiphertextToDecrypt)?;
                let got = b64_field(&v, "plaintext")?;
                if got == expected.plaintext {
                    Ok(())
                } else {
                    Err(Rejection::WrongPlaintext)
                }
            }
            Op::Metadata => {
                let fields_ok = v.get("keySpec").is_some_and(Value::is_string)
                    && v.get("keyUsage").is_some_and(Value::is_array)
                    && v.get("keyStatus").is_some_and(Value::is_string);
                fields_ok.then_some(()).ok_or(Rejection::MalformedResponse)
            }
            Op::Health => {
                let fields_ok = v.get("xksProxyFleetSize").is_some_and(Value::is_number)
                    && ["xksProxyVendor", "xksProxyModel", "ekmVendor"]
                        .iter()
                        .all(|f| v.get(*f).is_some_and(Value::is_string))
                    && v.get("ekmFleetDetails").is_some_and(Value::is_array);
                fields_ok.then_some(()).ok_or(Rejection::MalformedResponse)
            }
        }
    }

    fn check_encrypt(&self, i: usize, v: &Value) -> Result<(), Rejection> {
        let ct = b64_field(v, "ciphertext")?;
        let iv = b64_field(v, "initializationVector")?;
        let tag = b64_field(v, "authenticationTag")?;
        // The spec lets the EKM pick a 12- or 16-byte IV.
        if iv.len() != 12 && iv.len() != 16 {
            return Err(Rejection::WrongIvLength);
        }
        if tag.len() != TAG_BYTES {
            return Err(Rejection::WrongTagLength);
        }
        if ct.len() != self.plaintexts[i].0.len() {
            return Err(Rejection::WrongCiphertextLength);
        }
        if let Some(m) = v.get("ciphertextMetadata") {
            let m = m
                .as_str()
                .and_then(|s| B64.decode(s).ok())
                .ok_or(Rejection::MalformedResponse)?;
            if m.len() > MAX_METADATA_BYTES {
                return Err(Rejection::MetadataTooLong);
            }
        }
        Ok(())
    }
}

fn b64_field(v: &Value, name: &str) -> Result<Vec<u8>, Rejection> {
    v.get(name)
        .and_then(Value::as_str)
        .and_then(|s| B64.decode(s).ok())
        .ok_or(Rejection::MalformedResponse)
}

/// The XKS `errorName` of an error answer, or `HTTP <status>` when the body has none.
fn error_name(status: u16, body: Option<&Value>) -> Rejection {
    body.and_then(|v| v.get("errorName"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|n| Rejection::Named(n.to_owned()))
        .unwrap_or(Rejection::Status(status))
}

/// Random bytes: distinct plaintexts per run keep a caching proxy honest.
pub fn random(n: usize) -> Result<Vec<u8>, BenchError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(BenchError::Randomness)?;
    Ok(b)
}
