//! The emulator: plays the kernel and the devices behind the simulated tree. One watcher
//! thread reacts to writes (inotify IN_CLOSE_WRITE); each firmware upload runs in its own
//! worker thread so that a long transfer never delays other reactions.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use sha2::{Digest, Sha256};

use super::files::{poke, read_attr, write_atomic};
use super::flash::{SlotWrite, FLASH_BYTES_PER_SEC};
use super::spec::{
    FwEffect, FwEntrySpec, REG_IMAGE_STATUS, REG_IMAGE_TAG, REG_PERSONALITY_TAG, TEST_FIRMWARE_MAX,
};
use super::tree::Tree;
use super::SimError;

/// How long the watcher waits for events before checking whether it should stop.
const STOP_CHECK: u16 = 20;
/// Simulated transfer speed and granularity.
const BYTES_PER_SEC: u64 = 64 << 20;
const MAX_STEP: u64 = 1 << 20;
const MIN_STEPS: u64 = 3;
const MIN_PAUSE: Duration = Duration::from_millis(2);
/// Flash writes report progress in smaller steps (they are slower).
const FLASH_MAX_STEP: u64 = 128 << 10;
/// Set (to anything but `0`) in the environment of the process that starts the emulator to
/// transfer uploads as fast as the files allow instead of at the simulated speed, so that a
/// benchmark sees what the daemon costs rather than the simulated hardware's pace.
pub const UNPACED_ENV: &str = "ACCELGATE_SIM_UNPACED";

/// Running emulator; stopped and joined on Drop.
pub struct Emulator {
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
}

struct Shared {
    tree: Tree,
    stop: AtomicBool,
    uploads: HashMap<String, Arc<UploadSlot>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Uploads take the time the simulated transfer speed says (see [`UNPACED_ENV`]).
    paced: bool,
    /// Where the kernel's uevents for hot-added and removed functions go, if anywhere.
    uevents: Option<UnixDatagram>,
    seqnum: AtomicU64,
}

/// Per firmware-upload entry: whether a worker owns it, and a pending cancel request.
#[derive(Default)]
struct UploadSlot {
    busy: AtomicBool,
    cancel: AtomicBool,
}

/// What a watch descriptor is watching.
#[derive(Clone, Copy)]
enum Watched {
    Pf(usize),
    Fw(usize),
    /// The `fw_slots` attributes of a flash entry.
    Slots(usize),
    /// `sys/bus/pci` (its `drivers_probe`).
    PciBus,
    /// The directory of a VF (PF index, VF index): its `reset` attribute.
    Vf(usize, u32),
    /// `sys/bus/pci/drivers/<driver>`: its `unbind` attribute.
    Driver(usize),
    /// The simulation directory itself, for its [`HOTPLUG`] control file.
    Root,
}

/// The control file in the simulation directory that plays QEMU's `device_add` and
/// `device_del`: writing `add <bdf>` or `remove <bdf>` (a PF of the spec) hot-adds or
/// removes that function (see [`request_hotplug`]).
pub const HOTPLUG: &str = "hotplug";

/// Asks the emulator running on `dir` to hot-add (`add`) or remove a PF of its spec, as QEMU's
/// `device_add`/`device_del` would; the emulator announces it with the kernel's uevents.
pub fn request_hotplug(dir: &Path, add: bool, bdf: &str) -> Result<(), SimError> {
    let path = dir.join(HOTPLUG);
    let verb = if add { "add" } else { "remove" };
    std::fs::write(&path, format!("{verb} {bdf}\n")).map_err(SimError::io(&path))
}

impl Emulator {
    /// Starts emulating the tree under `dir` (built by [`super::build`]). Watches are in place
    /// when this returns, so every later write is seen.
    pub fn start(dir: &Path) -> Result<Emulator, SimError> {
        Self::start_inner(dir, None)
    }

    /// Like [`Emulator::start`], and announces hot-added and removed functions (see
    /// [`HOTPLUG`]) on `uevents` in the kernel's uevent format.
    pub fn start_with_uevents(dir: &Path, uevents: UnixDatagram) -> Result<Emulator, SimError> {
        Self::start_inner(dir, Some(uevents))
    }

    fn start_inner(dir: &Path, uevents: Option<UnixDatagram>) -> Result<Emulator, SimError> {
        let tree = Tree::load(dir)?;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(SimError::Inotify)?;
        let mut watched = HashMap::new();
        let bus = tree.root.join("sys/bus/pci");
        watched.insert(add_watch(&inotify, &bus)?, Watched::PciBus);
        for (index, pf) in tree.spec.functions.iter().enumerate() {
            if pf.sriov.is_some() {
                let wd = add_watch(&inotify, &tree.function_dir(&pf.bdf))?;
                watched.insert(wd, Watched::Pf(index));
                watch_vfs(&tree, &inotify, &mut watched, index);
            }
        }
        for (index, entry) in tree.spec.fw_uploads.iter().enumerate() {
            let wd = add_watch(&inotify, &tree.fw_dir(&entry.name))?;
            watched.insert(wd, Watched::Fw(index));
            if entry.effect == FwEffect::Flash {
                let wd = add_watch(&inotify, &super::flash::slots_dir(&tree, entry))?;
                watched.insert(wd, Watched::Slots(index));
            }
        }
        let wd = add_watch(&inotify, dir)?;
        watched.insert(wd, Watched::Root);
        let mut drivers = Vec::new();
        watch_drivers(&tree, &inotify, &mut watched, &mut drivers);
        let uploads = tree
            .spec
            .fw_uploads
            .iter()
            .map(|entry| (entry.name.clone(), Arc::default()))
            .collect();
        let shared = Arc::new(Shared {
            tree,
            stop: AtomicBool::new(false),
            uploads,
            workers: Mutex::new(Vec::new()),
            paced: std::env::var_os(UNPACED_ENV).is_none_or(|v| v == "0"),
            uevents,
            seqnum: AtomicU64::new(1),
        });
        let for_thread = Arc::clone(&shared);
        let watcher = std::thread::Builder::new()
            .name("sim-emulator".into())
            .spawn(move || watch_loop(&for_thread, &inotify, watched, drivers))
            .map_err(SimError::Thread)?;
        Ok(Emulator {
            shared,
            watcher: Some(watcher),
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        let workers = match self.shared.workers.lock() {
            Ok(mut workers) => std::mem::take(&mut *workers),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for worker in workers {
            let _ = worker.join();
        }
    }
}

fn add_watch(inotify: &Inotify, dir: &Path) -> Result<WatchDescriptor, SimError> {
    inotify
        .add_watch(dir, AddWatchFlags::IN_CLOSE_WRITE)
        .map_err(SimError::Inotify)
}

/// Watches the directories of the VFs that PF `index` has now (for their `reset`); a VF that
/// goes away takes its watch with it (IN_IGNORED).
fn watch_vfs(
    tree: &Tree,
    inotify: &Inotify,
    watched: &mut HashMap<WatchDescriptor, Watched>,
    index: usize,
) {
    let pf = &tree.spec.functions[index];
    for i in 0..tree.existing_vfs(pf) {
        let Some(dir) = tree.vf_dir(pf, i) else {
            return;
        };
        match add_watch(inotify, &dir) {
            Ok(wd) => {
                watched.insert(wd, Watched::Vf(index, i));
            }
            Err(err) => tracing::warn!("simulator: cannot watch {}: {err}", dir.display()),
        }
    }
}

/// Watches the driver directories not watched yet (for their `unbind`); `drivers` holds
/// their names, indexed by [`Watched::Driver`].
fn watch_drivers(
    tree: &Tree,
    inotify: &Inotify,
    watched: &mut HashMap<WatchDescriptor, Watched>,
    drivers: &mut Vec<String>,
) {
    for (name, dir) in tree.driver_dirs() {
        if drivers.contains(&name) {
            continue;
        }
        match add_watch(inotify, &dir) {
            Ok(wd) => {
                watched.insert(wd, Watched::Driver(drivers.len()));
                drivers.push(name);
            }
            Err(err) => tracing::warn!("simulator: cannot watch {}: {err}", dir.display()),
        }
    }
}

fn watch_loop(
    shared: &Arc<Shared>,
    inotify: &Inotify,
    mut watched: HashMap<WatchDescriptor, Watched>,
    mut drivers: Vec<String>,
) {
    while !shared.stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(STOP_CHECK)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::error!("simulator: poll on inotify failed: {err}");
                return;
            }
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(nix::Error::EAGAIN) => continue,
            Err(err) => {
                tracing::error!("simulator: reading inotify events failed: {err}");
                return;
            }
        };
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                watched.remove(&event.wd);
                continue;
            }
            let (Some(target), Some(name)) = (watched.get(&event.wd).copied(), event.name) else {
                continue;
            };
            let result = match (target, name.to_str()) {
                (Watched::PciBus, Some("drivers_probe")) => match shared.tree.probe_target() {
                    // A driver bound for the first time has a new directory: watched before the
                    // bind, since the daemon may unbind as soon as it sees the driver link.
                    Some((bdf, driver)) => shared.tree.ensure_driver(&driver).and_then(|()| {
                        watch_drivers(&shared.tree, inotify, &mut watched, &mut drivers);
                        shared.tree.bind(&bdf, &driver)
                    }),
                    None => Ok(()),
                },
                (Watched::Driver(index), Some("unbind")) => match drivers.get(index) {
                    Some(driver) => shared.tree.unbind(driver),
                    None => Ok(()),
                },
                (Watched::Pf(index), Some("sriov_numvfs")) => {
                    let result = shared
                        .tree
                        .reconcile_vfs(&shared.tree.spec.functions[index]);
                    watch_vfs(&shared.tree, inotify, &mut watched, index);
                    result
                }
                (Watched::Pf(index), Some("config")) => {
                    shared.tree.decode_on(&shared.tree.spec.functions[index])
                }
                (Watched::Vf(pf, vf), Some("reset")) => {
                    shared.tree.reset_vf(&shared.tree.spec.functions[pf], vf)
                }
                (Watched::Root, Some(HOTPLUG)) => {
                    let mut watch_new = |index: usize, dir: &Path| -> Result<(), SimError> {
                        // A new directory: watch it (the old watch ended with the old one).
                        let wd = add_watch(inotify, dir)?;
                        watched.insert(wd, Watched::Pf(index));
                        Ok(())
                    };
                    on_hotplug(shared, &mut watch_new)
                }
                (Watched::Fw(index), Some("loading")) => on_loading(shared, index),
                (Watched::Fw(index), Some("cancel")) => on_cancel(shared, index),
                (Watched::Slots(index), Some("activate")) => {
                    super::flash::on_activate(&shared.tree, &shared.tree.spec.fw_uploads[index])
                }
                _ => Ok(()),
            };
            if let Err(err) = result {
                tracing::warn!("simulator: {err}");
            }
        }
    }
}

/// Performs the request in the [`HOTPLUG`] file. A hot-added function's directory is handed to
/// `watch_new` before anyone can write to it.
fn on_hotplug(
    shared: &Shared,
    watch_new: &mut dyn FnMut(usize, &Path) -> Result<(), SimError>,
) -> Result<(), SimError> {
    let tree = &shared.tree;
    let request = read_attr(&tree.root.join(HOTPLUG)).unwrap_or_default();
    let mut words = request.split_whitespace();
    let (Some(verb), Some(bdf), None) = (words.next(), words.next(), words.next()) else {
        return Err(SimError::InvalidSpec(format!(
            "hotplug request {request:?}"
        )));
    };
    let Some(index) = tree.spec.functions.iter().position(|pf| pf.bdf == bdf) else {
        return Err(SimError::InvalidSpec(format!(
            "hotplug of unknown PF {bdf}"
        )));
    };
    let pf = &tree.spec.functions[index];
    match verb {
        "remove" => {
            let vf_device = pf.sriov.as_ref().map_or(pf.device, |vfs| vfs.device);
            for gone in tree.unplug(pf)? {
                let device = if gone == pf.bdf { pf.device } else { vf_device };
                send_uevent(shared, "remove", &gone, (pf.vendor, device));
            }
            Ok(())
        }
        "add" => {
            if !tree.plug_announce(pf)? {
                return Ok(());
            }
            watch_new(index, &tree.function_dir(&pf.bdf))?;
            // As the kernel: the `add` uevent goes out before the resource files exist.
            send_uevent(shared, "add", &pf.bdf, (pf.vendor, pf.device));
            tree.plug_finish(index, pf)
        }
        _ => Err(SimError::InvalidSpec(format!(
            "hotplug request {request:?}"
        ))),
    }
}

/// One uevent in the kernel's format (`ACTION@DEVPATH`, then `KEY=VALUE`, each NUL-ended).
fn send_uevent(shared: &Shared, action: &str, bdf: &str, (vendor, device): (u16, u16)) {
    let Some(socket) = &shared.uevents else {
        return;
    };
    let devpath = format!("/devices/pci{}/{bdf}", &bdf[..7]);
    let seqnum = shared.seqnum.fetch_add(1, Ordering::Relaxed);
    let message = format!(
        "{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0SUBSYSTEM=pci\0\
         PCI_ID={vendor:04X}:{device:04X}\0PCI_SLOT_NAME={bdf}\0SEQNUM={seqnum}\0"
    );
    if let Err(err) = socket.send(message.as_bytes()) {
        tracing::warn!("simulator: cannot send the {action} uevent for {bdf}: {err}");
    }
}

fn on_loading(shared: &Arc<Shared>, index: usize) -> Result<(), SimError> {
    let entry = &shared.tree.spec.fw_uploads[index];
    let Some(slot) = shared.uploads.get(&entry.name) else {
        return Ok(());
    };
    let dir = shared.tree.fw_dir(&entry.name);
    let request = read_attr(&dir.join("loading")).unwrap_or_default();
    let status = read_attr(&dir.join("status")).unwrap_or_default();
    if slot.busy.load(Ordering::Acquire) {
        return Ok(()); // the kernel refuses a new load while one is being processed
    }
    // As the kernel: `loading`=1 leaves the status idle; `loading`=0 starts the upload of what
    // was written to `data` (nothing for zero bytes); -1 drops it. The upload takes the data
    // (the kernel frees its buffer): a late or repeated event for the same write finds none,
    // and a late "1" must not clear data already written, so "1" changes nothing here.
    match (request.trim(), status.as_str()) {
        ("-1", "idle") => {
            let data = dir.join("data");
            std::fs::File::create(&data).map_err(SimError::io(&data))?;
            Ok(())
        }
        ("0", "idle") => {
            let data = dir.join("data");
            let image = std::fs::read(&data).map_err(SimError::io(&data))?;
            if image.is_empty() {
                return Ok(());
            }
            std::fs::File::create(&data).map_err(SimError::io(&data))?;
            let len = image.len();
            write_atomic(&dir.join("error"), "\n")?;
            write_atomic(&dir.join("remaining_size"), &format!("{len}\n"))?;
            write_atomic(&dir.join("status"), "receiving\n")?;
            slot.busy.store(true, Ordering::Release);
            slot.cancel.store(false, Ordering::Release);
            let worker_shared = Arc::clone(shared);
            let worker_slot = Arc::clone(slot);
            let worker = std::thread::Builder::new()
                .name(format!("sim-upload-{}", entry.name))
                .spawn(move || run_upload(&worker_shared, index, &worker_slot, &image));
            match worker {
                Ok(handle) => {
                    if let Ok(mut workers) = shared.workers.lock() {
                        workers.retain(|w| !w.is_finished());
                        workers.push(handle);
                    }
                    Ok(())
                }
                Err(err) => {
                    slot.busy.store(false, Ordering::Release);
                    Err(SimError::Thread(err))
                }
            }
        }
        _ => Ok(()),
    }
}

fn on_cancel(shared: &Arc<Shared>, index: usize) -> Result<(), SimError> {
    let entry = &shared.tree.spec.fw_uploads[index];
    let dir = shared.tree.fw_dir(&entry.name);
    if read_attr(&dir.join("cancel")).unwrap_or_default().trim() != "1" {
        return Ok(());
    }
    match shared.uploads.get(&entry.name) {
        Some(slot) if slot.busy.load(Ordering::Acquire) => {
            slot.cancel.store(true, Ordering::Release);
            Ok(())
        }
        // Idle: the kernel answers ENODEV and changes nothing; a file cannot refuse a write.
        _ => Ok(()),
    }
}

/// Worker: preparing -> transferring (paced) -> programming -> effect -> idle.
fn run_upload(shared: &Shared, index: usize, slot: &UploadSlot, image: &[u8]) {
    let entry = &shared.tree.spec.fw_uploads[index];
    let dir = shared.tree.fw_dir(&entry.name);
    let outcome = upload_steps(shared, entry, &dir, slot, image);
    let error = match outcome {
        Ok(Outcome::Stopped) => return, // emulator shut down mid-upload: left interrupted
        Ok(Outcome::Done) => "\n".to_string(),
        Ok(Outcome::Failed(progress, code)) => format!("{progress}:{code}\n"),
        Err(err) => {
            tracing::warn!("simulator: upload to {} failed: {err}", entry.name);
            "programming:hw-error\n".to_string()
        }
    };
    slot.busy.store(false, Ordering::Release);
    // remaining_size stays as the upload left it, as in the kernel: it tells how far a failed
    // upload got.
    let finish = write_atomic(&dir.join("error"), &error)
        .and_then(|()| write_atomic(&dir.join("status"), "idle\n"));
    if let Err(err) = finish {
        tracing::warn!("simulator: {err}");
    }
}

enum Outcome {
    Done,
    Failed(&'static str, &'static str),
    Stopped,
}

fn upload_steps(
    shared: &Shared,
    entry: &FwEntrySpec,
    dir: &Path,
    slot: &UploadSlot,
    image: &[u8],
) -> Result<Outcome, SimError> {
    let len = image.len() as u64;
    let test_firmware = entry.effect == FwEffect::TestFirmware;
    let inject = if test_firmware {
        Injection::parse(image)
    } else {
        None
    };
    write_atomic(&dir.join("status"), "preparing\n")?;
    std::thread::sleep(MIN_PAUSE);
    if slot.cancel.load(Ordering::Acquire) {
        return Ok(Outcome::Failed("preparing", "user-abort"));
    }
    if len == 0 || (test_firmware && image.len() > TEST_FIRMWARE_MAX) {
        return Ok(Outcome::Failed("preparing", "invalid-file-size"));
    }
    if let Some(outcome) = injected(shared, slot, inject, "preparing") {
        return Ok(outcome);
    }
    // A flash device writes its staging slot as the transfer goes; other targets take the
    // image at the end.
    let flash = entry.effect == FwEffect::Flash;
    let mut slot_write = if flash {
        Some(SlotWrite::begin(&shared.tree, entry)?)
    } else {
        None
    };
    write_atomic(&dir.join("status"), "transferring\n")?;
    if let Some(outcome) = injected(shared, slot, inject, "transferring") {
        return Ok(outcome);
    }
    let (max_step, rate) = if flash {
        (FLASH_MAX_STEP, FLASH_BYTES_PER_SEC)
    } else {
        (MAX_STEP, BYTES_PER_SEC)
    };
    let steps = len.div_ceil(max_step).max(MIN_STEPS);
    let step = len.div_ceil(steps);
    let pause = if shared.paced {
        Duration::from_micros(step * 1_000_000 / rate).max(MIN_PAUSE)
    } else {
        Duration::ZERO
    };
    let mut received = Received::default();
    let mut remaining = len;
    while remaining > 0 {
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(Outcome::Stopped);
        }
        if slot.cancel.load(Ordering::Acquire) {
            if let Some(w) = slot_write.take() {
                w.abort()?;
            }
            return Ok(Outcome::Failed("transferring", "user-abort"));
        }
        let done = len - remaining;
        let n = step.min(remaining);
        let piece = &image[done as usize..(done + n) as usize];
        match slot_write.as_mut() {
            Some(w) => w.write(done, piece)?,
            None => received.take(piece),
        }
        remaining -= n;
        write_atomic(&dir.join("remaining_size"), &format!("{remaining}\n"))?;
    }
    // Point of no return: a cancel request from here on is ignored.
    write_atomic(&dir.join("status"), "programming\n")?;
    std::thread::sleep(MIN_PAUSE);
    if let Some(outcome) = injected(shared, slot, inject, "programming") {
        return Ok(outcome);
    }
    match slot_write {
        Some(w) => w.finish()?,
        None => apply_effect(shared, entry, image, received.tag())?,
    }
    Ok(Outcome::Done)
}

/// An `inject:<progress>:<error>` image of `test_firmware` (lib/test_firmware.c): the upload
/// fails at that progress with that error.
#[derive(Clone, Copy)]
struct Injection {
    progress: &'static str,
    error: &'static str,
}

impl Injection {
    fn parse(image: &[u8]) -> Option<Injection> {
        let text = std::str::from_utf8(image.strip_prefix(b"inject:")?).ok()?;
        let (progress, error) = text.trim_end().split_once(':')?;
        let progress = ["preparing", "transferring", "programming"]
            .into_iter()
            .find(|p| *p == progress)?;
        let error = [
            "hw-error",
            "timeout",
            "user-abort",
            "device-busy",
            "invalid-file-size",
            "read-write-error",
            "flash-wearout",
            "firmware-invalid",
        ]
        .into_iter()
        .find(|e| *e == error)?;
        Some(Injection { progress, error })
    }
}

/// The outcome an injection forces at `progress`, if any. `user-abort` waits there until the
/// upload is cancelled (or the emulator stops), as the test driver does.
fn injected(
    shared: &Shared,
    slot: &UploadSlot,
    inject: Option<Injection>,
    progress: &'static str,
) -> Option<Outcome> {
    let inject = inject.filter(|i| i.progress == progress)?;
    if inject.error == "user-abort" {
        while !slot.cancel.load(Ordering::Acquire) {
            if shared.stop.load(Ordering::Relaxed) {
                return Some(Outcome::Stopped);
            }
            std::thread::sleep(MIN_PAUSE);
        }
    }
    Some(Outcome::Failed(progress, inject.error))
}

/// First 8 bytes of sha256(image) as a little-endian u64; None for an all-zero ("blank")
/// image, which empties the target.
pub fn image_tag(image: &[u8]) -> Option<u64> {
    let mut received = Received::default();
    received.take(image);
    received.tag()
}

/// What a device has received of an upload so far: its digest and whether every byte was
/// zero, taken piece by piece as the transfer goes (as a device computes it on the stream),
/// not by a second pass over the whole image at the end.
#[derive(Default)]
struct Received {
    sha: Sha256,
    nonzero: bool,
}

impl Received {
    fn take(&mut self, piece: &[u8]) {
        self.sha.update(piece);
        self.nonzero = self.nonzero || piece.iter().any(|&b| b != 0);
    }

    /// The image tag (see [`image_tag`]).
    fn tag(self) -> Option<u64> {
        if !self.nonzero {
            return None;
        }
        let digest = self.sha.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Some(u64::from_le_bytes(first))
    }
}

/// What the device does with a received image; `loaded` is its tag, taken as it arrived.
fn apply_effect(
    shared: &Shared,
    entry: &FwEntrySpec,
    image: &[u8],
    loaded: Option<u64>,
) -> Result<(), SimError> {
    let tree = &shared.tree;
    let pf = tree
        .pf_by_bdf(&entry.bdf)
        .ok_or_else(|| SimError::InvalidSpec(entry.bdf.clone()))?;
    let bar = tree.function_dir(&pf.bdf).join("resource0");
    let tag = loaded.unwrap_or(0);
    match entry.effect {
        FwEffect::Region(n) => {
            let region = pf
                .regions
                .get(n as usize)
                .ok_or_else(|| SimError::InvalidSpec(entry.name.clone()))?;
            let status = u64::from(loaded.is_some());
            poke(&bar, region.offset + REG_IMAGE_TAG, &tag.to_le_bytes())?;
            poke(
                &bar,
                region.offset + REG_IMAGE_STATUS,
                &status.to_le_bytes(),
            )
        }
        FwEffect::Personality => poke(&bar, REG_PERSONALITY_TAG, &tag.to_le_bytes()),
        // Written slot by slot during the transfer (see `upload_steps`).
        FwEffect::Flash => Ok(()),
        FwEffect::TestFirmware => {
            let held = tree.test_firmware_dir().join(&entry.name);
            std::fs::write(&held, image).map_err(SimError::io(&held))
        }
    }
}
