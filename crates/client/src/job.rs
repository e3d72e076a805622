//! Waiting for a job: follow its progress until it ends, and turn its end into a result.

use std::future::poll_fn;
use std::pin::Pin;

use zbus::export::futures_core::Stream;
use zbus::fdo::PropertiesProxy;
use zbus::proxy::CacheProperties;
use zbus::{Connection, ObjectPath};

use super::error::{job_failure, ClientError};
use super::proxy::JobProxy;
use accelgate_proto::names;
use accelgate_proto::AccelError;

/// A job's `State` once it has ended, or `None` while it runs.
fn outcome(state: &str, message: String) -> Option<Result<String, AccelError>> {
    match state {
        "running" => None,
        "succeeded" => Some(Ok(message)),
        "cancelled" => Some(Err(match job_failure(&message) {
            e @ AccelError::Cancelled(_) => e,
            _ => AccelError::Cancelled(message),
        })),
        "failed" => Some(Err(job_failure(&message))),
        other => Some(Err(AccelError::Failed(format!(
            "job ended in unknown state '{other}': {message}"
        )))),
    }
}

/// The next item of a stream (no `StreamExt` in our dependencies).
pub(crate) async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Waits for the job at `path` to end; calls `on_progress` with 0..1 as it moves. Returns the
/// job's final message, or its failure as the error kind its message names.
pub(crate) async fn wait(
    conn: &Connection,
    path: &ObjectPath<'_>,
    mut on_progress: impl FnMut(f64),
) -> Result<String, ClientError> {
    let job = JobProxy::builder(conn)
        .path(path.to_owned())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let properties = PropertiesProxy::builder(conn)
        .destination(names::BUS_NAME)
        .path(path.to_owned())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;

    // Subscribe first, then read the state: a job that ends in between is seen by the read,
    // one that ends later by the signals.
    let mut changes = properties.receive_properties_changed().await?;
    let mut completed = job.receive_completed().await?;
    let mut owner = job.inner().receive_owner_changed().await?;

    let state: String = job.state().await?;
    if let Some(result) = outcome(&state, job.message().await?) {
        return Ok(result?);
    }
    on_progress(job.progress().await?);

    loop {
        tokio::select! {
            signal = next(&mut completed) => {
                let Some(signal) = signal else { break };
                let args = signal.args()?;
                // The signal cannot tell failed from cancelled; the State property can, once
                // the daemon has set it.
                let state = match job.state().await {
                    Ok(state) if state != "running" => state,
                    _ if *args.success() => "succeeded".to_owned(),
                    _ => "failed".to_owned(),
                };
                let ended = outcome(&state, args.message().clone())
                    .unwrap_or_else(|| Err(AccelError::Failed(args.message().clone())));
                if ended.is_ok() {
                    on_progress(1.0);
                }
                return Ok(ended?);
            }
            change = next(&mut changes) => {
                let Some(change) = change else { break };
                let args = change.args()?;
                if args.interface_name().as_str() != names::JOB_INTERFACE {
                    continue;
                }
                if let Some(progress) = args.changed_properties().get("Progress") {
                    if let Ok(progress) = f64::try_from(progress) {
                        on_progress(progress);
                    }
                }
                let ended_state = args
                    .changed_properties()
                    .get("State")
                    .and_then(|state| String::try_from(state.try_to_owned().ok()?).ok())
                    .filter(|state| state != "running");
                if let Some(state) = ended_state {
                    if let Some(result) = outcome(&state, job.message().await?) {
                        if result.is_ok() {
                            on_progress(1.0);
                        }
                        return Ok(result?);
                    }
                }
            }
            new_owner = next(&mut owner) => {
                if matches!(new_owner, Some(Some(_))) {
                    continue;
                }
                return Err(AccelError::Failed(
                    "accelgated left the bus before the job ended".into(),
                )
                .into());
            }
        }
    }
    Err(AccelError::Failed("lost the job's signals before it ended".into()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_results() {
        assert!(outcome("running", String::new()).is_none());
        assert_eq!(
            outcome("succeeded", "loaded".into()).unwrap().unwrap(),
            "loaded"
        );
        let failed = outcome("failed", "Busy: slice in use".into()).unwrap();
        assert!(matches!(failed, Err(AccelError::Busy(m)) if m == "slice in use"));
        let cancelled = outcome("cancelled", "stopped by uid 0".into()).unwrap();
        assert!(matches!(cancelled, Err(AccelError::Cancelled(m)) if m == "stopped by uid 0"));
        let cancelled = outcome("cancelled", "Cancelled: by admin".into()).unwrap();
        assert!(matches!(cancelled, Err(AccelError::Cancelled(m)) if m == "by admin"));
        assert!(matches!(
            outcome("exploded", String::new()),
            Some(Err(AccelError::Failed(_)))
        ));
    }
}
