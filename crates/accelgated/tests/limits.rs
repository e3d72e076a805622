//! Bounded memory per caller and in total: one tenant flooding Program with large images
//! gets Busy, the daemon stays small, and everyone else is still served.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use accelgate_client::proto::names::{slice_path, BUS_NAME, SLICE_INTERFACE};
use accelgate_testkit::polkit::connect_as;
use accelgate_testkit::*;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

const IMAGE_SIZE: i64 = 64 << 20;
const CALLS: usize = 200;
const CONNECTIONS: usize = 4;

/// A sealed memfd of 64 MiB that occupies no memory in the sender (it is sparse).
fn sparse_sealed_image() -> OwnedFd {
    let fd = memfd_create("flood", MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, IMAGE_SIZE).unwrap();
    fcntl(
        fd.as_fd(),
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )
    .unwrap();
    fd
}

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn a_program_flood_is_bounded_and_others_are_served() {
    let mut s = Stack::new("image-flood");
    s.ctl("ag-operator", &["assign", "fpga0/region0", "ag-tenant1"])
        .ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The bus caps pending replies per connection (128), so the tenant spreads its calls over
    // a few connections, all with its uid.
    let proxies: Vec<zbus::Proxy> = (0..CONNECTIONS)
        .map(|_| {
            let conn = connect_as(&rt, &s.bus.address, "ag-tenant1");
            rt.block_on(zbus::Proxy::new(
                &conn,
                BUS_NAME,
                slice_path("fpga0", "region0"),
                SLICE_INTERFACE,
            ))
            .unwrap()
        })
        .collect();
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let proxy = proxies[i % CONNECTIONS].clone();
            let fd = sparse_sealed_image();
            rt.spawn(async move {
                let options: HashMap<&str, zbus::Variant> = HashMap::new();
                proxy
                    .call_method("Program", &(zbus::Fd::from(fd.as_fd()), options))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    // Others are served while the flood runs.
    for _ in 0..3 {
        s.ctl("ag-operator", &["read", "fpga0/region1", "0x0"]).ok();
        s.ctl("ag-tenant2", &["whoami"]).ok();
    }
    let results: Vec<Result<(), String>> =
        calls.into_iter().map(|c| rt.block_on(c).unwrap()).collect();
    let elapsed = started.elapsed();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let unexpected: Vec<&String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|e| !e.contains("Error.Busy"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "errors other than Busy: {unexpected:?}"
    );
    assert!(accepted >= 1, "no Program was accepted at all");
    assert!(s.daemon.alive(), "the daemon died under the flood");
    let peak = peak_rss(s.daemon.pid());
    assert!(
        peak < 256 << 20,
        "daemon peak RSS {} MiB after {CALLS} parallel 64 MiB Programs",
        peak >> 20
    );
    s.ctl("ag-operator", &["read", "fpga0/region1", "0x0"]).ok();
    eprintln!(
        "{CALLS} Programs of 64 MiB: {accepted} accepted, the rest Busy, peak RSS {} MiB, {:?}",
        peak >> 20,
        elapsed
    );
}
