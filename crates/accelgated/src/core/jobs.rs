//! Long operations as jobs: one runner for progress, cancel and the final result, used by
//! Program, Configure and Flash alike. The engine keeps the jobs; the D-Bus layer shows each
//! as an `org.accelgate.Accel1.Job` object, following the job events.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use accelgate_proto::{JobState, Operation};

use super::authz::Target;
use super::error::CoreError;
use super::events::{Event, EventSink};

/// How long a finished job stays visible.
const LINGER: Duration = Duration::from_secs(60);
/// Most jobs kept at once (running and lingering); past it new jobs are refused with Busy, so a
/// caller cannot grow the table without bound.
pub const MAX_JOBS: usize = 1024;

/// A job's number; its object path is `/org/accelgate/Accel1/jobs/<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A snapshot of a job's status.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    pub progress: f64,
    pub state: JobState,
    pub message: String,
}

/// What a job is and how it stands.
pub struct Job {
    pub id: JobId,
    pub operation: Operation,
    pub target: Target,
    pub started_by_uid: u32,
    /// Set by Cancel; the work checks it until its point of no return.
    cancel: Arc<AtomicBool>,
    status: Mutex<JobStatus>,
}

impl Job {
    pub fn status(&self) -> JobStatus {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, JobStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the job to stop; refused once it has ended.
    pub fn request_cancel(&self) -> Result<(), CoreError> {
        if self.lock().state.is_final() {
            return Err(CoreError::InvalidArgument(
                "the job has already finished".into(),
            ));
        }
        self.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The jobs of the engine.
pub struct Jobs {
    next: AtomicU64,
    table: Mutex<BTreeMap<JobId, Arc<Job>>>,
    events: Arc<dyn EventSink>,
}

impl Jobs {
    pub fn new(events: Arc<dyn EventSink>) -> Jobs {
        Jobs {
            next: AtomicU64::new(1),
            table: Mutex::new(BTreeMap::new()),
            events,
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<JobId, Arc<Job>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: JobId) -> Option<Arc<Job>> {
        self.table().get(&id).cloned()
    }

    pub fn ids(&self) -> Vec<JobId> {
        self.table().keys().copied().collect()
    }

    /// Registers a new running job and announces it.
    pub fn start(
        self: &Arc<Self>,
        operation: Operation,
        target: Target,
        started_by_uid: u32,
    ) -> Result<JobHandle, CoreError> {
        let id = JobId(self.next.fetch_add(1, Ordering::Relaxed));
        let job = Arc::new(Job {
            id,
            operation,
            target,
            started_by_uid,
            cancel: Arc::new(AtomicBool::new(false)),
            status: Mutex::new(JobStatus {
                progress: 0.0,
                state: JobState::Running,
                message: String::new(),
            }),
        });
        {
            let mut table = self.table();
            if table.len() >= MAX_JOBS {
                return Err(CoreError::Busy(
                    "too many jobs are running or recently finished; retry later".into(),
                ));
            }
            table.insert(id, job.clone());
        }
        self.events.emit(Event::JobStarted(id));
        Ok(JobHandle {
            jobs: self.clone(),
            job,
        })
    }
}

/// The working side of a job.
#[derive(Clone)]
pub struct JobHandle {
    jobs: Arc<Jobs>,
    job: Arc<Job>,
}

impl JobHandle {
    pub fn id(&self) -> JobId {
        self.job.id
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.job.cancel.clone()
    }

    /// Raises the progress (it never goes back) and announces it.
    pub fn set_progress(&self, progress: f64) {
        let progress = progress.clamp(0.0, 1.0);
        {
            let mut st = self.job.lock();
            if progress <= st.progress || st.state.is_final() {
                return;
            }
            st.progress = progress;
        }
        self.jobs.events.emit(Event::JobProgress(self.job.id));
    }

    /// Ends the job with its result, announces it, and forgets it after a while.
    pub fn finish(&self, result: Result<String, CoreError>) {
        let (state, message) = match result {
            Ok(m) => (JobState::Succeeded, m),
            Err(e) if e.kind() == accelgate_proto::ErrorKind::Cancelled => {
                (JobState::Cancelled, format!("Cancelled: {}", e.message()))
            }
            Err(e) => (JobState::Failed, format!("{}: {}", e.kind(), e.message())),
        };
        {
            let mut st = self.job.lock();
            st.state = state;
            st.message = message;
            if state == JobState::Succeeded {
                st.progress = 1.0;
            }
        }
        let id = self.job.id;
        self.jobs.events.emit(Event::JobFinished(id));
        let jobs = self.jobs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            jobs.table().remove(&id);
            jobs.events.emit(Event::JobRemoved(id));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::RecordedEvents;

    fn jobs() -> (Arc<Jobs>, Arc<RecordedEvents>) {
        let events = Arc::new(RecordedEvents::default());
        (Arc::new(Jobs::new(events.clone())), events)
    }

    fn start(jobs: &Arc<Jobs>) -> JobHandle {
        jobs.start(
            Operation::SliceProgram,
            Target::Slice("fpga0".into(), "region0".into()),
            1000,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn progress_only_rises_and_the_end_is_announced_once_final() {
        let (jobs, events) = jobs();
        let job = start(&jobs);
        let id = job.id();
        job.set_progress(0.5);
        job.set_progress(0.25); // never backwards: not announced
        job.set_progress(7.0); // clamped to 1
        assert_eq!(jobs.get(id).unwrap().status().progress, 1.0);
        job.finish(Err(CoreError::Busy("loader busy".into())));
        let st = jobs.get(id).unwrap().status();
        assert_eq!(st.state, JobState::Failed);
        assert_eq!(st.message, "Busy: loader busy");
        job.set_progress(0.9); // after the end: ignored
        assert_eq!(
            events.take(),
            [
                Event::JobStarted(id),
                Event::JobProgress(id),
                Event::JobProgress(id),
                Event::JobFinished(id)
            ]
        );
        assert!(jobs.get(id).unwrap().request_cancel().is_err());
    }

    #[tokio::test]
    async fn cancel_reaches_the_work_and_a_cancelled_end_says_so() {
        let (jobs, _) = jobs();
        let job = start(&jobs);
        let flag = job.cancel_flag();
        jobs.get(job.id()).unwrap().request_cancel().unwrap();
        assert!(flag.load(Ordering::SeqCst));
        job.finish(Err(CoreError::Cancelled("stopped before writing".into())));
        let st = jobs.get(job.id()).unwrap().status();
        assert_eq!(st.state, JobState::Cancelled);
        assert_eq!(st.message, "Cancelled: stopped before writing");
        let ok = start(&jobs);
        ok.finish(Ok("done".into()));
        let st = jobs.get(ok.id()).unwrap().status();
        assert_eq!((st.state, st.progress), (JobState::Succeeded, 1.0));
    }

    #[tokio::test]
    async fn the_job_table_is_bounded() {
        let (jobs, _) = jobs();
        let handles: Vec<JobHandle> = (0..MAX_JOBS).map(|_| start(&jobs)).collect();
        let refused = jobs.start(Operation::DeviceFlash, Target::Device("fpga0".into()), 0);
        assert!(matches!(refused, Err(CoreError::Busy(_))));
        assert_eq!(jobs.ids().len(), MAX_JOBS);
        drop(handles);
    }
}
