//! The TOML shape of a policy file, exactly as written, before any validation.
//!
//! Every table denies unknown keys, and every value that a later check may reject is wrapped in
//! [`Spanned`] so that the error can name the line it is on.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    pub role: Vec<Spanned<RawRole>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub id: Spanned<String>,
    pub pci: Spanned<String>,
    pub kind: Spanned<String>,
    pub max_image_size: Option<Spanned<u64>>,
    pub firmware: Option<Spanned<RawFirmware>>,
    pub personality: Option<Spanned<RawLoader>>,
    #[serde(default)]
    pub slice: Vec<Spanned<RawSlice>>,
    pub vfs: Option<Spanned<RawVfs>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFirmware {
    pub backend: Spanned<String>,
    pub name: Spanned<String>,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    #[serde(default)]
    pub allow_unsigned: bool,
    pub min_version: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_downgrade: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoader {
    pub backend: Spanned<String>,
    pub name: Spanned<String>,
}

// Writable ranges are read as plain lists, not `(u64, u64)`: a tuple would silently accept a
// list with extra elements, which must be an error.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlice {
    pub id: Spanned<String>,
    pub kind: Spanned<String>,
    pub bar: Spanned<u8>,
    pub offset: Spanned<u64>,
    pub size: Spanned<u64>,
    #[serde(default)]
    pub writable: Vec<Spanned<Vec<u64>>>,
    pub loader: Option<Spanned<RawLoader>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVfs {
    pub max: Spanned<u32>,
    pub bar: Option<Spanned<u8>>,
    pub writable: Option<Vec<Spanned<Vec<u64>>>>,
    pub pf_stub: Option<bool>,
    pub revoke_driver: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRole {
    pub id: Spanned<String>,
    #[serde(default)]
    pub users: Vec<Spanned<NameOrId>>,
    #[serde(default)]
    pub groups: Vec<Spanned<NameOrId>>,
    pub operations: Spanned<Vec<Spanned<String>>>,
    pub scope: Option<Spanned<String>>,
    pub devices: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub caller_caps: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
}

/// A user or group, by name (resolved when the policy is loaded) or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NameOrId {
    Name(String),
    Id(u32),
}

// Written by hand rather than `#[serde(untagged)]` so that a wrong value gets a message that
// says what is expected instead of "did not match any variant".
impl<'de> Deserialize<'de> for NameOrId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameOrIdVisitor;

        impl Visitor<'_> for NameOrIdVisitor {
            type Value = NameOrId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a number in 0..=4294967294")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<NameOrId, E> {
                Ok(NameOrId::Name(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NameOrId, E> {
                // u32::MAX is (uid_t)-1, "no user" to the kernel: never a real member.
                match u32::try_from(v) {
                    Ok(id) if id != u32::MAX => Ok(NameOrId::Id(id)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NameOrId, E> {
                match u32::try_from(v) {
                    Ok(id) if id != u32::MAX => Ok(NameOrId::Id(id)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
        }

        deserializer.deserialize_any(NameOrIdVisitor)
    }
}
