//! The client against a small stand-in daemon on a private dbus-daemon: checks the wire
//! signatures, that images arrive sealed, job waiting (finished-before-waiting and running
//! jobs) and error mapping. The real daemon is tested end to end in `tests/`.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use tokio::sync::mpsc;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, ObjectServer, OwnedObjectPath, OwnedVariant};

use super::*;
use accelgate_proto::AccelError;

/// A private bus, killed when dropped.
struct PrivateBus {
    child: Child,
    address: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl PrivateBus {
    /// None when no dbus-daemon is installed (the test then has nothing to run against).
    fn start(name: &str) -> Option<PrivateBus> {
        let dir = std::env::temp_dir().join(format!("accelgate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("bus");
        let child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}", socket.display()))
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("dbus-daemon not available; skipping");
            return None;
        };
        let mut address = String::new();
        let mut stdout = child.stdout.take().unwrap();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            address.push(byte[0] as char);
        }
        Some(PrivateBus {
            child,
            address,
            _dir: TempDir(dir),
        })
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct MockManager;

#[zbus::interface(name = "org.accelgate.Accel1.Manager")]
impl MockManager {
    #[zbus(name = "WhoAmI")]
    fn who_am_i(&self) -> (u32, Vec<String>, Vec<String>) {
        (1000, vec!["tenant".into()], vec!["slice.read".into()])
    }
    fn reload_policy(&self) -> Result<(), AccelError> {
        Err(AccelError::NotAuthorized("policy.reload denied".into()))
    }
    fn audit_log(&self, max: u32) -> Vec<String> {
        (0..max).map(|i| format!("{{\"n\":{i}}}")).collect()
    }
    #[zbus(property)]
    fn version(&self) -> String {
        "0.1.0".into()
    }
    #[zbus(property)]
    fn policy_revision(&self) -> String {
        "abc".into()
    }
    #[zbus(property)]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        vec![OwnedObjectPath::try_from(names::device_path("fpga0")).unwrap()]
    }
}

/// Lets the test drive a running job one step at a time.
type Steps = Mutex<Option<mpsc::UnboundedReceiver<()>>>;

struct MockDevice {
    steps: Steps,
    vf_count: Mutex<u32>,
}

/// The image's bytes, if it is a sealed memfd as the daemon demands.
fn read_sealed(image: &zbus::OwnedFd) -> Result<Vec<u8>, AccelError> {
    let seals = fcntl(image.as_fd(), FcntlArg::F_GET_SEALS)
        .map_err(|e| AccelError::InvalidArgument(e.to_string()))?;
    if !SealFlag::from_bits_truncate(seals).contains(required_seals()) {
        return Err(AccelError::InvalidArgument("image is not sealed".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(image.as_fd().try_clone_to_owned().unwrap())
        .read_to_end(&mut bytes)
        .map_err(|e| AccelError::Failed(e.to_string()))?;
    Ok(bytes)
}

async fn add_job(server: &ObjectServer, n: u64, job: MockJob) -> OwnedObjectPath {
    let path = OwnedObjectPath::try_from(names::job_path(n)).unwrap();
    server.at(&path, job).await.unwrap();
    path
}

#[zbus::interface(name = "org.accelgate.Accel1.Device")]
impl MockDevice {
    fn set_vf_count(
        &self,
        count: u32,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<(), AccelError> {
        let force = options
            .get("force")
            .map(|v| bool::try_from(v).unwrap())
            .unwrap_or(false);
        if count > 8 || (count == 0 && !force) {
            return Err(AccelError::InvalidArgument(format!("bad count {count}")));
        }
        *self.vf_count.lock().unwrap() = count;
        Ok(())
    }

    /// A job that has already ended when the reply leaves.
    async fn configure(
        &self,
        image: zbus::OwnedFd,
        _options: HashMap<String, OwnedVariant>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, AccelError> {
        let bytes = read_sealed(&image)?;
        let job = MockJob::ended("succeeded", format!("loaded {} bytes", bytes.len()));
        Ok(add_job(server, 1, job).await)
    }

    /// Signed: a job that has ended, well if the signature is `sig`. Unsigned: a job that runs
    /// until the test says so, then fails.
    async fn flash(
        &self,
        image: zbus::OwnedFd,
        options: HashMap<String, OwnedVariant>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<OwnedObjectPath, AccelError> {
        read_sealed(&image)?;
        if let Some(signature) = options.get("signature") {
            let signature = Vec::<u8>::try_from(signature.try_clone().unwrap()).unwrap();
            let job = if signature == b"sig" {
                MockJob::ended("succeeded", "flashed".into())
            } else {
                MockJob::ended("failed", "VerificationFailed: wrong key".into())
            };
            return Ok(add_job(server, 3, job).await);
        }
        let mut steps = self.steps.lock().unwrap().take().unwrap();
        let job = MockJob::ended("running", String::new());
        let path = add_job(server, 2, job).await;
        let server = server.clone();
        let job_path = path.clone();
        tokio::spawn(async move {
            let job = server.interface::<_, MockJob>(&job_path).await.unwrap();
            steps.recv().await.unwrap();
            job.get_mut().await.progress = 0.5;
            job.get()
                .await
                .progress_changed(job.signal_emitter())
                .await
                .unwrap();
            steps.recv().await.unwrap();
            let message = "VerificationFailed: no valid signature";
            {
                let mut j = job.get_mut().await;
                j.state = "failed".into();
                j.message = message.into();
            }
            MockJob::completed(job.signal_emitter(), false, message)
                .await
                .unwrap();
        });
        Ok(path)
    }

    #[zbus(property)]
    fn id(&self) -> String {
        "fpga0".into()
    }
    #[zbus(property)]
    fn pci_address(&self) -> String {
        "0000:3b:00.0".into()
    }
    #[zbus(property)]
    fn vendor_id(&self) -> u16 {
        0x8086
    }
    #[zbus(property)]
    fn product_id(&self) -> u16 {
        0x0b30
    }
    #[zbus(property)]
    fn kind(&self) -> String {
        "fpga".into()
    }
    #[zbus(property)]
    fn driver(&self) -> String {
        "vfio-pci".into()
    }
    #[zbus(property)]
    fn num_vfs(&self) -> u32 {
        *self.vf_count.lock().unwrap()
    }
    #[zbus(property)]
    fn total_vfs(&self) -> u32 {
        8
    }
    #[zbus(property)]
    fn firmware_version(&self) -> String {
        "1.2.3".into()
    }
    #[zbus(property)]
    fn firmware_active_slot(&self) -> String {
        "a".into()
    }
    #[zbus(property)]
    fn firmware_state(&self) -> String {
        "idle".into()
    }
    #[zbus(property)]
    fn firmware_last_result(&self) -> String {
        String::new()
    }
    #[zbus(property)]
    fn firmware_locked(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn personality_sha256(&self) -> String {
        String::new()
    }
    #[zbus(property)]
    fn slices(&self) -> Vec<OwnedObjectPath> {
        vec![OwnedObjectPath::try_from(names::slice_path("fpga0", "region0")).unwrap()]
    }
}

struct MockSlice {
    written: Mutex<Vec<(u64, Vec<u64>, u8)>>,
}

#[zbus::interface(name = "org.accelgate.Accel1.Slice")]
impl MockSlice {
    fn read(&self, offset: u64, count: u32, width: u8) -> Vec<u64> {
        (0..u64::from(count))
            .map(|i| offset + i * u64::from(width))
            .collect()
    }
    fn write(&self, offset: u64, values: Vec<u64>, width: u8) -> Result<(), AccelError> {
        if offset >= 0x100 {
            return Err(AccelError::InvalidArgument(
                "outside writable ranges".into(),
            ));
        }
        self.written.lock().unwrap().push((offset, values, width));
        Ok(())
    }
    fn map(&self, _options: HashMap<String, OwnedVariant>) -> Result<zbus::OwnedFd, AccelError> {
        let image = SealedImage::from_bytes(&0xdead_beef_u32.to_le_bytes()).unwrap();
        Ok(zbus::OwnedFd::from(
            image.as_fd().try_clone_to_owned().unwrap(),
        ))
    }
    fn assign(
        &self,
        tenant: &str,
        _options: HashMap<String, OwnedVariant>,
    ) -> Result<(), AccelError> {
        Err(AccelError::Busy(format!("cannot assign to {tenant} now")))
    }
    fn release(&self) {}
    #[zbus(property)]
    fn id(&self) -> String {
        "region0".into()
    }
    #[zbus(property)]
    fn device(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(names::device_path("fpga0")).unwrap()
    }
    #[zbus(property)]
    fn kind(&self) -> String {
        "region".into()
    }
    #[zbus(property)]
    fn size(&self) -> u64 {
        0x10000
    }
    #[zbus(property)]
    fn mappable(&self) -> bool {
        false
    }
    #[zbus(property)]
    fn writable(&self) -> Vec<(u64, u64)> {
        vec![(0, 0x100)]
    }
    #[zbus(property)]
    fn tenant(&self) -> String {
        "user:alice".into()
    }
    #[zbus(property)]
    fn image_sha256(&self) -> String {
        String::new()
    }
}

struct MockJob {
    progress: f64,
    state: String,
    message: String,
}

impl MockJob {
    fn ended(state: &str, message: String) -> MockJob {
        MockJob {
            progress: if state == "running" { 0.0 } else { 1.0 },
            state: state.into(),
            message,
        }
    }
}

#[zbus::interface(name = "org.accelgate.Accel1.Job")]
impl MockJob {
    fn cancel(&self) {}
    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
    #[zbus(property)]
    fn progress(&self) -> f64 {
        self.progress
    }
    #[zbus(property)]
    fn state(&self) -> String {
        self.state.clone()
    }
    #[zbus(property)]
    fn message(&self) -> String {
        self.message.clone()
    }
}

async fn mock_daemon(address: &str, steps: mpsc::UnboundedReceiver<()>) -> Connection {
    zbus::connection::Builder::address(address)
        .serve_at(names::ROOT_PATH, MockManager)
        .serve_at(
            names::device_path("fpga0"),
            MockDevice {
                steps: Mutex::new(Some(steps)),
                vf_count: Mutex::new(0),
            },
        )
        .serve_at(
            names::slice_path("fpga0", "region0"),
            MockSlice {
                written: Mutex::new(Vec::new()),
            },
        )
        .name(names::BUS_NAME)
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn client_talks_to_a_daemon() {
    let Some(bus) = PrivateBus::start("client") else {
        return;
    };
    // Before the daemon is there: the bus says so, and the error says it is a bus error.
    let client = Client::connect(Some(&bus.address)).await.unwrap();
    let err = client.who_am_i().await.unwrap_err();
    assert_eq!(
        err.bus_error_name().as_deref(),
        Some("org.freedesktop.DBus.Error.ServiceUnknown")
    );

    let (step, steps) = mpsc::unbounded_channel();
    let _daemon = mock_daemon(&bus.address, steps).await;
    let mut client = Client::connect(Some(&bus.address)).await.unwrap();
    client.set_interactive(true);

    let me = client.who_am_i().await.unwrap();
    assert_eq!(
        (me.uid, me.roles.as_slice()),
        (1000, &["tenant".to_owned()][..])
    );
    assert!(matches!(
        client.reload_policy().await.unwrap_err().accel(),
        Some(AccelError::NotAuthorized(m)) if m == "policy.reload denied"
    ));
    assert_eq!(
        client.audit_log(2).await.unwrap(),
        ["{\"n\":0}", "{\"n\":1}"]
    );
    assert_eq!(client.version().await.unwrap(), "0.1.0");

    // Properties become typed snapshots.
    let devices = client.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].id, "fpga0");
    assert_eq!(devices[0].vendor_id, 0x8086);
    assert_eq!(devices[0].slices, ["region0"]);
    let slices = client.slices("fpga0").await.unwrap();
    assert_eq!(slices[0].device, "fpga0");
    assert_eq!(slices[0].writable, [(0, 0x100)]);
    assert_eq!(slices[0].tenant, "user:alice");

    // Methods and their signatures.
    assert_eq!(
        client.read("fpga0", "region0", 0x10, 3, 4).await.unwrap(),
        [0x10, 0x14, 0x18]
    );
    client
        .write("fpga0", "region0", 0x20, &[1, 2], 2)
        .await
        .unwrap();
    assert!(matches!(
        client
            .write("fpga0", "region0", 0x200, &[1], 4)
            .await
            .unwrap_err()
            .accel(),
        Some(AccelError::InvalidArgument(_))
    ));
    let mapped = client.map("fpga0", "region0").await.unwrap();
    let mut first = [0u8; 4];
    std::fs::File::from(mapped).read_exact(&mut first).unwrap();
    assert_eq!(u32::from_le_bytes(first), 0xdead_beef);
    assert!(matches!(
        client
            .assign("fpga0", "region0", "alice")
            .await
            .unwrap_err()
            .accel(),
        Some(AccelError::Busy(_))
    ));
    client.release("fpga0", "region0").await.unwrap();
    client.set_vf_count("fpga0", 0, true).await.unwrap();
    assert!(client.set_vf_count("fpga0", 0, false).await.is_err());
    client.set_vf_count("fpga0", 4, false).await.unwrap();
    assert_eq!(client.device("fpga0").await.unwrap().num_vfs, 4);
    // A path the daemon does not serve is not found.
    assert!(matches!(
        client.slice("fpga0", "nope").await.unwrap_err().accel(),
        Some(AccelError::NotFound(_))
    ));

    // A job that ended before the client started waiting.
    let image = SealedImage::from_bytes(b"personality").unwrap();
    let job = client.configure("fpga0", &image, false).await.unwrap();
    let message = client.wait_job(&job, |_| {}).await.unwrap();
    assert_eq!(message, "loaded 11 bytes");

    // The signature travels as bytes in the options.
    let job = client.flash("fpga0", &image, Some(b"sig")).await.unwrap();
    assert_eq!(client.wait_job(&job, |_| {}).await.unwrap(), "flashed");

    // A running job: each progress report lets the job take its next step, so the test
    // proves that the waiter was subscribed before the job moved.
    let mut seen = Vec::new();
    let job = client.flash("fpga0", &image, None).await.unwrap();
    let err = client
        .wait_job(&job, |p| {
            seen.push(p);
            let _ = step.send(());
        })
        .await
        .unwrap_err();
    assert_eq!(seen, [0.0, 0.5]);
    assert!(matches!(
        err.accel(),
        Some(AccelError::VerificationFailed(m)) if m == "no valid signature"
    ));
}
