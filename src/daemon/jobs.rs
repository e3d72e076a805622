//! Long operations as Job objects (as udisks does): `Progress` with PropertiesChanged, `State`,
//! `Message`, the `Completed` signal, and `Cancel`. A finished job stays on the bus for a while
//! so a client that subscribed late can still read how it ended.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{interface, Connection, OwnedObjectPath};

use crate::error::AccelError;
use crate::names::job_path;
use crate::operation::Operation;

use super::authz::Target;
use super::service::Daemon;

/// How long a finished job stays on the bus.
const LINGER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

struct JobStatus {
    progress: f64,
    state: JobState,
    message: String,
}

/// What a job object and the task doing the work share.
pub struct JobShared {
    pub operation: Operation,
    pub target: Target,
    target_path: OwnedObjectPath,
    pub started_by_uid: u32,
    /// Set by Cancel; the work checks it until its point of no return.
    pub cancel: Arc<AtomicBool>,
    status: Mutex<JobStatus>,
}

impl JobShared {
    fn status(&self) -> std::sync::MutexGuard<'_, JobStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The D-Bus face of a job.
pub struct JobObject {
    shared: Arc<JobShared>,
    daemon: Weak<Daemon>,
}

#[interface(name = "org.accelgate.Accel1.Job")]
impl JobObject {
    /// Asks the job to stop. Allowed to whoever may start the job's operation on its target.
    async fn cancel(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), AccelError> {
        let daemon = self
            .daemon
            .upgrade()
            .ok_or_else(|| AccelError::Failed("daemon is stopping".into()))?;
        daemon.authorize_job_cancel(&hdr, &self.shared).await?;
        if self.shared.status().state != JobState::Running {
            return Err(AccelError::InvalidArgument(
                "the job has already finished".into(),
            ));
        }
        self.shared.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }

    #[zbus(signal)]
    async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "const"))]
    fn operation(&self) -> String {
        self.shared.operation.as_str().to_owned()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn target(&self) -> OwnedObjectPath {
        self.shared.target_path.clone()
    }

    #[zbus(property)]
    fn progress(&self) -> f64 {
        self.shared.status().progress
    }

    #[zbus(property)]
    fn state(&self) -> String {
        self.shared.status().state.as_str().to_owned()
    }

    #[zbus(property)]
    fn message(&self) -> String {
        self.shared.status().message.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn started_by_uid(&self) -> u32 {
        self.shared.started_by_uid
    }
}

/// Creates job objects.
pub struct Jobs {
    conn: Connection,
    next: AtomicU64,
}

impl Jobs {
    pub fn new(conn: Connection) -> Jobs {
        Jobs {
            conn,
            next: AtomicU64::new(1),
        }
    }

    /// Puts a new running job on the bus.
    pub async fn start(
        &self,
        daemon: &Arc<Daemon>,
        operation: Operation,
        target: Target,
        target_path: OwnedObjectPath,
        started_by_uid: u32,
    ) -> Result<JobHandle, AccelError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = OwnedObjectPath::try_from(job_path(n))
            .map_err(|e| AccelError::Failed(e.to_string()))?;
        let shared = Arc::new(JobShared {
            operation,
            target,
            target_path,
            started_by_uid,
            cancel: Arc::new(AtomicBool::new(false)),
            status: Mutex::new(JobStatus {
                progress: 0.0,
                state: JobState::Running,
                message: String::new(),
            }),
        });
        let object = JobObject {
            shared: shared.clone(),
            daemon: Arc::downgrade(daemon),
        };
        self.conn
            .object_server()
            .at(&path, object)
            .await
            .map_err(|e| AccelError::Failed(e.to_string()))?;
        Ok(JobHandle {
            conn: self.conn.clone(),
            path,
            shared,
        })
    }
}

/// The working side of a job.
#[derive(Clone)]
pub struct JobHandle {
    conn: Connection,
    pub path: OwnedObjectPath,
    pub shared: Arc<JobShared>,
}

impl JobHandle {
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.shared.cancel.clone()
    }

    pub async fn set_progress(&self, progress: f64) {
        let progress = progress.clamp(0.0, 1.0);
        {
            let mut st = self.shared.status();
            if progress <= st.progress {
                return;
            }
            st.progress = progress;
        }
        if let Ok(iface) = self
            .conn
            .object_server()
            .interface::<_, JobObject>(&self.path)
            .await
        {
            let _ = iface
                .get()
                .await
                .progress_changed(iface.signal_emitter())
                .await;
        }
    }

    /// Ends the job: sets State and Message, emits Completed, and removes the object later.
    pub async fn finish(&self, result: Result<String, AccelError>) {
        let (state, message) = match result {
            Ok(m) => (JobState::Succeeded, m),
            Err(AccelError::Cancelled(m)) => (JobState::Cancelled, format!("Cancelled: {m}")),
            Err(e) => (JobState::Failed, e.to_string()),
        };
        {
            let mut st = self.shared.status();
            st.state = state;
            st.message = message.clone();
            if state == JobState::Succeeded {
                st.progress = 1.0;
            }
        }
        let server = self.conn.object_server();
        if let Ok(iface) = server.interface::<_, JobObject>(&self.path).await {
            let emitter = iface.signal_emitter();
            let obj = iface.get().await;
            let _ = obj.progress_changed(emitter).await;
            let _ = obj.state_changed(emitter).await;
            let _ = obj.message_changed(emitter).await;
            let _ = JobObject::completed(emitter, state == JobState::Succeeded, &message).await;
        }
        let path = self.path.clone();
        let conn = self.conn.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            let _ = conn.object_server().remove::<JobObject, _>(&path).await;
        });
    }
}
