//! `ct-trace lab`'s command line: its subcommands, their flags and the values of `--scenario`
//! and `--fix`. What each one does lives in `crate::lab`; the grammar lives here, beside the
//! rest of ct-trace's, so that the command line is one layer every other one may read.

use serde::Serialize;

use crate::{cli::Format, kernel::load::AttachMode};

#[derive(Debug, clap::Subcommand)]
pub enum LabAction {
    /// Build the lab, run the workload, do the scenario's fault, trace it, print the events
    /// and a verdict, tear down.
    Run(RunArgs),
    /// Run a scenario once per fix (none, liberal, drop-invalid, bigger-table) and print a table.
    Compare(CompareArgs),
    /// Remove namespaces left by labs that were killed (SIGKILL) before they could tear down.
    Cleanup,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// What to do to the live connections.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// The mitigation applied in the lab's node namespace.
    #[arg(long, value_enum, default_value_t = Fix::None)]
    pub fix: Fix,
    /// Output format: text (an event digest and the verdict), json (ct-trace's events, then
    /// one `lab_verdict` object).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Also write the run's offending packets as pcapng (what `ct-trace --pcap` writes: each
    /// packet with its event as a comment).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
    /// Allow the global sysctls `table-full` changes (`nf_conntrack_max`,
    /// `nf_conntrack_buckets`: every namespace's table, the host's too, for the few seconds of
    /// the run; restored after it). Meant for a throwaway VM or a test box.
    #[arg(long)]
    pub allow_host_sysctl: bool,
    /// How the ct-trace the lab runs attaches (as `ct-trace --attach`).
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach: Option<AttachMode>,
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Output format: text (the table) or json (one `lab_compare` object).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// See `lab run --allow-host-sysctl`.
    #[arg(long)]
    pub allow_host_sysctl: bool,
    /// How the ct-trace the lab runs attaches (as `ct-trace --attach`).
    #[arg(long, value_enum, value_name = "MODE")]
    pub attach: Option<AttachMode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No fault: the workload alone (expects no reset).
    Clean,
    /// One segment from the server with SEQ 2^30 past the client's window on a live
    /// connection: INVALID ("SEQ is over upper bound"), passed without the Service's NAT.
    OutOfWindow,
    /// The live flows' conntrack entries deleted (ctnetlink), then the server speaks: its reply
    /// is picked up mid-stream without the NAT (cause entry_lost).
    LostEntry,
    /// The write-ups' boom-server packet: data 100000 below the window. Linux 6.1+ only
    /// IGNOREs it (not INVALID, no reset).
    BoomServer,
    /// A RST from the server with SEQ 2^30 past the client's window: INVALID ("invalid rst" /
    /// out of window), passed without NAT; the client owns no such connection and answers no
    /// RST (RFC 793): an INVALID verdict that costs nothing, which ct-trace must not blame.
    InvalidRst,
    /// The write-ups' shrunk table: `nf_conntrack_max` set to the node's entries plus 8 (a
    /// global sysctl: needs `--allow-host-sysctl`), then 16 more connections to the Service;
    /// conntrack has no room for the excess, netfilter drops their SYNs and they time out.
    TableFull,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::OutOfWindow => "out-of-window",
            Self::LostEntry => "lost-entry",
            Self::BoomServer => "boom-server",
            Self::InvalidRst => "invalid-rst",
            Self::TableFull => "table-full",
        }
    }

    /// Whether the scenario changes global sysctls (`--allow-host-sysctl`).
    pub fn global(self) -> bool {
        self == Self::TableFull
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fix {
    /// No mitigation (kube-proxy before 1.15, tcp_be_liberal 0).
    None,
    /// net.netfilter.nf_conntrack_tcp_be_liberal=1 in the lab's node namespace.
    Liberal,
    /// iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP in the lab's node namespace.
    DropInvalid,
    /// A table with room to spare: `table-full` shrinks it to the entries plus 128 instead of
    /// plus 8. Other scenarios do not shrink the table, so it changes nothing there.
    BiggerTable,
}

impl Fix {
    pub const ALL: [Fix; 4] = [Fix::None, Fix::Liberal, Fix::DropInvalid, Fix::BiggerTable];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Liberal => "liberal",
            Self::DropInvalid => "drop-invalid",
            Self::BiggerTable => "bigger-table",
        }
    }
}
