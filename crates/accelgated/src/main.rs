//! `accelgated`: the accelgate system daemon.

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "simulator")]
use accelgate_sim::SimSpec;
use accelgated::core::error_chain;
use accelgated::sandbox::Violation;
use accelgated::{run, BusChoice, Config};
use clap::Parser;

/// Share PCI accelerators between tenants: serves org.accelgate.Accel1 on D-Bus.
#[derive(Parser, Debug)]
#[command(version, about, long_about = LONG_ABOUT)]
struct Args {
    /// Hardware root: where sys/bus/pci lives.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Build a simulated host (sysfs-shaped tree) in DIR, run its emulator, and use it as the
    /// hardware root. An existing tree is reused, as hardware keeps its state.
    #[arg(long, value_name = "DIR", conflicts_with = "root")]
    simulate: Option<PathBuf>,
    /// What the simulated host contains: `standard` (fpga0 with two regions, nic0 with 8 VFs),
    /// `rig` (the kernel rig's guest: edu, nvme and igb with SR-IOV, MTDs, test_firmware
    /// entries) or `scale:DEVICESxVFS` (NICs nic0.. with up to VFS VFs each, for scale tests).
    #[cfg(feature = "simulator")]
    #[arg(long, value_name = "SPEC", default_value = "standard", value_parser = parse_sim_spec, requires = "simulate")]
    simulate_spec: SimSpec,
    /// `system`, `session`, or a D-Bus address such as unix:path=/run/x/bus.
    #[arg(long, default_value = "system")]
    bus: BusChoice,
    /// Policy file, or a directory holding policy.toml and policy.d/*.toml.
    #[arg(long, default_value = "/etc/accelgate")]
    policy: PathBuf,
    /// Where state (assignments, image hashes, VF counts) is kept.
    #[arg(long, default_value = "/var/lib/accelgate")]
    state_dir: PathBuf,
    /// Audit log (JSON lines); default STATE_DIR/audit.jsonl.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Do not check requests with polkit (role policy alone decides). For tests and demos on a
    /// bus without polkitd; never on a production host.
    #[arg(long)]
    no_polkit: bool,
    /// Do not confine the daemon (no capability drop, no seccomp). For debugging only.
    #[arg(long)]
    no_sandbox: bool,
    /// What a system call outside the seccomp allow-list gets: `kill` the daemon, or `errno`
    /// (fails with EPERM).
    #[arg(long, value_enum, default_value = "kill", hide_possible_values = true)]
    seccomp_violation: ViolationArg,
    /// Print the man page accelgated(8), generated from these options, and exit (packaging).
    #[arg(long, hide = true)]
    man_page: bool,
}

/// The date on the man pages: the release's.
const MAN_DATE: &str = "2026-11-30";

/// accelgated(8): the options as `--help` shows them, and what an operator needs around them.
fn print_man_page() -> ExitCode {
    use clap::CommandFactory;
    use std::io::Write;
    let man = clap_mangen::Man::new(Args::command().name("accelgated"))
        .section("8")
        .date(MAN_DATE)
        .manual("accelgate");
    let mut out = Vec::new();
    let rendered = man
        .render(&mut out)
        .map(|()| out.extend_from_slice(MAN_TAIL.as_bytes()))
        .and_then(|()| std::io::stdout().write_all(&out));
    match rendered {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accelgated: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and the man page's DESCRIPTION.
const LONG_ABOUT: &str = "Share PCI accelerators between tenants: serves org.accelgate.Accel1 on \
D-Bus.

accelgated owns raw access to the host's PCI accelerators (register windows, SR-IOV virtual \
functions, application images, firmware). Every request passes, in order, the caller's \
identity (from the bus), the role policy (accelgate-policy(5)), the caller's capabilities, \
polkit (actions org.accelgate.OPERATION) and the device's hard limits; the first that refuses \
ends it, and every decision is audited.

It is started by systemd (accelgated.service) or by D-Bus activation, runs as root with its \
capabilities dropped and a seccomp filter, reloads its policy on SIGHUP, and stops on SIGTERM.";

const MAN_TAIL: &str = r#".SH FILES
.TP
.I /etc/accelgate/policy.toml
.TQ
.I /etc/accelgate/policy.d/*.toml
The role policy.
.TP
.I /var/lib/accelgate/
State (assignments, image hashes, VF counts) and the audit log \fIaudit.jsonl\fR.
.TP
.I /usr/share/polkit\-1/actions/org.accelgate.policy
The polkit actions, one per operation.
.SH SEE ALSO
.BR accelctl (1),
.BR accelgate\-policy (5),
.BR polkit (8),
.BR journalctl (1)
"#;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ViolationArg {
    Kill,
    Errno,
}

/// Largest `scale:` host accepted: the simulator puts PF i on its own PCI bus, 240 buses
/// (0x10..0xff) per domain, in four domains (`accelgate_sim::scale_bdf`), and its VFs on the
/// other device numbers of that bus (at most 0xff).
#[cfg(feature = "simulator")]
const MAX_SCALE_DEVICES: u32 = 4 * 0xf0;
#[cfg(feature = "simulator")]
const MAX_SCALE_VFS: u32 = 0xff;

#[cfg(feature = "simulator")]
fn parse_sim_spec(text: &str) -> Result<SimSpec, String> {
    match text {
        "standard" => return Ok(SimSpec::standard()),
        "rig" => return Ok(SimSpec::rig()),
        _ => {}
    }
    let usage = || format!("'{text}' is neither 'standard', 'rig' nor 'scale:DEVICESxVFS'");
    let (devices, vfs) = text
        .strip_prefix("scale:")
        .and_then(|dims| dims.split_once('x'))
        .ok_or_else(usage)?;
    let devices: u32 = devices.parse().map_err(|_| usage())?;
    let vfs: u32 = vfs.parse().map_err(|_| usage())?;
    if !(1..=MAX_SCALE_DEVICES).contains(&devices) || vfs > MAX_SCALE_VFS {
        return Err(format!(
            "scale host must have 1..={MAX_SCALE_DEVICES} devices and at most {MAX_SCALE_VFS} VFs each"
        ));
    }
    Ok(SimSpec::scale(devices, vfs))
}

/// Keeps the daemon's memory near what it uses. glibc by default gives each thread that
/// allocates concurrently an arena of its own and raises its trim and mmap thresholds after
/// freeing a large block; after a burst (one GetManagedObjects of 4096 slices builds some
/// 15 MB of property values), the freed memory then stays resident in several arenas. One
/// arena and fixed thresholds return it. The daemon's threads rarely allocate at once, and
/// the per-thread caches serve small allocations without the arena lock.
fn tune_allocator() {
    const ARENAS: i32 = 1;
    // Blocks from this size are mmap'ed and unmapped on free.
    const MMAP_THRESHOLD: i32 = 64 << 10;
    // Free memory past this at the top of the heap is given back.
    const TRIM_THRESHOLD: i32 = 128 << 10;
    for (param, value) in [
        (nix::libc::M_ARENA_MAX, ARENAS),
        (nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (nix::libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        // SAFETY: mallopt only changes glibc malloc tunables; it is called before any other
        // thread exists, and a refused value (return 0) leaves the default in place.
        if unsafe { nix::libc::mallopt(param, value) } == 0 {
            eprintln!("accelgated: malloc tunable {param} not set; keeping the default");
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ACCELGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.man_page {
        return print_man_page();
    }
    if args.no_polkit {
        tracing::warn!(
            "--no-polkit: polkit is NOT consulted; only role policy gates requests. \
             Do not run like this in production."
        );
    }
    let cfg = Config {
        root: args.root,
        simulate: args.simulate,
        #[cfg(feature = "simulator")]
        sim_spec: args.simulate_spec,
        bus: args.bus,
        policy: args.policy,
        state_dir: args.state_dir,
        audit_log: args.audit_log,
        polkit: !args.no_polkit,
        sandbox: !args.no_sandbox,
        on_violation: match args.seccomp_violation {
            ViolationArg::Kill => Violation::Kill,
            ViolationArg::Errno => Violation::Errno,
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("accelgated: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accelgated: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, feature = "simulator"))]
mod tests {
    use super::*;

    #[test]
    fn sim_spec_names() {
        assert_eq!(parse_sim_spec("standard"), Ok(SimSpec::standard()));
        assert_eq!(parse_sim_spec("rig"), Ok(SimSpec::rig()));
        assert_eq!(parse_sim_spec("scale:64x64"), Ok(SimSpec::scale(64, 64)));
        assert_eq!(parse_sim_spec("scale:1x0"), Ok(SimSpec::scale(1, 0)));
        assert_eq!(parse_sim_spec("scale:256x64"), Ok(SimSpec::scale(256, 64)));
        for bad in [
            "",
            "scale",
            "scale:64",
            "scale:x64",
            "scale:0x4",
            "scale:961x1",
            "scale:1x256",
            "big",
        ] {
            assert!(parse_sim_spec(bad).is_err(), "{bad} accepted");
        }
    }
}
