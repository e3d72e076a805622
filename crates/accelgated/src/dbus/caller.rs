//! Who is calling: identity from the bus, never from arguments.
//!
//! The bus daemon knows each connection's credentials from the socket (SO_PEERCRED and friends);
//! `GetConnectionCredentials` hands them to us. A unique name is never reused while the bus
//! runs, and a connection's credentials are fixed when it connects, so the answer is cached per
//! unique name and dropped when the name leaves the bus.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use zbus::fdo::DBusProxy;
use zbus::names::{BusName, UniqueName};
use zbus::Connection;

use crate::core::Caller;

/// Past this many cached callers the cache starts over: a bound on what a name that left while
/// it was being resolved can leak.
const MAX_CACHED: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("the call has no sender")]
    NoSender,
    #[error("the bus did not give the caller's credentials")]
    Credentials(#[source] zbus::fdo::Error),
    #[error("the bus did not give the caller's {0}")]
    Missing(&'static str),
}

pub struct CallerCache {
    dbus: DBusProxy<'static>,
    known: Mutex<HashMap<String, Arc<Caller>>>,
}

impl CallerCache {
    pub async fn new(conn: &Connection) -> zbus::Result<Arc<CallerCache>> {
        let dbus = DBusProxy::new(conn).await?;
        let cache = Arc::new(CallerCache {
            dbus: dbus.clone(),
            known: Mutex::new(HashMap::new()),
        });
        // Forget callers as they leave the bus.
        let mut stream = dbus.receive_name_owner_changed().await?;
        let weak = Arc::downgrade(&cache);
        tokio::spawn(async move {
            use futures_lite_next::next;
            while let Some(signal) = next(&mut stream).await {
                let Some(cache) = weak.upgrade() else { break };
                if let Ok(args) = signal.args() {
                    if args.new_owner().is_none() {
                        cache.forget(args.name().as_str());
                    }
                }
            }
        });
        Ok(cache)
    }

    /// The caller behind `sender`, from the cache or the bus.
    pub async fn resolve(
        &self,
        sender: Option<&UniqueName<'_>>,
    ) -> Result<Arc<Caller>, CallerError> {
        let sender = sender.ok_or(CallerError::NoSender)?;
        if let Some(c) = self.lock().get(sender.as_str()) {
            return Ok(c.clone());
        }
        let creds = self
            .dbus
            .get_connection_credentials(BusName::Unique(sender.to_owned()))
            .await
            .map_err(CallerError::Credentials)?;
        let uid = creds.unix_user_id().ok_or(CallerError::Missing("uid"))?;
        let gids = creds
            .unix_group_ids()
            .ok_or(CallerError::Missing("groups"))?
            .to_vec();
        let pid = creds.process_id();
        let process_fd = creds.into_process_fd().map(OwnedFd::from);
        let caller = Arc::new(Caller {
            sender: sender.to_string(),
            uid,
            gids,
            pid,
            process_fd,
        });
        let mut known = self.lock();
        if known.len() >= MAX_CACHED {
            known.clear();
        }
        known.insert(sender.to_string(), caller.clone());
        Ok(caller)
    }

    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Caller>>> {
        // A panic elsewhere while holding the lock cannot leave the map inconsistent (every
        // operation on it is a single insert/remove/clear), so keep serving.
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Taking the next item of a stream without pulling in a futures crate.
pub(crate) mod futures_lite_next {
    use std::future::poll_fn;
    use std::pin::Pin;

    use zbus::export::futures_core::Stream;

    pub async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
        poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
    }
}
