//! `accelgated`: the accelgate system daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use accelgate::daemon::sandbox::Violation;
use accelgate::daemon::service::error_chain;
use accelgate::daemon::{run, BusChoice, Config};
use clap::Parser;

/// Share PCI accelerators between tenants: serves org.accelgate.Accel1 on D-Bus.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Hardware root: where sys/bus/pci lives.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Build a simulated host (sysfs-shaped tree) in DIR, run its emulator, and use it as the
    /// hardware root. An existing tree is reused, as hardware keeps its state.
    #[arg(long, value_name = "DIR", conflicts_with = "root")]
    simulate: Option<PathBuf>,
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
    #[arg(long, value_enum, default_value = "kill")]
    seccomp_violation: ViolationArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ViolationArg {
    Kill,
    Errno,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ACCELGATE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.no_polkit {
        tracing::warn!(
            "--no-polkit: polkit is NOT consulted; only role policy gates requests. \
             Do not run like this in production."
        );
    }
    let cfg = Config {
        root: args.root,
        simulate: args.simulate,
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
