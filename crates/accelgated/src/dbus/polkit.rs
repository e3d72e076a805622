//! The polkit gate: every request that passed the role and caller-capability gates is checked
//! with polkit `CheckAuthorization`, so admins can refine accelgate with the rules they already
//! write for the rest of the system.
//!
//! The subject is always the sender's `system-bus-name`: polkit resolves it through the bus
//! itself, so a pid that was reused, or a client that left after sending its call, can never be
//! taken for someone else (a name that left the bus makes polkit fail, which denies).
//!
//! Fail closed: polkit unreachable, returning an error, or slower than the timeout denies, with
//! the reason in the audit log.
//!
//! Definite answers are cached per (sender, action, details) for long-lived clients (agents
//! making many calls). The cache is dropped for a sender when it leaves the bus, entirely when
//! polkit emits `Changed` (rules or actions changed) or when polkit's bus name changes owner.
//! `ACCELGATE_POLKIT_CACHE=0` disables it (for measuring what it saves).

mod cache;

pub use cache::{DecisionCache, KeyRef};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;
use zbus::fdo::DBusProxy;
use zbus::message::Message;
use zbus::names::{BusName, UniqueName};
use zbus::Connection;
use zbus_polkit::policykit1::{
    AuthorityProxy, AuthorizationResult, CheckAuthorizationFlags, Subject,
};

use super::caller::futures_lite_next::next;
use crate::core::caller::{process_mark, same_process};
use crate::core::{error_chain, Caller, Gate, GateFuture, GateRequest};

/// polkit's well-known name on the system bus.
pub const POLKIT_BUS_NAME: &str = "org.freedesktop.PolicyKit1";
/// The environment variable that turns the decision cache off when set to `0`.
pub const CACHE_ENV: &str = "ACCELGATE_POLKIT_CACHE";

/// Longest a non-interactive check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an interactive check may take (a person types a password).
pub const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a cached answer is trusted without polkit saying anything changed.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// The audit reason when polkit wants authentication that did not happen: the caller did not
/// allow interactive authorization, or had no agent to ask.
const CHALLENGE_NOT_MET: &str = "polkit requires authentication, which did not happen";
/// What such a caller is told: this one refusal says how to get past it.
const CHALLENGE_TOLD: &str = "interactive authentication required: polkit asks for a password \
     for this operation; call with interactive authorization allowed (accelctl from a terminal) \
     and a polkit authentication agent running";

/// Detail keys polkit reports that make an answer unfit to cache.
const TEMPORARY_AUTHORIZATION: &str = "polkit.temporary_authorization_id";
const DISMISSED: &str = "polkit.dismissed";

#[derive(Debug, thiserror::Error)]
pub enum PolkitError {
    #[error("cannot create the polkit authority proxy")]
    Proxy(#[source] zbus::Error),
    #[error("cannot watch the bus for polkit changes and departing callers")]
    Watch(#[source] zbus::Error),
}

/// How the gate behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolkitOptions {
    /// Cache definite answers.
    pub cache: bool,
    pub timeout: Duration,
    pub interactive_timeout: Duration,
    pub cache_ttl: Duration,
}

impl Default for PolkitOptions {
    fn default() -> Self {
        PolkitOptions {
            cache: true,
            timeout: CHECK_TIMEOUT,
            interactive_timeout: INTERACTIVE_TIMEOUT,
            cache_ttl: CACHE_TTL,
        }
    }
}

impl PolkitOptions {
    /// The defaults, with the cache off when `ACCELGATE_POLKIT_CACHE=0`.
    pub fn from_env() -> PolkitOptions {
        PolkitOptions::with_cache_setting(std::env::var_os(CACHE_ENV).as_deref())
    }

    /// The defaults, with the cache off when `setting` (the value of `ACCELGATE_POLKIT_CACHE`)
    /// is `0`.
    fn with_cache_setting(setting: Option<&std::ffi::OsStr>) -> PolkitOptions {
        PolkitOptions {
            cache: setting.is_none_or(|v| v != "0"),
            ..PolkitOptions::default()
        }
    }
}

/// What polkit said, as far as the gate is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Authorized,
    /// Authorized through a temporary authorization (auth_admin_keep): it expires on its own,
    /// so it is not cached.
    AuthorizedTemporarily,
    /// polkit would authorize after authentication that did not happen.
    Challenge,
    /// The user dismissed the authentication dialog.
    Dismissed,
    NotAuthorized,
}

impl Verdict {
    pub fn of(result: &AuthorizationResult) -> Verdict {
        match (result.is_authorized, result.is_challenge) {
            (true, _) if result.details.contains_key(TEMPORARY_AUTHORIZATION) => {
                Verdict::AuthorizedTemporarily
            }
            (true, _) => Verdict::Authorized,
            (false, true) => Verdict::Challenge,
            (false, false) if result.details.contains_key(DISMISSED) => Verdict::Dismissed,
            (false, false) => Verdict::NotAuthorized,
        }
    }

    /// The answer to cache, for definite verdicts only.
    pub fn cacheable(&self) -> Option<bool> {
        match self {
            Verdict::Authorized => Some(true),
            Verdict::NotAuthorized => Some(false),
            Verdict::AuthorizedTemporarily | Verdict::Challenge | Verdict::Dismissed => None,
        }
    }

    /// `Ok` to allow, or the reason for the audit log.
    pub fn into_result(self) -> Result<(), String> {
        match self {
            Verdict::Authorized | Verdict::AuthorizedTemporarily => Ok(()),
            Verdict::Challenge => Err(CHALLENGE_NOT_MET.into()),
            Verdict::Dismissed => Err("polkit authentication was dismissed".into()),
            Verdict::NotAuthorized => Err("polkit: not authorized".into()),
        }
    }
}

/// The polkit gate.
pub struct PolkitGate {
    authority: AuthorityProxy<'static>,
    /// The bus itself: is the caller still there after polkit answered.
    dbus: DBusProxy<'static>,
    cache: Option<Arc<DecisionCache>>,
    options: PolkitOptions,
    /// Makes cancellation ids unique among this daemon's interactive checks.
    next_cancellation: AtomicU64,
    /// Tasks that invalidate the cache; stopped with the gate.
    watchers: Vec<JoinHandle<()>>,
}

impl PolkitGate {
    /// A gate asking polkit on `conn` (the system bus). polkit need not be running yet: until
    /// it is, every check is denied.
    pub async fn new(conn: &Connection, options: PolkitOptions) -> Result<PolkitGate, PolkitError> {
        let authority = AuthorityProxy::builder(conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(PolkitError::Proxy)?;
        let dbus = DBusProxy::new(conn).await.map_err(PolkitError::Proxy)?;
        let mut gate = PolkitGate {
            authority,
            dbus,
            cache: None,
            options,
            next_cancellation: AtomicU64::new(0),
            watchers: Vec::new(),
        };
        if options.cache {
            let cache = Arc::new(DecisionCache::new(options.cache_ttl));
            // Subscribed before the gate is handed out, so no change can go unseen.
            gate.watchers = watch(conn, &gate.authority, &cache).await?;
            gate.cache = Some(cache);
        } else {
            tracing::warn!("polkit decision cache disabled ({CACHE_ENV}=0)");
        }
        Ok(gate)
    }

    /// The decision cache, when enabled.
    pub fn cache(&self) -> Option<&DecisionCache> {
        self.cache.as_deref()
    }

    async fn check_request(&self, req: &GateRequest<'_>) -> Result<(), String> {
        let key = KeyRef {
            sender: &req.caller.sender,
            operation: req.operation,
            device: req.target.device(),
            slice: req.target.slice(),
            image_sha256: req.image_sha256,
            purpose: req.purpose,
        };
        let asked_at = match &self.cache {
            Some(cache) => {
                if let Some(authorized) = cache.lookup(&key) {
                    return if authorized {
                        Ok(())
                    } else {
                        Err("polkit: not authorized (cached)".into())
                    };
                }
                Some(cache.epoch())
            }
            None => None,
        };
        // Which process polkit is about to judge: an answer is only acted on if that process
        // is still the caller when polkit has answered.
        let mark = process_mark(req.caller)
            .map_err(|e| format!("cannot identify the caller's process: {}", error_chain(&e)))?;
        // Asked without interaction first: a plain yes or no is an answer for everyone and
        // may be cached. Only when polkit wants authentication is the caller's interactive
        // request made, and its success (an `auth_admin` challenge passed) is never cached:
        // the next request must authenticate again.
        let mut verdict = Verdict::of(&self.ask(&key, false).await?);
        let mut cacheable = verdict.cacheable();
        if req.interactive && verdict == Verdict::Challenge {
            verdict = Verdict::of(&self.ask(&key, true).await?);
            cacheable = None;
        }
        let allowed = verdict.into_result();
        if allowed.is_ok() {
            self.confirm_caller(req.caller, mark).await?;
        }
        if let (Some(cache), Some(asked_at), Some(authorized)) = (&self.cache, asked_at, cacheable)
        {
            cache.store(&key, authorized, asked_at);
        }
        allowed
    }

    /// After polkit allowed: the caller is still on the bus, with the same process. polkit
    /// resolves the caller's bus name when it starts deciding; a caller that disconnected (or
    /// whose process ended, its pid maybe reused) while polkit decided, or waited for a
    /// password, must not have its request carried out on the strength of that answer. Asked
    /// of the bus itself, which has seen every disconnect that happened before polkit's answer
    /// passed through it.
    async fn confirm_caller(&self, caller: &Caller, mark: u64) -> Result<(), String> {
        let sender = UniqueName::try_from(caller.sender.as_str())
            .map_err(|e| format!("the caller's bus name is unusable: {e}"))?;
        let pid = tokio::time::timeout(
            self.options.timeout,
            self.dbus
                .get_connection_unix_process_id(BusName::Unique(sender)),
        )
        .await;
        match pid {
            Ok(Ok(pid)) if Some(pid) == caller.pid => {}
            Ok(Ok(pid)) => {
                return Err(format!(
                    "the caller's connection now reports pid {pid}, not {:?}; request dropped",
                    caller.pid
                ))
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "the caller left the bus while polkit decided; request dropped ({e})"
                ))
            }
            Err(_) => return Err("the bus did not confirm the caller in time".into()),
        }
        same_process(caller, mark).map_err(|_| {
            "the caller's process ended while polkit decided; request dropped".to_owned()
        })
    }

    /// One `CheckAuthorization` call, bounded in time.
    async fn ask(
        &self,
        key: &KeyRef<'_>,
        interactive: bool,
    ) -> Result<AuthorizationResult, String> {
        let subject = bus_name_subject(key.sender)?;
        let mut details: HashMap<&str, &str> = HashMap::with_capacity(4);
        details.insert("operation", key.operation.as_str());
        if let Some(device) = key.device {
            details.insert("device", device);
        }
        if let Some(slice) = key.slice {
            details.insert("slice", slice);
        }
        if let Some(sha) = key.image_sha256 {
            details.insert("image_sha256", sha);
        }
        if let Some(purpose) = key.purpose {
            details.insert("purpose", purpose);
        }
        let (flags, timeout, cancellation_id) = if interactive {
            let n = self.next_cancellation.fetch_add(1, Ordering::Relaxed);
            (
                CheckAuthorizationFlags::ALLOW_USER_INTERACTION,
                self.options.interactive_timeout,
                format!("accelgate-{}-{n}", std::process::id()),
            )
        } else {
            (
                CheckAuthorizationFlags::empty(),
                self.options.timeout,
                String::new(),
            )
        };
        let call = self.authority.check_authorization(
            &subject,
            key.operation.polkit_action(),
            &details,
            flags,
            &cancellation_id,
        );
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(e)) => Err(format!("polkit check failed: {e}")),
            Err(_) => {
                if !cancellation_id.is_empty() {
                    self.cancel_in_background(cancellation_id);
                }
                Err(format!(
                    "polkit did not answer within {} s",
                    timeout.as_secs()
                ))
            }
        }
    }

    /// Tells polkit to drop an interactive check we stopped waiting for, so no authentication
    /// dialog lingers for a call that was already denied.
    fn cancel_in_background(&self, cancellation_id: String) {
        let authority = self.authority.clone();
        let timeout = self.options.timeout;
        tokio::spawn(async move {
            let cancel = authority.cancel_check_authorization(&cancellation_id);
            if let Ok(Err(e)) = tokio::time::timeout(timeout, cancel).await {
                tracing::debug!("cannot cancel polkit check {cancellation_id}: {e}");
            }
        });
    }
}

impl Drop for PolkitGate {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

impl Gate for PolkitGate {
    fn name(&self) -> &'static str {
        "polkit"
    }

    fn check<'a>(&'a self, req: &'a GateRequest<'a>) -> GateFuture<'a> {
        Box::pin(self.check_request(req))
    }

    fn tell(&self, reason: &str) -> Option<String> {
        (reason == CHALLENGE_NOT_MET).then(|| CHALLENGE_TOLD.to_owned())
    }
}

/// The `system-bus-name` subject for a unique name. zbus_polkit builds that subject only from a
/// message header, so the name is put in the sender field of a message that is never sent.
fn bus_name_subject(sender: &str) -> Result<Subject, String> {
    let header_only = Message::method_call("/", "CheckAuthorization")
        .sender(sender)
        .build(&())
        .map_err(|e| format!("the caller's bus name is unusable: {e}"))?;
    Subject::new_for_message_header(&header_only.header())
        .map_err(|e| format!("cannot make a polkit subject of the caller: {e}"))
}

/// Starts the tasks that keep the cache honest: forget senders that leave the bus, forget
/// everything when polkit changes or its name changes owner.
async fn watch(
    conn: &Connection,
    authority: &AuthorityProxy<'static>,
    cache: &Arc<DecisionCache>,
) -> Result<Vec<JoinHandle<()>>, PolkitError> {
    let dbus = DBusProxy::new(conn).await.map_err(PolkitError::Watch)?;
    let mut owners = dbus
        .receive_name_owner_changed()
        .await
        .map_err(PolkitError::Watch)?;
    let mut changes = authority
        .receive_changed()
        .await
        .map_err(PolkitError::Watch)?;

    let weak: Weak<DecisionCache> = Arc::downgrade(cache);
    let owner_watch = tokio::spawn(async move {
        while let Some(signal) = next(&mut owners).await {
            let Some(cache) = weak.upgrade() else { break };
            let Ok(args) = signal.args() else { continue };
            let name = args.name().as_str();
            if name == POLKIT_BUS_NAME {
                // A new polkit may run with other rules, and may not have emitted Changed.
                tracing::info!("polkit changed owner; decision cache cleared");
                cache.clear();
            } else if name.starts_with(':') && args.new_owner().is_none() {
                cache.forget_sender(name);
            }
        }
    });

    let weak: Weak<DecisionCache> = Arc::downgrade(cache);
    let change_watch = tokio::spawn(async move {
        while next(&mut changes).await.is_some() {
            let Some(cache) = weak.upgrade() else { break };
            tracing::info!("polkit reported a change; decision cache cleared");
            cache.clear();
        }
    });
    Ok(vec![owner_watch, change_watch])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(authorized: bool, challenge: bool, details: &[&str]) -> AuthorizationResult {
        AuthorizationResult {
            is_authorized: authorized,
            is_challenge: challenge,
            details: details
                .iter()
                .map(|k| (k.to_string(), "1".to_string()))
                .collect(),
        }
    }

    #[test]
    fn only_definite_answers_are_cacheable() {
        let cases = [
            (result(true, false, &[]), Verdict::Authorized, Some(true)),
            (
                result(false, false, &[]),
                Verdict::NotAuthorized,
                Some(false),
            ),
            (result(false, true, &[]), Verdict::Challenge, None),
            (result(false, false, &[DISMISSED]), Verdict::Dismissed, None),
            (
                result(true, false, &[TEMPORARY_AUTHORIZATION]),
                Verdict::AuthorizedTemporarily,
                None,
            ),
        ];
        for (r, verdict, cacheable) in cases {
            let v = Verdict::of(&r);
            assert_eq!(v, verdict, "{r:?}");
            assert_eq!(v.cacheable(), cacheable, "{r:?}");
            assert_eq!(
                v.into_result().is_ok(),
                r.is_authorized,
                "allow exactly what polkit authorized: {r:?}"
            );
        }
    }

    #[test]
    fn the_subject_is_the_callers_bus_name() {
        let s = bus_name_subject(":1.42").unwrap();
        assert_eq!(s.kind(), "system-bus-name");
        // Not a unique name: refused, never sent.
        assert!(bus_name_subject("org.example.Name").is_err());
        assert!(bus_name_subject("").is_err());
    }

    #[test]
    fn cache_is_on_unless_the_environment_turns_it_off() {
        use std::ffi::OsStr;
        assert!(PolkitOptions::with_cache_setting(None).cache);
        assert!(PolkitOptions::with_cache_setting(Some(OsStr::new("1"))).cache);
        assert!(PolkitOptions::with_cache_setting(Some(OsStr::new(""))).cache);
        assert!(!PolkitOptions::with_cache_setting(Some(OsStr::new("0"))).cache);
    }
}
