//! Authorization pieces: what a request is aimed at, the request every gate sees, and the seam
//! further gates (polkit) plug into.
//!
//! The order of gates and the deny-wins rule live in `gatekeeper`; this module holds what each
//! gate needs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use accelgate_proto::Operation;

use super::caller::Caller;

/// What a request is aimed at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Manager,
    Device(String),
    Slice(String, String),
}

impl Target {
    pub fn device(&self) -> Option<&str> {
        match self {
            Target::Manager => None,
            Target::Device(d) | Target::Slice(d, _) => Some(d),
        }
    }

    pub fn slice(&self) -> Option<&str> {
        match self {
            Target::Slice(_, s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Manager => f.write_str("manager"),
            Target::Device(d) => f.write_str(d),
            Target::Slice(d, s) => write!(f, "{d}/{s}"),
        }
    }
}

/// What every gate after the role gate sees.
pub struct GateRequest<'a> {
    pub caller: &'a Caller,
    pub operation: Operation,
    pub target: &'a Target,
    pub image_sha256: Option<&'a str>,
    /// What the operation is asked for, where one operation serves several methods (the
    /// audit log is read under `policy.reload`): `audit-log`. Shown to polkit and part of
    /// its cache key, so one answer is never taken for the other.
    pub purpose: Option<&'static str>,
    /// The caller set ALLOW_INTERACTIVE_AUTHORIZATION on its call.
    pub interactive: bool,
}

pub type GateFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A further gate, after role policy and caller capabilities (polkit plugs in here).
/// `Err(reason)` denies; the reason goes to the audit log, not to the caller.
pub trait Gate: Send + Sync {
    fn name(&self) -> &'static str;
    fn check<'a>(&'a self, req: &'a GateRequest<'a>) -> GateFuture<'a>;
    /// What the caller is told about a denial with `reason`, where it may learn more than
    /// "not authorized" (e.g. that interactive authentication would have been offered).
    fn tell(&self, _reason: &str) -> Option<String> {
        None
    }
}
