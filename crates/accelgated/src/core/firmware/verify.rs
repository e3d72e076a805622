//! Verification of a firmware image before any byte of it is written: a detached minisign
//! signature made by one of the device's keys, unless the policy explicitly allows unsigned
//! images for that device.

use minisign_verify::{PublicKey, Signature};

use accelgate_policy::FirmwarePolicy;

/// Longest signature file accepted (a `.minisig` is a few hundred bytes).
const MAX_SIGNATURE_LEN: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("a signature is required for this device's firmware")]
    Unsigned,
    #[error("the signature is not a minisign signature file: {0}")]
    Malformed(String),
    #[error("the device has no usable firmware key")]
    NoKeys,
    #[error("the signature was not made by any of the device's firmware keys")]
    UnknownKey,
    #[error("the signature does not match the image")]
    BadSignature,
}

/// How an image passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// By a signature from the key with this minisign key id (hex).
    Signed { key_id: String },
    /// Without a signature, which the device's policy allows.
    UnsignedAllowed,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verified::Signed { key_id } => write!(f, "signed by key {key_id}"),
            Verified::UnsignedAllowed => write!(f, "unsigned, allowed by policy"),
        }
    }
}

/// Checks `image` against the optional detached `signature` (the bytes of a `.minisig` file)
/// and the device's firmware policy. A present signature is always checked, even where
/// unsigned images are allowed: a bad signature is never accepted.
pub fn verify_image(
    image: &[u8],
    signature: Option<&[u8]>,
    policy: &FirmwarePolicy,
) -> Result<Verified, VerifyError> {
    let Some(signature) = signature else {
        return if policy.allow_unsigned {
            Ok(Verified::UnsignedAllowed)
        } else {
            Err(VerifyError::Unsigned)
        };
    };
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(VerifyError::Malformed("too long".into()));
    }
    let text = std::str::from_utf8(signature)
        .map_err(|_| VerifyError::Malformed("not UTF-8 text".into()))?;
    let signature = Signature::decode(text).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    // Keys were validated when the policy was loaded; one that still fails to decode is
    // skipped rather than trusted.
    let keys: Vec<PublicKey> = policy
        .keys
        .iter()
        .filter_map(|k| PublicKey::from_base64(k).ok())
        .collect();
    if keys.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let mut outcome = Err(VerifyError::UnknownKey);
    for (key, text) in keys.iter().zip(&policy.keys) {
        match key.verify(image, &signature, false) {
            Ok(()) => {
                return Ok(Verified::Signed {
                    key_id: key_id_hex(text),
                })
            }
            Err(minisign_verify::Error::UnexpectedKeyId) => {}
            Err(_) => outcome = Err(VerifyError::BadSignature),
        }
    }
    outcome
}

/// The minisign key id of a base64 public key (bytes 2..10, shown little-endian as minisign
/// prints it), for the audit trail and job messages.
fn key_id_hex(key_b64: &str) -> String {
    let Some(bytes) = decode_base64(key_b64.trim()) else {
        return "?".into();
    };
    bytes
        .get(2..10)
        .map(|id| id.iter().rev().map(|b| format!("{b:02X}")).collect())
        .unwrap_or_else(|| "?".into())
}

/// Standard base64 without line breaks (a minisign key line).
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in digits {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use accelgate_policy::LoaderBackend;

    // A key pair and signature made with minisign 0.11 (`minisign -G -W`, `minisign -S`) over
    // the bytes b"accelgate test firmware\n"; the secret key was thrown away.
    const KEY: &str = include_str!("testdata/test.pub.b64");
    const OTHER_KEY: &str = include_str!("testdata/other.pub.b64");
    const SIG: &str = include_str!("testdata/image.minisig");
    const IMAGE: &[u8] = b"accelgate test firmware\n";

    fn policy(keys: &[&str], allow_unsigned: bool) -> FirmwarePolicy {
        FirmwarePolicy {
            backend: LoaderBackend::FwUpload,
            name: "x".into(),
            locked: false,
            keys: keys.iter().map(|k| k.trim().to_owned()).collect(),
            allow_unsigned,
            min_version: None,
            allow_downgrade: false,
        }
    }

    #[test]
    fn good_signature_by_a_device_key_passes() {
        let v = verify_image(
            IMAGE,
            Some(SIG.as_bytes()),
            &policy(&[OTHER_KEY, KEY], false),
        );
        assert!(matches!(v, Ok(Verified::Signed { .. })), "{v:?}");
    }

    #[test]
    fn changed_image_wrong_key_and_garbage_fail() {
        let p = policy(&[KEY], false);
        assert_eq!(
            verify_image(b"accelgate test firmwarE\n", Some(SIG.as_bytes()), &p),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_image(&IMAGE[..10], Some(SIG.as_bytes()), &p),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify_image(IMAGE, Some(SIG.as_bytes()), &policy(&[OTHER_KEY], false)),
            Err(VerifyError::UnknownKey)
        );
        assert!(matches!(
            verify_image(IMAGE, Some(b"not a signature"), &p),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            verify_image(IMAGE, Some(SIG.as_bytes()), &policy(&[], true)),
            Err(VerifyError::NoKeys)
        );
    }

    #[test]
    fn unsigned_only_where_allowed() {
        assert_eq!(
            verify_image(IMAGE, None, &policy(&[KEY], false)),
            Err(VerifyError::Unsigned)
        );
        assert_eq!(
            verify_image(IMAGE, None, &policy(&[KEY], true)),
            Ok(Verified::UnsignedAllowed)
        );
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64("a*b").is_none());
    }
}
