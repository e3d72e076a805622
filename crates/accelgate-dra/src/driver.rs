//! NodePrepareResources / NodeUnprepareResources: claims in, slices assigned, images loaded,
//! CDI specs written — all idempotent, all recorded in the checkpoint.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::Api;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::accel::{Accel, AccelOpError};
use crate::cdi::{self, BusMount, CdiError, SliceEdits};
use crate::checkpoint::{Checkpoint, CheckpointError, ClaimEntry, PrepareState, PreparedSlice};
use crate::claim::{self, ClaimError};
use crate::grpc::UnaryServer;
use crate::proto::dra::{
    Claim, Device, NodePrepareResourceResponse, NodePrepareResourcesRequest,
    NodePrepareResourcesResponse, NodeUnprepareResourceResponse, NodeUnprepareResourcesRequest,
    NodeUnprepareResourcesResponse, NODE_PREPARE_RESOURCES, NODE_UNPREPARE_RESOURCES,
};
use crate::publish;
use crate::sysfs;

/// Why one claim could not be prepared or unprepared (reported in its response entry).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("claim has no namespace, name or uid")]
    IncompleteRequest,
    #[error("cannot get ResourceClaim {0}: {1}")]
    GetClaim(String, kube::Error),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("device {0} is not one this plugin publishes on this node")]
    UnknownDevice(String),
    #[error("slice {device}/{slice} is held by claim {holder}; slices are never shared")]
    HeldByClaim {
        device: String,
        slice: String,
        holder: String,
    },
    #[error(transparent)]
    Accel(#[from] AccelOpError),
    #[error("cannot read image {}: {source}", path.display())]
    Image {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cdi(#[from] CdiError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What the plugin needs to prepare claims.
pub struct Driver {
    pub driver: String,
    /// This node's pool (the node name).
    pub pool: String,
    pub cdi_dir: PathBuf,
    pub image_dir: PathBuf,
    pub sysfs_root: PathBuf,
    pub bus: BusMount,
    pub accel: Accel,
    pub kube: kube::Client,
    /// Also the lock that serializes Prepare and Unprepare: each claim's steps run alone.
    pub checkpoint: Arc<Mutex<Checkpoint>>,
}

impl Driver {
    async fn prepare(&self, c: &Claim) -> Result<Vec<Device>, PrepareError> {
        if c.uid.is_empty() || c.name.is_empty() || c.namespace.is_empty() {
            return Err(PrepareError::IncompleteRequest);
        }
        let mut ckpt = self.checkpoint.lock().await;
        if let Some(done) = ckpt.get(&c.uid) {
            if done.state == PrepareState::PrepareCompleted
                && cdi::spec_path(&self.cdi_dir, &c.uid).exists()
            {
                tracing::info!(claim = %c.uid, "already prepared");
                return Ok(devices_of(&done.slices));
            }
        }

        let api: Api<ResourceClaim> = Api::namespaced(self.kube.clone(), &c.namespace);
        let resource = api
            .get(&c.name)
            .await
            .map_err(|e| PrepareError::GetClaim(format!("{}/{}", c.namespace, c.name), e))?;
        let allocated =
            claim::allocated(&resource, &c.uid, &self.driver, &self.pool, &self.image_dir)?;
        let inventory = self.accel.inventory().await?;
        let names = publish::names(&inventory);

        let mut slices = Vec::new();
        for a in &allocated {
            let (device, slice) = names
                .get(&a.device_name)
                .cloned()
                .ok_or_else(|| PrepareError::UnknownDevice(a.device_name.clone()))?;
            if let Some(holder) = ckpt.holder_of(&device, &slice, &c.uid) {
                return Err(PrepareError::HeldByClaim {
                    device,
                    slice,
                    holder: holder.to_owned(),
                });
            }
            slices.push(PreparedSlice {
                device,
                slice,
                pool: a.pool.clone(),
                device_name: a.device_name.clone(),
                request_names: vec![a.request.clone()],
                cdi_ids: Vec::new(),
            });
        }
        // Record the choice before changing anything, so that an Unprepare after a crash here
        // knows what to release.
        let mut entry = ClaimEntry {
            namespace: c.namespace.clone(),
            name: c.name.clone(),
            state: PrepareState::PrepareStarted,
            slices: slices.clone(),
        };
        ckpt.set(&c.uid, entry.clone())?;

        for (i, (a, s)) in allocated.iter().zip(&slices).enumerate() {
            if let Err(e) = self.accel.assign(&s.device, &s.slice, &a.tenant).await {
                if matches!(e, AccelOpError::HeldByOther { .. }) {
                    // Never ours: forget it so that an Unprepare does not release it.
                    entry.slices.remove(i);
                    ckpt.set(&c.uid, entry)?;
                }
                return Err(e.into());
            }
            if let Some(image) = &a.image {
                let want = sha256_file(image)?;
                let (_, loaded) = self.accel.slice_state(&s.device, &s.slice).await?;
                if loaded != want {
                    tracing::info!(claim = %c.uid, device = %s.device, slice = %s.slice, image = %image.display(), "programming");
                    self.accel.program(&s.device, &s.slice, image).await?;
                }
            }
        }

        let edits: Vec<SliceEdits> = slices
            .iter()
            .map(|s| SliceEdits {
                name: format!("{}-{}", c.uid, s.device_name),
                slice: format!("{}/{}", s.device, s.slice),
                vfio_nodes: self.vfio_nodes(&inventory_pf(&inventory, s), &s.slice),
            })
            .collect();
        let spec = cdi::build_spec(&c.uid, &self.bus, &edits)?;
        cdi::write_spec(&self.cdi_dir, &c.uid, &spec)?;
        for (s, e) in slices.iter_mut().zip(&edits) {
            s.cdi_ids = vec![cdi::qualified(&e.name)];
        }
        entry.state = PrepareState::PrepareCompleted;
        entry.slices = slices;
        ckpt.set(&c.uid, entry.clone())?;
        tracing::info!(claim = %c.uid, "prepared");
        Ok(devices_of(&entry.slices))
    }

    fn vfio_nodes(&self, pf: &Option<(String, String)>, slice: &str) -> Vec<String> {
        match pf {
            Some((kind, pf)) if kind == "vf" => sysfs::vf_address(&self.sysfs_root, pf, slice)
                .map(|vf| sysfs::vfio_nodes(&self.sysfs_root, &vf))
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    async fn unprepare(&self, c: &Claim) -> Result<(), PrepareError> {
        if c.uid.is_empty() {
            return Err(PrepareError::IncompleteRequest);
        }
        let mut ckpt = self.checkpoint.lock().await;
        let Some(entry) = ckpt.get(&c.uid).cloned() else {
            // Unknown or already unprepared: nothing is held; make sure no spec is left.
            cdi::remove_spec(&self.cdi_dir, &c.uid)?;
            return Ok(());
        };
        // The spec goes first: a container started from now on gets nothing.
        cdi::remove_spec(&self.cdi_dir, &c.uid)?;
        for s in &entry.slices {
            match self.accel.release(&s.device, &s.slice).await {
                Ok(()) => {}
                // The slice is gone (e.g. its VF was removed): nothing to release.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        ckpt.remove(&c.uid)?;
        tracing::info!(claim = %c.uid, "unprepared");
        Ok(())
    }
}

/// (slice kind, PF address) of a prepared slice, from the inventory.
fn inventory_pf(
    inventory: &[crate::accel::SliceFacts],
    s: &PreparedSlice,
) -> Option<(String, String)> {
    inventory
        .iter()
        .find(|f| f.device == s.device && f.slice == s.slice)
        .map(|f| (f.kind.clone(), f.pci_address.clone()))
}

fn devices_of(slices: &[PreparedSlice]) -> Vec<Device> {
    slices
        .iter()
        .map(|s| Device {
            request_names: s.request_names.clone(),
            pool_name: s.pool.clone(),
            device_name: s.device_name.clone(),
            cdi_device_ids: s.cdi_ids.clone(),
        })
        .collect()
}

fn sha256_file(path: &Path) -> Result<String, PrepareError> {
    let image_err = |source| PrepareError::Image {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(image_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(image_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The gRPC face of [`Driver`]: every claim of a request gets an entry, failures in it.
pub struct DraService(pub Arc<Driver>);

impl DraService {
    /// The gRPC server of the DRAPlugin service, for the DRA socket.
    pub fn server(self: Arc<Self>) -> UnaryServer {
        let prepare = self.clone();
        UnaryServer::new()
            .route(NODE_PREPARE_RESOURCES, move |r| {
                let s = prepare.clone();
                async move { s.node_prepare_resources(r).await }
            })
            .route(NODE_UNPREPARE_RESOURCES, move |r| {
                let s = self.clone();
                async move { s.node_unprepare_resources(r).await }
            })
    }

    async fn node_prepare_resources(
        &self,
        request: tonic::Request<NodePrepareResourcesRequest>,
    ) -> Result<tonic::Response<NodePrepareResourcesResponse>, tonic::Status> {
        let mut claims = HashMap::new();
        for c in &request.get_ref().claims {
            let entry = match self.0.prepare(c).await {
                Ok(devices) => NodePrepareResourceResponse {
                    devices,
                    error: String::new(),
                },
                Err(e) => {
                    tracing::warn!(claim = %c.uid, "prepare failed: {e}");
                    NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error: e.to_string(),
                    }
                }
            };
            claims.insert(c.uid.clone(), entry);
        }
        Ok(tonic::Response::new(NodePrepareResourcesResponse {
            claims,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        request: tonic::Request<NodeUnprepareResourcesRequest>,
    ) -> Result<tonic::Response<NodeUnprepareResourcesResponse>, tonic::Status> {
        let mut claims = HashMap::new();
        for c in &request.get_ref().claims {
            let error = match self.0.unprepare(c).await {
                Ok(()) => String::new(),
                Err(e) => {
                    tracing::warn!(claim = %c.uid, "unprepare failed: {e}");
                    e.to_string()
                }
            };
            claims.insert(c.uid.clone(), NodeUnprepareResourceResponse { error });
        }
        Ok(tonic::Response::new(NodeUnprepareResourcesResponse {
            claims,
        }))
    }
}
