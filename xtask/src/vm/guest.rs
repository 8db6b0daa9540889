//! What runs inside the guest: PID 1 (`init.sh`, static busybox sh) and the job's script
//! (`/ct-trace-vm.sh`), which PID 1 runs chrooted into the host's `/` before it prints
//! `CT_TRACE_VM_EXIT=<code>` and powers off. Failures before the command print
//! `ct-trace-vm: error: ...` and power off without a report.

use std::{env, fmt::Write as _};

use anyhow::Result;

/// PID 1 of the guests.
pub(super) const INIT: &str = include_str!("init.sh");

/// The line `init.sh` prints after the command; the host parses the code from it.
pub(super) const MARKER: &str = "CT_TRACE_VM_EXIT=";

/// The guest's `/ct-trace-vm.sh`: in the current directory, with `env` exported, the commands
/// (argv each) in turn; its exit code is the last non-zero one, or 0.
pub fn script(env: &[(&str, String)], commands: &[Vec<String>]) -> Result<String> {
    let cwd = env::current_dir()?;
    let mut s = format!("cd {} 2>/dev/null || cd /\n", quote(&cwd.to_string_lossy()));
    for (k, v) in env {
        writeln!(s, "export {k}={}", quote(v))?;
    }
    let argv = |c: &Vec<String>| c.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    if let [command] = commands {
        writeln!(s, "exec {}", argv(command))?;
        return Ok(s);
    }
    s.push_str("rc=0\n");
    for c in commands {
        writeln!(s, "echo {}", quote(&format!("ct-trace-vm: $ {}", argv(c))))?;
        writeln!(s, "{} || rc=$?", argv(c))?;
    }
    s.push_str("exit $rc\n");
    Ok(s)
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(quote("uname"), "uname");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn init_reports_the_exit_code_the_host_parses() {
        assert!(INIT.starts_with("#!/bin/sh\n"));
        assert!(INIT.contains(&format!("echo \"{MARKER}$?\"")));
        assert!(INIT.contains("/ct-trace-vm.sh"));
    }
}
