//! The names other programs depend on: bus name, object paths, interface names.
//!
//! These are a stable contract (`dbus/*.xml`): clients, polkit rules, bus policy files and
//! tests all spell them, so they are defined once here and nowhere else.

/// Well-known bus name owned by `accelgated`.
pub const BUS_NAME: &str = "org.accelgate.Accel1";
/// Root object: ObjectManager and Manager.
pub const ROOT_PATH: &str = "/org/accelgate/Accel1";
/// Prefix of device objects.
pub const DEVICES_PATH: &str = "/org/accelgate/Accel1/devices";
/// Prefix of job objects.
pub const JOBS_PATH: &str = "/org/accelgate/Accel1/jobs";

pub const MANAGER_INTERFACE: &str = "org.accelgate.Accel1.Manager";
pub const DEVICE_INTERFACE: &str = "org.accelgate.Accel1.Device";
pub const SLICE_INTERFACE: &str = "org.accelgate.Accel1.Slice";
pub const JOB_INTERFACE: &str = "org.accelgate.Accel1.Job";
/// Prefix of every error name the daemon replies with.
pub const ERROR_PREFIX: &str = "org.accelgate.Accel1.Error";

/// Object path of a device.
pub fn device_path(device: &str) -> String {
    format!("{DEVICES_PATH}/{device}")
}

/// Object path of a slice of a device.
pub fn slice_path(device: &str, slice: &str) -> String {
    format!("{DEVICES_PATH}/{device}/slices/{slice}")
}

/// Object path of job number `n`.
pub fn job_path(n: u64) -> String {
    format!("{JOBS_PATH}/{n}")
}

/// Device and slice ids are `[A-Za-z0-9_]+`, so that they are valid object path elements
/// without escaping.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits a slice object path back into (device, slice).
pub fn parse_slice_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(DEVICES_PATH)?.strip_prefix('/')?;
    let (device, rest) = rest.split_once('/')?;
    let slice = rest.strip_prefix("slices/")?;
    (is_valid_id(device) && is_valid_id(slice)).then_some((device, slice))
}

/// Splits a device object path back into its id.
pub fn parse_device_path(path: &str) -> Option<&str> {
    let device = path.strip_prefix(DEVICES_PATH)?.strip_prefix('/')?;
    is_valid_id(device).then_some(device)
}

/// Name of the `n`th VF slice.
pub fn vf_slice_id(n: u32) -> String {
    format!("vf{n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("fpga0"));
        assert!(is_valid_id("region_0"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a-b"));
        assert!(!is_valid_id("a/b"));
    }

    #[test]
    fn paths_round_trip() {
        let p = slice_path("fpga0", "region1");
        assert_eq!(parse_slice_path(&p), Some(("fpga0", "region1")));
        assert_eq!(parse_device_path(&device_path("nic0")), Some("nic0"));
        assert_eq!(parse_slice_path(&device_path("nic0")), None);
        assert_eq!(parse_device_path(&p), None);
    }
}
