//! Role decisions. (Stub: replaced by the policy work.)

use crate::operation::Operation;

use super::{Role, RolePolicy};

/// What the role policy says about one request.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleDecision {
    /// Some role grants it. Each alternative is (role id, capabilities the caller must hold
    /// for it); the caller passes if it satisfies any one alternative.
    Allow {
        grants: Vec<(String, Vec<caps::Capability>)>,
    },
    /// No role grants it.
    Deny { reason: String },
}

impl RolePolicy {
    /// The roles whose users or groups include the caller.
    pub fn roles_for(&self, uid: u32, gids: &[u32]) -> Vec<&Role> {
        self.roles
            .iter()
            .filter(|r| r.users.contains(&uid) || r.groups.iter().any(|g| gids.contains(g)))
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
        let _ = (uid, gids, op, device, assigned_to_caller);
        RoleDecision::Deny {
            reason: "not implemented".into(),
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
