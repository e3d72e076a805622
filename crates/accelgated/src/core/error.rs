//! The engine's error: a kind (the contract the D-Bus layer maps to an error name) and the
//! failure with its causes. The D-Bus layer turns it into `AccelError` at one boundary.

use accelgate_hw::{FwUploadError, WindowError};
use accelgate_proto::ErrorKind;

use super::firmware::FlashError;
use super::image::ImageError;
use super::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{0}")]
    NotAuthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    VerificationFailed(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Failed(String),
    /// A register access the window refused (range, alignment, width, count).
    #[error(transparent)]
    Window(#[from] WindowError),
    /// An image fd the daemon will not read (type, seals, size).
    #[error("image refused")]
    Image(#[source] ImageError),
    /// The state file could not be written; nothing was changed.
    #[error("cannot persist state; nothing was changed")]
    State(#[source] StateError),
    /// An image loader (firmware-upload entry) failed.
    #[error("loader {loader}")]
    Upload {
        loader: String,
        #[source]
        source: FwUploadError,
    },
    /// A firmware flash failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// A worker thread died.
    #[error("a worker task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl CoreError {
    /// The kind the caller sees.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CoreError::NotAuthorized(_) => ErrorKind::NotAuthorized,
            CoreError::NotFound(_) => ErrorKind::NotFound,
            CoreError::InvalidArgument(_) | CoreError::Window(_) | CoreError::Image(_) => {
                ErrorKind::InvalidArgument
            }
            CoreError::Busy(_) => ErrorKind::Busy,
            CoreError::Locked(_) => ErrorKind::Locked,
            CoreError::VerificationFailed(_) => ErrorKind::VerificationFailed,
            CoreError::Cancelled(_) => ErrorKind::Cancelled,
            CoreError::Failed(_) | CoreError::State(_) | CoreError::Task(_) => ErrorKind::Failed,
            CoreError::Upload { source, .. } => match source {
                FwUploadError::Cancelled => ErrorKind::Cancelled,
                FwUploadError::Busy(_) => ErrorKind::Busy,
                _ => ErrorKind::Failed,
            },
            CoreError::Flash(f) => f.kind(),
        }
    }

    /// An error of `kind` with `message` (a refusal reworded, keeping its kind).
    pub fn of_kind(kind: ErrorKind, message: String) -> CoreError {
        match kind {
            ErrorKind::NotAuthorized => CoreError::NotAuthorized(message),
            ErrorKind::NotFound => CoreError::NotFound(message),
            ErrorKind::InvalidArgument => CoreError::InvalidArgument(message),
            ErrorKind::Busy => CoreError::Busy(message),
            ErrorKind::Locked => CoreError::Locked(message),
            ErrorKind::VerificationFailed => CoreError::VerificationFailed(message),
            ErrorKind::Cancelled => CoreError::Cancelled(message),
            ErrorKind::Failed => CoreError::Failed(message),
        }
    }

    /// What the caller is told: the error and its causes on one line. Denials say no more
    /// than their own message (the reason is in the audit log).
    pub fn message(&self) -> String {
        match self {
            CoreError::NotAuthorized(m) => m.clone(),
            CoreError::Upload {
                source: FwUploadError::Cancelled,
                ..
            } => "cancelled before anything was programmed".into(),
            _ => error_chain(self),
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
