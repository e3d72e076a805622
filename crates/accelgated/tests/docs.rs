//! Man pages and shell completions, generated as packaging generates them (`accelctl __man`,
//! `accelgated --man-page`, `accelctl __completions SHELL`): they parse (mandoc's lint, `man`,
//! `bash -n`, `zsh -n`, `fish -n`), name every command, and the completions offer device and
//! slice names from a running daemon (bash and fish, driven as the shells drive them).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use accelgate_testkit::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// The visible commands `accelctl --help` lists, with the subcommands of groups
/// (`firmware flash`).
fn commands() -> BTreeSet<String> {
    fn listed(args: &[&str]) -> Vec<String> {
        let help = stdout(Command::new(bin("accelctl")).args(args).arg("--help"));
        help.split("Commands:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no command list in {help}"))
            .lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_owned)
            .collect()
    }
    let mut all = BTreeSet::new();
    for c in listed(&[]) {
        if c == "firmware" || c == "policy" {
            for sub in listed(&[&c]) {
                all.insert(format!("{c} {sub}"));
            }
        } else {
            all.insert(c);
        }
    }
    assert!(
        all.contains("monitor") && all.contains("firmware flash"),
        "{all:?}"
    );
    all
}

fn render(page: &Path) -> String {
    let out = run(Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "200")
        .env("MAN_KEEP_FORMATTING", "0"));
    // Drop overstrike (bold) formatting if the pager left any.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn man_pages_lint_clean_and_cover_every_command() {
    let mandoc = require_binary("mandoc", "mandoc");
    require_binary("man", "man-db");
    let dir = test_dir("man");
    run(Command::new(bin("accelctl")).arg("__man").arg(&dir));
    let page = stdout(Command::new(bin("accelgated")).arg("--man-page"));
    fs::write(dir.join("accelgated.8"), page).unwrap();

    for name in ["accelctl.1", "accelgated.8", "accelgate-policy.5"] {
        let path = dir.join(name);
        let out = Command::new(&mandoc)
            .args(["-T", "lint", "-W", "warning"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "mandoc lint of {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let accelctl = render(&dir.join("accelctl.1"));
    for command in commands() {
        assert!(
            accelctl.contains(&format!("accelctl {command}")),
            "accelctl(1) has no section for {command}:\n{accelctl}"
        );
    }
    assert!(accelctl.contains("EXIT STATUS") && accelctl.contains("ACCELGATE_BUS"));

    let daemon = render(&dir.join("accelgated.8"));
    for option in [
        "--simulate",
        "--policy",
        "--state-dir",
        "--no-polkit",
        "FILES",
    ] {
        assert!(daemon.contains(option), "accelgated(8) lacks {option}");
    }
    let policy = render(&dir.join("accelgate-policy.5"));
    for key in [
        "[[device]]",
        "[[device.slice]]",
        "[[role]]",
        "scope",
        "caller_caps",
    ] {
        assert!(policy.contains(key), "accelgate-policy(5) lacks {key}");
    }
}

#[test]
fn completions_parse_and_complete_names_from_the_daemon() {
    let shells = [
        ("bash", require_binary("bash", "bash")),
        ("zsh", require_binary("zsh", "zsh")),
        ("fish", require_binary("fish", "fish")),
    ];
    let s = Stack::new("completions");
    let commands = commands();
    for (shell, program) in &shells {
        let script = stdout(Command::new(bin("accelctl")).args(["__completions", shell]));
        let path = s.dir.join(format!("accelctl.{shell}"));
        fs::write(&path, &script).unwrap();
        run(Command::new(program).arg("-n").arg(&path));
        for command in &commands {
            let last = command.split(' ').next_back().unwrap();
            assert!(script.contains(last), "{shell} completion lacks {command}");
        }
        assert!(
            !script.contains("__man"),
            "{shell} completion offers hidden commands"
        );
    }

    // Driven as the shells do, with accelctl on PATH and the daemon's bus in ACCELGATE_BUS.
    let bin_dir = bin("accelctl").parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let bash = |line: &str, cword: usize| {
        let script = format!(
            "source {}; COMP_WORDS=({line}); COMP_CWORD={cword}; _accelctl_with_targets accelctl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            s.dir.join("accelctl.bash").display()
        );
        let out = stdout(
            Command::new("bash")
                .args(["-c", &script])
                .env("PATH", &path)
                .env("ACCELGATE_BUS", &s.bus.address),
        );
        out.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    // The hidden command the scripts call.
    let names = stdout(
        Command::new(bin("accelctl"))
            .args(["__complete-targets", "all"])
            .env("ACCELGATE_BUS", &s.bus.address),
    );
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["fpga0", "fpga0/region0", "fpga0/region1", "nic0"],
        "{names}"
    );
    let slices = bash("accelctl read ''", 2);
    assert!(
        slices.contains(&"fpga0/region0".to_owned())
            && slices.contains(&"fpga0/region1".to_owned()),
        "{slices:?}"
    );
    assert!(!slices.contains(&"fpga0".to_owned()), "{slices:?}");
    assert_eq!(bash("accelctl vfs n", 2), vec!["nic0"]);
    assert_eq!(bash("accelctl firmware status f", 3), vec!["fpga0"]);
    // Past the first argument, and for options, clap's completion answers.
    let options = bash("accelctl read fpga0/region0 0 --w", 4);
    assert!(options.contains(&"--width".to_owned()), "{options:?}");

    let fish = |line: &str| {
        let script = format!(
            "source {}; complete -C '{line}'",
            s.dir.join("accelctl.fish").display()
        );
        let out = stdout(
            Command::new("fish")
                .args(["--no-config", "-c", &script])
                .env("PATH", &path)
                .env("ACCELGATE_BUS", &s.bus.address),
        );
        out.lines()
            .map(|l| l.split('\t').next().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let slices = fish("accelctl program fpga0/");
    assert!(slices.contains(&"fpga0/region0".to_owned()), "{slices:?}");
    let devices = fish("accelctl slices ");
    assert!(
        devices.contains(&"fpga0".to_owned()) && devices.contains(&"nic0".to_owned()),
        "{devices:?}"
    );
}
