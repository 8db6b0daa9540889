//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::report::Format;

/// Watch conntrack mark TCP packets INVALID, and the connection resets they cause.
///
/// Events go to stdout (text or JSON lines); what was attached, warnings and the exit summary
/// go to stderr. Needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN). INVALID verdicts are seen in
/// the network namespace ct-trace runs in (run it with `ip netns exec NS ct-trace` for another);
/// resets are seen in every namespace.
#[derive(Debug, Parser)]
#[command(name = "ct-trace", version, about, long_about = None)]
pub struct Cli {
    /// Output format of the event stream.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// Stop after this long (seconds, or a duration like 500ms, 2m).
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Stop after printing this many events.
    #[arg(short, long)]
    pub count: Option<u64>,

    /// Write this file once every program is attached (for scripts and tests that must not
    /// start traffic before ct-trace can see it).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,

    /// Where INVALID verdicts come from: `netfilter` (a netfilter BPF program right behind
    /// conntrack, Linux 6.4+), `kprobe` (a kretprobe on nf_conntrack_in: every kernel with
    /// kprobes, at a small cost per packet), or `auto` (netfilter where the kernel has it).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, value_name = "MODE")]
    pub attach: AttachMode,

    /// Print no events; at exit, print the reset summary by flow (client -> service -> backend)
    /// on stdout instead.
    #[arg(long)]
    pub summary: bool,

    /// More detail on stderr (-v: debug, shows verifier logs inline; -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors, and the exit summary, on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Where INVALID verdicts come from (`--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Netfilter,
    Kprobe,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Netfilter => "netfilter",
            Self::Kprobe => "kprobe",
        }
    }

    /// The attach point that gives the verdict in this mode.
    pub fn source(self) -> &'static str {
        match self {
            Self::Auto => "the best attach point of this kernel",
            Self::Netfilter => "the netfilter link (--attach netfilter)",
            Self::Kprobe => "the kretprobe on nf_conntrack_in (--attach kprobe)",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this node's conntrack posture and say which fix applies.
    Doctor {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Text)]
        output: Format,
    },
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs > 0.0 && secs < 1e9 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("`{s}` is not a positive number of seconds"));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
