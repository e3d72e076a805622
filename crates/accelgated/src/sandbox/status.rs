//! What the kernel says about a thread's confinement, from `/proc/<pid>/task/<tid>/status`.
//!
//! This is the ground truth the tests compare against, and what [`super::capabilities`] polls
//! to know when every thread has dropped its capabilities.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// The confinement-relevant fields of one thread's status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadStatus {
    pub tid: i32,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u8,
}

/// The status of every thread of process `pid` (`None`: this process). Threads that exit
/// while the list is read are left out.
pub fn read_thread_status(pid: Option<i32>) -> Result<Vec<ThreadStatus>, SandboxError> {
    let task_dir = match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}/task")),
        None => PathBuf::from("/proc/self/task"),
    };
    let entries = fs::read_dir(&task_dir).map_err(|source| SandboxError::Proc {
        path: task_dir.clone(),
        source,
    })?;
    let mut threads = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| SandboxError::Proc {
            path: task_dir.clone(),
            source,
        })?;
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let path = entry.path().join("status");
        match fs::read_to_string(&path) {
            Ok(text) => threads.push(parse_status(tid, &text, &path)?),
            // The thread exited between listing and reading.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::libc::ESRCH) => {}
            Err(source) => return Err(SandboxError::Proc { path, source }),
        }
    }
    Ok(threads)
}

fn parse_status(tid: i32, text: &str, path: &Path) -> Result<ThreadStatus, SandboxError> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or_else(|| SandboxError::ProcFormat {
                path: path.to_path_buf(),
                field: name.to_owned(),
            })
    };
    let hex = |name: &str| {
        let value = field(name)?;
        u64::from_str_radix(value, 16).map_err(|_| SandboxError::ProcFormat {
            path: path.to_path_buf(),
            field: name.to_owned(),
        })
    };
    let dec = |name: &str| {
        field(name)?
            .parse::<u8>()
            .map_err(|_| SandboxError::ProcFormat {
                path: path.to_path_buf(),
                field: name.to_owned(),
            })
    };
    Ok(ThreadStatus {
        tid,
        cap_inh: hex("CapInh")?,
        cap_prm: hex("CapPrm")?,
        cap_eff: hex("CapEff")?,
        cap_bnd: hex("CapBnd")?,
        cap_amb: hex("CapAmb")?,
        no_new_privs: dec("NoNewPrivs")? == 1,
        seccomp: dec("Seccomp")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\taccelgated\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t2\n\
        CapInh:\t0000000000000000\nCapPrm:\t0000000000200000\nCapEff:\t0000000000200000\n\
        CapBnd:\t0000000000200000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn parses_the_confinement_fields() {
        let status = parse_status(7, SAMPLE, Path::new("x")).unwrap();
        assert_eq!(
            status,
            ThreadStatus {
                tid: 7,
                cap_inh: 0,
                cap_prm: 1 << 21,
                cap_eff: 1 << 21,
                cap_bnd: 1 << 21,
                cap_amb: 0,
                no_new_privs: true,
                seccomp: 2,
            }
        );
    }

    #[test]
    fn a_missing_field_is_an_error() {
        let text = SAMPLE.replace("CapBnd", "CapXyz");
        assert!(matches!(
            parse_status(1, &text, Path::new("x")),
            Err(SandboxError::ProcFormat { field, .. }) if field == "CapBnd"
        ));
    }

    #[test]
    fn reads_this_process() {
        let threads = read_thread_status(None).unwrap();
        let me = nix::unistd::gettid().as_raw();
        assert!(threads.iter().any(|t| t.tid == me));
    }
}
