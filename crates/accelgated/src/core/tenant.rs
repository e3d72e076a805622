//! Tenants that slices are assigned to: a user or a group, kept by number.

use std::fmt;

use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TenantError {
    #[error("tenant must be user:NAME, group:NAME, uid:N, gid:N or a user name, not '{0}'")]
    Syntax(String),
    #[error("no such user '{0}'")]
    UnknownUser(String),
    #[error("no such group '{0}'")]
    UnknownGroup(String),
}

/// Who a slice is assigned to. The name is kept for display; the number decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Tenant {
    User { uid: u32, name: String },
    Group { gid: u32, name: String },
}

impl Tenant {
    /// Parses and resolves `user:NAME`, `group:NAME`, `uid:N`, `gid:N` or a bare user name.
    pub fn resolve(spec: &str) -> Result<Tenant, TenantError> {
        let syntax = || TenantError::Syntax(spec.to_owned());
        let valid_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        let (kind, value) = spec.split_once(':').unwrap_or(("user", spec));
        match kind {
            "uid" => {
                let uid: u32 = value.parse().map_err(|_| syntax())?;
                if uid == u32::MAX {
                    return Err(syntax());
                }
                let name = User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_default();
                Ok(Tenant::User { uid, name })
            }
            "gid" => {
                let gid: u32 = value.parse().map_err(|_| syntax())?;
                if gid == u32::MAX {
                    return Err(syntax());
                }
                let name = Group::from_gid(Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_default();
                Ok(Tenant::Group { gid, name })
            }
            "user" if valid_name(value) => match User::from_name(value) {
                Ok(Some(u)) => Ok(Tenant::User {
                    uid: u.uid.as_raw(),
                    name: u.name,
                }),
                _ => Err(TenantError::UnknownUser(value.to_owned())),
            },
            "group" if valid_name(value) => match Group::from_name(value) {
                Ok(Some(g)) => Ok(Tenant::Group {
                    gid: g.gid.as_raw(),
                    name: g.name,
                }),
                _ => Err(TenantError::UnknownGroup(value.to_owned())),
            },
            _ => Err(syntax()),
        }
    }

    /// Whether a caller with these ids is this tenant.
    pub fn includes(&self, uid: u32, gids: &[u32]) -> bool {
        match self {
            Tenant::User { uid: u, .. } => *u == uid,
            Tenant::Group { gid, .. } => gids.contains(gid),
        }
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tenant::User { name, .. } if !name.is_empty() => write!(f, "user:{name}"),
            Tenant::User { uid, .. } => write!(f, "uid:{uid}"),
            Tenant::Group { name, .. } if !name.is_empty() => write!(f, "group:{name}"),
            Tenant::Group { gid, .. } => write!(f, "gid:{gid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_forms() {
        let root = Tenant::User {
            uid: 0,
            name: "root".into(),
        };
        assert_eq!(Tenant::resolve("root"), Ok(root.clone()));
        assert_eq!(Tenant::resolve("user:root"), Ok(root.clone()));
        assert_eq!(Tenant::resolve("uid:0"), Ok(root.clone()));
        assert_eq!(root.to_string(), "user:root");
        assert!(matches!(
            Tenant::resolve("group:root"),
            Ok(Tenant::Group { gid: 0, .. })
        ));
        assert!(root.includes(0, &[]));
        assert!(!root.includes(1, &[0]));
    }

    #[test]
    fn refuses_bad_specs() {
        assert!(matches!(
            Tenant::resolve("uid:x"),
            Err(TenantError::Syntax(_))
        ));
        assert!(matches!(
            Tenant::resolve("host:x"),
            Err(TenantError::Syntax(_))
        ));
        assert!(matches!(
            Tenant::resolve("user:a/b"),
            Err(TenantError::Syntax(_))
        ));
        assert!(matches!(Tenant::resolve(""), Err(TenantError::Syntax(_))));
        // (uid_t)-1 and (gid_t)-1 mean "no id" to the kernel (setresuid, chown): assigning a
        // slice to them would hand it to whatever an unset id is taken for.
        for spec in ["uid:4294967295", "gid:4294967295"] {
            assert!(
                matches!(Tenant::resolve(spec), Err(TenantError::Syntax(_))),
                "{spec} accepted"
            );
        }
        assert_eq!(
            Tenant::resolve("no-such-user-xyz"),
            Err(TenantError::UnknownUser("no-such-user-xyz".into()))
        );
    }
}
