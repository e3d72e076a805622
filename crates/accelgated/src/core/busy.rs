//! Which devices and slices have an operation running.
//!
//! Locks are keyed by target name (`fpga0`, `fpga0/region0`) and live as long as the daemon,
//! not as long as a device's runtime objects: a policy reload may give a device new runtime
//! objects, and VF slices are recreated with the VF count, while an operation on the same
//! hardware still runs. Keying by name means neither can ever hand out a second lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct BusyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BusyLocks {
    /// The lock of `key` for as long as the guard lives, or `None` if something holds it.
    pub fn try_claim(&self, key: &str) -> Option<OwnedMutexGuard<()>> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.to_owned()).or_default().clone()
        };
        lock.try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_key() {
        let locks = BusyLocks::default();
        let a = locks.try_claim("fpga0/region0").unwrap();
        assert!(locks.try_claim("fpga0/region0").is_none());
        assert!(locks.try_claim("fpga0/region1").is_some());
        assert!(locks.try_claim("fpga0").is_some());
        drop(a);
        assert!(locks.try_claim("fpga0/region0").is_some());
    }
}
