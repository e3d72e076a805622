//! The one table from D-Bus method to the operation it is decided as. The core's operations
//! name their own `Operation`; this table is what the D-Bus surface promises, and the tests
//! check it against the checked-in introspection XML (every exported method is in it) and
//! against the daemon's behaviour (a role without the operation is refused).

use accelgate_proto::names::{DEVICE_INTERFACE, JOB_INTERFACE, MANAGER_INTERFACE, SLICE_INTERFACE};
use accelgate_proto::Operation;

/// How a method is gated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodGate {
    /// Only needs a resolvable caller (e.g. WhoAmI).
    Identity,
    /// Every gate, for this operation.
    Operation(Operation),
    /// The job's own operation on the job's target (Job.Cancel).
    JobOperation,
}

/// Every method the daemon exports, and its gate. A handler finds its gate here by the
/// interface and member of the message it handles; a method missing from the table is denied.
pub const METHOD_TABLE: &[(&str, &str, MethodGate)] = &[
    (MANAGER_INTERFACE, "WhoAmI", MethodGate::Identity),
    (
        MANAGER_INTERFACE,
        "ReloadPolicy",
        MethodGate::Operation(Operation::PolicyReload),
    ),
    (
        MANAGER_INTERFACE,
        "AuditLog",
        MethodGate::Operation(Operation::PolicyReload),
    ),
    (
        DEVICE_INTERFACE,
        "SetVfCount",
        MethodGate::Operation(Operation::DeviceConfigure),
    ),
    (
        DEVICE_INTERFACE,
        "Configure",
        MethodGate::Operation(Operation::DeviceConfigure),
    ),
    (
        DEVICE_INTERFACE,
        "Flash",
        MethodGate::Operation(Operation::DeviceFlash),
    ),
    (
        SLICE_INTERFACE,
        "Read",
        MethodGate::Operation(Operation::SliceRead),
    ),
    (
        SLICE_INTERFACE,
        "Write",
        MethodGate::Operation(Operation::SliceWrite),
    ),
    (
        SLICE_INTERFACE,
        "Map",
        MethodGate::Operation(Operation::SliceMap),
    ),
    (
        SLICE_INTERFACE,
        "Program",
        MethodGate::Operation(Operation::SliceProgram),
    ),
    (
        SLICE_INTERFACE,
        "Assign",
        MethodGate::Operation(Operation::SliceAssign),
    ),
    (
        SLICE_INTERFACE,
        "Release",
        MethodGate::Operation(Operation::SliceAssign),
    ),
    (JOB_INTERFACE, "Cancel", MethodGate::JobOperation),
];

pub fn method_gate(interface: &str, member: &str) -> Option<MethodGate> {
    METHOD_TABLE
        .iter()
        .find(|(i, m, _)| *i == interface && *m == member)
        .map(|(_, _, g)| *g)
}

/// The name a request is audited under before its operation is decided (an unidentified
/// caller): the method's operation, or `whoami`/`job.cancel` for methods with their own gate.
pub fn audit_name(interface: &str, member: &str) -> &'static str {
    match method_gate(interface, member) {
        Some(MethodGate::Operation(op)) => op.as_str(),
        Some(MethodGate::Identity) => "whoami",
        Some(MethodGate::JobOperation) => "job.cancel",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_is_unique() {
        for (i, (iface, member, _)) in METHOD_TABLE.iter().enumerate() {
            assert!(!METHOD_TABLE[i + 1..]
                .iter()
                .any(|(i2, m2, _)| i2 == iface && m2 == member));
        }
        assert_eq!(
            method_gate(SLICE_INTERFACE, "Write"),
            Some(MethodGate::Operation(Operation::SliceWrite))
        );
        assert_eq!(method_gate(SLICE_INTERFACE, "Erase"), None);
    }

    /// Every method in the checked-in introspection XML has an entry, and every entry names a
    /// method the XML has: the table is the D-Bus surface, whole.
    #[test]
    fn table_covers_the_introspection_xml_exactly() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dbus");
        let mut in_xml = Vec::new();
        for iface in [
            MANAGER_INTERFACE,
            DEVICE_INTERFACE,
            SLICE_INTERFACE,
            JOB_INTERFACE,
        ] {
            let text = std::fs::read_to_string(dir.join(format!("{iface}.xml"))).unwrap();
            for part in text.split("<method name=\"").skip(1) {
                let member = part.split('"').next().unwrap();
                in_xml.push((iface.to_owned(), member.to_owned()));
            }
        }
        for (iface, member) in &in_xml {
            assert!(
                method_gate(iface, member).is_some(),
                "{iface}.{member} is exported but has no gate"
            );
        }
        for (iface, member, _) in METHOD_TABLE {
            assert!(
                in_xml.iter().any(|(i, m)| i == iface && m == member),
                "{iface}.{member} is in the table but not in the XML"
            );
        }
        assert_eq!(in_xml.len(), METHOD_TABLE.len());
    }
}
