//! Man pages and shell completions, generated from the same clap definitions as `--help`
//! (hidden subcommands `__man`, `__completions`, used by packaging), and the daemon's device
//! and slice names for the completion scripts (`__complete-targets`).

use std::io::Write;
use std::path::Path;

use accelgate_client::Client;
use clap::{Arg, ArgAction, Command, CommandFactory};

use crate::report::CliError;
use crate::Cli;

/// The hand-written page of the policy format.
const POLICY_PAGE: &str = include_str!("../../../man/accelgate-policy.5");

/// The date on the man pages: the release's.
const MAN_DATE: &str = "2026-11-30";

/// What `__complete-targets` lists.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TargetKind {
    Devices,
    Slices,
    /// Devices and slices.
    All,
}

/// Writes accelctl.1 and accelgate-policy.5 into `dir`.
pub fn write_man_pages(dir: &Path) -> Result<(), CliError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| CliError::WriteFile { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| CliError::WriteFile {
        path: dir.to_owned(),
        source,
    })?;
    write("accelctl.1", &accelctl_page().map_err(CliError::Output)?)?;
    write("accelgate-policy.5", POLICY_PAGE.as_bytes())
}

/// accelctl(1): the top level as clap_mangen renders it, then one subsection per command
/// (subcommands of `firmware` and `policy` included), from the same definitions.
pub fn accelctl_page() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .section("1")
        .date(MAN_DATE)
        .manual("accelgate");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    out.extend_from_slice(b".SH COMMANDS\n");
    for (path, sub) in commands(&cmd) {
        command_section(&mut out, &path, sub)?;
    }
    out.extend_from_slice(TAIL.as_bytes());
    Ok(out)
}

const TAIL: &str = r#".SH EXIT STATUS
.TP
.B 0
Success.
.TP
.B 1
An error (the line says which, a hint what to do).
.TP
.B 2
A usage error.
.TP
.B 3
Not authorized: the message names the gate that refused (role, caller\-caps, polkit).
.TP
.B 4
No such device, slice or job, or not one you may see.
.TP
.B 5
\fBmonitor\fR: the daemon left the bus, or was not on it.
.SH ENVIRONMENT
.TP
.B ACCELGATE_BUS
The bus to use when \fB\-\-bus\fR is not given: \fBsystem\fR (default), \fBsession\fR or a
D\-Bus address.
.SH SEE ALSO
.BR accelgated (8),
.BR accelgate-policy (5),
.BR pkaction (1),
.BR polkit (8)
"#;

/// Every visible command, leaves only, with its full name (`firmware flash`).
fn commands(cmd: &Command) -> Vec<(String, &Command)> {
    let mut found = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.has_subcommands() {
            for (name, leaf) in commands(sub) {
                found.push((format!("{} {name}", sub.get_name()), leaf));
            }
        } else {
            found.push((sub.get_name().to_owned(), sub));
        }
    }
    found
}

/// Text for roff: backslashes and hyphens escaped, no line starting with a control character.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn value_name(arg: &Arg) -> String {
    arg.get_value_names()
        .and_then(|names| names.first())
        .map(|n| n.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

fn command_section(out: &mut Vec<u8>, name: &str, cmd: &Command) -> std::io::Result<()> {
    let mut synopsis = format!("accelctl {name}");
    for arg in cmd.get_positionals() {
        let v = value_name(arg);
        let many = matches!(arg.get_action(), ArgAction::Append)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        let v = if many { format!("{v}...") } else { v };
        if arg.is_required_set() {
            synopsis.push_str(&format!(" {v}"));
        } else {
            synopsis.push_str(&format!(" [{v}]"));
        }
    }
    if cmd.get_opts().next().is_some() || cmd.get_arguments().any(|a| a.get_long().is_some()) {
        synopsis.push_str(" [OPTIONS]");
    }
    writeln!(out, ".SS \"{}\"", roff(&synopsis))?;
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    writeln!(out, "{}", roff(&about))?;
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long == "help" || long == "version" {
            continue;
        }
        let takes_value = !matches!(
            arg.get_action(),
            ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
        );
        writeln!(out, ".TP")?;
        if takes_value {
            writeln!(
                out,
                "\\fB\\-\\-{}\\fR \\fI{}\\fR",
                roff(long),
                roff(&value_name(arg))
            )?;
        } else {
            writeln!(out, "\\fB\\-\\-{}\\fR", roff(long))?;
        }
        let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && takes_value {
            help.push_str(&format!(" (default: {})", defaults.join(", ")));
        }
        writeln!(out, "{}", roff(&help))?;
    }
    Ok(())
}

/// The completion script for `shell`: clap_complete's, plus device and slice names from the
/// running daemon where a command takes one (bash, zsh and fish; other shells get clap's).
pub fn print_completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let script = completion_script(shell).map_err(CliError::Output)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(script.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

pub fn completion_script(shell: clap_complete::Shell) -> std::io::Result<String> {
    use clap_complete::Shell;
    // clap_complete offers hidden subcommands too: complete a copy without them.
    let full = Cli::command();
    let mut cmd = Command::new("accelctl")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    let mut generated = Vec::new();
    clap_complete::generate(shell, &mut cmd, "accelctl", &mut generated);
    let generated = String::from_utf8(generated).map_err(std::io::Error::other)?;
    Ok(match shell {
        Shell::Bash => format!("{generated}\n{BASH_TARGETS}"),
        Shell::Fish => format!("{generated}\n{FISH_TARGETS}"),
        Shell::Zsh => {
            // clap's script ends by calling or registering `_accelctl`; ours wraps it.
            let tail = generated
                .rfind("if [ \"$funcstack[1]\" = \"_accelctl\" ]")
                .ok_or_else(|| std::io::Error::other("unexpected zsh script from clap_complete"))?;
            let body = generated[..tail].replacen("_accelctl() {", "_accelctl_static() {", 1);
            format!("{body}\n{ZSH_TARGETS}")
        }
        _ => generated,
    })
}

/// Which positional a command line is at: the words after the program, options dropped
/// (`--bus` takes a value), must be exactly a command that takes a device or slice first.
/// Kept the same in the three shells.
const BASH_TARGETS: &str = r#"# Device and slice names from the running daemon (accelctl __complete-targets).
_accelctl_with_targets() {
    local cur=${COMP_WORDS[COMP_CWORD]} i word kind="" bus="" skip=0
    local -a rest=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if ((skip)); then skip=0; bus=$word; continue; fi
        case $word in
            --bus) skip=1 ;;
            -*) ;;
            *) rest+=("$word") ;;
        esac
    done
    case "${rest[*]}" in
        read|write|map-test|program|assign|release) kind=slices ;;
        slices|configure|vfs|"firmware flash"|"firmware status") kind=devices ;;
        show) kind=all ;;
    esac
    if [[ -n $kind && $cur != -* ]]; then
        COMPREPLY=($(compgen -W "$(accelctl ${bus:+--bus "$bus"} __complete-targets "$kind" 2>/dev/null)" -- "$cur"))
        return 0
    fi
    _accelctl "$@"
}
complete -F _accelctl_with_targets -o bashdefault -o default accelctl
"#;

const ZSH_TARGETS: &str = r#"# Device and slice names from the running daemon (accelctl __complete-targets).
_accelctl_with_targets() {
    local -a rest targets
    local w kind="" bus="" skip=0
    for w in "${(@)words[2,CURRENT-1]}"; do
        if (( skip )); then skip=0; bus=$w; continue; fi
        case $w in
            --bus) skip=1 ;;
            -*) ;;
            *) rest+=("$w") ;;
        esac
    done
    case "${rest[*]}" in
        read|write|map-test|program|assign|release) kind=slices ;;
        slices|configure|vfs|"firmware flash"|"firmware status") kind=devices ;;
        show) kind=all ;;
    esac
    if [[ -n $kind && $PREFIX != -* ]]; then
        targets=(${(f)"$(accelctl ${bus:+--bus "$bus"} __complete-targets $kind 2>/dev/null)"})
        compadd -a targets
        return
    fi
    _accelctl_static "$@"
}

if [ "$funcstack[1]" = "_accelctl" ]; then
    _accelctl_with_targets "$@"
else
    compdef _accelctl_with_targets accelctl
fi
"#;

const FISH_TARGETS: &str = r#"# Device and slice names from the running daemon (accelctl __complete-targets).
function __accelctl_wants --argument-names kind
    set -l words (commandline -opc)
    set -e words[1]
    set -l rest
    set -l skip 0
    for w in $words
        if test $skip -eq 1
            set skip 0
            continue
        end
        switch $w
            case --bus
                set skip 1
            case '-*'
            case '*'
                set rest $rest $w
        end
    end
    switch "$rest"
        case read write map-test program assign release
            test $kind = slices
        case slices configure vfs 'firmware flash' 'firmware status'
            test $kind = devices
        case show
            test $kind = all
        case '*'
            return 1
    end
end
complete -c accelctl -f -n '__accelctl_wants slices' -a '(accelctl __complete-targets slices 2>/dev/null)'
complete -c accelctl -f -n '__accelctl_wants devices' -a '(accelctl __complete-targets devices 2>/dev/null)'
complete -c accelctl -f -n '__accelctl_wants all' -a '(accelctl __complete-targets all 2>/dev/null)'
"#;

/// Prints device or slice names, one a line; nothing (and success) when the daemon cannot be
/// reached, so a completion never prints an error into the command line.
pub async fn complete_targets(client: &Client, what: TargetKind) -> Result<(), CliError> {
    let Ok(devices) = client.devices().await else {
        return Ok(());
    };
    let mut names = Vec::new();
    for device in &devices {
        if matches!(what, TargetKind::Devices | TargetKind::All) {
            names.push(device.id.clone());
        }
        if matches!(what, TargetKind::Slices | TargetKind::All) {
            if let Ok(slices) = client.slices(&device.id).await {
                names.extend(slices.iter().map(|s| format!("{}/{}", device.id, s.id)));
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    for name in names {
        writeln!(stdout, "{name}").map_err(CliError::Output)?;
    }
    stdout.flush().map_err(CliError::Output)
}
