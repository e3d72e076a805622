//! Typed proxies for the daemon's interfaces. The introspection XML in `dbus/` is the exact
//! contract; a test checks that the daemon exports what these proxies and that XML say.

use std::collections::HashMap;

use zbus::{proxy, Fd, OwnedFd, OwnedObjectPath, Variant};

use accelgate_proto::AccelError;

/// Options dictionaries (`a{sv}`) of the calls that take one.
pub type Options<'a> = HashMap<&'a str, Variant<'a>>;

#[proxy(
    interface = "org.accelgate.Accel1.Manager",
    default_service = "org.accelgate.Accel1",
    default_path = "/org/accelgate/Accel1"
)]
pub trait Manager {
    /// The caller as the daemon sees it: uid, the roles the policy gives it, and the
    /// operations those roles grant.
    #[zbus(name = "WhoAmI")]
    fn who_am_i(&self) -> Result<(u32, Vec<String>, Vec<String>), AccelError>;

    /// Re-reads the role policy; a bad policy is refused and the old one stays.
    fn reload_policy(&self) -> Result<(), AccelError>;

    /// Recent audit records, newest last, as JSON lines. Admins only (`policy.reload`).
    fn audit_log(&self, max: u32) -> Result<Vec<String>, AccelError>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// sha256 over the policy files in effect.
    #[zbus(property)]
    fn policy_revision(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn devices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[proxy(
    interface = "org.accelgate.Accel1.Device",
    default_service = "org.accelgate.Accel1"
)]
pub trait Device {
    /// Sets the number of SR-IOV VFs. Refuses to remove assigned VFs unless
    /// `options["force"] = true`.
    fn set_vf_count(&self, count: u32, options: Options<'_>) -> Result<(), AccelError>;

    /// Loads a whole-device personality image; returns the job.
    fn configure(&self, image: Fd<'_>, options: Options<'_>)
        -> Result<OwnedObjectPath, AccelError>;

    /// Writes firmware to flash; returns the job.
    fn flash(&self, image: Fd<'_>, options: Options<'_>) -> Result<OwnedObjectPath, AccelError>;

    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn pci_address(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn vendor_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn product_id(&self) -> zbus::Result<u16>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn driver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn num_vfs(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn total_vfs(&self) -> zbus::Result<u32>;
    #[zbus(property)]
    fn firmware_version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn firmware_active_slot(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn firmware_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn firmware_last_result(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn firmware_locked(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn personality_sha256(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn slices(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[proxy(
    interface = "org.accelgate.Accel1.Slice",
    default_service = "org.accelgate.Accel1"
)]
pub trait Slice {
    /// Reads `count` registers of `width` bytes (1, 2, 4 or 8) from `offset` in the slice.
    fn read(&self, offset: u64, count: u32, width: u8) -> Result<Vec<u64>, AccelError>;

    /// Writes registers of `width` bytes from `offset`; all inside the writable ranges.
    fn write(&self, offset: u64, values: &[u64], width: u8) -> Result<(), AccelError>;

    /// A file descriptor of the slice's whole, isolated BAR (VF slices only).
    fn map(&self, options: Options<'_>) -> Result<OwnedFd, AccelError>;

    /// Loads an application image into the slice; returns the job.
    fn program(&self, image: Fd<'_>, options: Options<'_>) -> Result<OwnedObjectPath, AccelError>;

    /// Assigns the slice to a tenant: `user:NAME`, `group:NAME`, `uid:N`, `gid:N` or a user name.
    fn assign(&self, tenant: &str, options: Options<'_>) -> Result<(), AccelError>;

    /// Takes the slice back and scrubs it.
    fn release(&self) -> Result<(), AccelError>;

    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn device(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn mappable(&self) -> zbus::Result<bool>;
    /// Writable ranges as (start, end) offsets in the slice, end exclusive.
    #[zbus(property)]
    fn writable(&self) -> zbus::Result<Vec<(u64, u64)>>;
    #[zbus(property)]
    fn tenant(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn image_sha256(&self) -> zbus::Result<String>;
}

#[proxy(
    interface = "org.accelgate.Accel1.Job",
    default_service = "org.accelgate.Accel1"
)]
pub trait Job {
    fn cancel(&self) -> Result<(), AccelError>;

    #[zbus(signal)]
    fn completed(&self, success: bool, message: String) -> zbus::Result<()>;

    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn target(&self) -> zbus::Result<OwnedObjectPath>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn message(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn started_by_uid(&self) -> zbus::Result<u32>;
}
