//! `accelgate-dra`: the kubelet plugin. See docs/kubernetes.md.
#![forbid(unsafe_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::UnixListener;
use tokio::sync::Mutex;
use tokio_stream::wrappers::UnixListenerStream;

use accelgate_dra::accel::Accel;
use accelgate_dra::cdi::BusMount;
use accelgate_dra::checkpoint::Checkpoint;
use accelgate_dra::driver::{DraService, Driver};
use accelgate_dra::publish::{self, PublishConfig};
use accelgate_dra::registration::RegistrationService;

/// Kubernetes DRA kubelet plugin for accelgate slices.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The DRA driver name (DeviceClass selectors and ResourceSlices use it).
    #[arg(long, default_value = "accelgate.org")]
    driver_name: String,
    /// This node's name: the ResourceSlice's node and pool.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The kubelet's plugin registration directory.
    #[arg(long, default_value = "/var/lib/kubelet/plugins_registry")]
    plugins_registry: PathBuf,
    /// The kubelet's plugin directory; the DRA socket and checkpoint go in <dir>/<driver>/.
    #[arg(long, default_value = "/var/lib/kubelet/plugins")]
    plugins: PathBuf,
    /// Where CDI specs are written.
    #[arg(long, default_value = "/var/run/cdi")]
    cdi_dir: PathBuf,
    /// The bus of accelgated: `system`, or a D-Bus address.
    #[arg(long, env = "ACCELGATE_BUS", default_value = "system")]
    bus: String,
    /// The bus socket on the host, mounted into containers.
    #[arg(long, default_value = "/run/dbus/system_bus_socket")]
    bus_socket: PathBuf,
    /// Where containers find the bus socket (ACCELGATE_BUS points there).
    #[arg(long, default_value = "/run/dbus/system_bus_socket")]
    container_bus_socket: PathBuf,
    /// Claims name images relative to this directory.
    #[arg(long, default_value = "/var/lib/accelgate/images")]
    image_dir: PathBuf,
    /// sysfs, read to find VFs and their vfio-pci binding.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Read the daemon's inventory at least this often (seconds), besides its signals.
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Accel(#[from] accelgate_dra::accel::AccelOpError),
    #[error("this plugin's user has no slice.assign in the daemon's policy; give it a role (docs/kubernetes.md)")]
    NoRole,
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Checkpoint(#[from] accelgate_dra::checkpoint::CheckpointError),
    #[error("{}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("invalid driver or node name {0:?}")]
    Name(String),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ACCELGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("accelgate-dra: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A name that goes into file names and Kubernetes object names.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Binds a Unix socket at `path`, replacing a stale one from an earlier run; only root (the
/// kubelet) and our user may connect.
fn bind(path: &Path) -> Result<UnixListener, StartError> {
    let err = |source| StartError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

async fn run(args: Args) -> Result<(), StartError> {
    for name in [&args.driver_name, &args.node_name] {
        if !safe_name(name) {
            return Err(StartError::Name(name.clone()));
        }
    }
    let accel = Accel::connect(Some(&args.bus)).await?;
    if !accel.granted("slice.assign").await? {
        return Err(StartError::NoRole);
    }
    let kube = kube::Client::try_default().await?;
    let plugin_dir = args.plugins.join(&args.driver_name);
    let checkpoint = Arc::new(Mutex::new(Checkpoint::load(
        &plugin_dir.join("checkpoint.json"),
    )?));

    let dra_socket = plugin_dir.join("dra.sock");
    let reg_socket = args
        .plugins_registry
        .join(format!("{}-reg.sock", args.driver_name));
    // The DRA socket first: the kubelet dials it as soon as it has read the registration.
    let dra_listener = bind(&dra_socket)?;
    let reg_listener = bind(&reg_socket)?;

    let driver = Arc::new(Driver {
        driver: args.driver_name.clone(),
        pool: args.node_name.clone(),
        cdi_dir: args.cdi_dir.clone(),
        image_dir: args.image_dir.clone(),
        sysfs_root: args.sysfs.clone(),
        bus: BusMount {
            host_socket: args.bus_socket.clone(),
            container_socket: args.container_bus_socket.clone(),
        },
        accel: accel.clone(),
        kube: kube.clone(),
        checkpoint: checkpoint.clone(),
    });
    let publisher = tokio::spawn(publish::run(
        PublishConfig {
            driver: args.driver_name.clone(),
            node: args.node_name.clone(),
            sysfs_root: args.sysfs.clone(),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
        },
        accel,
        kube,
        checkpoint,
    ));

    let shutdown = Arc::new(tokio::sync::Notify::new());
    let dra = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        Arc::new(DraService(driver)).server(),
        UnixListenerStream::new(dra_listener),
        {
            let s = shutdown.clone();
            async move { s.notified().await }
        },
    );
    let registration = Arc::new(RegistrationService {
        driver: args.driver_name.clone(),
        endpoint: dra_socket.display().to_string(),
        registered: Arc::new(AtomicBool::new(false)),
    });
    let reg = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        registration.server(),
        UnixListenerStream::new(reg_listener),
        {
            let s = shutdown.clone();
            async move { s.notified().await }
        },
    );
    tracing::info!(
        registration = %reg_socket.display(),
        endpoint = %dra_socket.display(),
        "serving"
    );
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| StartError::Socket {
                path: reg_socket.clone(),
                source,
            })?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        // Removing the registration socket tells the kubelet the plugin is gone.
        let _ = std::fs::remove_file(&reg_socket);
        shutdown.notify_waiters();
        Ok::<(), StartError>(())
    };
    let (dra, reg, stopped) = tokio::join!(dra, reg, stop);
    publisher.abort();
    stopped?;
    dra?;
    reg?;
    let _ = std::fs::remove_file(&dra_socket);
    Ok(())
}
