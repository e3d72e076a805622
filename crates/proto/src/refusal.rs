//! How a refusal (`NotAuthorized`) is worded, so the daemon and every client agree on it:
//! `<operation> on <target>: refused by the <gate> gate: <reason>`. The gate names the one
//! that decided; the reason says no more than the caller may know of its own standing.
//! The D-Bus error name stays the contract; this wording lets a client give the right hint
//! (a slice not assigned to you needs an operator, not a new role).

/// The role gate's reason when the caller's roles grant the operation only on slices
/// assigned to the caller, and this one is not.
pub const NOT_ASSIGNED: &str = "the slice is not assigned to you";

/// The gates that can refuse, by the name the daemon gives them (also in the audit log).
pub const GATE_IDENTITY: &str = "identity";
pub const GATE_ROLE: &str = "role";
pub const GATE_CALLER_CAPS: &str = "caller-caps";
pub const GATE_POLKIT: &str = "polkit";

/// The message of a refusal by `gate`.
pub fn refusal_message(operation: &str, target: &str, gate: &str, reason: &str) -> String {
    format!("{operation} on {target}: refused by the {gate} gate: {reason}")
}

/// A refusal message taken apart again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal<'a> {
    /// The gate that decided (`role`, `caller-caps`, `polkit`, `identity`).
    pub gate: &'a str,
    pub reason: &'a str,
}

impl Refusal<'_> {
    /// Whether the role gate refused because the slice is not the caller's.
    pub fn not_assigned(&self) -> bool {
        self.gate == GATE_ROLE && self.reason == NOT_ASSIGNED
    }
}

/// Finds the gate and reason in a refusal message (None for a message not worded by
/// [`refusal_message`], e.g. from an older daemon).
pub fn parse_refusal(message: &str) -> Option<Refusal<'_>> {
    let (_, rest) = message.split_once("refused by the ")?;
    let (gate, reason) = rest.split_once(" gate: ")?;
    if gate.is_empty() || gate.contains(' ') {
        return None;
    }
    Some(Refusal { gate, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_parses_back_into_its_gate_and_reason() {
        let m = refusal_message("slice.read", "fpga0/region1", GATE_ROLE, NOT_ASSIGNED);
        assert_eq!(
            m,
            "slice.read on fpga0/region1: refused by the role gate: the slice is not assigned to you"
        );
        let r = parse_refusal(&m).unwrap();
        assert_eq!(r.gate, "role");
        assert!(r.not_assigned());
        let m = refusal_message("device.flash", "fpga0", GATE_POLKIT, "not authorized");
        let r = parse_refusal(&m).unwrap();
        assert_eq!((r.gate, r.reason), ("polkit", "not authorized"));
        assert!(!r.not_assigned());
        assert_eq!(parse_refusal("slice.read on x is not allowed"), None);
    }
}
