//! Reading an allocated `ResourceClaim`: the results that are ours and the opaque
//! configuration that says whom the slices are for and what image they run.
//!
//! Opaque parameters (in the claim's or the DeviceClass's `config`, driver = ours):
//!
//! ```json
//! { "apiVersion": "accelgate.org/v1alpha1", "kind": "SliceConfig",
//!   "tenant": { "uid": 1000 },          // or { "gid": 1000 }: who may use the slice
//!   "image": "app.bin" }                // optional: a file in the plugin's image directory
//! ```

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::resource::v1::ResourceClaim;
use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error("claim {0} has uid {1}, not the {2} the kubelet asked for (recreated?)")]
    UidMismatch(String, String, String),
    #[error("claim {0} is not allocated")]
    NotAllocated(String),
    #[error("claim {0} has no device of driver {1}")]
    NoDevices(String, String),
    #[error("claim {claim}: device {device} is in pool {pool}, not this node's pool {ours}")]
    OtherPool {
        claim: String,
        device: String,
        pool: String,
        ours: String,
    },
    #[error("claim {claim}: bad parameters for request {request}: {reason}")]
    BadParameters {
        claim: String,
        request: String,
        reason: String,
    },
    #[error("claim {claim}: no tenant configured for request {request}")]
    NoTenant { claim: String, request: String },
}

/// One allocated device of ours, with its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    pub request: String,
    pub pool: String,
    pub device_name: String,
    /// `uid:N` or `gid:N`, as the daemon takes it.
    pub tenant: String,
    /// A file under the image directory, already checked to stay inside it.
    pub image: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Parameters {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: Option<String>,
    tenant: Option<TenantParameter>,
    image: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantParameter {
    uid: Option<u32>,
    gid: Option<u32>,
}

/// The devices of `driver` in the claim, checked against the uid the kubelet named and this
/// node's pool, each with its tenant and image.
pub fn allocated(
    claim: &ResourceClaim,
    want_uid: &str,
    driver: &str,
    pool: &str,
    image_dir: &Path,
) -> Result<Vec<Allocated>, ClaimError> {
    let label = format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or(""),
        claim.metadata.name.as_deref().unwrap_or("")
    );
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    if uid != want_uid {
        return Err(ClaimError::UidMismatch(label, uid, want_uid.to_owned()));
    }
    let devices = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .ok_or_else(|| ClaimError::NotAllocated(label.clone()))?;
    let configs = devices.config.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for result in devices
        .results
        .iter()
        .flatten()
        .filter(|r| r.driver == driver)
    {
        if result.pool != pool {
            return Err(ClaimError::OtherPool {
                claim: label,
                device: result.device.clone(),
                pool: result.pool.clone(),
                ours: pool.to_owned(),
            });
        }
        let bad = |reason: String| ClaimError::BadParameters {
            claim: label.clone(),
            request: result.request.clone(),
            reason,
        };
        // The class's configuration comes first in the list and the claim's after it; a later
        // entry overrides what an earlier one set.
        let mut tenant = None;
        let mut image = None;
        for config in configs {
            let Some(opaque) = config.opaque.as_ref().filter(|o| o.driver == driver) else {
                continue;
            };
            let applies = config.requests.as_ref().is_none_or(|rs| {
                rs.is_empty()
                    || rs.iter().any(|r| {
                        r == &result.request || result.request.split('/').next() == Some(r.as_str())
                    })
            });
            if !applies {
                continue;
            }
            let params: Parameters = serde_json::from_value(opaque.parameters.0.clone())
                .map_err(|e| bad(e.to_string()))?;
            if let Some(t) = params.tenant {
                tenant = Some(tenant_of(&t).map_err(&bad)?);
            }
            if let Some(i) = params.image {
                image = Some(image_path(image_dir, &i).map_err(&bad)?);
            }
        }
        let tenant = tenant.ok_or_else(|| ClaimError::NoTenant {
            claim: label.clone(),
            request: result.request.clone(),
        })?;
        out.push(Allocated {
            request: result.request.clone(),
            pool: result.pool.clone(),
            device_name: result.device.clone(),
            tenant,
            image,
        });
    }
    if out.is_empty() {
        return Err(ClaimError::NoDevices(label, driver.to_owned()));
    }
    Ok(out)
}

fn tenant_of(t: &TenantParameter) -> Result<String, String> {
    match (t.uid, t.gid) {
        (Some(0), None) | (None, Some(0)) => Err("tenant uid/gid 0 (root) is refused".into()),
        (Some(uid), None) => Ok(format!("uid:{uid}")),
        (None, Some(gid)) => Ok(format!("gid:{gid}")),
        _ => Err("tenant needs exactly one of uid and gid".into()),
    }
}

/// An image reference is a relative path of plain names inside the image directory, so a claim
/// cannot make the plugin read any other file of the node.
fn image_path(dir: &Path, reference: &str) -> Result<PathBuf, String> {
    let rel = Path::new(reference);
    let plain =
        !reference.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(format!(
            "image {reference:?} must be a relative path inside the image directory"
        ));
    }
    Ok(dir.join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_stay_inside() {
        let d = Path::new("/var/lib/accelgate/images");
        assert_eq!(image_path(d, "a/b.bin").unwrap(), d.join("a/b.bin"));
        for bad in ["/etc/shadow", "../x", "a/../../x", "", "./x"] {
            assert!(image_path(d, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenants() {
        let t = |uid, gid| tenant_of(&TenantParameter { uid, gid });
        assert_eq!(t(Some(1000), None).unwrap(), "uid:1000");
        assert_eq!(t(None, Some(5)).unwrap(), "gid:5");
        assert!(t(Some(0), None).is_err());
        assert!(t(Some(1), Some(2)).is_err());
        assert!(t(None, None).is_err());
    }
}
