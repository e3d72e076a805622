//! The gates every request passes, in order, deny winning: role policy, caller capabilities,
//! then further gates (polkit). The caller's identity was resolved by the transport before
//! (a request that cannot be identified never reaches the engine: see
//! [`Engine::deny_unidentified`]). Every decision is audited.
//!
//! A [`Decision`] can only be made here (its fields are private to this module), so no engine
//! path can act for a caller that did not pass: [`RoleChecked`] after role and capabilities,
//! [`Authorized`] after every gate.

use std::ops::Deref;
use std::sync::Arc;

use accelgate_policy::RoleDecision;
use accelgate_proto::{refusal, Operation};

use super::audit::{AuditRecord, Decided, GateName};
use super::authz::{GateRequest, Target};
use super::caller::{caller_effective_caps, holds_all, Caller};
use super::engine::Engine;
use super::error::{error_chain, CoreError};
use super::jobs::Job;

/// A request as the transport hands it to the engine: who calls, and whether they accept
/// interactive authentication (a password prompt from polkit).
#[derive(Clone, Debug)]
pub struct Request {
    pub caller: Arc<Caller>,
    pub interactive: bool,
}

/// Who asked for what, on what. Made only by the gatekeeper.
#[derive(Debug)]
pub struct Decision {
    caller: Arc<Caller>,
    operation: Operation,
    target: Target,
    interactive: bool,
    purpose: Option<&'static str>,
}

impl Decision {
    pub fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }
    pub fn operation(&self) -> Operation {
        self.operation
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    pub fn interactive(&self) -> bool {
        self.interactive
    }
}

/// A request that passed the role and caller-capability gates; the remaining gates (polkit)
/// still have to pass, once the image hash they are shown is known.
#[derive(Debug)]
pub struct RoleChecked(Decision);

/// A request that passed every gate.
#[derive(Debug)]
pub struct Authorized(Decision);

impl Deref for RoleChecked {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        &self.0
    }
}

impl Deref for Authorized {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        &self.0
    }
}

impl Engine {
    /// Runs every gate for `operation` on `target`. Deny wins; every decision is audited.
    pub async fn authorize(
        &self,
        req: &Request,
        operation: Operation,
        target: Target,
    ) -> Result<Authorized, CoreError> {
        let checked = self.authorize_role(req, operation, target)?;
        self.authorize_rest(checked, None).await
    }

    /// Like [`Engine::authorize`], for a method that shares `operation` with others: polkit
    /// is told the `purpose` and answers it separately.
    pub async fn authorize_for(
        &self,
        req: &Request,
        operation: Operation,
        target: Target,
        purpose: &'static str,
    ) -> Result<Authorized, CoreError> {
        let mut checked = self.authorize_role(req, operation, target)?;
        checked.0.purpose = Some(purpose);
        self.authorize_rest(checked, None).await
    }

    /// Role policy and caller capabilities. Operations that take an image call this first,
    /// read the image, and then [`Engine::authorize_rest`] with its hash (polkit sees it).
    pub fn authorize_role(
        &self,
        req: &Request,
        operation: Operation,
        target: Target,
    ) -> Result<RoleChecked, CoreError> {
        let decision = Decision {
            caller: req.caller.clone(),
            operation,
            target,
            interactive: req.interactive,
            purpose: None,
        };
        self.check_role_and_caps(&decision)?;
        Ok(RoleChecked(decision))
    }

    /// Role, assignment and caller capabilities again, at the point of use: called under the
    /// target's busy lock right before the hardware is touched, after the long waits (image
    /// read, polkit) during which a Release and Assign to someone else may have happened.
    /// A refusal is audited like any other.
    pub fn recheck_at_use(&self, auth: &Authorized) -> Result<(), CoreError> {
        self.check_role_and_caps(&auth.0)
    }

    fn check_role_and_caps(&self, d: &Decision) -> Result<(), CoreError> {
        let caller = &d.caller;
        let assigned = match &d.target {
            Target::Slice(dev, s) => self
                .slice_tenant(dev, s)
                .is_some_and(|t| t.includes(caller.uid, &caller.gids)),
            _ => false,
        };
        let decision = self.policy().decide(
            caller.uid,
            &caller.gids,
            d.operation,
            d.target.device(),
            assigned,
        );
        let grants = match decision {
            RoleDecision::Allow { grants } => grants,
            RoleDecision::Deny {
                reason,
                not_assigned,
            } => {
                // The caller may learn that the slice is not its own (it named the slice),
                // never whose it is.
                let told = if not_assigned {
                    refusal::NOT_ASSIGNED.to_owned()
                } else {
                    reason.clone()
                };
                return Err(self.deny(d, GateName::Role, &reason, &told));
            }
        };
        // The caller passes if it meets the capability rule of any one role that grants.
        if grants.iter().any(|(_, caps)| caps.is_empty()) {
            return Ok(());
        }
        match caller_effective_caps(caller) {
            Ok(eff) if grants.iter().any(|(_, caps)| holds_all(eff, caps)) => Ok(()),
            Ok(_) => {
                let needed: Vec<String> = grants
                    .iter()
                    .map(|(role, caps)| format!("{role}: {caps:?}"))
                    .collect();
                Err(self.deny(
                    d,
                    GateName::CallerCaps,
                    &format!("caller lacks capabilities ({})", needed.join("; ")),
                    "the calling process lacks the capabilities its role requires",
                ))
            }
            Err(e) => Err(self.deny(
                d,
                GateName::CallerCaps,
                &error_chain(&e),
                "cannot read the calling process's capabilities",
            )),
        }
    }

    /// The gates after role and capabilities (polkit), then the audit record of the allow.
    pub async fn authorize_rest(
        &self,
        checked: RoleChecked,
        image_sha256: Option<&str>,
    ) -> Result<Authorized, CoreError> {
        let d = checked.0;
        let req = GateRequest {
            caller: &d.caller,
            operation: d.operation,
            target: &d.target,
            image_sha256,
            purpose: d.purpose,
            interactive: d.interactive,
        };
        for gate in self.gates() {
            if let Err(reason) = gate.check(&req).await {
                let told = gate
                    .tell(&reason)
                    .unwrap_or_else(|| format!("not authorized by {}", gate.name()));
                return Err(self.deny(&d, GateName::Further(gate.name()), &reason, &told));
            }
        }
        self.record(&d, Decided::Allow, GateName::All, "every gate passed");
        Ok(Authorized(d))
    }

    /// A hard device limit refused the request (after or between the gates).
    pub fn deny_by_limit(&self, d: &Decision, err: CoreError) -> CoreError {
        let message = err.message();
        self.record(d, Decided::Deny, GateName::DeviceLimits, &message);
        // Keeps its kind (InvalidArgument, Locked, ...), and names the gate like every refusal.
        CoreError::of_kind(
            err.kind(),
            format!(
                "refused by the {} gate: {message}",
                GateName::DeviceLimits.as_str()
            ),
        )
    }

    /// A request whose caller the transport could not identify: audited, and denied.
    pub fn deny_unidentified(
        &self,
        sender: &str,
        operation: &str,
        target: &Target,
        reason: &str,
    ) -> CoreError {
        self.audit().record(AuditRecord {
            time: 0.0,
            uid: None,
            pid: None,
            sender,
            operation,
            target: &target.to_string(),
            decision: Decided::Deny,
            gate: GateName::Identity,
            reason,
        });
        CoreError::NotAuthorized(refusal::refusal_message(
            operation,
            &target.to_string(),
            GateName::Identity.as_str(),
            "cannot identify the caller",
        ))
    }

    /// Audits the refusal with the full `reason`; the caller is told the gate and `told`,
    /// which says no more than the caller may know.
    fn deny(&self, d: &Decision, gate: GateName, reason: &str, told: &str) -> CoreError {
        self.record(d, Decided::Deny, gate, reason);
        CoreError::NotAuthorized(refusal::refusal_message(
            d.operation.as_str(),
            &d.target.to_string(),
            gate.as_str(),
            told,
        ))
    }

    fn record(&self, d: &Decision, decision: Decided, gate: GateName, reason: &str) {
        self.audit().record(AuditRecord {
            time: 0.0,
            uid: Some(d.caller.uid),
            pid: d.caller.pid,
            sender: &d.caller.sender,
            operation: d.operation.as_str(),
            target: &d.target.to_string(),
            decision,
            gate,
            reason,
        });
    }

    /// Cancel is allowed to whoever may start the job's operation on the job's target.
    pub async fn authorize_job_cancel(
        &self,
        req: &Request,
        job: &Job,
    ) -> Result<Authorized, CoreError> {
        self.authorize(req, job.operation, job.target.clone()).await
    }

    /// WhoAmI: needs only an identity.
    pub fn who_am_i(&self, req: &Request) -> (u32, Vec<String>, Vec<String>) {
        let caller = &req.caller;
        let policy = self.policy();
        let roles = policy
            .roles_for(caller.uid, &caller.gids)
            .iter()
            .map(|r| r.id.clone())
            .collect();
        let ops = policy
            .operations_for(caller.uid, &caller.gids)
            .iter()
            .map(|o| o.as_str().to_owned())
            .collect();
        (caller.uid, roles, ops)
    }
}
