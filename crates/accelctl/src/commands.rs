//! One function per subcommand: call the client, print the result as a table or as JSON.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;

use accelgate_client::Operation;
use accelgate_client::OwnedObjectPath;
use accelgate_client::{Client, ClientError, DeviceInfo, JobOutcome, SealedImage, SliceInfo};
use accelgate_hw::{Access, SliceWindow, Width};
use accelgate_policy::RolePolicy;
use serde::Serialize;
use serde_json::json;

use crate::output::{self, fields, hex, or_dash, table, ProgressBar};
use crate::parse::{self, SliceArg, TargetArg};
use crate::report::{CliError, Failure};
use crate::{Cli, Command, FirmwareCommand, PolicyCommand};

/// What a command is doing (for error lines) and the operation it needs (for hints).
pub fn describe(command: &Command) -> (String, Option<Operation>) {
    use Operation::*;
    match command {
        Command::Devices => ("devices".into(), None),
        Command::Slices { device } => (
            format!("slices {}", device.as_deref().unwrap_or(""))
                .trim_end()
                .into(),
            None,
        ),
        Command::Show { target } => (format!("show {}", target_name(target)), None),
        Command::Whoami => ("whoami".into(), None),
        Command::Read { slice, .. } => (format!("read {slice}"), Some(SliceRead)),
        Command::Write { slice, .. } => (format!("write {slice}"), Some(SliceWrite)),
        Command::MapTest { slice, .. } => (format!("map-test {slice}"), Some(SliceMap)),
        Command::Program { slice, .. } => (format!("program {slice}"), Some(SliceProgram)),
        Command::Configure { device, .. } => (format!("configure {device}"), Some(DeviceConfigure)),
        Command::Vfs { device, .. } => (format!("vfs {device}"), Some(DeviceConfigure)),
        Command::Assign { slice, .. } => (format!("assign {slice}"), Some(SliceAssign)),
        Command::Release { slice } => (format!("release {slice}"), Some(SliceAssign)),
        Command::Firmware(FirmwareCommand::Flash { device, .. }) => {
            (format!("firmware flash {device}"), Some(DeviceFlash))
        }
        Command::Firmware(FirmwareCommand::Status { device }) => {
            (format!("firmware status {device}"), None)
        }
        Command::Policy(PolicyCommand::Check { file }) => {
            (format!("policy check {}", file.display()), None)
        }
        Command::Policy(PolicyCommand::Reload) => ("policy reload".into(), Some(PolicyReload)),
        Command::Audit { .. } => ("audit".into(), Some(PolicyReload)),
        Command::Monitor => ("monitor".into(), None),
        Command::Man { dir } => (format!("__man {}", dir.display()), None),
        Command::Completions { shell } => (format!("__completions {shell}"), None),
        Command::CompleteTargets { .. } => ("__complete-targets".into(), None),
    }
}

fn target_name(target: &TargetArg) -> String {
    match target {
        TargetArg::Device(device) => device.clone(),
        TargetArg::Slice(slice) => slice.to_string(),
    }
}

pub async fn run(cli: &Cli) -> Result<(), Failure> {
    let (what, operation) = describe(&cli.command);
    dispatch(cli).await.map_err(|error| Failure {
        what,
        operation,
        error,
    })
}

async fn dispatch(cli: &Cli) -> Result<(), CliError> {
    let json = cli.json;
    // The one command that needs no daemon.
    match &cli.command {
        Command::Policy(PolicyCommand::Check { file }) => return policy_check(file, json),
        Command::Man { dir } => return crate::docs::write_man_pages(dir),
        Command::Completions { shell } => return crate::docs::print_completions(*shell),
        _ => {}
    }
    let mut client = Client::connect(cli.bus.as_deref()).await?;
    // With a terminal, the user's polkit agent can ask for a password.
    client.set_interactive(std::io::stdin().is_terminal());
    let client = &client;

    match &cli.command {
        Command::Devices => devices(client, json).await,
        Command::Slices { device } => slices(client, device.as_deref(), json).await,
        Command::Show { target } => show(client, target, json).await,
        Command::Whoami => whoami(client, json).await,
        Command::Read {
            slice,
            offset,
            count,
            width,
        } => read(client, slice, *offset, *count, *width, json).await,
        Command::Write {
            slice,
            offset,
            values,
            width,
        } => write(client, slice, *offset, values, *width, json).await,
        Command::MapTest {
            slice,
            write,
            offset,
            hold,
            keep_fd,
        } => map_test(client, slice, *write, *offset, (*hold, *keep_fd), json).await,
        Command::Program { slice, image } => {
            let image = SealedImage::from_path(image)?;
            let job = client.program(&slice.device, &slice.slice, &image).await?;
            follow_job(client, format!("program {slice}"), job, json).await
        }
        Command::Configure {
            device,
            image,
            force,
        } => {
            let image = SealedImage::from_path(image)?;
            let job = client.configure(device, &image, *force).await?;
            follow_job(client, format!("configure {device}"), job, json).await
        }
        Command::Vfs {
            device,
            count,
            force,
        } => {
            client.set_vf_count(device, *count, *force).await?;
            let result = json!({ "device": device, "num_vfs": count });
            emit(json, &result, || format!("{device}: {count} VFs\n"))
        }
        Command::Assign { slice, tenant } => {
            client.assign(&slice.device, &slice.slice, tenant).await?;
            let result = json!({ "slice": slice.to_string(), "tenant": tenant });
            emit(json, &result, || format!("{slice} assigned to {tenant}\n"))
        }
        Command::Release { slice } => {
            client.release(&slice.device, &slice.slice).await?;
            let result = json!({ "slice": slice.to_string(), "tenant": "" });
            emit(json, &result, || format!("{slice} released\n"))
        }
        Command::Firmware(FirmwareCommand::Flash {
            device,
            image,
            signature,
            force,
        }) => {
            let image = SealedImage::from_path(image)?;
            let signature = match signature {
                Some(path) => {
                    Some(std::fs::read(path).map_err(|source| ClientError::ReadFile {
                        path: path.clone(),
                        source,
                    })?)
                }
                None => None,
            };
            let job = client
                .flash_with(device, &image, signature.as_deref(), *force)
                .await?;
            follow_job(client, format!("firmware flash {device}"), job, json).await
        }
        Command::Firmware(FirmwareCommand::Status { device }) => {
            let d = client.device(device).await?;
            let result = json!({
                "device": d.id,
                "firmware_version": d.firmware_version,
                "firmware_locked": d.firmware_locked,
                "firmware_active_slot": d.firmware_active_slot,
                "firmware_state": d.firmware_state,
                "firmware_last_result": d.firmware_last_result,
            });
            emit(json, &result, || {
                fields(&[
                    ("device", d.id.clone()),
                    ("firmware version", or_dash(&d.firmware_version)),
                    ("active slot", or_dash(&d.firmware_active_slot)),
                    ("state", or_dash(&d.firmware_state)),
                    ("last result", or_dash(&d.firmware_last_result)),
                    ("firmware locked", yes_no(d.firmware_locked)),
                ])
            })
        }
        Command::Policy(PolicyCommand::Reload) => {
            client.reload_policy().await?;
            // The reload succeeded; failing to read the new revision is not worth an error.
            let revision = client.policy_revision().await.unwrap_or_default();
            let result = json!({ "reloaded": true, "revision": revision });
            emit(json, &result, || {
                format!("policy reloaded, revision {}\n", or_dash(&revision))
            })
        }
        Command::Policy(PolicyCommand::Check { file }) => policy_check(file, json),
        Command::Audit { max } => audit(client, *max, json).await,
        Command::Monitor => crate::monitor::run(client, json).await,
        Command::CompleteTargets { what } => crate::docs::complete_targets(client, *what).await,
        Command::Man { dir } => crate::docs::write_man_pages(dir),
        Command::Completions { shell } => crate::docs::print_completions(*shell),
    }
}

/// Prints `value` as JSON, or the human text.
fn emit(
    json: bool,
    value: &impl Serialize,
    human: impl FnOnce() -> String,
) -> Result<(), CliError> {
    let text = if json {
        let mut text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
        text.push('\n');
        text
    } else {
        human()
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

async fn devices(client: &Client, json: bool) -> Result<(), CliError> {
    let devices = client.devices().await?;
    emit(json, &devices, || {
        let rows: Vec<Vec<String>> = devices.iter().map(device_row).collect();
        table(
            &[
                "DEVICE", "PCI", "KIND", "ID", "DRIVER", "VFS", "FIRMWARE", "SLICES",
            ],
            &rows,
        )
    })
}

fn device_row(d: &DeviceInfo) -> Vec<String> {
    vec![
        d.id.clone(),
        d.pci_address.clone(),
        or_dash(&d.kind),
        format!("{:04x}:{:04x}", d.vendor_id, d.product_id),
        or_dash(&d.driver),
        format!("{}/{}", d.num_vfs, d.total_vfs),
        or_dash(&d.firmware_version),
        d.slices.len().to_string(),
    ]
}

async fn slices(client: &Client, device: Option<&str>, json: bool) -> Result<(), CliError> {
    let slices = match device {
        Some(device) => client.slices(device).await?,
        None => {
            let mut all = Vec::new();
            for device in client.devices().await? {
                all.extend(client.slices(&device.id).await?);
            }
            all
        }
    };
    emit(json, &slices, || {
        let rows: Vec<Vec<String>> = slices.iter().map(slice_row).collect();
        table(
            &["SLICE", "KIND", "SIZE", "MAPPABLE", "TENANT", "IMAGE"],
            &rows,
        )
    })
}

fn slice_row(s: &SliceInfo) -> Vec<String> {
    vec![
        format!("{}/{}", s.device, s.id),
        s.kind.clone(),
        output::size(s.size),
        yes_no(s.mappable),
        or_dash(&s.tenant),
        output::short_hash(&s.image_sha256),
    ]
}

async fn show(client: &Client, target: &TargetArg, json: bool) -> Result<(), CliError> {
    match target {
        TargetArg::Device(device) => {
            let d = client.device(device).await?;
            emit(json, &d, || {
                fields(&[
                    ("device", d.id.clone()),
                    ("pci address", d.pci_address.clone()),
                    ("kind", or_dash(&d.kind)),
                    (
                        "vendor:product",
                        format!("{:04x}:{:04x}", d.vendor_id, d.product_id),
                    ),
                    ("driver", or_dash(&d.driver)),
                    ("vfs", format!("{} of {}", d.num_vfs, d.total_vfs)),
                    ("firmware version", or_dash(&d.firmware_version)),
                    ("firmware locked", yes_no(d.firmware_locked)),
                    ("personality sha256", or_dash(&d.personality_sha256)),
                    ("slices", or_dash(&d.slices.join(", "))),
                ])
            })
        }
        TargetArg::Slice(slice) => {
            let s = client.slice(&slice.device, &slice.slice).await?;
            emit(json, &s, || {
                let writable: Vec<String> = s
                    .writable
                    .iter()
                    .map(|(start, end)| format!("{start:#x}..{end:#x}"))
                    .collect();
                fields(&[
                    ("slice", format!("{}/{}", s.device, s.id)),
                    ("kind", s.kind.clone()),
                    ("size", format!("{} ({:#x})", output::size(s.size), s.size)),
                    ("mappable", yes_no(s.mappable)),
                    ("writable", or_dash(&writable.join(", "))),
                    ("tenant", or_dash(&s.tenant)),
                    ("image sha256", or_dash(&s.image_sha256)),
                ])
            })
        }
    }
}

async fn whoami(client: &Client, json: bool) -> Result<(), CliError> {
    let me = client.who_am_i().await?;
    emit(json, &me, || {
        fields(&[
            ("uid", me.uid.to_string()),
            ("roles", or_dash(&me.roles.join(", "))),
            ("operations", or_dash(&me.operations.join(", "))),
        ])
    })
}

#[derive(Serialize)]
struct Register {
    offset: u64,
    value: u64,
}

async fn read(
    client: &Client,
    slice: &SliceArg,
    offset: u64,
    count: u32,
    width: u8,
    json: bool,
) -> Result<(), CliError> {
    let values = client
        .read(&slice.device, &slice.slice, offset, count, width)
        .await?;
    let registers: Vec<Register> = values
        .iter()
        .zip(0u64..)
        .map(|(&value, i)| Register {
            offset: offset.wrapping_add(i * u64::from(width)),
            value,
        })
        .collect();
    emit(json, &registers, || {
        registers
            .iter()
            .map(|r| format!("{}  {}\n", hex(r.offset, 4), hex(r.value, width)))
            .collect()
    })
}

async fn write(
    client: &Client,
    slice: &SliceArg,
    offset: u64,
    values: &[u64],
    width: u8,
    json: bool,
) -> Result<(), CliError> {
    if let Some(value) = values.iter().find(|&&v| !parse::fits(v, width)) {
        return Err(CliError::Usage(format!(
            "value {value:#x} does not fit in {width} byte(s); use --width"
        )));
    }
    client
        .write(&slice.device, &slice.slice, offset, values, width)
        .await?;
    let result = json!({ "slice": slice.to_string(), "offset": offset, "written": values.len() });
    emit(json, &result, || {
        format!(
            "wrote {} register(s) at {offset:#x} in {slice}\n",
            values.len()
        )
    })
}

/// Proves that `Map` hands out a usable fd: map it and read the first register.
async fn map_test(
    client: &Client,
    slice: &SliceArg,
    write: Option<u64>,
    offset: u64,
    (hold, keep_fd): (bool, bool),
    json: bool,
) -> Result<(), CliError> {
    let fd = client.map(&slice.device, &slice.slice).await?;
    let file_len = nix::sys::stat::fstat(fd.as_fd())
        .map_err(CliError::Map)?
        .st_size;
    let file_len = u64::try_from(file_len).unwrap_or(0);
    if file_len < 4 {
        return Err(CliError::MapTooSmall(file_len));
    }
    // The same window code the daemon uses; writable only when asked to store a value (the
    // daemon hands out a read-only fd to whoever may not write the whole BAR).
    let access = if write.is_some() {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let window = SliceWindow::map_fd(
        fd.as_fd(),
        std::path::Path::new("the mapped BAR"),
        0,
        file_len.min(4096),
        access,
    )
    .map_err(CliError::Window)?;
    if let Some(value) = write {
        loop {
            window
                .write(offset, &[value], Width::U32)
                .map_err(CliError::Window)?;
            if !hold {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let value = window.read(0, 1, Width::U32).map_err(CliError::Window)?[0];

    let result = json!({ "slice": slice.to_string(), "size": file_len, "value": value });
    emit(json, &result, || {
        format!(
            "{slice}: mapped {} bytes, first register {}\n",
            file_len,
            hex(value, 4)
        )
    })?;
    if keep_fd {
        drop(window);
        remap_on_each_line(fd.as_fd(), file_len.min(4096), access)?;
    }
    Ok(())
}

/// `map-test --keep-fd`: the mapping is gone, the fd stays; each line on standard input maps
/// the fd again and says what the kernel answered. A revocation ends mappings, not fds: this
/// shows what a former tenant that kept its fd could still reach, e.g. after the VFs were
/// recreated (the kernel refuses operations on a removed sysfs file's fds).
fn remap_on_each_line(
    fd: std::os::fd::BorrowedFd<'_>,
    len: u64,
    access: Access,
) -> Result<(), CliError> {
    let mut line = String::new();
    let mut out = std::io::stdout().lock();
    loop {
        line.clear();
        if std::io::stdin()
            .read_line(&mut line)
            .map_err(CliError::Stdin)?
            == 0
        {
            return Ok(());
        }
        let answer = match SliceWindow::map_fd(fd, Path::new("the kept fd"), 0, len, access) {
            Ok(window) => match window.read(0, 1, Width::U32) {
                Ok(v) => format!("remap: mapped, first register {}", hex(v[0], 4)),
                Err(e) => format!("remap: mapped, read failed: {e}"),
            },
            Err(e) => {
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    why.push_str(&format!(": {inner}"));
                    source = inner.source();
                }
                format!("remap: refused: {why}")
            }
        };
        writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .map_err(CliError::Output)?;
    }
}

async fn follow_job(
    client: &Client,
    label: String,
    job: OwnedObjectPath,
    json: bool,
) -> Result<(), CliError> {
    let mut bar = ProgressBar::new(label.clone(), std::io::stderr().is_terminal());
    let result = client.wait_job(&job, |p| bar.update(p)).await;
    bar.finish();
    let outcome = JobOutcome {
        job: job.to_string(),
        message: result?,
    };
    emit(json, &outcome, || {
        let message = if outcome.message.is_empty() {
            "done"
        } else {
            &outcome.message
        };
        format!("{label}: {message}\n")
    })
}

fn policy_check(path: &Path, json: bool) -> Result<(), CliError> {
    let policy = RolePolicy::load(path)?;
    let slice_count = |d: &accelgate_policy::DevicePolicy| {
        d.slices.len() + d.vfs.as_ref().map_or(0, |v| v.max as usize)
    };
    let result = json!({
        "ok": true,
        "revision": policy.revision,
        "sources": policy.sources,
        "devices": policy.devices.iter().map(|d| json!({
            "id": d.id,
            "pci": d.pci,
            "kind": d.kind,
            "slices": d.slices.iter().map(|s| &s.id).collect::<Vec<_>>(),
            "vfs": d.vfs.as_ref().map_or(0, |v| v.max),
        })).collect::<Vec<_>>(),
        "roles": policy.roles.iter().map(|r| json!({
            "id": r.id,
            "operations": r.operations.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    emit(json, &result, || {
        let devices: Vec<String> = policy
            .devices
            .iter()
            .map(|d| format!("{} ({} slices)", d.id, slice_count(d)))
            .collect();
        let roles: Vec<&str> = policy.roles.iter().map(|r| r.id.as_str()).collect();
        let sources: Vec<String> = policy
            .sources
            .iter()
            .map(|s| s.display().to_string())
            .collect();
        format!(
            "{}: ok\n{}",
            path.display(),
            fields(&[
                ("files", or_dash(&sources.join(", "))),
                ("devices", or_dash(&devices.join(", "))),
                ("roles", or_dash(&roles.join(", "))),
                ("revision", or_dash(&policy.revision)),
            ])
        )
    })
}

async fn audit(client: &Client, max: u32, json: bool) -> Result<(), CliError> {
    let lines = client.audit_log(max).await?;
    // Records are JSON objects; one that is not stays a string rather than being lost.
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| line.clone().into()))
        .collect();
    emit(json, &records, || {
        lines.iter().map(|line| format!("{line}\n")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn describe_args(args: &[&str]) -> (String, Option<Operation>) {
        describe(&Cli::try_parse_from(args).unwrap().command)
    }

    #[test]
    fn commands_name_their_target_and_operation() {
        assert_eq!(
            describe_args(&["accelctl", "firmware", "flash", "nic0", "fw.bin"]),
            ("firmware flash nic0".into(), Some(Operation::DeviceFlash))
        );
        assert_eq!(
            describe_args(&["accelctl", "map-test", "nic0/vf2"]),
            ("map-test nic0/vf2".into(), Some(Operation::SliceMap))
        );
        assert_eq!(
            describe_args(&["accelctl", "slices"]),
            ("slices".into(), None)
        );
        assert_eq!(
            describe_args(&["accelctl", "release", "a/b"]).1,
            Some(Operation::SliceAssign)
        );
    }

    #[test]
    fn device_and_slice_rows() {
        let d = DeviceInfo {
            id: "fpga0".into(),
            pci_address: "0000:3b:00.0".into(),
            vendor_id: 0x8086,
            product_id: 0xbcc,
            kind: "fpga".into(),
            driver: String::new(),
            num_vfs: 2,
            total_vfs: 8,
            firmware_version: "1.2".into(),
            firmware_active_slot: String::new(),
            firmware_state: String::new(),
            firmware_last_result: String::new(),
            firmware_locked: false,
            personality_sha256: String::new(),
            slices: vec!["region0".into(), "vf0".into()],
        };
        assert_eq!(
            device_row(&d),
            [
                "fpga0",
                "0000:3b:00.0",
                "fpga",
                "8086:0bcc",
                "-",
                "2/8",
                "1.2",
                "2"
            ]
        );
        let s = SliceInfo {
            device: "fpga0".into(),
            id: "region0".into(),
            kind: "region".into(),
            size: 0x10000,
            mappable: false,
            writable: vec![(0, 0x100)],
            tenant: "user:alice".into(),
            image_sha256: String::new(),
        };
        assert_eq!(
            slice_row(&s),
            ["fpga0/region0", "region", "64K", "no", "user:alice", "-"]
        );
    }
}
