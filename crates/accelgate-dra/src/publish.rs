//! Publication: the node's slices as one `ResourceSlice` (one DRA device per accelgate
//! slice), rewritten with a new pool generation whenever what it says changes, following the
//! daemon's signals.
//!
//! Health is reported as a device taint (`accelgate.org/firmware`, effect `NoSchedule`) while
//! the device's firmware is being flashed or in error; a device the daemon no longer has
//! disappears from the slice. (The kubelet's DRAResourceHealth stream would only inform pods
//! that already run; a taint keeps new claims away, which is what a flashing card needs.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceTaint, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::Mutex;

use crate::accel::{Accel, SliceFacts};
use crate::checkpoint::Checkpoint;
use crate::sysfs;

/// Field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "accelgate-dra";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// The DRA device name of an accelgate slice: a DNS label made of the device and slice ids.
/// Ids are `[A-Za-z0-9_]+`; None when the result is not a valid label.
pub fn device_name(device: &str, slice: &str) -> Option<String> {
    let name = format!("{device}-{slice}")
        .to_ascii_lowercase()
        .replace('_', "-");
    let valid = name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    valid.then_some(name)
}

/// DRA device name -> (device id, slice id), for the slices that have a unique valid name.
pub fn names(facts: &[SliceFacts]) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    let mut clashes = Vec::new();
    for f in facts {
        let Some(name) = device_name(&f.device, &f.slice) else {
            tracing::warn!(device = %f.device, slice = %f.slice, "no valid DRA device name; not published");
            continue;
        };
        if out
            .insert(name.clone(), (f.device.clone(), f.slice.clone()))
            .is_some()
        {
            clashes.push(name);
        }
    }
    for name in clashes {
        tracing::warn!(%name, "two slices map to this DRA device name; neither is published");
        out.remove(&name);
    }
    out
}

fn string(v: impl Into<String>) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(v.into()),
        ..Default::default()
    }
}

/// The DRA devices for `facts`: the slices that are free, or held by a claim we prepared
/// (a slice an administrator assigned by hand is not offered to the scheduler).
pub fn devices(facts: &[SliceFacts], held: &Checkpoint, sysfs_root: &Path) -> Vec<Device> {
    let named = names(facts);
    let mut out = Vec::new();
    for f in facts {
        let Some(name) = device_name(&f.device, &f.slice) else {
            continue;
        };
        if !named.contains_key(&name) {
            continue;
        }
        let ours = held.holder_of(&f.device, &f.slice, "").is_some();
        if !f.tenant.is_empty() && !ours {
            continue;
        }
        let pci = if f.kind == "vf" {
            sysfs::vf_address(sysfs_root, &f.pci_address, &f.slice)
                .unwrap_or_else(|| f.pci_address.clone())
        } else {
            f.pci_address.clone()
        };
        let mut attributes = BTreeMap::from([
            ("kind".to_owned(), string(&f.device_kind)),
            ("sliceKind".to_owned(), string(&f.kind)),
            ("device".to_owned(), string(&f.device)),
            ("slice".to_owned(), string(&f.slice)),
            ("resource.kubernetes.io/pciBusID".to_owned(), string(pci)),
            ("firmwareVersion".to_owned(), string(&f.firmware_version)),
            ("imageSha256".to_owned(), string(&f.image_sha256)),
            (
                "mappable".to_owned(),
                DeviceAttribute {
                    bool: Some(f.mappable),
                    ..Default::default()
                },
            ),
            (
                "vendorId".to_owned(),
                DeviceAttribute {
                    int: Some(i64::from(f.vendor_id)),
                    ..Default::default()
                },
            ),
            (
                "productId".to_owned(),
                DeviceAttribute {
                    int: Some(i64::from(f.product_id)),
                    ..Default::default()
                },
            ),
        ]);
        if f.image_sha256.is_empty() {
            attributes.remove("imageSha256");
        }
        let taints = firmware_taint(&f.firmware_state).map(|t| vec![t]);
        out.push(Device {
            name,
            attributes: Some(attributes),
            taints,
            ..Default::default()
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn firmware_taint(state: &str) -> Option<DeviceTaint> {
    let value = if state == "flashing" {
        "flashing"
    } else if state.starts_with("error") {
        "error"
    } else {
        return None;
    };
    Some(DeviceTaint {
        key: "accelgate.org/firmware".to_owned(),
        value: Some(value.to_owned()),
        effect: "NoSchedule".to_owned(),
        time_added: None,
    })
}

/// Settings of the publisher.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub driver: String,
    pub node: String,
    pub sysfs_root: PathBuf,
    /// Read the inventory again at least this often, signal or not.
    pub resync: Duration,
}

impl PublishConfig {
    pub fn slice_name(&self) -> String {
        format!("{}-{}", self.node, self.driver)
    }
}

/// Keeps the node's ResourceSlice in step with the daemon until the task is dropped.
pub async fn run(
    config: PublishConfig,
    accel: Accel,
    kube: kube::Client,
    checkpoint: Arc<Mutex<Checkpoint>>,
) {
    let api: Api<ResourceSlice> = Api::all(kube);
    let mut generation: Option<i64> = None;
    let mut published: Option<Vec<Device>> = None;
    let mut changes = match accel.changes().await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("cannot follow the daemon's signals ({e}); polling only");
            None
        }
    };
    loop {
        match publish_once(
            &config,
            &accel,
            &api,
            &checkpoint,
            &mut generation,
            &mut published,
        )
        .await
        {
            Ok(true) => tracing::info!(generation = ?generation, "ResourceSlice published"),
            Ok(false) => {}
            Err(e) => tracing::warn!("publishing the ResourceSlice: {e}"),
        }
        match changes.as_mut() {
            Some(c) => {
                c.next_change(config.resync, Duration::from_millis(100))
                    .await
            }
            None => tokio::time::sleep(config.resync).await,
        }
    }
}

/// One round: read the inventory, and apply the ResourceSlice if its devices changed. Returns
/// whether it wrote.
async fn publish_once(
    config: &PublishConfig,
    accel: &Accel,
    api: &Api<ResourceSlice>,
    checkpoint: &Arc<Mutex<Checkpoint>>,
    generation: &mut Option<i64>,
    published: &mut Option<Vec<Device>>,
) -> Result<bool, String> {
    let facts = accel.inventory().await.map_err(|e| e.to_string())?;
    let devices = {
        let held = checkpoint.lock().await;
        devices(&facts, &held, &config.sysfs_root)
    };
    let name = config.slice_name();
    if generation.is_none() {
        // After a restart: continue from what the API server holds, so generations only grow.
        let existing = api.get_opt(&name).await.map_err(|e| e.to_string())?;
        if let Some(existing) = existing {
            *generation = Some(existing.spec.pool.generation);
            *published = existing.spec.devices;
        } else {
            *generation = Some(0);
        }
    }
    if published.as_ref() == Some(&devices) {
        return Ok(false);
    }
    let next = generation.unwrap_or(0) + 1;
    let slice = ResourceSlice {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: ResourceSliceSpec {
            driver: config.driver.clone(),
            node_name: Some(config.node.clone()),
            pool: ResourcePool {
                name: config.node.clone(),
                generation: next,
                resource_slice_count: 1,
            },
            devices: Some(devices.clone()),
            ..Default::default()
        },
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(&slice))
        .await
        .map_err(|e| PublishError::from(e).to_string())?;
    *generation = Some(next);
    *published = Some(devices);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert_eq!(
            device_name("fpga0", "region0").as_deref(),
            Some("fpga0-region0")
        );
        assert_eq!(device_name("Nic_A", "vf3").as_deref(), Some("nic-a-vf3"));
        assert_eq!(device_name("x_", "_y").as_deref(), Some("x---y"));
        assert_eq!(device_name(&"a".repeat(60), "slice"), None);
    }

    #[test]
    fn taints_follow_firmware_state() {
        assert!(firmware_taint("idle").is_none());
        assert!(firmware_taint("").is_none());
        assert_eq!(
            firmware_taint("flashing").unwrap().value.as_deref(),
            Some("flashing")
        );
        assert_eq!(
            firmware_taint("error: slot b").unwrap().value.as_deref(),
            Some("error")
        );
    }
}
