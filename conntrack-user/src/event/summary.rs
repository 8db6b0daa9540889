//! `summary`: the last line of `-o json` at exit.

use serde::Serialize;

use super::{
    tally::{InvalidTally, StrayTally, TableTally},
    time::Time,
};

/// The last line of `-o json` at exit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SummaryReport {
    pub time: Time,
    pub duration_s: f64,
    /// The namespace whose INVALID verdicts were watched.
    pub netns: u32,
    pub invalid: InvalidTally,
    /// Table pressure and lost entries (`table_full`, `evicted`, `midstream`) against the
    /// kernel's `drop`, `early_drop` and `insert_failed`.
    pub table: TableTally,
    /// Events printed, by kind.
    pub events: std::collections::BTreeMap<&'static str, u64>,
    /// Records suppressed in the kernel by the event budget, by record kind.
    pub suppressed: std::collections::BTreeMap<&'static str, u64>,
    /// Records lost (ring buffer full, undecodable), by record kind.
    pub lost: std::collections::BTreeMap<&'static str, u64>,
    /// Resets not shown because of `--resets`/`--filter` (counted in the kernel).
    pub filtered: std::collections::BTreeMap<&'static str, u64>,
    /// Events that went out without their ctnetlink lookup (see `enrichment`).
    pub enrichment_skipped: u64,
    /// Resets of packets of no flow conntrack was tracking (scans, strays): `cause: "stray"`,
    /// never attributed; by what conntrack did with the packet.
    pub stray_resets: StrayTally,
    /// Runs of ct-trace's programs the kernel skipped (recursion protection), by program;
    /// empty when none.
    pub missed_runs: std::collections::BTreeMap<String, u64>,
    /// What each attached program cost, as the kernel measured it (runs and nanoseconds only
    /// while `kernel.bpf_stats_enabled=1`).
    pub programs: Vec<crate::kernel::progstats::ProgramCost>,
    /// Every kernel counter of ct-trace, summed over the CPUs.
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// Where the kernel's conntrack counters (`invalid.kernel`, `table.*.kernel`) were read:
    /// `procfs` (`/proc/net/stat/nf_conntrack`) or `ctnetlink` (kernels without the procfs
    /// file); null when neither could be read.
    pub kernel_counters: Option<crate::node::kstat::Source>,
}
