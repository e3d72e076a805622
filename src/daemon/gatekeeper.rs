//! The gates every request passes, in order, deny winning: caller identity from the bus, role
//! policy, caller capabilities, then further gates (polkit). Each request finds its operation
//! in `authz::METHOD_TABLE` by the member it is handling, and every decision is audited.

use std::sync::Arc;

use zbus::message::{Flags, Header};

use crate::error::AccelError;
use crate::operation::Operation;
use crate::policy::RoleDecision;

use super::audit::AuditRecord;
use super::authz::{self, GateRequest, MethodGate, Target};
use super::caller::Caller;
use super::jobs::JobShared;
use super::service::{error_chain, Daemon};

/// A request that passed the identity, role and caller-capability gates.
pub struct Authorized {
    pub caller: Arc<Caller>,
    pub operation: Operation,
    pub target: Target,
    pub interactive: bool,
}

impl Daemon {
    /// Runs every gate for the method being handled, on `target`. Deny wins; every decision is
    /// audited.
    pub async fn authorize(
        &self,
        hdr: &Header<'_>,
        target: Target,
    ) -> Result<Authorized, AccelError> {
        let auth = self.authorize_role(hdr, target).await?;
        self.authorize_rest(&auth, None).await?;
        Ok(auth)
    }

    /// Identity, role and caller capabilities. Methods that take an image call this first,
    /// read the image, and then `authorize_rest` with its hash (polkit sees the hash).
    pub async fn authorize_role(
        &self,
        hdr: &Header<'_>,
        target: Target,
    ) -> Result<Authorized, AccelError> {
        let interface = hdr.interface().map(|i| i.as_str()).unwrap_or_default();
        let member = hdr.member().map(|m| m.as_str()).unwrap_or_default();
        let operation = match authz::method_gate(interface, member) {
            Some(MethodGate::Operation(op)) => op,
            // Identity-only and job methods have their own entry points; anything else is a
            // method the table does not know, which is denied.
            _ => {
                tracing::error!("method {interface}.{member} has no operation in the method table");
                return Err(AccelError::NotAuthorized(
                    "method is not in the authorization table".into(),
                ));
            }
        };
        let caller = self.identify(hdr, operation.as_str(), &target).await?;
        let interactive = hdr
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH);
        let auth = Authorized {
            caller,
            operation,
            target,
            interactive,
        };
        self.check_role_and_caps(&auth)?;
        Ok(auth)
    }

    async fn identify(
        &self,
        hdr: &Header<'_>,
        operation: &str,
        target: &Target,
    ) -> Result<Arc<Caller>, AccelError> {
        match self.callers.resolve(hdr.sender()).await {
            Ok(c) => Ok(c),
            Err(e) => {
                let reason = error_chain(&e);
                self.audit.record(AuditRecord {
                    time: 0.0,
                    uid: None,
                    pid: None,
                    sender: hdr.sender().map(|s| s.as_str()).unwrap_or(""),
                    operation,
                    target: &target.to_string(),
                    decision: "deny",
                    gate: "identity",
                    reason: &reason,
                });
                Err(AccelError::NotAuthorized(
                    "cannot identify the caller".into(),
                ))
            }
        }
    }

    fn check_role_and_caps(&self, auth: &Authorized) -> Result<(), AccelError> {
        let caller = &auth.caller;
        let assigned = match &auth.target {
            Target::Slice(d, s) => self
                .state()
                .get()
                .slice(d, s)
                .tenant
                .is_some_and(|t| t.includes(caller.uid, &caller.gids)),
            _ => false,
        };
        let decision = self.policy().decide(
            caller.uid,
            &caller.gids,
            auth.operation,
            auth.target.device(),
            assigned,
        );
        let grants = match decision {
            RoleDecision::Allow { grants } => grants,
            RoleDecision::Deny { reason } => return Err(self.deny(auth, "role", &reason)),
        };
        // The caller passes if it meets the capability rule of any one role that grants.
        if grants.iter().any(|(_, caps)| caps.is_empty()) {
            return Ok(());
        }
        match authz::caller_effective_caps(caller) {
            Ok(eff) if grants.iter().any(|(_, caps)| authz::holds_all(eff, caps)) => Ok(()),
            Ok(_) => {
                let needed: Vec<String> = grants
                    .iter()
                    .map(|(role, caps)| format!("{role}: {caps:?}"))
                    .collect();
                Err(self.deny(
                    auth,
                    "caller-caps",
                    &format!("caller lacks capabilities ({})", needed.join("; ")),
                ))
            }
            Err(e) => Err(self.deny(auth, "caller-caps", &error_chain(&e))),
        }
    }

    /// The gates after role and capabilities (polkit), then the audit record of the allow.
    pub async fn authorize_rest(
        &self,
        auth: &Authorized,
        image_sha256: Option<&str>,
    ) -> Result<(), AccelError> {
        let req = GateRequest {
            caller: &auth.caller,
            operation: auth.operation,
            target: &auth.target,
            image_sha256,
            interactive: auth.interactive,
        };
        for gate in &self.gates {
            if let Err(reason) = gate.check(&req).await {
                return Err(self.deny(auth, gate.name(), &reason));
            }
        }
        self.record(auth, "allow", "all", "every gate passed");
        Ok(())
    }

    /// A hard device limit refused the request (after the gates allowed it).
    pub fn deny_by_limit(&self, auth: &Authorized, err: AccelError) -> AccelError {
        self.record(auth, "deny", "device-limits", &err.message());
        err
    }

    fn deny(&self, auth: &Authorized, gate: &'static str, reason: &str) -> AccelError {
        self.record(auth, "deny", gate, reason);
        AccelError::NotAuthorized(format!(
            "{} on {} is not allowed",
            auth.operation, auth.target
        ))
    }

    fn record(&self, auth: &Authorized, decision: &'static str, gate: &'static str, reason: &str) {
        self.audit.record(AuditRecord {
            time: 0.0,
            uid: Some(auth.caller.uid),
            pid: auth.caller.pid,
            sender: &auth.caller.sender,
            operation: auth.operation.as_str(),
            target: &auth.target.to_string(),
            decision,
            gate,
            reason,
        });
    }

    /// Cancel is allowed to whoever may start the job's operation on the job's target.
    pub async fn authorize_job_cancel(
        &self,
        hdr: &Header<'_>,
        job: &JobShared,
    ) -> Result<(), AccelError> {
        let caller = self
            .identify(hdr, job.operation.as_str(), &job.target)
            .await?;
        let interactive = hdr
            .primary()
            .flags()
            .contains(Flags::ALLOW_INTERACTIVE_AUTH);
        let auth = Authorized {
            caller,
            operation: job.operation,
            target: job.target.clone(),
            interactive,
        };
        self.check_role_and_caps(&auth)?;
        self.authorize_rest(&auth, None).await
    }

    /// WhoAmI: needs only an identity.
    pub async fn who_am_i(
        &self,
        hdr: &Header<'_>,
    ) -> Result<(u32, Vec<String>, Vec<String>), AccelError> {
        let caller = self.identify(hdr, "whoami", &Target::Manager).await?;
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
        Ok((caller.uid, roles, ops))
    }
}
