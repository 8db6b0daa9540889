//! The run's accounting, in the summary: INVALID verdicts and each table-pressure kind, counted
//! in the kernel against what was shown, suppressed, filtered, lost or left unprinted, and the
//! kernel's own counters beside them.

use serde::Serialize;

/// INVALID verdicts over the run: `counted` (in the kernel, at the moment of each verdict) ==
/// `shown` + `suppressed` + `filtered` + `lost` + `unprinted`, and `counted` == `kernel` (the
/// `invalid` delta of `/proc/net/stat/nf_conntrack` for the namespace; null when it cannot be
/// read).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct InvalidTally {
    /// The kernel's delta from before ct-trace attached to after it detached.
    pub kernel: Option<u64>,
    /// The kernel's delta from after ct-trace attached to before it detached: `counted` lies
    /// between the two (they differ only by packets that arrived while attaching or detaching).
    pub kernel_while_attached: Option<u64>,
    /// `counted` and where each went, the fields every kind's accounting has (in the JSON at
    /// this place, as fields of this object).
    #[serde(flatten)]
    pub kind: KindTally,
    /// Runs of the verdict kretprobe the kernel skipped (BPF recursion protection: another BPF
    /// program was running on the CPU, e.g. one a softirq interrupted): each may have been an
    /// INVALID verdict ct-trace never saw, so `kernel` may exceed `counted` by up to this many.
    /// Always 0 with the netfilter link, which the kernel calls directly.
    pub missed_runs: u64,
    /// Whether the kernel counts skipped runs at all (`bpf_prog_info.recursion_misses`, 5.12+).
    /// When false (Linux 5.8-5.11) `missed_runs` is 0 because nobody counted, not because
    /// nothing was skipped.
    pub missed_runs_known: bool,
}

/// Resets that answered a packet conntrack let through without NAT, but of no flow conntrack
/// was tracking (scans, strays): counted apart from attributions, never blamed on a Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StrayTally {
    /// The packet was INVALID (e.g. SYN|FIN, NULL, XMAS or FIN to a closed port).
    pub invalid: u64,
    /// The packet was picked up mid-stream with no lost entry behind it (e.g. an ACK scan).
    pub midstream: u64,
}

/// One record kind's accounting: `counted` (in the kernel, when it happened) == `shown` +
/// `suppressed` + `filtered` + `lost` + `unprinted`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KindTally {
    pub counted: u64,
    pub shown: u64,
    pub suppressed: u64,
    /// Not shown because of `--host`/`--port` (in the kernel) or `--kind`.
    pub filtered: u64,
    pub lost: u64,
    /// Reports not printed because `-c` was reached or stdout was closed.
    pub unprinted: u64,
}

/// `evicted` events against the kernel's `early_drop`: `kernel` == `shown` + `unseen`. Unseen
/// evictions are those of entries created before ct-trace listened (the kernel sends destroy
/// events only for entries created while someone listens) or lost to a netlink overflow.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EvictedTally {
    pub kernel: Option<u64>,
    pub shown: u64,
    /// Of `shown`, those inferred from the counter rather than certain.
    pub inferred: u64,
    pub unseen: Option<u64>,
    /// Times the kernel dropped destroy events for ct-trace (socket overflow).
    pub overflows: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TableTally {
    /// `nf_conntrack_max` at the end of the run.
    pub max: Option<u32>,
    /// The namespace's deltas of `/proc/net/stat/nf_conntrack` from before ct-trace attached to
    /// after it detached: `table_full.counted` equals `drop` unless conntrack also dropped
    /// packets for other reasons (a lost insertion clash, counted in `insert_failed` too).
    pub kernel_drop: Option<u64>,
    pub kernel_early_drop: Option<u64>,
    pub kernel_insert_failed: Option<u64>,
    pub table_full: KindTally,
    pub midstream: KindTally,
    pub evicted: EvictedTally,
    /// Netfilter drops of packets without an entry while the table had room (not pressure).
    pub nf_drop_untracked: u64,
}
