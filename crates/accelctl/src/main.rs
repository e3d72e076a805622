//! accelctl: the command-line client of accelgated.

#![forbid(unsafe_code)]

mod commands;
mod docs;
mod monitor;
mod output;
mod parse;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use parse::{SliceArg, TargetArg};

#[derive(Debug, Parser)]
#[command(
    name = "accelctl",
    version,
    about = "Use and manage shared PCI accelerators through accelgated",
    after_help = "Numbers are decimal or 0x-prefixed hex. Exit codes: 0 ok, 1 error, 2 usage, \
                  3 not authorized, 4 not found, 5 the daemon left the bus (monitor)."
)]
pub struct Cli {
    /// Bus to use: "system", "session" or a D-Bus address
    #[arg(long, global = true, env = "ACCELGATE_BUS", value_name = "ADDRESS")]
    pub bus: Option<String>,
    /// Print JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the devices you may see
    Devices,
    /// List the slices of one device, or of all
    Slices {
        #[arg(value_parser = parse::device)]
        device: Option<String>,
    },
    /// Show a device or a slice in detail
    Show {
        #[arg(value_name = "DEVICE[/SLICE]", value_parser = parse::target)]
        target: TargetArg,
    },
    /// Show who the daemon thinks you are, and what you may do
    Whoami,
    /// Read registers of a slice
    Read {
        #[arg(value_name = "DEVICE/SLICE", value_parser = parse::slice)]
        slice: SliceArg,
        #[arg(value_parser = parse::number)]
        offset: u64,
        /// Number of registers
        #[arg(long, default_value = "1", value_parser = parse::number_u32)]
        count: u32,
        /// Register width in bytes: 1, 2, 4 or 8
        #[arg(long, default_value = "4", value_parser = parse::width)]
        width: u8,
    },
    /// Write registers of a slice, from OFFSET upward
    Write {
        #[arg(value_name = "DEVICE/SLICE", value_parser = parse::slice)]
        slice: SliceArg,
        #[arg(value_parser = parse::number)]
        offset: u64,
        #[arg(required = true, value_parser = parse::number)]
        values: Vec<u64>,
        /// Register width in bytes: 1, 2, 4 or 8
        #[arg(long, default_value = "4", value_parser = parse::width)]
        width: u8,
    },
    /// Map a slice's BAR and print its first 32-bit register
    MapTest {
        #[arg(value_name = "DEVICE/SLICE", value_parser = parse::slice)]
        slice: SliceArg,
        /// Also store this 32-bit value through the mapping, at --offset (needs a writable fd)
        #[arg(long, value_parser = parse::number)]
        write: Option<u64>,
        /// Byte offset of the --write store
        #[arg(long, default_value = "0", value_parser = parse::number)]
        offset: u64,
        /// Keep the mapping and repeat the store every 20 ms until killed (shows whether a
        /// mapping outlives its assignment)
        #[arg(long, requires = "write")]
        hold: bool,
        /// Then unmap but keep the fd, and map it again for each line read on standard input,
        /// printing what the kernel answered (shows whether an fd outlives its VF)
        #[arg(long, conflicts_with = "hold")]
        keep_fd: bool,
    },
    /// Load an application image into a slice
    Program {
        #[arg(value_name = "DEVICE/SLICE", value_parser = parse::slice)]
        slice: SliceArg,
        image: PathBuf,
    },
    /// Load a whole-device personality image
    Configure {
        #[arg(value_parser = parse::device)]
        device: String,
        image: PathBuf,
        /// Replace a personality even while slices are assigned
        #[arg(long)]
        force: bool,
    },
    /// Set the number of SR-IOV virtual functions
    Vfs {
        #[arg(value_parser = parse::device)]
        device: String,
        #[arg(value_parser = parse::number_u32)]
        count: u32,
        /// Remove VFs even if they are assigned
        #[arg(long)]
        force: bool,
    },
    /// Assign a slice to a tenant (user:NAME, group:NAME, uid:N, gid:N or a user name)
    Assign {
        #[arg(value_name = "DEVICE/SLICE", value_parser = parse::slice)]
        slice: SliceArg,
        tenant: String,
    },
    /// Take a slice back from its tenant (the daemon scrubs it)
    Release {
        #[arg(value_name = "DEVICE/SLICE", value_parser = parse::slice)]
        slice: SliceArg,
    },
    /// Device firmware
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// Role policy
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show recent audit records
    Audit {
        /// Number of records
        #[arg(long, default_value = "50", value_parser = parse::number_u32)]
        max: u32,
    },
    /// Follow the daemon live: devices and slices appearing and disappearing, assignments,
    /// images, VF counts, firmware state, jobs and their progress. One line per event (JSON
    /// lines with --json) until Ctrl-C, or until the daemon leaves the bus (exit code 5)
    Monitor,
    /// Write the man pages accelctl.1 and accelgate-policy.5 into DIR (packaging)
    #[command(name = "__man", hide = true)]
    Man { dir: PathBuf },
    /// Print the completion script for SHELL (packaging)
    #[command(name = "__completions", hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print device or slice names from the running daemon, one a line (for completions)
    #[command(name = "__complete-targets", hide = true)]
    CompleteTargets {
        #[arg(value_enum)]
        what: docs::TargetKind,
    },
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Write firmware to the device's flash
    Flash {
        #[arg(value_parser = parse::device)]
        device: String,
        image: PathBuf,
        /// minisign signature file of the image
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// Flash an image older than the active firmware although the policy refuses
        /// downgrades (admins only; never below the policy's min_version)
        #[arg(long)]
        force: bool,
    },
    /// Show the firmware version and lock
    Status {
        #[arg(value_parser = parse::device)]
        device: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file or directory offline (no daemon needed)
    Check { file: PathBuf },
    /// Ask the daemon to re-read its policy
    Reload,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("accelctl: cannot start the async runtime: {e}");
            return ExitCode::from(report::EXIT_ERROR);
        }
    };
    match runtime.block_on(commands::run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{}", failure.line());
            if let Some(hint) = failure.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_and_numbers_parse() {
        let cli = Cli::try_parse_from([
            "accelctl",
            "read",
            "fpga0/region0",
            "0x10",
            "--count",
            "4",
            "--width",
            "8",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        match cli.command {
            Command::Read {
                slice,
                offset,
                count,
                width,
            } => {
                assert_eq!(slice.to_string(), "fpga0/region0");
                assert_eq!((offset, count, width), (0x10, 4, 8));
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "accelctl",
            "--bus",
            "session",
            "firmware",
            "flash",
            "nic0",
            "fw.bin",
            "--signature",
            "fw.bin.minisig",
        ])
        .unwrap();
        assert_eq!(cli.bus.as_deref(), Some("session"));
        assert!(matches!(
            cli.command,
            Command::Firmware(FirmwareCommand::Flash {
                signature: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["accelctl", "read", "fpga0", "0"][..],
            &["accelctl", "read", "fpga0/r0", "zz"],
            &["accelctl", "read", "fpga0/r0", "0", "--width", "3"],
            &["accelctl", "write", "fpga0/r0", "0"],
            &["accelctl", "vfs", "nic-0", "4"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(report::EXIT_USAGE), "{args:?}");
        }
    }
}
