//! The issues' targets ("Exact at every rate"; "Trampolines instead of kprobes", issue 21),
//! each against this run's numbers.

use conntrack_common::plan::Mode;

use super::{
    cost::Costs,
    hotpath::{Hot, Workload, WORKLOADS},
    numbers::group,
    observer::Observer,
    pipeline::Pipeline,
    report::{median, Section},
    startup::Startup,
    storm::{CtStorm, Storm},
    vmbench::VmBench,
};

/// The issue's targets, each with the value measured in this run and whether it is met.
pub(super) fn targets(hot: &Hot, storm: &Storm, startup: &Startup, pipeline: &Pipeline) -> Section {
    let mut rows = Vec::new();
    let mut row = |target: &str, value: String, met: bool| {
        rows.push(vec![
            target.to_string(),
            value,
            if met { "met" } else { "NOT met" }.to_string(),
        ]);
    };
    let (value, met) = hot_target(hot);
    row("hot path: every ct-trace ratio >= 0.98", value, met);
    let cts: Vec<&CtStorm> = storm.runs.iter().filter_map(|r| r.ct.as_ref()).collect();
    row(
        "storm: counted == kernel, and == shown + suppressed + filtered + lost (both budgets)",
        cts.iter()
            .map(|c| format!("{} / {}", group(c.counted), group(c.kernel)))
            .collect::<Vec<_>>()
            .join("; "),
        cts.iter().all(|c| c.check_kernel.ok && c.check_sum.ok),
    );
    let raised = cts.iter().map(|c| c.events_per_s).fold(0f64, f64::max);
    let alone = median(&pipeline.rates);
    row(
        ">= 200k events/s through the JSON writer, budget raised (goal 1M)",
        format!(
            "{} end to end (flood, kernel and ct-trace on the same 2 CPUs); {} userspace alone",
            group(raised as u64),
            group(alone as u64)
        ),
        raised >= 200_000.0,
    );
    row(
        "zero unaccounted loss",
        format!(
            "lost {} (counted), unaccounted 0",
            cts.iter().map(|c| c.lost).sum::<u64>()
        ),
        cts.iter().all(|c| c.check_sum.ok),
    );
    let peak = cts
        .iter()
        .map(|c| c.peak_rss_kib as f64)
        .chain(startup.peak_kib.iter().copied())
        .fold(0f64, f64::max)
        / 1024.0;
    row(
        "peak RSS < 64 MiB (start-up and storm)",
        format!("{peak:.1} MiB"),
        peak < 64.0,
    );
    let idle = median(&startup.idle_kib) / 1024.0;
    row(
        "idle RSS < 32 MiB (goal)",
        format!("{idle:.1} MiB"),
        idle < 32.0,
    );
    let mut notes = Vec::new();
    if raised < 200_000.0 {
        notes.push(format!(
            "end to end, events/s written is bounded by the flood this 2-CPU machine can offer while ct-trace runs: the sender, the softirq that runs conntrack and ct-trace's programs, and ct-trace itself share two CPUs, and with the budget raised ct-trace wrote every event it was offered (see `lost`). The same userspace path alone writes {} events/s. What was tried: one buffered write per batch of 2048 records instead of a flush per event, interface names cached, ctnetlink lookups moved to their own thread and limited to 2000/s for verdicts (the lookups had kept most of a core busy in a storm), no ring-buffer wake-up per record (it cost an irq_work and a context switch per event), the parsed BTF freed before any event",
            group(alone as u64)
        ));
    }
    Section {
        title: "targets".into(),
        about: "The targets of the issue \"Exact at every rate\", against this run's numbers."
            .into(),
        header: vec!["target", "this run", ""],
        rows,
        notes,
    }
}

/// The hot path's target: the lowest ratio, and whether it is >= 0.98.
fn hot_target(hot: &Hot) -> (String, bool) {
    let (worst_ratio, worst, overlap) = worst_ratio(hot, Observer::CtTrace);
    (
        format!(
            "lowest {worst_ratio:.3} ({worst}){}",
            if overlap {
                "; its min-max range overlaps no observer's: within the rounds' noise"
            } else {
                ""
            }
        ),
        worst_ratio >= 0.98,
    )
}

/// An observer's median, min and max on a workload.
fn range(hot: &Hot, w: Workload, o: Observer) -> (f64, f64, f64) {
    hot.rows
        .iter()
        .find(|r| r.workload == w && r.observer == o)
        .map(|r| {
            let lo = r.values.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.values.iter().copied().fold(0f64, f64::max);
            (median(&r.values), lo, hi)
        })
        .unwrap_or((f64::NAN, f64::NAN, f64::NAN))
}

/// Whether two observers' min-max ranges overlap on a workload: then the difference between
/// them is within what the rounds themselves vary by.
fn overlap(hot: &Hot, w: Workload, a: Observer, b: Observer) -> bool {
    let (_, a_lo, a_hi) = range(hot, w, a);
    let (_, b_lo, b_hi) = range(hot, w, b);
    a_lo <= b_hi && b_lo <= a_hi
}

/// An observer's ratio to no observer on a workload (medians).
fn ratio(hot: &Hot, w: Workload, o: Observer) -> f64 {
    range(hot, w, o).0 / range(hot, w, Observer::None).0
}

/// The lowest ratio of `o` to no observer, its workload, and whether the two observers'
/// ranges overlap there (then the difference is within what the rounds themselves vary by).
fn worst_ratio(hot: &Hot, o: Observer) -> (f64, &'static str, bool) {
    WORKLOADS
        .iter()
        .map(|&w| {
            (
                ratio(hot, w, o),
                w.name(),
                overlap(hot, w, o, Observer::None),
            )
        })
        .fold(
            (f64::INFINITY, "", false),
            |a, b| if b.0 < a.0 { b } else { a },
        )
}

/// A target's verdict: met, not met, not told apart from no observer by this run's rounds, or
/// not measured (no VM run, a mode the kernel does not offer).
#[derive(Clone, Copy, PartialEq)]
enum Status {
    Met,
    NotMet,
    Noise,
    Unmeasured,
}

impl Status {
    fn cell(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT met",
            Status::Noise => "within noise",
            Status::Unmeasured => "not measured",
        }
    }
}

/// Issue 21's targets: fexit against kprobe (hot-path ratios and the kernel's cost a packet,
/// in the VMs, the host having neither), and netfilter (host) and fexit (VMs) >= 0.98 of no
/// observer where the rounds tell them apart.
pub(super) fn issue21_targets(hot: &Hot, host_costs: &Costs, vms: &[VmBench]) -> Section {
    let mut rows = Vec::new();
    let mut row = |target: String, value: String, st: Status| {
        rows.push(vec![target, value, st.cell().to_string()]);
    };
    let netfilter_on_host = host_costs.runs.iter().any(|m| m.mode == Mode::Netfilter);
    if netfilter_on_host {
        let (value, st) = at_least_098(hot, Observer::CtTrace);
        row(
            "host: netfilter mode >= 0.98 of no observer".into(),
            value,
            st,
        );
        // The issue's "<= 50 ns a run". The kernel's figure includes what its statistics cost
        // a run (two clock reads, 492ecee892c2), which on some machines is more than 50 ns by
        // itself: an empty program at the same hooks in the same rounds gives the program's
        // own work (figure - empty), and the empty program's test-run loop without the
        // statistics bounds what an empty run costs; their sum bounds the program's cost a
        // run without the statistics. Without those measurements, the figure as counted.
        let mut st = Status::Met;
        let mut cells = Vec::new();
        let without = host_costs.stats_and_empty();
        for w in WORKLOADS {
            let ns = host_costs.per_packet(Mode::Netfilter, w);
            let floor = host_costs.floor_of(w);
            let (cell, judged) = match (ns, floor, without) {
                (Some(ns), Some(f), Some((stats, empty))) => {
                    let bound = (ns - f).max(0.0) + empty;
                    (
                        format!(
                            "{} {ns:.0} ns counted, an empty program {f:.0} ({:+.0}): at most \
                             {bound:.0} ns without the statistics' {stats:.0}",
                            w.name(),
                            ns - f
                        ),
                        Some(bound),
                    )
                }
                (Some(ns), Some(f), None) => (
                    format!(
                        "{} {ns:.0} ns (an empty program {f:.0} ns: {:+.0})",
                        w.name(),
                        ns - f
                    ),
                    Some(ns),
                ),
                (Some(ns), None, _) => (format!("{} {ns:.0} ns", w.name()), Some(ns)),
                _ => (format!("{} -", w.name()), None),
            };
            cells.push(cell);
            match judged {
                Some(ns) if ns > 50.0 => st = Status::NotMet,
                None if st == Status::Met => st = Status::Unmeasured,
                _ => {}
            }
        }
        row(
            "host: ctt_nf_verdict <= 50 ns a run (the kernel's figure, less its statistics)".into(),
            cells.join("; "),
            st,
        );
    } else {
        row(
            "host: netfilter mode >= 0.98 of no observer".into(),
            "the host's kernel does not offer it".into(),
            Status::Unmeasured,
        );
    }
    let measured: Vec<_> = vms
        .iter()
        .filter_map(|v| v.result.as_ref().ok().map(|g| (v.series.name(), g)))
        .collect();
    if measured.is_empty() {
        for t in [
            "VM: fexit's hot-path ratio >= kprobe's in every workload",
            "VM: fexit's cost a packet <= half of kprobe + kretprobe's",
            "VM: fexit mode >= 0.98 of no observer",
        ] {
            row(t.into(), "no VM run".into(), Status::Unmeasured);
        }
    }
    for (kernel, g) in measured {
        let has = |m: Mode| g.modes.contains(&m);
        if has(Mode::Fexit) && has(Mode::Kprobe) {
            let (f, k) = (
                Observer::CtMode(Mode::Fexit),
                Observer::CtMode(Mode::Kprobe),
            );
            let mut st = Status::Met;
            let mut cells = Vec::new();
            for w in WORKLOADS {
                let (rf, rk) = (ratio(&g.hot, w, f), ratio(&g.hot, w, k));
                cells.push(format!("{} {rf:.3} vs {rk:.3}", w.name()));
                // A NaN (no run) is no proof either: not met.
                if rf.partial_cmp(&rk).is_none_or(|o| o.is_lt()) {
                    st = if overlap(&g.hot, w, f, k) && st != Status::NotMet {
                        Status::Noise
                    } else {
                        Status::NotMet
                    };
                }
            }
            row(
                format!("VM {kernel}: fexit's hot-path ratio >= kprobe's in every workload"),
                cells.join("; "),
                st,
            );
            let mut st = Status::Met;
            let mut cells = Vec::new();
            for w in WORKLOADS {
                match (
                    g.costs.per_packet(Mode::Fexit, w),
                    g.costs.per_packet(Mode::Kprobe, w),
                ) {
                    (Some(f), Some(k)) => {
                        cells.push(format!("{} {f:.0} ns vs {k:.0} ns", w.name()));
                        if f > k / 2.0 {
                            st = Status::NotMet;
                        }
                    }
                    _ => {
                        cells.push(format!("{} -", w.name()));
                        if st == Status::Met {
                            st = Status::Unmeasured;
                        }
                    }
                }
            }
            row(
                format!("VM {kernel}: fexit's cost a packet <= half of kprobe + kretprobe's"),
                cells.join("; "),
                st,
            );
        }
        for m in [Mode::Netfilter, Mode::Fexit] {
            if has(m) {
                let (value, st) = at_least_098(&g.hot, Observer::CtMode(m));
                row(
                    format!("VM {kernel}: {} mode >= 0.98 of no observer", m.name()),
                    value,
                    st,
                );
            }
        }
    }
    Section {
        title: "targets of issue 21 (attach modes)".into(),
        about: "The targets of the issue \"Trampolines instead of kprobes\": fexit against kprobe in the VM kernels (the host has neither), and the cheap modes against no observer; \"within noise\": below the target, but the observer's min-max range overlaps the one it is compared with, so this run's rounds cannot tell them apart.".into(),
        header: vec!["target", "this run", ""],
        rows,
        notes: Vec::new(),
    }
}

/// `o`'s lowest ratio to no observer, and whether it is >= 0.98, or below but within noise.
fn at_least_098(hot: &Hot, o: Observer) -> (String, Status) {
    let (worst, w, overlaps) = worst_ratio(hot, o);
    let st = if worst >= 0.98 {
        Status::Met
    } else if overlaps {
        Status::Noise
    } else {
        Status::NotMet
    };
    (format!("lowest {worst:.3} ({w})"), st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        cost::{ModeCost, ProgCost},
        hotpath::HotRow,
        vmbench::GuestResult,
    };
    use crate::vm::Series;

    fn hot(rows: &[(Observer, [f64; 3])]) -> Hot {
        let rows = WORKLOADS
            .iter()
            .flat_map(|&w| {
                rows.iter().map(move |(o, v)| HotRow {
                    workload: w,
                    observer: *o,
                    values: v.to_vec(),
                })
            })
            .collect();
        Hot {
            rows,
            invalid_seen: 0,
        }
    }

    fn cost(mode: Mode, ns: &[(&str, u64)]) -> Vec<ModeCost> {
        WORKLOADS
            .iter()
            .map(|&workload| ModeCost {
                mode,
                workload,
                programs: ns
                    .iter()
                    .map(|&(program, run_ns)| ProgCost {
                        program: program.into(),
                        attach: String::new(),
                        runs: 10,
                        run_ns: run_ns * 10,
                        missed: Some(0),
                    })
                    .collect(),
                per_round: Vec::new(),
            })
            .collect()
    }

    fn statuses(s: &Section) -> Vec<(String, String)> {
        s.rows
            .iter()
            .map(|r| (r[0].clone(), r[2].clone()))
            .collect()
    }

    #[test]
    fn fexit_against_kprobe_in_the_vm() {
        let (f, k) = (
            Observer::CtMode(Mode::Fexit),
            Observer::CtMode(Mode::Kprobe),
        );
        let host = hot(&[
            (Observer::None, [100.0, 101.0, 99.0]),
            (Observer::CtTrace, [95.0, 100.0, 97.0]),
        ]);
        let host_costs = Costs {
            runs: cost(Mode::Netfilter, &[("ctt_nf_verdict", 50)]),
            not_offered: Vec::new(),
            test_run: Vec::new(),
            floor: Vec::new(),
        };
        let mut runs = cost(Mode::Fexit, &[("ctt_ct_fexit", 40)]);
        // The kprobe pair costs 100 ns a packet: fexit's 40 is below half of it.
        runs.extend(cost(
            Mode::Kprobe,
            &[("ctt_ct_in", 60), ("ctt_ct_in_ret", 40)],
        ));
        let g = GuestResult {
            modes: vec![Mode::Fexit, Mode::Kprobe],
            rounds: 3,
            secs: 2,
            hot: hot(&[
                (Observer::None, [10.0, 11.0, 12.0]),
                (f, [10.5, 10.0, 11.0]),
                (k, [5.0, 6.0, 7.0]),
            ]),
            costs: Costs {
                runs,
                not_offered: Vec::new(),
                test_run: Vec::new(),
                floor: Vec::new(),
            },
            elapsed: 1.0,
        };
        let vms = [VmBench {
            series: Series::V6_1,
            version: String::new(),
            result: Ok(g),
        }];
        let st = statuses(&issue21_targets(&host, &host_costs, &vms));
        let want = [
            // 97 / 100: below 0.98, but the ranges overlap.
            "within noise",
            // ctt_nf_verdict at 50 ns a run.
            "met",
            "met",
            "met",
            // 10.5 / 11: below 0.98, within the rounds' range.
            "within noise",
        ];
        assert_eq!(st.len(), want.len(), "{st:?}");
        for ((t, got), want) in st.iter().zip(want) {
            assert_eq!(got, want, "{t}");
        }
    }

    #[test]
    fn the_verdict_program_is_judged_without_the_statistics_own_cost() {
        let host = hot(&[
            (Observer::None, [100.0, 100.0, 100.0]),
            (Observer::CtTrace, [100.0, 100.0, 100.0]),
        ]);
        let judged = |floor: f64| {
            let host_costs = Costs {
                runs: cost(Mode::Netfilter, &[("ctt_nf_verdict", 79)]),
                not_offered: Vec::new(),
                // The statistics cost 70 ns a run; an empty run at most 26 without them.
                test_run: vec![(96.0, 26.0), (95.0, 25.0), (97.0, 27.0)],
                floor: WORKLOADS.iter().map(|&w| (w, vec![floor])).collect(),
            };
            let s = issue21_targets(&host, &host_costs, &[]);
            (s.rows[1][1].clone(), s.rows[1][2].clone())
        };
        // 79 counted, 70 of it an empty program's: 9 + 26 = 35 ns at most.
        let (cell, st) = judged(70.0);
        assert_eq!(st, "met", "{cell}");
        assert!(
            cell.contains("at most 35 ns without the statistics' 70"),
            "{cell}"
        );
        // 79 counted, an empty program 20: 59 + 26 = 85 ns, over 50.
        let (cell, st) = judged(20.0);
        assert_eq!(st, "NOT met", "{cell}");
    }

    #[test]
    fn host_below_the_target_beyond_noise_is_not_met_no_vm_is_not_measured() {
        let host = hot(&[
            (Observer::None, [100.0, 100.0, 100.0]),
            (Observer::CtTrace, [90.0, 90.0, 90.0]),
        ]);
        let mut runs = cost(Mode::Fexit, &[("ctt_ct_fexit", 60)]);
        runs.extend(cost(
            Mode::Kprobe,
            &[("ctt_ct_in", 60), ("ctt_ct_in_ret", 40)],
        ));
        let host_costs = Costs {
            runs: cost(Mode::Netfilter, &[("ctt_nf_verdict", 50)]),
            not_offered: Vec::new(),
            test_run: Vec::new(),
            floor: Vec::new(),
        };
        let st = statuses(&issue21_targets(&host, &host_costs, &[]));
        assert_eq!(st[0].1, "NOT met");
        assert_eq!(st[1].1, "met", "ctt_nf_verdict at 50 ns a run");
        assert!(st[2..].iter().all(|(_, s)| s == "not measured"), "{st:?}");
        let c = Costs {
            runs,
            not_offered: Vec::new(),
            test_run: Vec::new(),
            floor: Vec::new(),
        };
        assert_eq!(c.per_packet(Mode::Kprobe, Workload::Rr), Some(100.0));
        assert_eq!(c.per_packet(Mode::Fexit, Workload::Rr), Some(60.0));
    }
}
