//! Bad input gets a clear D-Bus error, changes nothing, and the daemon keeps serving.

use std::fs;
use std::os::fd::OwnedFd;
use std::time::Duration;

use accelgate_client::AccelError;
use accelgate_testkit::*;

fn setup(name: &str, edit: impl FnOnce(String) -> String) -> Stack {
    Stack::with_policy(name, edit)
}

fn kind(r: Result<impl std::fmt::Debug, AccelError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind().to_owned(),
    }
}

#[test]
fn register_access_out_of_range_is_refused() {
    let mut s = setup("bad-regs", |p| p);
    let region = s.obs.slice("fpga0", "region0");
    let rt = &s.obs.rt;
    let before = fs::read(
        s.daemon
            .sim_dir
            .join("sys/bus/pci/devices/0000:3b:00.0/resource0"),
    )
    .unwrap();
    // Reads: past the window, overflow, unaligned, bad width, count 0, huge count.
    assert_eq!(
        kind(rt.block_on(region.read(0x10000, 1, 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.read(0xfffc, 2, 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.read(u64::MAX - 3, 1, 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.read(u64::MAX - 7, u32::MAX, 8))),
        "InvalidArgument"
    );
    assert_eq!(kind(rt.block_on(region.read(2, 1, 4))), "InvalidArgument");
    assert_eq!(kind(rt.block_on(region.read(0, 1, 3))), "InvalidArgument");
    assert_eq!(kind(rt.block_on(region.read(0, 0, 4))), "InvalidArgument");
    assert_eq!(
        kind(rt.block_on(region.read(0, u32::MAX, 1))),
        "InvalidArgument"
    );
    // Writes: outside the writable ranges (the read-only id register, straddling the end of
    // the scratch range), out of the window, unaligned, value wider than the width, empty.
    assert_eq!(
        kind(rt.block_on(region.write(0x0, &[1], 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(0x1fc, &[1, 2], 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(0x10000, &[1], 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(u64::MAX - 3, &[1], 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(0x101, &[1], 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(0x100, &[0x1_0000], 2))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(0x100, &[], 4))),
        "InvalidArgument"
    );
    assert_eq!(
        kind(rt.block_on(region.write(0x100, &[1], 5))),
        "InvalidArgument"
    );
    let after = fs::read(
        s.daemon
            .sim_dir
            .join("sys/bus/pci/devices/0000:3b:00.0/resource0"),
    )
    .unwrap();
    assert!(before == after, "a refused access changed the device");
    // Still serving.
    assert_eq!(
        s.obs.read("fpga0", "region0", 0, 1, 4).unwrap(),
        vec![0xacce_0000]
    );
    assert!(s.daemon.alive());
}

#[test]
fn image_fds_that_are_not_images_are_refused() {
    let mut s = setup("bad-images", |p| {
        p.replace(
            "[[device]]\nid = \"fpga0\"",
            "[[device]]\nid = \"fpga0\"\nmax_image_size = 1024",
        )
    });
    let region = s.obs.slice("fpga0", "region0");
    let rt = &s.obs.rt;
    let opts = std::collections::HashMap::new;
    // A FIFO: reading it could block the daemon forever.
    let fifo = s.dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_fd: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap()
        .into();
    assert_eq!(
        kind(rt.block_on(region.program((&fifo_fd).into(), opts()))),
        "InvalidArgument"
    );
    // A directory.
    let dir_fd: OwnedFd = fs::File::open(&s.dir).unwrap().into();
    assert_eq!(
        kind(rt.block_on(region.program((&dir_fd).into(), opts()))),
        "InvalidArgument"
    );
    // Over the device's size limit.
    let big = write_image(&s.dir, "big.bin", &vec![1u8; 1025]);
    let big_fd: OwnedFd = fs::File::open(&big).unwrap().into();
    assert_eq!(
        kind(rt.block_on(region.program((&big_fd).into(), opts()))),
        "InvalidArgument"
    );
    // An unsealed memfd: its bytes could change under the daemon.
    let memfd =
        nix::sys::memfd::memfd_create("img", nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::write(&memfd, b"image").unwrap();
    assert_eq!(
        kind(rt.block_on(region.program((&memfd).into(), opts()))),
        "InvalidArgument"
    );
    // Unknown options are refused rather than ignored.
    let ok = write_image(&s.dir, "ok.bin", b"ok");
    let ok_fd: OwnedFd = fs::File::open(&ok).unwrap().into();
    let mut unknown = opts();
    unknown.insert("forse", zbus::Variant::from(true));
    assert_eq!(
        kind(rt.block_on(region.program((&ok_fd).into(), unknown))),
        "InvalidArgument"
    );
    // Nothing was loaded, the daemon serves on.
    assert_eq!(s.obs.image_sha256("fpga0", "region0"), "");
    assert!(s.daemon.alive());
    // Windows in a shared BAR are never mapped.
    assert_eq!(kind(rt.block_on(region.map(opts()))), "InvalidArgument");
}

#[test]
fn unknown_slices_and_tenants_are_clear_errors() {
    let s = setup("bad-names", |p| p);
    s_ctl(&s, &["read", "fpga0/nope", "0"]).fails_with("NotFound");
    s_ctl(&s, &["read", "nodev/region0", "0"]).fails_with("NotFound");
    s_ctl(&s, &["assign", "fpga0/region0", "no-such-user-zz"]).fails_with("InvalidArgument");
    s_ctl(&s, &["assign", "fpga0/region0", "host:x"]).fails_with("InvalidArgument");
    assert_eq!(s.obs.tenant("fpga0", "region0"), "");
}

fn s_ctl(s: &Stack, args: &[&str]) -> Ctl {
    ctl(&s.bus.address, "root", args)
}

#[test]
fn malformed_policy_on_reload_keeps_the_old_policy() {
    let mut s = setup("bad-policy", |p| p);
    let good = fs::read_to_string(&s.daemon.policy).unwrap();
    fs::write(
        &s.daemon.policy,
        format!("{good}\n[[role]]\nid = \"x\"\nbogus_key = 1\n"),
    )
    .unwrap();
    let r = s_ctl(&s, &["policy", "reload"]).fails_with("InvalidArgument");
    assert!(
        r.stderr.contains("policy.toml:"),
        "error names the file and line: {}",
        r.stderr
    );
    // SIGHUP with the bad file: logged, old policy stays, daemon alive.
    s.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.daemon.alive());
    s_ctl(&s, &["assign", "fpga0/region0", "ag-tenant1"]).ok();
    ctl(
        &s.bus.address,
        "ag-tenant1",
        &["read", "fpga0/region0", "0"],
    )
    .ok();
    // A good file takes effect: without the tenant role the same read is denied.
    fs::write(
        &s.daemon.policy,
        good.replace("\"accel-tenants\"", "\"accel-admins\""),
    )
    .unwrap();
    s_ctl(&s, &["policy", "reload"]).ok();
    ctl(
        &s.bus.address,
        "ag-tenant1",
        &["read", "fpga0/region0", "0"],
    )
    .fails_with("NotAuthorized");
}
