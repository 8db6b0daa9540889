//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

#[cfg(feature = "lab")]
mod lab;

#[cfg(feature = "lab")]
pub use self::lab::{CompareArgs, Fix, LabAction, RunArgs, Scenario};
pub use crate::kernel::load::AttachMode;

/// Output format (`-o`): every subcommand prints text or JSON lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

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

    /// Stop after printing this many events (1 or more).
    #[arg(short, long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Create this file once every program is attached, and remove it at exit (for scripts and
    /// tests that must not start traffic before ct-trace can see it). It must not exist
    /// beforehand: its existence is the signal.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,

    /// Where INVALID verdicts come from: `netfilter` (a netfilter BPF program right behind
    /// conntrack, Linux 6.4+), `fexit` (an fexit program on nf_conntrack_in: Linux 5.11+ with
    /// module BTF and BPF trampolines), `kprobe` (a kprobe and kretprobe on nf_conntrack_in:
    /// every kernel with kprobes, at the highest cost per packet), or `auto` (the first of
    /// netfilter, fexit, kprobe the kernel has).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, value_name = "MODE")]
    pub attach: AttachMode,

    /// Print no events; at exit, print the reset summary by flow (client -> service -> backend)
    /// on stdout instead.
    #[arg(long)]
    pub summary: bool,

    /// Events per second ct-trace sends from the kernel at most, shared equally by the CPUs;
    /// beyond it events are suppressed in the kernel and counted (`suppressed` in the stream
    /// and the summary). Resets caused by an INVALID packet are never suppressed. 0: no limit.
    #[arg(long, default_value_t = conntrack_common::DEFAULT_EVENT_BUDGET, value_name = "N")]
    pub event_budget: u32,

    /// Which resets to show: `caused` (those caused by an INVALID packet, with their
    /// attribution) or `all` (every reset of every namespace: a busy node sends thousands a
    /// second). The others are counted in the kernel (`filtered` in the summary).
    #[arg(long, value_enum, default_value_t = Resets::Caused, value_name = "WHICH")]
    pub resets: Resets,

    /// Only events with an address in this prefix (ADDR or ADDR/LEN, IPv4 or IPv6), at either
    /// end; applied in the kernel to resets and INVALID verdicts (counted as filtered).
    #[arg(long, value_parser = parse_prefix, value_name = "ADDR[/LEN]")]
    pub host: Option<(std::net::IpAddr, u8)>,

    /// Only events with this port at either end (in the kernel, as --host).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), value_name = "PORT")]
    pub port: Option<u16>,

    /// Only resets in this network namespace (its inode, as events print it).
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,

    /// Only print these kinds of event (comma-separated: rst_sent, rst_received, invalid,
    /// ignored, attribution, table_full, evicted, midstream, lost, suppressed); the others are
    /// counted as filtered.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind, value_name = "KIND,...")]
    pub kind: Vec<&'static str>,

    /// Serve Prometheus/OpenMetrics metrics at http://ADDR:PORT/metrics while tracing
    /// (`:PORT` for every address, IPv6 and IPv4; port 0: one the kernel picks, announced on
    /// stderr). Counts come from ct-trace's in-kernel counters, so they equal the kernel's at
    /// any event rate. Combines with `-o json`, `--summary` and `-q`.
    #[arg(long, value_parser = parse_listen, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// With --metrics: how many Services `ct_trace_conntrack_entries_by_service` names, the
    /// heaviest by conntrack entries; the rest are summed under service="other", so there are
    /// at most N+1 series. The table is dumped for it at most every 5 s, when a scrape needs it.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=1000), requires = "metrics")]
    pub metrics_top_services: u16,

    /// Also write the packet of every event that carries one (invalid, ignored, rst_sent,
    /// rst_received, midstream, table_full) to FILE as pcapng, with the event's JSON line as
    /// its comment. Packets are rebuilt from the events' header fields (headers only), whatever
    /// stdout shows (`--summary`, `--kind`, `-c`). Created with mode 0600; a link or another
    /// user's file is refused.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// More detail on stderr (-v: debug, shows verifier logs inline; -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors, and the exit summary, on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The kernel-side filter of `--resets`, `--netns`, `--port` and `--host`.
    pub fn filter(&self) -> conntrack_common::Filter {
        let mut f = conntrack_common::Filter {
            caused_only: u8::from(self.resets == Resets::Caused),
            netns: self.netns.unwrap_or(0),
            port: self.port.unwrap_or(0),
            ..Default::default()
        };
        if let Some((addr, len)) = self.host {
            f.prefix_len = len;
            match addr {
                std::net::IpAddr::V4(a) => {
                    f.family = 4;
                    f.addr[..4].copy_from_slice(&a.octets());
                }
                std::net::IpAddr::V6(a) => {
                    f.family = 6;
                    f.addr = a.octets();
                }
            }
        }
        f
    }
}

/// Which resets are shown (`--resets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Resets {
    Caused,
    All,
}

/// Event kinds `--kind` accepts.
pub const KINDS: [&str; 10] = [
    "rst_sent",
    "rst_received",
    "invalid",
    "ignored",
    "attribution",
    "table_full",
    "evicted",
    "midstream",
    "lost",
    "suppressed",
];

fn parse_kind(s: &str) -> Result<&'static str, String> {
    KINDS
        .iter()
        .find(|k| **k == s)
        .copied()
        .ok_or_else(|| format!("`{s}` is not an event kind ({})", KINDS.join(", ")))
}

/// `ADDR` or `ADDR/LEN`.
pub fn parse_prefix(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: std::net::IpAddr = a
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{l}` is not a prefix length (0-{max})"))?,
    };
    Ok((addr, len))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check this node's conntrack posture and say which fix applies.
    Doctor {
        #[command(flatten)]
        args: DoctorArgs,
    },
    /// Who fills the conntrack table of this network namespace: its fill, the kernel's
    /// pressure counters as rates, and the entries by Service, backend, client and state,
    /// heaviest first, every interval (needs CAP_NET_ADMIN; changes nothing).
    Top {
        #[command(flatten)]
        args: TopArgs,
    },
    /// Reproduce the failure in namespaces of its own and prove a fix (root): `lab run`,
    /// `lab compare`, `lab cleanup`.
    #[cfg(feature = "lab")]
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// A build without the lab (the DaemonSet's image): not in `--help`, and whatever follows
    /// `lab` is taken as is, so that `ct-trace lab ...` gets one line saying why there is none
    /// rather than clap's "unrecognized subcommand".
    #[cfg(not(feature = "lab"))]
    #[command(hide = true, disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

/// `ct-trace doctor`'s flags.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// How long to watch the table's counters (drop, early_drop, insert_failed, ...) for their
    /// growth (seconds, or a duration like 500ms; 0: no sampling).
    #[arg(long, default_value = "1", value_parser = parse_window, value_name = "SECS")]
    pub window: Duration,
}

/// `ct-trace top`'s flags.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Output format: a screen of text per snapshot, or one JSON object per line.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// Time between snapshots (seconds, or a duration like 500ms); the first comes one
    /// interval after the start, its rates over that interval.
    #[arg(long, default_value = "2", value_parser = parse_duration, value_name = "SECS")]
    pub interval: Duration,

    /// One snapshot, then exit.
    #[arg(long, conflicts_with = "count")]
    pub once: bool,

    /// Snapshots to print before exiting (default: until interrupted).
    #[arg(short = 'c', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Groups shown per grouping, heaviest first; the rest are summed as `other`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub limit: u64,

    /// The share of one core (percent) the table's dumps may take after the first: the dumps
    /// that check the entries which send no events (created before top started) wait until
    /// the last one's CPU fits.
    #[arg(long, default_value_t = 2, value_name = "PERCENT", value_parser = clap::value_parser!(u64).range(1..=100))]
    pub cpu_budget: u64,

    /// Distinct keys counted per grouping (bounds memory on a table of any size); keys beyond
    /// it are counted under `other`.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..=4_194_304))]
    pub cap: u64,

    /// Show the table alone: start no tracer for the resets broken flows cause (by default top
    /// runs `ct-trace -o json --kind attribution,lost` as its child in the same namespace and
    /// counts its attributions by Service, backend and client).
    #[arg(long)]
    pub no_resets: bool,

    /// The tracer's `--attach` mode (see `ct-trace --help`).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto, value_name = "MODE", conflicts_with = "no_resets")]
    pub attach: AttachMode,
}

/// `--window`: seconds, or a duration like 500ms; 0 samples nothing.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    if s.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_duration(s)
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

/// `ADDR:PORT` for `--metrics`; `:PORT` listens on every address, IPv6 and IPv4 (`[::]`, see
/// `output::metrics::http::bind`). Port 0: one the kernel picks, announced once bound.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("`{s}` is not ADDR:PORT (e.g. 127.0.0.1:9469, [::1]:9469 or :9469)"))
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
    fn prefixes_parse() {
        assert_eq!(
            parse_prefix("10.0.0.0/8"),
            Ok(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(
            parse_prefix("fd00::1"),
            Ok(("fd00::1".parse().unwrap(), 128))
        );
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("nowhere").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("0"), Ok(Duration::ZERO));
        assert_eq!(parse_window("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_window("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_window("-1").is_err());
        assert!(parse_window("soon").is_err());
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            parse_listen("127.0.0.1:9469"),
            Ok("127.0.0.1:9469".parse().unwrap())
        );
        assert_eq!(parse_listen(":9469"), Ok("[::]:9469".parse().unwrap()));
        assert_eq!(parse_listen(":0"), Ok("[::]:0".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:1"), Ok("[::1]:1".parse().unwrap()));
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("1.2.3.4").is_err());
    }
}
