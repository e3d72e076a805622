//! Reading and validating policy files. (Stub: replaced by the policy work.)

use std::path::Path;

use super::RolePolicy;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    #[error("cannot read {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl RolePolicy {
    /// Loads `PATH` (one file), or `PATH/policy.toml` plus `PATH/policy.d/*.toml` in name order
    /// when `PATH` is a directory.
    pub fn load(path: &Path) -> Result<RolePolicy, PolicyError> {
        Err(PolicyError::Invalid {
            file: path.display().to_string(),
            line: 0,
            message: "not implemented".into(),
        })
    }

    /// Parses one file's text; `name` is used in error messages.
    pub fn parse_str(text: &str, name: &str) -> Result<RolePolicy, PolicyError> {
        let _ = text;
        Err(PolicyError::Invalid {
            file: name.into(),
            line: 0,
            message: "not implemented".into(),
        })
    }
}
