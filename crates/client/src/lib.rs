//! Client library: talk to `accelgated` over D-Bus.
//!
//! Light on purpose: a tenant's program that depends on it builds zbus and this crate's
//! vocabulary ([`accelgate_proto`], re-exported as [`proto`]), nothing of the daemon.
//!
//! [`Client`] wraps the raw [`proxy`] types: it names objects by device and slice id, returns
//! typed snapshots ([`DeviceInfo`], [`SliceInfo`]), sends images as sealed memfds
//! ([`SealedImage`]), waits for jobs, and reports every failure as a [`ClientError`] whose
//! daemon-side kinds are [`AccelError`](accelgate_proto::AccelError) variants.
//!
//! ```no_run
//! use std::path::Path;
//! use accelgate_client::{Client, SealedImage};
//!
//! # async fn demo() -> Result<(), accelgate_client::ClientError> {
//! // None: $ACCELGATE_BUS if set, else the system bus.
//! let mut client = Client::connect(None).await?;
//! client.set_interactive(true); // let polkit ask for a password
//!
//! for device in client.devices().await? {
//!     println!("{} at {}: {} slices", device.id, device.pci_address, device.slices.len());
//! }
//! let regs = client.read("fpga0", "region0", 0x0, 4, 4).await?;
//! println!("{regs:x?}");
//!
//! let image = SealedImage::from_path(Path::new("app.bit"))?;
//! let job = client.program("fpga0", "region0", &image).await?;
//! let message = client
//!     .wait_job(&job, |p| eprintln!("{:.0}%", p * 100.0))
//!     .await?;
//! println!("programmed: {message}");
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub use accelgate_proto as proto;
pub use accelgate_proto::{AccelError, ErrorKind, JobState, Operation, Sha256};
/// The D-Bus library this client is built on, for callers that need its types.
pub use zbus;
pub use zbus::OwnedObjectPath;

mod error;
mod image;
mod job;
pub mod monitor;
pub mod proxy;
mod types;

pub use error::{job_failure, ClientError};
pub use image::{required_seals, SealedImage, MAX_IMAGE_LEN};
pub use monitor::{Monitor, MonitorEvent};
pub use types::{DeviceInfo, Identity, JobOutcome, SliceInfo};

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use serde::Serialize;
use zbus::proxy::{CacheProperties, MethodFlags};
use zbus::wire::{DynamicDeserialize, DynamicType};
use zbus::{Connection, Fd, ObjectPath, Variant};

use accelgate_proto::names;
use proxy::{DeviceProxy, ManagerProxy, Options, SliceProxy};

/// Environment variable naming the bus when [`Client::connect`] is given none.
pub const BUS_ENV: &str = "ACCELGATE_BUS";

/// A connection to `accelgated`.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Connection,
    interactive: bool,
}

impl Client {
    /// Connects to `bus`: `"system"`, `"session"` or a D-Bus address
    /// (`unix:path=/run/dbus/system_bus_socket`). `None` (or empty) means `$ACCELGATE_BUS` if
    /// set and non-empty, else the system bus.
    pub async fn connect(bus: Option<&str>) -> Result<Client, ClientError> {
        let from_env = std::env::var(BUS_ENV).ok().filter(|b| !b.is_empty());
        let bus = bus
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .or(from_env);
        let bus = bus.as_deref().unwrap_or("system");
        let connect_error = |source| ClientError::Connect {
            bus: bus.to_owned(),
            source,
        };
        let builder = match bus {
            "system" => zbus::connection::Builder::system(),
            "session" => zbus::connection::Builder::session(),
            address => zbus::connection::Builder::address(address),
        };
        let conn = builder.build().await.map_err(connect_error)?;
        Ok(Client::from_connection(conn))
    }

    /// Uses an existing connection (tests, or programs that already have one).
    pub fn from_connection(conn: Connection) -> Client {
        Client {
            conn,
            interactive: false,
        }
    }

    /// Whether calls may wait for interactive polkit authorization (a password prompt by the
    /// caller's polkit agent). Off by default: a service has nobody to ask.
    pub fn set_interactive(&mut self, allow: bool) {
        self.interactive = allow;
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether the daemon owns its bus name now.
    pub async fn daemon_running(&self) -> Result<bool, ClientError> {
        let bus = zbus::fdo::DBusProxy::new(&self.conn).await?;
        let name = zbus::names::BusName::try_from(names::BUS_NAME)?;
        Ok(bus.name_has_owner(name).await?)
    }

    /// Follows the daemon live: every change it announces from now on, and its leaving or
    /// returning to the bus ([`Monitor::next`]).
    pub async fn monitor(&self) -> Result<Monitor, ClientError> {
        Monitor::subscribe(&self.conn).await
    }

    // ---- Manager ----

    /// The caller as the daemon sees it.
    pub async fn who_am_i(&self) -> Result<Identity, ClientError> {
        let manager = self.manager().await?;
        let (uid, roles, operations) = self.call(manager.inner(), "WhoAmI", &()).await?;
        Ok(Identity {
            uid,
            roles,
            operations,
        })
    }

    /// The daemon's version.
    pub async fn version(&self) -> Result<String, ClientError> {
        Ok(self.manager().await?.version().await?)
    }

    /// sha256 over the policy files in effect.
    pub async fn policy_revision(&self) -> Result<String, ClientError> {
        Ok(self.manager().await?.policy_revision().await?)
    }

    /// Asks the daemon to re-read its role policy.
    pub async fn reload_policy(&self) -> Result<(), ClientError> {
        let manager = self.manager().await?;
        self.call(manager.inner(), "ReloadPolicy", &()).await
    }

    /// The newest `max` audit records, oldest first, one JSON object per string.
    pub async fn audit_log(&self, max: u32) -> Result<Vec<String>, ClientError> {
        let manager = self.manager().await?;
        self.call(manager.inner(), "AuditLog", &(max,)).await
    }

    // ---- Devices and slices ----

    /// Every device the caller may see.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        let paths = self.manager().await?.devices().await?;
        let mut devices = Vec::with_capacity(paths.len());
        for path in paths {
            devices.push(self.device_at(path.as_ref()).await?);
        }
        Ok(devices)
    }

    pub async fn device(&self, device: &str) -> Result<DeviceInfo, ClientError> {
        let path = device_object(device)?;
        self.device_at(path.as_ref()).await
    }

    /// The slices of `device` that the caller may see.
    pub async fn slices(&self, device: &str) -> Result<Vec<SliceInfo>, ClientError> {
        let paths = self.device_proxy(device).await?.slices().await?;
        let mut slices = Vec::with_capacity(paths.len());
        for path in paths {
            slices.push(self.slice_at(path.as_ref()).await?);
        }
        Ok(slices)
    }

    pub async fn slice(&self, device: &str, slice: &str) -> Result<SliceInfo, ClientError> {
        let path = slice_object(device, slice)?;
        self.slice_at(path.as_ref()).await
    }

    /// Reads `count` registers of `width` bytes (1, 2, 4 or 8) from `offset`.
    pub async fn read(
        &self,
        device: &str,
        slice: &str,
        offset: u64,
        count: u32,
        width: u8,
    ) -> Result<Vec<u64>, ClientError> {
        let proxy = self.slice_proxy(device, slice).await?;
        self.call(proxy.inner(), "Read", &(offset, count, width))
            .await
    }

    /// Writes `values`, each `width` bytes wide, from `offset`.
    pub async fn write(
        &self,
        device: &str,
        slice: &str,
        offset: u64,
        values: &[u64],
        width: u8,
    ) -> Result<(), ClientError> {
        let proxy = self.slice_proxy(device, slice).await?;
        self.call(proxy.inner(), "Write", &(offset, values, width))
            .await
    }

    /// A file descriptor of the slice's whole BAR, for `mmap` (VF slices only).
    pub async fn map(&self, device: &str, slice: &str) -> Result<OwnedFd, ClientError> {
        let proxy = self.slice_proxy(device, slice).await?;
        let fd: zbus::OwnedFd = self.call(proxy.inner(), "Map", &(Options::new(),)).await?;
        Ok(fd.into())
    }

    /// Loads an application image into a slice; returns the job (see [`Client::wait_job`]).
    pub async fn program(
        &self,
        device: &str,
        slice: &str,
        image: &SealedImage,
    ) -> Result<OwnedObjectPath, ClientError> {
        let proxy = self.slice_proxy(device, slice).await?;
        self.send_image(proxy.inner(), "Program", image, Options::new())
            .await
    }

    /// Assigns a slice to `tenant` (`user:NAME`, `group:NAME`, `uid:N`, `gid:N` or a user name).
    pub async fn assign(&self, device: &str, slice: &str, tenant: &str) -> Result<(), ClientError> {
        let proxy = self.slice_proxy(device, slice).await?;
        self.call(proxy.inner(), "Assign", &(tenant, Options::new()))
            .await
    }

    /// Takes a slice back from its tenant; the daemon scrubs it.
    pub async fn release(&self, device: &str, slice: &str) -> Result<(), ClientError> {
        let proxy = self.slice_proxy(device, slice).await?;
        self.call(proxy.inner(), "Release", &()).await
    }

    /// Sets the number of SR-IOV VFs; `force` lets it remove assigned VFs.
    pub async fn set_vf_count(
        &self,
        device: &str,
        count: u32,
        force: bool,
    ) -> Result<(), ClientError> {
        let proxy = self.device_proxy(device).await?;
        self.call(proxy.inner(), "SetVfCount", &(count, force_option(force)))
            .await
    }

    /// Loads a whole-device personality image; returns the job.
    pub async fn configure(
        &self,
        device: &str,
        image: &SealedImage,
        force: bool,
    ) -> Result<OwnedObjectPath, ClientError> {
        let proxy = self.device_proxy(device).await?;
        self.send_image(proxy.inner(), "Configure", image, force_option(force))
            .await
    }

    /// Writes firmware to flash, with the bytes of its minisign signature file if there is
    /// one; returns the job.
    pub async fn flash(
        &self,
        device: &str,
        image: &SealedImage,
        signature: Option<&[u8]>,
    ) -> Result<OwnedObjectPath, ClientError> {
        self.flash_with(device, image, signature, false).await
    }

    /// [`Client::flash`] with `force`: an admin's override of the policy's downgrade rule
    /// (an image older than the active firmware).
    pub async fn flash_with(
        &self,
        device: &str,
        image: &SealedImage,
        signature: Option<&[u8]>,
        force: bool,
    ) -> Result<OwnedObjectPath, ClientError> {
        let proxy = self.device_proxy(device).await?;
        let mut options = Options::new();
        if let Some(signature) = signature {
            options.insert("signature", Variant::from(signature));
        }
        if force {
            options.insert("force", Variant::from(true));
        }
        self.send_image(proxy.inner(), "Flash", image, options)
            .await
    }

    // ---- Jobs ----

    /// Waits for a job to end, calling `on_progress` with 0..1 as it moves. Returns the job's
    /// final message; a failed or cancelled job is the error its message names.
    pub async fn wait_job(
        &self,
        job: &ObjectPath<'_>,
        on_progress: impl FnMut(f64),
    ) -> Result<String, ClientError> {
        job::wait(&self.conn, job, on_progress).await
    }

    /// Asks the daemon to cancel a running job.
    pub async fn cancel_job(&self, job: &ObjectPath<'_>) -> Result<(), ClientError> {
        let proxy = proxy::JobProxy::builder(&self.conn)
            .path(job.to_owned())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        self.call(proxy.inner(), "Cancel", &()).await
    }

    // ---- Plumbing ----

    /// Calls `method`, letting polkit interact with the user when the client allows it. Every
    /// method goes through here because polkit is a gate of every operation.
    async fn call<B, R>(
        &self,
        proxy: &zbus::Proxy<'_>,
        method: &'static str,
        body: &B,
    ) -> Result<R, ClientError>
    where
        B: Serialize + DynamicType,
        R: for<'d> DynamicDeserialize<'d>,
    {
        let flags = if self.interactive {
            MethodFlags::ALLOW_INTERACTIVE_AUTH
        } else {
            MethodFlags::empty()
        };
        proxy
            .call_with_flags(method, flags, body)
            .await?
            .ok_or_else(|| {
                accelgate_proto::AccelError::Failed(format!("no reply to {method}")).into()
            })
    }

    async fn send_image(
        &self,
        proxy: &zbus::Proxy<'_>,
        method: &'static str,
        image: &SealedImage,
        options: Options<'_>,
    ) -> Result<OwnedObjectPath, ClientError> {
        image.rewind().map_err(ClientError::Seal)?;
        let fd = Fd::from(image.as_fd());
        self.call(proxy, method, &(fd, options)).await
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, ClientError> {
        Ok(ManagerProxy::builder(&self.conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    async fn device_proxy(&self, device: &str) -> Result<DeviceProxy<'static>, ClientError> {
        Ok(DeviceProxy::builder(&self.conn)
            .path(device_object(device)?)
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    async fn slice_proxy(
        &self,
        device: &str,
        slice: &str,
    ) -> Result<SliceProxy<'static>, ClientError> {
        Ok(SliceProxy::builder(&self.conn)
            .path(slice_object(device, slice)?)
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }

    /// Reads all properties of a device with one `GetAll` (the proxy's cache).
    async fn device_at(&self, path: ObjectPath<'_>) -> Result<DeviceInfo, ClientError> {
        let d = DeviceProxy::builder(&self.conn)
            .path(path.to_owned())
            .cache_properties(CacheProperties::Lazily)
            .build()
            .await?;
        Ok(DeviceInfo {
            id: d.id().await?,
            pci_address: d.pci_address().await?,
            vendor_id: d.vendor_id().await?,
            product_id: d.product_id().await?,
            kind: d.kind().await?,
            driver: d.driver().await?,
            num_vfs: d.num_vfs().await?,
            total_vfs: d.total_vfs().await?,
            firmware_version: d.firmware_version().await?,
            firmware_active_slot: d.firmware_active_slot().await?,
            firmware_state: d.firmware_state().await?,
            firmware_last_result: d.firmware_last_result().await?,
            firmware_locked: d.firmware_locked().await?,
            personality_sha256: d.personality_sha256().await?,
            slices: d
                .slices()
                .await?
                .iter()
                .map(|p| types::slice_id_of(p.as_str()))
                .collect(),
        })
    }

    /// Reads all properties of a slice with one `GetAll` (the proxy's cache).
    async fn slice_at(&self, path: ObjectPath<'_>) -> Result<SliceInfo, ClientError> {
        let s = SliceProxy::builder(&self.conn)
            .path(path.to_owned())
            .cache_properties(CacheProperties::Lazily)
            .build()
            .await?;
        let device_path = s.device().await?;
        Ok(SliceInfo {
            device: names::parse_device_path(device_path.as_str())
                .unwrap_or(device_path.as_str())
                .to_owned(),
            id: s.id().await?,
            kind: s.kind().await?,
            size: s.size().await?,
            mappable: s.mappable().await?,
            writable: s.writable().await?,
            tenant: s.tenant().await?,
            image_sha256: s.image_sha256().await?,
        })
    }
}

/// Options with `force` set when asked (absent otherwise, which means false).
fn force_option(force: bool) -> Options<'static> {
    let mut options = HashMap::new();
    if force {
        options.insert("force", Variant::from(true));
    }
    options
}

fn check_id(id: &str) -> Result<(), ClientError> {
    if names::is_valid_id(id) {
        Ok(())
    } else {
        Err(ClientError::InvalidId(id.to_owned()))
    }
}

fn device_object(device: &str) -> Result<OwnedObjectPath, ClientError> {
    check_id(device)?;
    Ok(OwnedObjectPath::try_from(names::device_path(device))?)
}

fn slice_object(device: &str, slice: &str) -> Result<OwnedObjectPath, ClientError> {
    check_id(device)?;
    check_id(slice)?;
    Ok(OwnedObjectPath::try_from(names::slice_path(device, slice))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_become_paths() {
        assert_eq!(
            slice_object("fpga0", "vf1").unwrap().as_str(),
            "/org/accelgate/Accel1/devices/fpga0/slices/vf1"
        );
        assert!(matches!(device_object("../x"), Err(ClientError::InvalidId(id)) if id == "../x"));
        assert!(matches!(
            slice_object("fpga0", ""),
            Err(ClientError::InvalidId(_))
        ));
    }

    #[test]
    fn force_is_sent_only_when_set() {
        assert!(force_option(false).is_empty());
        assert_eq!(force_option(true).get("force"), Some(&Variant::from(true)));
    }
}
