//! `accelctl monitor`: prints the client library's event stream, one line per event.

use std::io::Write;

use accelgate_client::{Client, MonitorEvent};

use crate::report::CliError;

/// Follows the daemon until Ctrl-C (or SIGTERM), which ends cleanly, or until the daemon
/// leaves the bus, which is an error of its own (exit code 5).
pub async fn run(client: &Client, json: bool) -> Result<(), CliError> {
    // Subscribe before asking whether the daemon is there, so nothing falls in between.
    let mut monitor = client.monitor().await?;
    if !client.daemon_running().await? {
        return Err(CliError::DaemonGone("accelgated is not on the bus"));
    }
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    // On stderr, so that stdout holds events only; a script (or test) waits for it to know
    // the subscription is in place.
    eprintln!("accelctl: monitoring accelgated; Ctrl-C to stop");
    loop {
        let event = tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            event = monitor.next() => event?,
        };
        let Some(event) = event else {
            return Err(CliError::DaemonGone("the connection to the bus closed"));
        };
        print_event(&event, json)?;
        if event == MonitorEvent::DaemonGone {
            return Err(CliError::DaemonGone("accelgated left the bus"));
        }
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, CliError> {
    tokio::signal::unix::signal(kind).map_err(CliError::Output)
}

fn print_event(event: &MonitorEvent, json: bool) -> Result<(), CliError> {
    let line = if json {
        serde_json::to_string(event).map_err(|e| CliError::Output(std::io::Error::other(e)))?
    } else {
        event.to_string()
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}
