//! The exit summary: the JSON `summary` object (counts against the kernel's) and the lines on
//! stderr.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    time::Duration,
};

use conntrack_common::{counter::Role, Counter};

use crate::{
    cli::{Cli, Format},
    event::time::boot_now,
    event::{EvictedTally, InvalidTally, KindTally, Report, SummaryReport, TableTally},
    kernel::maps::Counters,
    node::kstat,
    output::{correlated::Correlated, sink::Tally, table},
};

/// The program whose skipped runs may each have been an INVALID verdict (kprobe mode; the
/// netfilter program is called directly and never skipped).
pub(crate) const VERDICT_RETURN_PROBE: &str = "ctt_ct_in_ret";

/// Readings of the kernel's `invalid` counter (start, end) around attach and detach.
pub(crate) struct KernelInvalid {
    pub(crate) outer: Option<(u64, u64)>,
    pub(crate) inner: Option<(u64, u64)>,
}

pub(crate) fn summarize(
    tally: &Tally,
    counters: &Counters,
    corr: &dyn Correlated,
    netns: u32,
    kernel: Option<KernelInvalid>,
    missed_runs: Option<&BTreeMap<String, u64>>,
    elapsed: Duration,
) -> SummaryReport {
    let c = counters.all();
    let get = |n: &str| c.get(n).copied().unwrap_or(0);
    let unprinted = |k: &str| tally.unprinted.get(k).copied().unwrap_or(0);
    let kind_filtered = |k: &str| tally.filtered.get(k).copied().unwrap_or(0);
    let invalid = InvalidTally {
        kernel: kernel
            .as_ref()
            .and_then(|k| k.outer)
            .map(|(a, b)| b.saturating_sub(a)),
        kernel_while_attached: kernel
            .as_ref()
            .and_then(|k| k.inner)
            .map(|(a, b)| b.saturating_sub(a)),
        kind: kind_tally(
            tally,
            "invalid",
            Sent {
                counted: counters.read(Counter::InvalidPrerouting)
                    + counters.read(Counter::InvalidOutput),
                suppressed: counters.read(Counter::SuppressedInvalid),
                filtered: counters.read(Counter::FilteredInvalid),
                lost: counters.read(Counter::LostInvalid),
            },
        ),
        missed_runs: missed_runs
            .and_then(|m| m.get(VERDICT_RETURN_PROBE).copied())
            .unwrap_or(0),
        missed_runs_known: missed_runs.is_some(),
    };
    let mut events = tally.shown.clone();
    for (k, v) in events.iter_mut() {
        *v -= unprinted(k) + kind_filtered(k);
    }
    // Printed events only: a kind none of whose events reached stdout is not listed.
    events.retain(|_, v| *v > 0);
    // The tables of unsent records, by the role each counter declares (conntrack-common's
    // `counters!`), keyed by record kind.
    let of_role = |want: fn(Role) -> bool| -> BTreeMap<&'static str, u64> {
        Counter::ALL
            .iter()
            .filter(|k| want(k.role()))
            .filter_map(|k| Some((k.role().kind()?, get(k.name()))))
            .collect()
    };
    let mut lost = of_role(|r| matches!(r, Role::Lost(_)));
    lost.insert("undecodable", tally.decode_errors);
    lost.retain(|_, v| *v > 0);
    let mut filtered = of_role(|r| matches!(r, Role::Filtered(_)));
    for (k, n) in &tally.filtered {
        *filtered.entry(k).or_default() += n;
    }
    SummaryReport {
        time: corr.time(boot_now()),
        duration_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        netns,
        invalid,
        events,
        suppressed: of_role(|r| matches!(r, Role::Suppressed(_))),
        lost,
        filtered,
        enrichment_skipped: corr.enrichment_skipped(),
        stray_resets: corr.strays(),
        missed_runs: missed_runs.cloned().unwrap_or_default(),
        programs: Vec::new(),
        counters: c,
        table: TableTally::default(),
        kernel_counters: kstat::source(),
    }
}

/// A kind's records as the kernel's counters saw them: counted, and not sent (suppressed by the
/// budget, filtered in the kernel, lost to a full ring buffer).
struct Sent {
    counted: u64,
    suppressed: u64,
    filtered: u64,
    lost: u64,
}

/// Kind `k`'s accounting: the kernel's side from `sent`, the output's (shown, filtered by
/// `--kind`, unprinted) from `tally`.
fn kind_tally(tally: &Tally, k: &str, sent: Sent) -> KindTally {
    let unprinted = tally.unprinted.get(k).copied().unwrap_or(0);
    let kind_filtered = tally.filtered.get(k).copied().unwrap_or(0);
    KindTally {
        counted: sent.counted,
        shown: tally.shown.get(k).copied().unwrap_or(0) - unprinted - kind_filtered,
        suppressed: sent.suppressed,
        filtered: sent.filtered + kind_filtered,
        lost: sent.lost,
        unprinted,
    }
}

pub(crate) type Stats<'a> = Option<&'a std::collections::HashMap<String, u64>>;

pub(crate) fn table_tally(
    tally: &Tally,
    counters: &Counters,
    corr: &dyn Correlated,
    (before, after): (Stats<'_>, Stats<'_>),
    overflows: u64,
) -> TableTally {
    let get = |c: Counter| counters.read(c);
    use Counter::*;
    let kind = |k: &str, counted, suppressed, lost, filtered| {
        let sent = Sent {
            counted: get(counted),
            suppressed: get(suppressed),
            filtered: get(filtered),
            lost: get(lost),
        };
        kind_tally(tally, k, sent)
    };
    let table_full = kind(
        "table_full",
        TableFull,
        SuppressedTableFull,
        LostTableFull,
        FilteredTableFull,
    );
    let midstream = kind(
        "midstream",
        Midstream,
        SuppressedMidstream,
        LostMidstream,
        FilteredMidstream,
    );
    let kernel_early_drop = table::delta(before, after, "early_drop");
    // Every `evicted` report produced, printed or not (`--kind`, `-c` do not make an eviction
    // unseen).
    let evicted = tally.shown.get("evicted").copied().unwrap_or(0);
    TableTally {
        max: corr.ct_max(),
        kernel_drop: table::delta(before, after, "drop"),
        kernel_early_drop,
        kernel_insert_failed: table::delta(before, after, "insert_failed"),
        table_full,
        midstream,
        evicted: EvictedTally {
            kernel: kernel_early_drop,
            shown: evicted,
            inferred: corr.evicted_inferred(),
            unseen: kernel_early_drop.map(|k| k.saturating_sub(evicted)),
            overflows,
        },
        nf_drop_untracked: get(Counter::NfDropUntracked),
    }
}

/// The human summary, on stderr.
pub(crate) fn print_summary(
    s: &SummaryReport,
    corr: &dyn Correlated,
    verdicts: bool,
    flows: &[crate::event::FlowReport],
) {
    let kinds: Vec<String> = s.events.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let lost: u64 = s.lost.values().sum();
    let suppressed: u64 = s.suppressed.values().sum();
    eprintln!(
        "ct-trace: events: {}; suppressed {suppressed}; lost {lost}{}",
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        },
        if lost > 0 {
            format!(
                " ({})",
                s.lost
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    );
    print_costs(&s.programs);
    let c = |n: &str| s.counters.get(n).copied().unwrap_or(0);
    let filtered: u64 = s.filtered.values().sum();
    if filtered > 0 {
        eprintln!(
            "ct-trace: filtered (counted, not shown): {}",
            s.filtered
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if c("ct_dropped") > 0 {
        eprintln!(
            "ct-trace: conntrack dropped {} packets it could not track (table full or no memory; the kernel counts them as `drop`)",
            c("ct_dropped")
        );
    }
    if c("pending_expired") > 0 {
        eprintln!(
            "ct-trace: {} resets matched an INVALID packet older than {} s and were not attributed",
            c("pending_expired"),
            conntrack_common::PENDING_RST_MAX_AGE_NS / 1_000_000_000
        );
    }
    if s.kernel_counters == Some(kstat::Source::Ctnetlink) {
        eprintln!(
            "ct-trace: the kernel's counters read through {}",
            kstat::Source::Ctnetlink.describe()
        );
    }
    if verdicts {
        let i = &s.invalid;
        match i.kernel {
            Some(kernel) => {
                let inner = i.kernel_while_attached.unwrap_or(kernel);
                let verdict = if kernel == i.kind.counted {
                    "equal".to_string()
                } else if kernel > i.kind.counted && kernel - i.kind.counted <= i.missed_runs {
                    format!(
                        "DIFFERENT by {}: the kernel skipped {} runs of ct-trace's verdict kretprobe (a BPF program was already running on that CPU), which may each have been one",
                        kernel - i.kind.counted,
                        i.missed_runs
                    )
                } else if (inner..=kernel).contains(&i.kind.counted) {
                    format!(
                        "equal within the packets that arrived while ct-trace attached or detached (kernel {inner} while attached)"
                    )
                } else if !i.missed_runs_known && kernel > i.kind.counted {
                    format!(
                        "DIFFERENT by {}: this kernel does not count the runs of BPF programs it skips (Linux 5.12+), so a skipped run of ct-trace's verdict kretprobe cannot be told from a lost verdict",
                        kernel - i.kind.counted
                    )
                } else {
                    format!("DIFFERENT by {}", kernel as i64 - i.kind.counted as i64)
                };
                eprintln!(
                    "ct-trace: INVALID verdicts in netns {}: ct-trace {}, kernel {kernel}: {verdict}; shown {}, suppressed {}, filtered {}, lost {}{}",
                    s.netns,
                    i.kind.counted,
                    i.kind.shown,
                    i.kind.suppressed,
                    i.kind.filtered,
                    i.kind.lost,
                    if i.kind.unprinted > 0 { format!(", not printed {}", i.kind.unprinted) } else { String::new() }
                );
            }
            None => eprintln!(
                "ct-trace: cannot read the kernel's conntrack counters ({} nor ctnetlink's statistics): no comparison with the kernel's INVALID counter",
                kstat::PATH
            ),
        }
        if c("untracked") + c("icmp_error") > 0 {
            eprintln!(
                "ct-trace: not INVALID, not reported: {} packets of a family conntrack does not track in this namespace, {} ICMP errors conntrack could not relate (the kernel counts them as `error`)",
                c("untracked"),
                c("icmp_error")
            );
        }
    }
    if s.enrichment_skipped > 0 {
        eprintln!(
            "ct-trace: {} events went out without their conntrack lookup (enrichment: skipped)",
            s.enrichment_skipped
        );
    }
    let strays = s.stray_resets.invalid + s.stray_resets.midstream;
    if strays > 0 {
        eprintln!(
            "ct-trace: {strays} resets answered packets of no flow conntrack was tracking (scans, strays; not attributed): {} INVALID, {} picked up mid-stream",
            s.stray_resets.invalid, s.stray_resets.midstream
        );
    }
    if corr.reasons_unmatched() > 0 {
        eprintln!(
            "ct-trace: conntrack logged {} refused packets that are not reported (not TCP, or no verdict program to tell INVALID from ignored)",
            corr.reasons_unmatched()
        );
    }
    if let Some(line) = table::summary_line(s.netns, &s.table) {
        eprintln!("{line}");
    }
    if !flows.is_empty() {
        eprintln!("ct-trace: resets caused by conntrack (INVALID packets, lost entries), by flow:");
        eprintln!(
            "{:>6}  {:<24} {:<24} {:<24} {:<32} FIRST / LAST",
            "RESETS", "CLIENT", "SERVICE", "BACKEND", "REASONS"
        );
        for f in flows {
            eprintln!("{}", Report::Flow(f.clone()).text());
        }
    }
}

/// The per-flow reset summary on stdout (`--summary`).
pub(crate) fn print_flows(cli: &Cli, flows: &[crate::event::FlowReport]) {
    let mut out = io::stdout().lock();
    if cli.output == Format::Text && !flows.is_empty() {
        let _ = writeln!(
            out,
            "{:>6}  {:<24} {:<24} {:<24} {:<32} FIRST / LAST",
            "RESETS", "CLIENT", "SERVICE", "BACKEND", "REASONS"
        );
    }
    for f in flows {
        let r = Report::Flow(f.clone());
        let _ = writeln!(
            out,
            "{}",
            if cli.output == Format::Json {
                r.json()
            } else {
                r.text()
            }
        );
    }
}

/// One line: what ct-trace's programs cost the node, as the kernel measured it.
fn print_costs(programs: &[crate::kernel::progstats::ProgramCost]) {
    if programs.is_empty() {
        return;
    }
    let counted = programs.iter().any(|p| p.runs.is_some());
    let each: Vec<String> = programs
        .iter()
        .map(|p| match (p.runs, p.ns_per_run()) {
            (Some(r), Some(ns)) => format!("{} {r} runs, {ns:.0} ns a run", p.program),
            (Some(r), None) => format!("{} {r} runs", p.program),
            _ => p.program.to_string(),
        })
        .collect();
    if counted {
        eprintln!(
            "ct-trace: BPF programs (the kernel's own figures): {}",
            each.join("; ")
        );
    } else {
        eprintln!(
            "ct-trace: BPF programs: {} ({} attached); their runs and time are not counted: \
             `sysctl kernel.bpf_stats_enabled=1` counts them (at a small cost to every BPF \
             program on the node)",
            each.join(", "),
            programs.len()
        );
    }
}
