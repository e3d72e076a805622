//! The A/B model shared by every backend: two slots, one active, and what each slot holds.

use serde::{Deserialize, Serialize};

/// Prefix of the optional first line of a firmware image that names its version:
/// `ACCELGATE-FW <version>\n`. Images without it are accepted; their version is "unknown".
pub const VERSION_HEADER: &str = "ACCELGATE-FW ";
/// Longest version string taken from a header.
const MAX_VERSION_LEN: usize = 64;

/// One of the two firmware slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`, as the sysfs attributes and the D-Bus property spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(text: &str) -> Option<Slot> {
        match text.trim() {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
}

/// What a slot holds, as the device (or the slot header, for MTD) reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotInfo {
    /// A complete image whose digest the device vouches for.
    pub valid: bool,
    /// Version from the image header; empty when the slot is not valid.
    pub version: String,
    /// Lowercase hex sha256 of the slot's image; empty when the slot is not valid.
    pub sha256: String,
}

/// The firmware state of a device: which slot boots, and both slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareStatus {
    pub active: Slot,
    pub a: SlotInfo,
    pub b: SlotInfo,
}

impl FirmwareStatus {
    pub fn slot(&self, slot: Slot) -> &SlotInfo {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Version of the firmware that boots, "unknown" if its slot holds no valid image.
    pub fn active_version(&self) -> String {
        let info = self.slot(self.active);
        if info.valid && !info.version.is_empty() {
            info.version.clone()
        } else {
            "unknown".into()
        }
    }
}

/// The version named by an image's first line, or "unknown".
pub fn image_version(image: &[u8]) -> String {
    let first_line = image.split(|&b| b == b'\n').next().unwrap_or_default();
    let version = first_line
        .strip_prefix(VERSION_HEADER.as_bytes())
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_VERSION_LEN
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
        });
    version.unwrap_or("unknown").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_a_well_formed_header_only() {
        assert_eq!(image_version(b"ACCELGATE-FW 2.1.0\nbody"), "2.1.0");
        assert_eq!(image_version(b"ACCELGATE-FW 2.1.0"), "2.1.0");
        assert_eq!(image_version(b"ACCELGATE-FW \nbody"), "unknown");
        assert_eq!(image_version(b"ACCELGATE-FW a b\n"), "unknown");
        assert_eq!(image_version(b"\x00\x01binary"), "unknown");
        assert_eq!(image_version(b"ACCELGATE-FW 1;rm\n"), "unknown");
    }

    #[test]
    fn slots_pair_up() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::parse("b\n"), Some(Slot::B));
        assert_eq!(Slot::parse("c"), None);
    }
}
