//! Operations: the unit of permission in role policy files, polkit and the audit log.

use std::fmt;
use std::str::FromStr;

/// Every thing a caller can ask the daemon to do, at the granularity that policy decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    SliceRead,
    SliceWrite,
    SliceMap,
    SliceProgram,
    SliceAssign,
    DeviceConfigure,
    DeviceFlash,
    PolicyReload,
}

/// The operation name is not one of [`Operation::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation '{0}'")]
pub struct UnknownOperation(pub String);

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::SliceRead,
        Operation::SliceWrite,
        Operation::SliceMap,
        Operation::SliceProgram,
        Operation::SliceAssign,
        Operation::DeviceConfigure,
        Operation::DeviceFlash,
        Operation::PolicyReload,
    ];

    /// The name used in policy files and the audit log, e.g. `slice.read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::SliceRead => "slice.read",
            Operation::SliceWrite => "slice.write",
            Operation::SliceMap => "slice.map",
            Operation::SliceProgram => "slice.program",
            Operation::SliceAssign => "slice.assign",
            Operation::DeviceConfigure => "device.configure",
            Operation::DeviceFlash => "device.flash",
            Operation::PolicyReload => "policy.reload",
        }
    }

    /// The polkit action id of this operation: `org.accelgate.<operation>`.
    pub const fn polkit_action(self) -> &'static str {
        match self {
            Operation::SliceRead => "org.accelgate.slice.read",
            Operation::SliceWrite => "org.accelgate.slice.write",
            Operation::SliceMap => "org.accelgate.slice.map",
            Operation::SliceProgram => "org.accelgate.slice.program",
            Operation::SliceAssign => "org.accelgate.slice.assign",
            Operation::DeviceConfigure => "org.accelgate.device.configure",
            Operation::DeviceFlash => "org.accelgate.device.flash",
            Operation::PolicyReload => "org.accelgate.policy.reload",
        }
    }

    /// Operations that a tenant performs on a slice, and that scope `assigned` restricts.
    pub const fn is_tenant_slice_op(self) -> bool {
        matches!(
            self,
            Operation::SliceRead
                | Operation::SliceWrite
                | Operation::SliceMap
                | Operation::SliceProgram
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| UnknownOperation(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_polkit_ids_follow_the_rule() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>(), Ok(op));
            assert_eq!(op.polkit_action(), format!("org.accelgate.{}", op.as_str()));
        }
        assert!("slice.erase".parse::<Operation>().is_err());
    }
}
