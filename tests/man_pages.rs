//! The man pages in `man/` against the programs: every `--flag` that `--help` prints
//! must be documented, and groff must format each page without a warning.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const MMAPD: &str = env!("CARGO_BIN_EXE_mmapd");
const MMAPD_ADMIN: &str = env!("CARGO_BIN_EXE_mmapd-admin");

fn help(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).arg("--help").output().expect("run --help");
    assert!(output.status.success(), "{program} {args:?} --help failed: {output:?}");
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// The `--long-flag` names in a help text.
fn long_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    for (start, _) in help.match_indices("--") {
        if start > 0 && !help[..start].ends_with(|c: char| c.is_whitespace() || c == ',' || c == '[') {
            continue;
        }
        let name: String =
            help[start + 2..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        if !name.is_empty() {
            flags.insert(name);
        }
    }
    flags
}

/// The subcommand names listed under "Commands:" in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

fn page(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn missing_flags(page_text: &str, flags: &BTreeSet<String>) -> Vec<String> {
    let roff_escaped = |name: &str| format!("\\-\\-{}", name.replace('-', "\\-"));
    flags
        .iter()
        .filter(|flag| !page_text.contains(&roff_escaped(flag)) && !page_text.contains(&format!("--{flag}")))
        .cloned()
        .collect()
}

#[test]
fn help_parser_finds_long_flags_only() {
    let flags = long_flags("  -p, --port <PORT>  the port\n  --data-dir <DIR>\n  a--b, [--json]\n");
    assert_eq!(flags, ["data-dir", "json", "port"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn mmapd_page_documents_every_flag_of_help() {
    let flags = long_flags(&help(MMAPD, &[]));
    assert!(flags.contains("port") && flags.contains("cluster-secret-file"), "parsed {flags:?}");
    let text = page("mmapd.8");
    let missing = missing_flags(&text, &flags);
    assert!(missing.is_empty(), "man/mmapd.8 lacks {missing:?}");
    for flag in &flags {
        if !["help", "version"].contains(&flag.as_str()) {
            let variable = format!("MMAPD_{}", flag.to_uppercase().replace('-', "_"));
            assert!(text.contains(&variable), "man/mmapd.8 lacks the variable {variable}");
        }
    }
}

#[test]
fn mmapd_admin_page_documents_every_flag_and_command_of_help() {
    let top = help(MMAPD_ADMIN, &[]);
    let mut flags = long_flags(&top);
    assert!(flags.contains("socket") && flags.contains("port"), "parsed {flags:?}");
    let commands = subcommands(&top);
    assert!(commands.contains(&"status".to_string()), "parsed {commands:?}");
    let text = page("mmapd-admin.8");
    for command in &commands {
        flags.extend(long_flags(&help(MMAPD_ADMIN, &[command])));
        let roff = command.replace('-', "\\-");
        assert!(text.contains(&roff), "man/mmapd-admin.8 lacks the command {command}");
    }
    let missing = missing_flags(&text, &flags);
    assert!(missing.is_empty(), "man/mmapd-admin.8 lacks {missing:?}");
}

#[test]
fn groff_formats_every_page_without_warnings() {
    if Command::new("groff").arg("--version").output().is_err() {
        eprintln!("groff is not installed: skipping the man page format check");
        return;
    }
    for name in ["mmapd.8", "mmapd-admin.8"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
        let output = Command::new("groff").args(["-man", "-ww", "-z"]).arg(&path).output().expect("groff");
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && warnings.trim().is_empty(), "groff on {name}: {warnings}");
    }
}
