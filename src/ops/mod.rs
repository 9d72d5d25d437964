//! The four XKS operations, one file each, all with the same shape:
//! parse and validate the body -> check the key is served -> call the token -> build the response.
//! Nothing here knows about HTTP; every failure is an [`Error`].

pub mod decrypt;
pub mod encrypt;
pub mod health;
pub mod metadata;

use crate::error::Error;
pub use crate::request::RequestContext;
use crate::xks::RequestMetadata;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Fields KMS always sends for key operations; their absence is a malformed request.
pub(crate) fn require_key_op_fields(md: &RequestMetadata<'_>, needs_key_arn: bool) -> Result<(), Error> {
    if md.aws_principal_arn.is_none() {
        return Err(Error::Validation(
            "requestMetadata.awsPrincipalArn is required".into(),
        ));
    }
    if needs_key_arn && md.kms_key_arn.is_none() {
        return Err(Error::Validation("requestMetadata.kmsKeyArn is required".into()));
    }
    Ok(())
}

pub(crate) fn require_aes_gcm(alg: &str) -> Result<(), Error> {
    if alg == "AES_GCM" {
        Ok(())
    } else {
        Err(Error::Validation("encryptionAlgorithm must be AES_GCM".into()))
    }
}

/// Decodes canonical, padded, standard-alphabet Base64 (RFC 4648 section 4); anything else,
/// including the URL-safe alphabet and whitespace, is a validation error naming the field.
pub(crate) fn b64(field: &str, value: &str) -> Result<Vec<u8>, Error> {
    STANDARD
        .decode(value)
        .map_err(|_| Error::Validation(format!("{field} is not valid standard Base64")))
}

/// Like [`b64`] but with a size cap answered by 501 (a value above this proxy's maximum).
pub(crate) fn b64_capped(field: &str, value: &str, max: usize) -> Result<Vec<u8>, Error> {
    // Reject before decoding when even the shortest decoding would be too large.
    if value.len() / 4 * 3 > max + 2 {
        return Err(too_large(field, max));
    }
    let bytes = b64(field, value)?;
    if bytes.len() > max {
        return Err(too_large(field, max));
    }
    Ok(bytes)
}

fn too_large(field: &str, max: usize) -> Error {
    Error::TooLarge(format!("{field} exceeds this proxy's maximum of {max} bytes"))
}

/// Standard padded Base64.
pub(crate) fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_must_be_canonical_standard_alphabet() {
        assert_eq!(b64("f", "SGVsbG8gV29ybGQh").unwrap(), b"Hello World!");
        for bad in [
            "SGVsbG8-V29ybGQh",
            "SGVsbG8_V29ybGQh",
            "SGVsbA",
            "SGVs bG8=",
            "SGVsbG9=",
            "!!!!",
        ] {
            assert!(matches!(b64("f", bad), Err(Error::Validation(_))), "{bad}");
        }
    }

    #[test]
    fn oversized_values_are_unsupported_not_invalid() {
        let v = encode(&[0u8; 4301]);
        assert!(matches!(
            b64_capped("plaintext", &v, 4300),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(
            b64_capped("plaintext", &encode(&[7u8; 4300]), 4300)
                .unwrap()
                .len(),
            4300
        );
    }
}
