//! The node's own netfilter tools (`iptables-save`, `ip6tables-save`, `nft`), run the same way
//! for the doctor and for Service names: their output, or why there is none. A ruleset that
//! could not be read is never reported as an empty one: without CAP_NET_ADMIN both tools fail
//! ("Permission denied (you must be root)", "Operation not permitted"), and a missing binary
//! reads nothing.

use std::{
    io,
    process::{Command, Stdio},
};

use serde::Serialize;

/// At most this much of a tool's error is kept: its first line says what went wrong.
const MAX_ERROR: usize = 200;

/// What a tool printed when it succeeded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reading {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// `cmd args` as one word for messages: `` `nft list ruleset` ``.
pub fn shown(cmd: &str, args: &[&str]) -> String {
    format!("`{cmd} {}`", args.join(" "))
}

/// Runs `cmd args` (stdin closed); `Err` says why there is no output: not installed, could not
/// run, or its exit status and the first line of its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<Reading, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!("{cmd} is not installed"),
            _ => format!("{cmd} could not run: {e}"),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Ok(Reading {
            stdout: out.stdout,
            stderr,
        });
    }
    Err(failure(&out.status.to_string(), &stderr))
}

/// `exit status N: first line of stderr`, bounded.
pub fn failure(status: &str, stderr: &str) -> String {
    let line = stderr.lines().map(str::trim).find(|l| !l.is_empty());
    let mut msg = match line {
        Some(l) => format!("{status}: {l}"),
        None => status.to_string(),
    };
    if msg.len() > MAX_ERROR {
        let cut = (0..=MAX_ERROR)
            .rev()
            .find(|i| msg.is_char_boundary(*i))
            .unwrap_or(0);
        msg.truncate(cut);
        msg.push_str("...");
    }
    msg
}

/// How much of a set of rulesets was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RulesRead {
    /// Every ruleset: what was not found there is not there.
    All,
    /// Some: what was found is there, what was not found is unknown.
    Partial,
    /// None: nothing is known.
    #[serde(rename = "none")]
    Nothing,
}

impl RulesRead {
    pub fn of(read: usize, total: usize) -> Self {
        match read {
            0 => Self::Nothing,
            n if n >= total => Self::All,
            _ => Self::Partial,
        }
    }
}

/// Linux's capability number of CAP_NET_ADMIN (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process may read netfilter rulesets (both iptables-nft and nft need
/// CAP_NET_ADMIN in its network namespace's user namespace).
pub fn has_cap_net_admin() -> bool {
    crate::kernel::preflight::effective_caps() & (1 << CAP_NET_ADMIN) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_say_why_in_one_bounded_line() {
        let ipt = "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n";
        assert_eq!(
            failure("exit status: 4", ipt),
            format!("exit status: 4: {}", ipt.trim())
        );
        let nft = "\nOperation not permitted (you must be root)\nnetlink: Error: cache initialization failed: Operation not permitted\n";
        assert_eq!(
            failure("exit status: 1", nft),
            "exit status: 1: Operation not permitted (you must be root)"
        );
        assert_eq!(failure("signal: 9", ""), "signal: 9");
        let long = "é".repeat(300);
        let f = failure("exit status: 1", &long);
        assert!(f.len() <= MAX_ERROR + 3 && f.ends_with("..."), "{f}");
    }

    #[test]
    fn a_missing_tool_is_named() {
        let e = run("ct-trace-no-such-tool", &[]).unwrap_err();
        assert_eq!(e, "ct-trace-no-such-tool is not installed");
        assert!(run("false", &[]).unwrap_err().starts_with("exit status: 1"));
        assert_eq!(run("true", &[]).unwrap().stdout, b"");
    }

    #[test]
    fn how_much_was_read() {
        assert_eq!(RulesRead::of(0, 3), RulesRead::Nothing);
        assert_eq!(RulesRead::of(2, 3), RulesRead::Partial);
        assert_eq!(RulesRead::of(3, 3), RulesRead::All);
        assert_eq!(
            serde_json::to_value(RulesRead::Nothing).unwrap(),
            serde_json::json!("none")
        );
    }
}
