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
    SignatureCheck::prepare(signature, policy).run(std::iter::once(image))
}

/// A signature check made ready before the image is read, so that it can hash the image's
/// bytes as they arrive — on a thread of its own, while the daemon reads and SHA-256-hashes
/// them — instead of in a second pass over the whole image afterwards (minisign's BLAKE2b is
/// the slowest of the hashes a flash makes).
pub enum SignatureCheck {
    /// Decided without the image's bytes: no signature (allowed or not), or one that cannot
    /// match any of the device's keys.
    Decided(Result<Verified, VerifyError>),
    /// A signature by this device key, to be checked against the bytes.
    Pending {
        key: Box<PublicKey>,
        key_id: String,
        signature: Box<Signature>,
    },
}

impl SignatureCheck {
    /// Decodes the signature and picks the device key that made it (by key id).
    pub fn prepare(signature: Option<&[u8]>, policy: &FirmwarePolicy) -> SignatureCheck {
        let decided = |r| SignatureCheck::Decided(r);
        let Some(signature) = signature else {
            return decided(if policy.allow_unsigned {
                Ok(Verified::UnsignedAllowed)
            } else {
                Err(VerifyError::Unsigned)
            });
        };
        if signature.len() > MAX_SIGNATURE_LEN {
            return decided(Err(VerifyError::Malformed("too long".into())));
        }
        let Ok(text) = std::str::from_utf8(signature) else {
            return decided(Err(VerifyError::Malformed("not UTF-8 text".into())));
        };
        let signature = match Signature::decode(text) {
            Ok(s) => s,
            Err(e) => return decided(Err(VerifyError::Malformed(e.to_string()))),
        };
        // Keys were validated when the policy was loaded; one that still fails to decode is
        // skipped rather than trusted.
        let keys: Vec<(PublicKey, &String)> = policy
            .keys
            .iter()
            .filter_map(|k| PublicKey::from_base64(k).ok().map(|key| (key, k)))
            .collect();
        if keys.is_empty() {
            return decided(Err(VerifyError::NoKeys));
        }
        let mut outcome = Err(VerifyError::UnknownKey);
        for (key, text) in keys {
            match key.verify_stream(&signature).map(drop) {
                Ok(()) => {
                    return SignatureCheck::Pending {
                        key: Box::new(key),
                        key_id: key_id_hex(text),
                        signature: Box::new(signature),
                    }
                }
                Err(minisign_verify::Error::UnexpectedKeyId) => {}
                // A legacy (not prehashed) signature by this key: refused, as before.
                Err(_) => outcome = Err(VerifyError::BadSignature),
            }
        }
        decided(outcome)
    }

    /// Whether the verdict still needs the image's bytes.
    pub fn needs_bytes(&self) -> bool {
        matches!(self, SignatureCheck::Pending { .. })
    }

    /// Feeds the image's bytes, in order, and gives the verdict.
    pub fn run<'a>(self, chunks: impl Iterator<Item = &'a [u8]>) -> Result<Verified, VerifyError> {
        match self {
            SignatureCheck::Decided(verdict) => verdict,
            SignatureCheck::Pending {
                key,
                key_id,
                signature,
            } => {
                let mut stream = key
                    .verify_stream(&signature)
                    .map_err(|_| VerifyError::BadSignature)?;
                for chunk in chunks {
                    stream.update(chunk);
                }
                stream
                    .finalize()
                    .map(|()| Verified::Signed { key_id })
                    .map_err(|_| VerifyError::BadSignature)
            }
        }
    }
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
    fn a_check_fed_in_pieces_decides_like_one_over_the_whole_image() {
        let p = policy(&[OTHER_KEY, KEY], false);
        let check = SignatureCheck::prepare(Some(SIG.as_bytes()), &p);
        assert!(check.needs_bytes());
        assert!(matches!(
            check.run(IMAGE.chunks(5)),
            Ok(Verified::Signed { .. })
        ));
        let mut changed = IMAGE.to_vec();
        changed[20] ^= 1;
        assert_eq!(
            SignatureCheck::prepare(Some(SIG.as_bytes()), &p).run(changed.chunks(7)),
            Err(VerifyError::BadSignature)
        );
        // Pieces missing at the end are a different image.
        assert_eq!(
            SignatureCheck::prepare(Some(SIG.as_bytes()), &p).run(IMAGE.chunks(5).take(2)),
            Err(VerifyError::BadSignature)
        );
        let unknown = SignatureCheck::prepare(Some(SIG.as_bytes()), &policy(&[OTHER_KEY], false));
        assert!(!unknown.needs_bytes());
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert!(decode_base64("a*b").is_none());
    }
}
