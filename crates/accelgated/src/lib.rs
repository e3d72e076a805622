//! The daemon `accelgated`: owns raw device access and serves the D-Bus API.
//!
//! A request enters at the D-Bus layer ([`dbus`]), which identifies the caller and parses the
//! arguments; the engine ([`core`]) decides it through the gatekeeper and executes it on
//! hardware reached only through `accelgate_hw`; the engine's events become signals again in
//! the D-Bus layer. [`sandbox`] confines the process once everything is open.
//!
//! Start-up order: load and validate the policy, build the simulated tree when asked, open the
//! state, connect to the bus, open the devices (map windows, restore VFs, repair what a crash
//! left in flux), export the objects, confine the process, and only then take the bus name —
//! so a client never sees a half-built service or an unconfined one.

pub mod core;
pub mod dbus;
pub mod heap;
pub mod sandbox;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use zbus::fdo::RequestNameFlags;

use accelgate_hw::{HwRoot, Received, UeventError, UeventSocket};
use accelgate_policy::RolePolicy;
use accelgate_proto::names::BUS_NAME;
#[cfg(feature = "simulator")]
use accelgate_sim as sim;

use self::core::{audit, error_chain, state, Engine, EngineParts, Gate};
use self::dbus::{caller::CallerCache, polkit, BusContext, BusEvents};

/// Which bus to serve on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    System,
    Session,
    Address(String),
}

impl std::str::FromStr for BusChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "system" => BusChoice::System,
            "session" => BusChoice::Session,
            other => BusChoice::Address(other.to_owned()),
        })
    }
}

/// Everything `accelgated` is told on its command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hardware root (`/` on a real host).
    pub root: PathBuf,
    /// Build a simulated host here and use it as the root.
    pub simulate: Option<PathBuf>,
    /// What the simulated host contains (only with `simulate`).
    #[cfg(feature = "simulator")]
    pub sim_spec: sim::SimSpec,
    pub bus: BusChoice,
    /// A policy file, or a directory with policy.toml and policy.d/.
    pub policy: PathBuf,
    pub state_dir: PathBuf,
    /// Audit log file; default `<state_dir>/audit.jsonl`.
    pub audit_log: Option<PathBuf>,
    /// Check every request with polkit. Off only for tests and demos without polkitd.
    pub polkit: bool,
    /// Confine the process (capabilities, no_new_privs, seccomp). Off only for debugging.
    pub sandbox: bool,
    /// What a syscall outside the allow-list gets.
    pub on_violation: sandbox::Violation,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("policy is invalid")]
    Policy(#[source] accelgate_policy::PolicyError),
    #[cfg(feature = "simulator")]
    #[error("cannot build the simulated host")]
    Simulator(#[source] sim::SimError),
    #[cfg(not(feature = "simulator"))]
    #[error("this accelgated was built without the simulator")]
    NoSimulator,
    #[error("cannot open state")]
    State(#[source] state::StateError),
    #[error("cannot open the audit log")]
    Audit(#[source] audit::AuditError),
    #[error("cannot connect to the bus")]
    Bus(#[source] zbus::Error),
    #[error("cannot connect the caller cache to the bus")]
    Callers(#[source] zbus::Error),
    #[error("cannot own {BUS_NAME}: {0}")]
    Name(String),
    #[error("cannot start the polkit gate")]
    Polkit(#[source] polkit::PolkitError),
    #[error("cannot confine the daemon")]
    Sandbox(#[source] sandbox::SandboxError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot follow PCI hotplug")]
    Uevents(#[source] UeventError),
    #[error("cannot set up the uevent reader")]
    UeventThread(#[source] std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let policy = RolePolicy::load(&cfg.policy).map_err(RunError::Policy)?;
    tracing::info!(
        "policy {} loaded from {}",
        policy.revision,
        cfg.policy.display()
    );

    // The emulator plays the kernel; it must outlive the service. PCI hotplug is followed
    // through uevents: the kernel's on a real host, the emulator's on a simulated one (the
    // same bytes through the same parser). Opened now: the confined daemon may not.
    let (root, _emulator, uevents) = match &cfg.simulate {
        #[cfg(feature = "simulator")]
        Some(dir) => {
            sim::build(dir, &cfg.sim_spec).map_err(RunError::Simulator)?;
            let (ours, theirs) =
                std::os::unix::net::UnixDatagram::pair().map_err(RunError::UeventThread)?;
            let emulator =
                sim::Emulator::start_with_uevents(dir, theirs).map_err(RunError::Simulator)?;
            tracing::info!("simulated hardware under {}", dir.display());
            (
                dir.clone(),
                Some(Box::new(emulator) as Box<dyn std::any::Any>),
                Some(UeventSocket::simulated(ours)),
            )
        }
        #[cfg(not(feature = "simulator"))]
        Some(_) => return Err(RunError::NoSimulator),
        None if cfg.root == std::path::Path::new("/") => (
            cfg.root.clone(),
            None::<Box<dyn std::any::Any>>,
            Some(UeventSocket::kernel().map_err(RunError::Uevents)?),
        ),
        None => {
            tracing::info!(
                "hardware root {} is not /: the kernel's PCI hotplug events do not apply to it",
                cfg.root.display()
            );
            (cfg.root.clone(), None, None)
        }
    };

    let state = state::StateStore::open(&cfg.state_dir).map_err(RunError::State)?;
    let audit_path = cfg
        .audit_log
        .clone()
        .unwrap_or_else(|| cfg.state_dir.join("audit.jsonl"));
    let audit = audit::AuditLog::open(Some(&audit_path)).map_err(RunError::Audit)?;

    let builder = match &cfg.bus {
        BusChoice::System => zbus::connection::Builder::system(),
        BusChoice::Session => zbus::connection::Builder::session(),
        BusChoice::Address(a) => zbus::connection::Builder::address(a.as_str()),
    };
    let conn = builder.build().await.map_err(RunError::Bus)?;

    let mut gates: Vec<Box<dyn Gate>> = Vec::new();
    if cfg.polkit {
        let options = polkit::PolkitOptions::from_env();
        gates.push(Box::new(
            polkit::PolkitGate::new(&conn, options)
                .await
                .map_err(RunError::Polkit)?,
        ));
    } else {
        tracing::warn!("POLKIT IS OFF: requests are decided by role policy alone");
    }

    let callers = CallerCache::new(&conn).await.map_err(RunError::Callers)?;
    let (events, forwarder) = BusEvents::new();
    let engine = Engine::new(EngineParts {
        hw: if cfg.simulate.is_some() {
            HwRoot::simulated(&root)
        } else {
            HwRoot::new(&root)
        },
        policy_path: cfg.policy.clone(),
        policy,
        state,
        audit,
        gates,
        events: Arc::new(events.clone()),
    })
    .await;
    if let Some(socket) = uevents {
        follow_uevents(socket, engine.clone())?;
    }
    let ctx = BusContext::new(engine.clone(), conn.clone(), callers, events);
    tokio::spawn(forwarder.run(ctx.clone()));
    // Every object is on the bus before the name is taken.
    ctx.settle().await;
    let signals = Signals::install().map_err(RunError::Signals)?;

    if cfg.sandbox {
        let keep_caps = sandbox::required_caps(&root);
        sandbox::confine(&sandbox::SandboxConfig {
            keep_caps,
            on_violation: cfg.on_violation,
        })
        .map_err(RunError::Sandbox)?;
        tracing::info!(
            "confined: capabilities dropped, no_new_privs, seccomp allow-list on every thread"
        );
    } else {
        tracing::warn!(
            "RUNNING WITHOUT SANDBOX (--no-sandbox): capabilities kept, no seccomp filter; for debugging only"
        );
    }

    let reply = conn
        .request_name_with_flags(BUS_NAME, RequestNameFlags::DO_NOT_QUEUE)
        .await
        .map_err(|e| RunError::Name(e.to_string()))?;
    if reply != zbus::fdo::RequestNameReply::PrimaryOwner {
        return Err(RunError::Name(format!("{reply:?}")));
    }
    notify_ready();
    tracing::info!("serving {BUS_NAME}");
    heap::spawn_trimmer(heap::TRIM_PERIOD);

    signals.serve(engine).await;
    Ok(())
}

/// Reads uevents on a thread of its own (a blocking `recvfrom`) and hands the PCI ones, in
/// order, to one task that applies them to the engine.
fn follow_uevents(socket: UeventSocket, engine: Arc<Engine>) -> Result<(), RunError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("uevents".into())
        .spawn(move || loop {
            let item = match socket.receive() {
                Ok(Received::Ignored) => continue,
                Ok(Received::Closed) => {
                    tracing::info!("the uevent source closed; hotplug is not followed");
                    return;
                }
                Ok(item) => item,
                Err(UeventError::Receive(nix::Error::EINTR)) => continue,
                Err(e @ UeventError::Receive(_)) => {
                    tracing::error!("{}; hotplug is not followed", error_chain(&e));
                    return;
                }
                Err(e) => {
                    tracing::warn!("{} (ignored)", error_chain(&e));
                    continue;
                }
            };
            if tx.send(item).is_err() {
                return;
            }
        })
        .map_err(RunError::UeventThread)?;
    tokio::spawn(async move {
        while let Some(item) = rx.recv().await {
            match item {
                Received::Pci(event) => {
                    tracing::debug!(
                        "uevent {:?} {} (seqnum {:?})",
                        event.action,
                        event.bdf,
                        event.seqnum
                    );
                    engine.pci_event(&event).await;
                }
                Received::Lost => {
                    tracing::warn!("uevents were lost (queue overflow); checking every device");
                    engine.resync_presence().await;
                }
                Received::Ignored | Received::Closed => {}
            }
        }
    });
    Ok(())
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGHUP reloads the policy; SIGTERM and SIGINT stop the daemon.
    async fn serve(mut self, engine: Arc<Engine>) {
        loop {
            tokio::select! {
            _ = self.hup.recv() => match engine.reload_policy_files().await {
                Ok(()) => tracing::info!("SIGHUP: policy reloaded"),
                Err(e) => tracing::error!("SIGHUP: policy not reloaded, the old one stays: {e}"),
            },
            _ = self.term.recv() => break,
            _ = self.int.recv() => break,
            }
        }
        tracing::info!("stopping");
    }
}

/// Tells systemd (Type=notify) or whoever set NOTIFY_SOCKET that the service is ready.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("sd_notify: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!("sd_notify: {}", error_chain(&e));
    }
}
