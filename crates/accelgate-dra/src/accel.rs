//! Everything the plugin asks of `accelgated`, through the public client library only
//! (`accelgate_client` and its `proto`). The plugin holds no device
//! access of its own: every change is an operator request the daemon authorizes and audits.

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use accelgate_client::proto::names;
use accelgate_client::AccelError;
use accelgate_client::{Client, ClientError, SealedImage};
use futures_util::StreamExt;
use zbus::proxy::CacheProperties;

/// Failures talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum AccelOpError {
    #[error("accelgated: {0}")]
    Client(#[from] ClientError),
    #[error("accelgated bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("accelgated bus: {0}")]
    BusCall(#[from] zbus::fdo::Error),
    #[error("slice {device}/{slice} is held by tenant {holder}, not {wanted}")]
    HeldByOther {
        device: String,
        slice: String,
        holder: String,
        wanted: String,
    },
}

impl AccelOpError {
    /// Whether the daemon answered that the slice or device does not exist (or is hidden).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            AccelOpError::Client(e) if matches!(e.accel(), Some(AccelError::NotFound(_)))
        )
    }
}

/// One slice as the plugin publishes it, with the facts of its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceFacts {
    pub device: String,
    pub slice: String,
    /// `region`, `window` or `vf`.
    pub kind: String,
    pub device_kind: String,
    /// PCI address of the device (the PF for a VF slice).
    pub pci_address: String,
    pub vendor_id: u16,
    pub product_id: u16,
    pub size: u64,
    pub mappable: bool,
    pub firmware_version: String,
    /// `idle`, `flashing`, `error: ...` or empty (no firmware management).
    pub firmware_state: String,
    pub image_sha256: String,
    pub tenant: String,
}

/// A connection to the daemon.
#[derive(Clone)]
pub struct Accel {
    client: Client,
}

impl Accel {
    /// `bus`: a D-Bus address, `system`, or None for `$ACCELGATE_BUS` / the system bus.
    pub async fn connect(bus: Option<&str>) -> Result<Accel, AccelOpError> {
        Ok(Accel {
            client: Client::connect(bus).await?,
        })
    }

    /// Whether the caller's role grants `operation` (e.g. `slice.assign`).
    pub async fn granted(&self, operation: &str) -> Result<bool, AccelOpError> {
        let me = self.client.who_am_i().await?;
        Ok(me.operations.iter().any(|o| o == operation || o == "*"))
    }

    /// Every slice the caller may see, with its device's facts.
    pub async fn inventory(&self) -> Result<Vec<SliceFacts>, AccelOpError> {
        let mut out = Vec::new();
        for device in self.client.devices().await? {
            let firmware_state = self.firmware_state(&device.id).await?;
            for slice in self.client.slices(&device.id).await? {
                out.push(SliceFacts {
                    device: device.id.clone(),
                    slice: slice.id,
                    kind: slice.kind,
                    device_kind: device.kind.clone(),
                    pci_address: device.pci_address.clone(),
                    vendor_id: device.vendor_id,
                    product_id: device.product_id,
                    size: slice.size,
                    mappable: slice.mappable,
                    firmware_version: device.firmware_version.clone(),
                    firmware_state: firmware_state.clone(),
                    image_sha256: slice.image_sha256,
                    tenant: slice.tenant,
                });
            }
        }
        Ok(out)
    }

    async fn firmware_state(&self, device: &str) -> Result<String, AccelOpError> {
        let proxy = accelgate_client::proxy::DeviceProxy::builder(self.client.connection())
            .path(names::device_path(device))
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(proxy
            .inner()
            .get_property::<String>("FirmwareState")
            .await?)
    }

    /// The slice's tenant (empty when unassigned) and loaded image hash (empty when none).
    pub async fn slice_state(
        &self,
        device: &str,
        slice: &str,
    ) -> Result<(String, String), AccelOpError> {
        let s = self.client.slice(device, slice).await?;
        Ok((s.tenant, s.image_sha256))
    }

    /// Assigns the slice to `tenant` (`uid:N` or `gid:N`). The daemon treats a repeat for the
    /// same tenant as done and refuses a slice another tenant holds (`Busy`).
    pub async fn assign(
        &self,
        device: &str,
        slice: &str,
        tenant: &str,
    ) -> Result<(), AccelOpError> {
        match self.client.assign(device, slice, tenant).await {
            Err(e) if matches!(e.accel(), Some(AccelError::Busy(_))) => {
                let (holder, _) = self.slice_state(device, slice).await?;
                Err(AccelOpError::HeldByOther {
                    device: device.into(),
                    slice: slice.into(),
                    holder,
                    wanted: tenant.into(),
                })
            }
            other => Ok(other?),
        }
    }

    /// Loads `image` into the slice and waits for the job to end.
    pub async fn program(
        &self,
        device: &str,
        slice: &str,
        image: &Path,
    ) -> Result<(), AccelOpError> {
        let sealed = SealedImage::from_path(image)?;
        let job = self.client.program(device, slice, &sealed).await?;
        self.client.wait_job(&job, |_| {}).await?;
        Ok(())
    }

    /// Takes the slice back; the daemon scrubs it. Releasing an unassigned slice is done.
    pub async fn release(&self, device: &str, slice: &str) -> Result<(), AccelOpError> {
        Ok(self.client.release(device, slice).await?)
    }

    /// Waits until the daemon announces a change (a property, an object added or removed, or
    /// its name changing hands) or `period` passes, whichever is first. The caller then reads
    /// the inventory again, so a missed signal costs at most one period.
    pub async fn changes(&self) -> Result<ChangeStream, AccelOpError> {
        let conn = self.client.connection();
        let ours = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .path_namespace(names::ROOT_PATH)
            .build()?;
        let owner = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .member("NameOwnerChanged")
            .add_arg(names::BUS_NAME)
            .build()?;
        let ours = zbus::MessageStream::for_match_rule(ours, conn, NonZeroUsize::new(256)).await?;
        let owner = zbus::MessageStream::for_match_rule(owner, conn, NonZeroUsize::new(16)).await?;
        Ok(ChangeStream {
            inner: futures_util::stream::select(ours, owner).boxed(),
        })
    }
}

/// Signals from the daemon, see [`Accel::changes`].
pub struct ChangeStream {
    inner: futures_util::stream::BoxStream<'static, zbus::Result<zbus::Message>>,
}

impl ChangeStream {
    /// Returns after the next signal (and any that follow within `settle`), or after `period`.
    pub async fn next_change(&mut self, period: Duration, settle: Duration) {
        if tokio::time::timeout(period, self.inner.next())
            .await
            .is_err()
        {
            return;
        }
        // A Program or SetVfCount announces several properties in a row: take them as one.
        while let Ok(Some(_)) = tokio::time::timeout(settle, self.inner.next()).await {}
    }
}
