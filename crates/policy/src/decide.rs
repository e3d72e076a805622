//! Role decisions: does some role of the caller grant an operation on a target?

use accelgate_proto::operation::Operation;

use super::{Role, RolePolicy, Scope};

/// What the role policy says about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleDecision {
    /// Some role grants it. Each alternative is (role id, capabilities the caller must hold
    /// for it); the caller passes if it satisfies any one alternative.
    Allow {
        grants: Vec<(String, Vec<caps::Capability>)>,
    },
    /// No role grants it. `reason` speaks only of the caller's own standing;
    /// `not_assigned` says a role would grant it were the target slice assigned to the caller
    /// (so the caller needs an assignment, not another role).
    Deny { reason: String, not_assigned: bool },
}

impl Role {
    /// Whether the caller (uid and all its groups) is a member.
    pub fn has_member(&self, uid: u32, gids: &[u32]) -> bool {
        self.users.contains(&uid) || self.groups.iter().any(|g| gids.contains(g))
    }

    /// Whether the role lists `op` (`*` was expanded to every operation at load).
    pub fn grants(&self, op: Operation) -> bool {
        self.operations.contains(&op)
    }

    /// Whether the role covers `device`. `None` is an operation without a device (such as
    /// `policy.reload`): only a role not restricted to some devices covers those, since a role
    /// limited to a few devices must not reach beyond them.
    pub fn covers(&self, device: Option<&str>) -> bool {
        match (&self.devices, device) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(list), Some(d)) => list.iter().any(|x| x == d),
        }
    }
}

impl RolePolicy {
    /// The roles whose users or groups include the caller.
    pub fn roles_for(&self, uid: u32, gids: &[u32]) -> Vec<&Role> {
        self.roles
            .iter()
            .filter(|r| r.has_member(uid, gids))
            .collect()
    }

    /// Decides `op` for the caller on `device` (None for operations without a device target).
    /// `assigned_to_caller` says whether the target slice is assigned to the caller.
    pub fn decide(
        &self,
        uid: u32,
        gids: &[u32],
        op: Operation,
        device: Option<&str>,
        assigned_to_caller: bool,
    ) -> RoleDecision {
        let mine = self.roles_for(uid, gids);
        let listing: Vec<&Role> = mine.into_iter().filter(|r| r.grants(op)).collect();
        let covering: Vec<&Role> = listing
            .iter()
            .copied()
            .filter(|r| r.covers(device))
            .collect();
        let grants: Vec<(String, Vec<caps::Capability>)> = covering
            .iter()
            .filter(|r| r.scope == Scope::All || assigned_to_caller)
            .map(|r| {
                let caps = r.caller_caps.get(&op).cloned().unwrap_or_default();
                (r.id.clone(), caps)
            })
            .collect();
        if !grants.is_empty() {
            return RoleDecision::Allow { grants };
        }
        // The reason speaks only of the caller's own standing and the target it named: it
        // never names roles, their members, or who a slice is assigned to.
        let not_assigned = !covering.is_empty();
        let reason = if listing.is_empty() {
            format!("{op} is not granted to the caller")
        } else if covering.is_empty() {
            match device {
                Some(d) => format!("{op} is not granted to the caller on device {d}"),
                None => format!("{op} is not granted to the caller"),
            }
        } else {
            format!("{op} is granted to the caller only on slices assigned to it")
        };
        RoleDecision::Deny {
            reason,
            not_assigned,
        }
    }

    /// Every operation some role of the caller grants somewhere.
    pub fn operations_for(&self, uid: u32, gids: &[u32]) -> Vec<Operation> {
        let mut ops: Vec<Operation> = self
            .roles_for(uid, gids)
            .iter()
            .flat_map(|r| r.operations.iter().copied())
            .collect();
        ops.sort();
        ops.dedup();
        ops
    }
}
