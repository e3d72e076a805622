//! Anti-rollback: the firmware policy's floor (`min_version`) and its downgrade rule (an image
//! older than the active firmware needs an admin's `force` unless `allow_downgrade`).
//! Versions come from the images' `ACCELGATE-FW` header line and compare as
//! [`FirmwareVersion`] says.

use accelgate_policy::version::FirmwareVersion;
use accelgate_policy::FirmwarePolicy;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RollbackError {
    #[error(
        "its version {version:?} is not a version the policy can compare (no ACCELGATE-FW \
         header line?), and the policy demands at least {min}"
    )]
    NoVersionForFloor { version: String, min: String },
    #[error(
        "firmware {version} is below the policy's minimum version {min} (anti-rollback \
         floor; force does not override it, only a policy change does)"
    )]
    BelowFloor { version: String, min: String },
    #[error(
        "firmware {version} is older than the active firmware {active}: downgrades are \
         refused (an admin may pass the option force)"
    )]
    Downgrade { version: String, active: String },
    #[error(
        "its version {version:?} cannot be compared with the active firmware {active}, so it \
         may be a downgrade: refused (an admin may pass the option force)"
    )]
    Incomparable { version: String, active: String },
}

/// The floor: an image below `min_version`, or without a version while there is a floor, is
/// refused whatever the options.
pub fn check_floor(policy: &FirmwarePolicy, version: &str) -> Result<(), RollbackError> {
    let Some(min) = &policy.min_version else {
        return Ok(());
    };
    // The policy's min_version was checked at load.
    let Some(floor) = FirmwareVersion::parse(min) else {
        return Ok(());
    };
    match FirmwareVersion::parse(version) {
        None => Err(RollbackError::NoVersionForFloor {
            version: version.to_owned(),
            min: min.clone(),
        }),
        Some(v) if v < floor => Err(RollbackError::BelowFloor {
            version: version.to_owned(),
            min: min.clone(),
        }),
        Some(_) => Ok(()),
    }
}

/// The downgrade rule, against the firmware that is active now. An active firmware without a
/// comparable version leaves nothing to roll back from; an image without one, against an
/// active version, fails closed.
pub fn check_downgrade(
    policy: &FirmwarePolicy,
    version: &str,
    active: &str,
    force: bool,
) -> Result<(), RollbackError> {
    if policy.allow_downgrade || force {
        return Ok(());
    }
    let Some(current) = FirmwareVersion::parse(active) else {
        return Ok(());
    };
    match FirmwareVersion::parse(version) {
        None => Err(RollbackError::Incomparable {
            version: version.to_owned(),
            active: active.to_owned(),
        }),
        Some(v) if v < current => Err(RollbackError::Downgrade {
            version: version.to_owned(),
            active: active.to_owned(),
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accelgate_policy::LoaderBackend;

    fn policy(min: Option<&str>, allow_downgrade: bool) -> FirmwarePolicy {
        FirmwarePolicy {
            backend: LoaderBackend::FwUpload,
            name: "x".into(),
            locked: false,
            keys: vec![],
            allow_unsigned: true,
            min_version: min.map(str::to_owned),
            allow_downgrade,
        }
    }

    #[test]
    fn the_floor_holds_for_everyone() {
        let p = policy(Some("2.0.0"), true);
        assert!(check_floor(&p, "2.0.0").is_ok());
        assert!(check_floor(&p, "2.0.1").is_ok());
        assert!(matches!(
            check_floor(&p, "1.9.9"),
            Err(RollbackError::BelowFloor { .. })
        ));
        assert!(matches!(
            check_floor(&p, "unknown"),
            Err(RollbackError::NoVersionForFloor { .. })
        ));
        assert!(check_floor(&policy(None, false), "unknown").is_ok());
    }

    #[test]
    fn downgrades_need_force_or_the_policy() {
        let p = policy(None, false);
        assert!(check_downgrade(&p, "3.0.0", "2.0.0", false).is_ok());
        assert!(check_downgrade(&p, "2.0.0", "2.0.0", false).is_ok());
        assert!(matches!(
            check_downgrade(&p, "1.0.0", "2.0.0", false),
            Err(RollbackError::Downgrade { .. })
        ));
        assert!(matches!(
            check_downgrade(&p, "unknown", "2.0.0", false),
            Err(RollbackError::Incomparable { .. })
        ));
        assert!(check_downgrade(&p, "1.0.0", "2.0.0", true).is_ok());
        assert!(check_downgrade(&p, "1.0.0", "unknown", false).is_ok());
        assert!(check_downgrade(&policy(None, true), "1.0.0", "2.0.0", false).is_ok());
    }
}
