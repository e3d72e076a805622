//! Firmware versions as the anti-rollback rules compare them: the version of an image's
//! `ACCELGATE-FW` header line against the active firmware's and the policy's `min_version`.
//!
//! The order is semantic versioning's: dot-separated numbers compared as numbers (a missing
//! number counts as 0, so `2.1` equals `2.1.0`); a `-pre-release` suffix sorts before the same
//! version without one (its dot-separated parts compare as numbers when both are numeric,
//! numbers before words, words by their bytes, fewer parts first); a `+build` suffix is
//! ignored. Anything else (e.g. "unknown", an image without a header) is not a version.

use std::cmp::Ordering;

/// A parsed firmware version.
#[derive(Debug, Clone)]
pub struct FirmwareVersion {
    numbers: Vec<u64>,
    pre: Vec<String>,
}

impl FirmwareVersion {
    /// `None` unless `text` is a version in the form above.
    pub fn parse(text: &str) -> Option<FirmwareVersion> {
        let text = text.split_once('+').map_or(text, |(v, _)| v);
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let numbers = core
            .split('.')
            .map(|n| {
                (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| n.parse::<u64>().ok())
                    .flatten()
            })
            .collect::<Option<Vec<u64>>>()?;
        let pre = match pre {
            Some(pre) => {
                let parts: Vec<String> = pre.split('.').map(str::to_owned).collect();
                let well_formed = parts.iter().all(|p| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
                if !well_formed {
                    return None;
                }
                parts
            }
            None => Vec::new(),
        };
        Some(FirmwareVersion { numbers, pre })
    }
}

impl Ord for FirmwareVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.numbers.len().max(other.numbers.len());
        for i in 0..len {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                unequal => return unequal,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            (false, false) => {}
        }
        for (a, b) in self.pre.iter().zip(&other.pre) {
            let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) => a.cmp(&b),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                (Err(_), Err(_)) => a.as_bytes().cmp(b.as_bytes()),
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        self.pre.len().cmp(&other.pre.len())
    }
}

/// Equal as the order says (`2.1` is `2.1.0`), not field by field.
impl PartialEq for FirmwareVersion {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FirmwareVersion {}

impl PartialOrd for FirmwareVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::FirmwareVersion;

    fn v(text: &str) -> FirmwareVersion {
        FirmwareVersion::parse(text).unwrap_or_else(|| panic!("{text} is a version"))
    }

    #[test]
    fn versions_order_like_semantic_versioning() {
        assert!(v("2.0.0") > v("1.9.9"));
        assert!(v("10.0") > v("9.99.99"));
        assert_eq!(v("2.1"), v("2.1.0"));
        assert!(v("1.0.0-factory") < v("1.0.0"));
        assert!(v("1.0.0-factory") < v("2.0.0"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.2") < v("1.0.0-alpha.10"));
        assert!(v("1.0.0-2") < v("1.0.0-beta"));
        assert_eq!(v("1.2.3+build7"), v("1.2.3"));
    }

    #[test]
    fn only_versions_parse() {
        for bad in [
            "unknown", "", "1..2", "v1.0", "1.0-", "1.0-a..b", "1.x", "1.0 ",
        ] {
            assert!(FirmwareVersion::parse(bad).is_none(), "{bad:?}");
        }
    }
}
