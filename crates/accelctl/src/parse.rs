//! Parsers of command-line values (used as clap `value_parser`s, so errors are plain strings).

use accelgate_client::proto::names::is_valid_id;

/// A slice named on the command line as `DEVICE/SLICE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceArg {
    pub device: String,
    pub slice: String,
}

impl std::fmt::Display for SliceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.device, self.slice)
    }
}

/// A device or one of its slices: `DEVICE[/SLICE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetArg {
    Device(String),
    Slice(SliceArg),
}

fn id(text: &str, what: &str) -> Result<String, String> {
    if is_valid_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid {what} id '{text}' (letters, digits and '_')"
        ))
    }
}

pub fn device(text: &str) -> Result<String, String> {
    id(text, "device")
}

pub fn slice(text: &str) -> Result<SliceArg, String> {
    let Some((device, slice)) = text.split_once('/') else {
        return Err(format!("expected DEVICE/SLICE, got '{text}'"));
    };
    Ok(SliceArg {
        device: id(device, "device")?,
        slice: id(slice, "slice")?,
    })
}

pub fn target(text: &str) -> Result<TargetArg, String> {
    if text.contains('/') {
        slice(text).map(TargetArg::Slice)
    } else {
        device(text).map(TargetArg::Device)
    }
}

/// A number in decimal or `0x` hex; `_` may group digits (`0x1000_0000`).
pub fn number(text: &str) -> Result<u64, String> {
    let digits: String = text.chars().filter(|&c| c != '_').collect();
    let parsed = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    };
    parsed.map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => format!("'{text}' does not fit in 64 bits"),
        _ => format!("invalid number '{text}' (decimal, or hex with 0x)"),
    })
}

pub fn number_u32(text: &str) -> Result<u32, String> {
    let n = number(text)?;
    u32::try_from(n).map_err(|_| format!("'{text}' does not fit in 32 bits"))
}

/// A register width in bytes: 1, 2, 4 or 8.
pub fn width(text: &str) -> Result<u8, String> {
    match text {
        "1" => Ok(1),
        "2" => Ok(2),
        "4" => Ok(4),
        "8" => Ok(8),
        _ => Err(format!("width must be 1, 2, 4 or 8, not '{text}'")),
    }
}

/// Whether `value` fits in a register of `width` bytes.
pub fn fits(value: u64, width: u8) -> bool {
    width >= 8 || value >> (u32::from(width) * 8) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_hex_and_decimal() {
        assert_eq!(number("0"), Ok(0));
        assert_eq!(number("4096"), Ok(4096));
        assert_eq!(number("0x1000"), Ok(4096));
        assert_eq!(number("0XfF"), Ok(255));
        assert_eq!(number("0x1000_0000"), Ok(0x1000_0000));
        assert_eq!(number("0xffffffffffffffff"), Ok(u64::MAX));
        assert!(number("0x1_0000_0000_0000_0000")
            .unwrap_err()
            .contains("64 bits"));
        assert!(number("").is_err());
        assert!(number("0x").is_err());
        assert!(number("-1").is_err());
        assert!(number("12abc").unwrap_err().contains("invalid number"));
        assert_eq!(number_u32("0xffffffff"), Ok(u32::MAX));
        assert!(number_u32("0x100000000").is_err());
    }

    #[test]
    fn widths_and_fitting_values() {
        assert_eq!(width("8"), Ok(8));
        assert!(width("3").is_err());
        assert!(width("0x4").is_err());
        assert!(fits(0xff, 1));
        assert!(!fits(0x100, 1));
        assert!(fits(0xffff_ffff, 4));
        assert!(!fits(0x1_0000_0000, 4));
        assert!(fits(u64::MAX, 8));
    }

    #[test]
    fn slice_and_target_names() {
        assert_eq!(
            slice("fpga0/region0"),
            Ok(SliceArg {
                device: "fpga0".into(),
                slice: "region0".into()
            })
        );
        assert!(slice("fpga0").is_err());
        assert!(slice("fpga0/a/b").is_err());
        assert!(slice("fpga0/").is_err());
        assert_eq!(target("nic0"), Ok(TargetArg::Device("nic0".into())));
        assert!(
            matches!(target("nic0/vf1"), Ok(TargetArg::Slice(s)) if s.to_string() == "nic0/vf1")
        );
        assert!(target("nic-0").is_err());
    }
}
