//! `ct_trace_bpf_program_*`: what each of ct-trace's BPF programs costs the node, as the kernel
//! measures it (see `kernel::progstats`), read at each scrape.

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::{raise, Labels};
use crate::kernel::progstats::ProgramSet;

pub(super) struct ProgramFamilies {
    set: ProgramSet,
    runs: Family<Labels, Counter>,
    seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    missed: Family<Labels, Counter>,
}

impl ProgramFamilies {
    pub(super) fn register(registry: &mut Registry, set: ProgramSet) -> Self {
        let f = Self {
            set,
            runs: Family::default(),
            seconds: Family::default(),
            missed: Family::default(),
        };
        registry.register(
            "ct_trace_bpf_program_runs",
            "Runs of each of ct-trace's BPF programs, by program and attach point, as the kernel \
             counts them; only while `kernel.bpf_stats_enabled` is 1 (ct-trace does not switch \
             it on), absent otherwise",
            f.runs.clone(),
        );
        registry.register(
            "ct_trace_bpf_program_run_seconds",
            "Time spent in each of ct-trace's BPF programs, by program and attach point, as the \
             kernel measures it; only while `kernel.bpf_stats_enabled` is 1, absent otherwise. \
             Divided by the runs: what a packet costs",
            f.seconds.clone(),
        );
        registry.register(
            "ct_trace_bpf_program_missed_runs",
            "Runs of each of ct-trace's BPF programs the kernel skipped because another BPF \
             program was running on the CPU (Linux 5.12+; absent before)",
            f.missed.clone(),
        );
        f
    }

    pub(super) fn refresh(&self) {
        for c in self.set.costs() {
            let l: Labels = vec![("program", c.program.to_string()), ("attach", c.attach)];
            if let Some(n) = c.runs {
                raise(&self.runs.get_or_create(&l), n);
            }
            if let Some(ns) = c.run_ns {
                let s = self.seconds.get_or_create(&l);
                let want = ns as f64 / 1e9;
                if want > s.get() {
                    s.inc_by(want - s.get());
                }
            }
            if let Some(n) = c.missed_runs {
                raise(&self.missed.get_or_create(&l), n);
            }
        }
    }
}
