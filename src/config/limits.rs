//! `[limits]`: the size limits on a request, with the spec's floors as defaults.

use serde::Deserialize;

/// The spec's floor for plaintext and ciphertext sizes.
pub const SPEC_MIN_PLAINTEXT: usize = 4300;
/// The spec's floor for AAD size.
pub const SPEC_MIN_AAD: usize = 8192;

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest plaintext (Encrypt) or ciphertext (Decrypt) accepted; above it: 501.
    #[serde(default = "default_max_plaintext")]
    pub max_plaintext_bytes: usize,
    /// Largest AAD accepted; above it: 501.
    #[serde(default = "default_max_aad")]
    pub max_aad_bytes: usize,
    /// Hard cap on a request body, enforced before it is hashed or parsed.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn default_max_plaintext() -> usize {
    SPEC_MIN_PLAINTEXT
}
fn default_max_aad() -> usize {
    SPEC_MIN_AAD
}
fn default_max_body() -> usize {
    64 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_plaintext_bytes: default_max_plaintext(),
            max_aad_bytes: default_max_aad(),
            max_body_bytes: default_max_body(),
        }
    }
}
