//! Turning user and group names in a policy file into ids.
//!
//! Names are resolved once, when the policy is loaded, so that a decision never depends on a
//! name service lookup made while a request waits (and an account renamed later does not
//! silently change who a role covers until the policy is reloaded).

use std::collections::BTreeMap;

/// Resolves account names to ids. `None` means the name is unknown.
pub trait Accounts {
    fn user_id(&self, name: &str) -> Option<u32>;
    fn group_id(&self, name: &str) -> Option<u32>;
}

/// The system's account databases (passwd/group through NSS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemAccounts;

impl Accounts for SystemAccounts {
    fn user_id(&self, name: &str) -> Option<u32> {
        // A lookup that fails (NSS error) is treated like an unknown name: the policy is
        // rejected rather than loaded with a member missing.
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        nix::unistd::Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }
}

/// A fixed table of names, for tests and simulations that must not depend on the accounts of
/// the machine they run on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaticAccounts {
    users: BTreeMap<String, u32>,
    groups: BTreeMap<String, u32>,
}

impl StaticAccounts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_user(mut self, name: &str, uid: u32) -> Self {
        self.users.insert(name.to_owned(), uid);
        self
    }

    pub fn with_group(mut self, name: &str, gid: u32) -> Self {
        self.groups.insert(name.to_owned(), gid);
        self
    }
}

impl Accounts for StaticAccounts {
    fn user_id(&self, name: &str) -> Option<u32> {
        self.users.get(name).copied()
    }

    fn group_id(&self, name: &str) -> Option<u32> {
        self.groups.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_accounts_know_root_and_not_nonsense() {
        assert_eq!(SystemAccounts.user_id("root"), Some(0));
        assert_eq!(SystemAccounts.group_id("root"), Some(0));
        assert_eq!(SystemAccounts.user_id("no-such-user-accelgate-test"), None);
        assert_eq!(
            SystemAccounts.group_id("no-such-group-accelgate-test"),
            None
        );
    }

    #[test]
    fn static_accounts_answer_only_what_they_hold() {
        let a = StaticAccounts::new()
            .with_user("alice", 1001)
            .with_group("staff", 50);
        assert_eq!(a.user_id("alice"), Some(1001));
        assert_eq!(a.group_id("staff"), Some(50));
        assert_eq!(a.user_id("staff"), None);
        assert_eq!(a.group_id("alice"), None);
    }
}
