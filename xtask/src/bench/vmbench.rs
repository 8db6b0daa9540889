//! The bench inside VM kernels: what each attach mode costs where the host cannot run it (this
//! machine has no kprobes and no BPF trampolines).
//!
//! The host boots each kernel asked for (`--vm-kernel`, default 6.1) with `vm::run_jobs`; the
//! guest runs this xtask binary itself (`bench --in-guest`: no cargo build, the prebuilt
//! binaries of `target/release` and the host's iperf3 and tcpdump seen over 9p), which builds
//! the bench's three namespaces, measures in one invocation the hot path in interleaved rounds
//! (no observer, ct-trace in each mode the kernel offers, tcpdump; each observer started once a
//! round for the three workloads: ct-trace takes seconds to start under TCG) and then the
//! per-program cost in each mode (`cost`), and prints its results as one console line
//! `CT_TRACE_BENCH_JSON=...`, which the host reads back.
//!
//! Under TCG the guest's CPU is emulated: absolute rates mean nothing, only the ratios to no
//! observer and the kernel's own nanoseconds a run (emulated too, but the same emulation for
//! every mode) are compared.

use std::time::Instant;

use anyhow::{bail, ensure, Context as _, Result};
use conntrack_common::plan::{self, Capabilities, Mode};
use serde_json::{json, Value};

use super::{
    cost::{cost_section, costs, Costs},
    hotpath::{hot_path_by_round, Hot, HotRow, Workload},
    observer::Observer,
    process::ShmFiles,
    report::{hot_rows, Section},
    topology::Topo,
    Args, Bins, Config,
};
use crate::{
    host::root,
    vm::{self, Job, Outcome, Series},
};

/// The line the guest prints its results on.
const MARKER: &str = "CT_TRACE_BENCH_JSON=";

/// Rounds and seconds of the guest's runs when not asked: about 6 minutes of TCG a kernel
/// (6.1: 3 rounds took 198 s of measuring); TCG rounds vary by tens of percent from one to the
/// next, so more rounds than 3 are worth their minutes.
const ROUNDS: u32 = 5;
const SECS: u64 = 2;

/// One kernel's results, or why there are none.
pub(super) struct VmBench {
    pub(super) series: Series,
    /// `uname -r (package version)`.
    pub(super) version: String,
    pub(super) result: std::result::Result<GuestResult, String>,
}

pub(super) struct GuestResult {
    pub(super) modes: Vec<Mode>,
    pub(super) rounds: u64,
    pub(super) secs: u64,
    pub(super) hot: Hot,
    pub(super) costs: Costs,
    /// Seconds the guest's measuring took.
    pub(super) elapsed: f64,
}

/// The modes ct-trace runs on a Debian kernel of the series (built with kprobes, trampolines,
/// module BTF and, from 6.4, the netfilter link), in the plan's order.
fn modes_of(s: Series) -> Vec<Mode> {
    plan::modes_on(Capabilities::full(s.version())).collect()
}

/// Boots each kernel in turn (one at a time: two guests side by side would share the two host
/// CPUs with each other's runs) and collects what each guest measured.
pub(super) fn vm_bench(a: &Args) -> Result<Vec<VmBench>> {
    let kernels = if a.vm_kernels.is_empty() {
        vec![Series::V6_1]
    } else {
        a.vm_kernels.clone()
    };
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let rounds = a.vm_rounds.unwrap_or(ROUNDS).to_string();
    let secs = a.vm_secs.unwrap_or(SECS).to_string();
    let mut jobs = Vec::new();
    for s in kernels {
        let mut argv = vec![
            exe.display().to_string(),
            "bench".into(),
            "--in-guest".into(),
            "--rounds".into(),
            rounds.clone(),
            "--secs".into(),
            secs.clone(),
        ];
        for m in modes_of(s) {
            argv.extend(["--guest-mode".into(), m.name().into()]);
        }
        jobs.push(Job {
            series: s,
            label: "bench".into(),
            script: vm::script(&[], &[argv])?,
        });
    }
    let runs = vm::run_jobs(
        &jobs,
        &vm::Opts {
            timeout: a.vm_timeout.unwrap_or(1800),
            jobs: 1,
            ..vm::Opts::default()
        },
    )?;
    Ok(runs
        .results
        .into_iter()
        .map(|r| VmBench {
            series: r.series,
            version: r.version.clone(),
            result: match r.outcome {
                // The guest's own error line (`xtask: ...`) says more than its exit code.
                Outcome::Failed(why) => Err(
                    match r.console.iter().rev().find(|l| l.starts_with("xtask: ")) {
                        Some(line) => format!("{why}: {}", line.trim()),
                        None => why,
                    },
                ),
                _ => parse(&r.console).map_err(|e| format!("{e:#}")),
            },
        })
        .collect())
}

/// The guest's results from its console.
fn parse(console: &[String]) -> Result<GuestResult> {
    let line = console
        .iter()
        .rev()
        .find_map(|l| l.find(MARKER).map(|i| l[i + MARKER.len()..].trim()))
        .context("the guest printed no results")?;
    let v: Value = serde_json::from_str(line).context("the guest's results are not JSON")?;
    let mut rows = Vec::new();
    for r in v["hot"].as_array().context("no hot path in the results")? {
        let (w, o) = (
            r["workload"].as_str().unwrap_or_default(),
            r["observer"].as_str().unwrap_or_default(),
        );
        rows.push(HotRow {
            workload: Workload::from_name(w).with_context(|| format!("no workload `{w}`"))?,
            observer: Observer::from_name(o).with_context(|| format!("no observer `{o}`"))?,
            values: r["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect(),
        });
    }
    let modes = v["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            plan::MODES
                .into_iter()
                .find(|p| Some(p.name()) == m.as_str())
        })
        .collect();
    Ok(GuestResult {
        modes,
        rounds: v["rounds"].as_u64().unwrap_or(0),
        secs: v["secs"].as_u64().unwrap_or(0),
        hot: Hot {
            rows,
            invalid_seen: v["invalid_seen"].as_u64().unwrap_or(0),
        },
        costs: Costs::from_json(&v["costs"])?,
        elapsed: v["elapsed"].as_f64().unwrap_or(f64::NAN),
    })
}

/// `bench --in-guest`: the guest's side. Prints the results line; an error ends the guest's
/// command non-zero (the host then reports the kernel failed, with the console's lines).
pub(super) fn in_guest(a: &Args) -> Result<()> {
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "--in-guest runs as root");
    let mut modes = Vec::new();
    for name in &a.guest_modes {
        match plan::MODES.into_iter().find(|m| m.name() == name) {
            Some(m) => modes.push(m),
            None => bail!("--guest-mode {name}: not an attach mode"),
        }
    }
    // Kernel messages on the serial console could land inside the results line.
    let _ = std::fs::write("/proc/sys/kernel/printk", "1");
    let cfg = Config {
        smoke: false,
        rounds: a.rounds.unwrap_or(ROUNDS),
        secs: a.secs.unwrap_or(SECS),
        storm_count: 0,
        startups: 0,
        shm: format!("/dev/shm/ctb-{}", std::process::id()),
    };
    let rel = root()
        .canonicalize()
        .context("resolving the workspace root")?
        .join("target/release");
    let bin = |n: &str| rel.join(n).display().to_string();
    let bins = Bins {
        ct_trace: bin("ct-trace"),
        flood: bin("ctt-flood"),
        load: bin("ctt-load"),
        pipeline: bin("ctt-pipeline"),
    };
    let topo = Topo::build()?;
    let _shm = ShmFiles(cfg.shm.clone());
    let observers: Vec<Observer> = std::iter::once(Observer::None)
        .chain(modes.iter().map(|&m| Observer::CtMode(m)))
        .chain([Observer::Tcpdump])
        .collect();
    let hot = hot_path_by_round(&topo, &bins, &cfg, &observers)?;
    let costs = costs(&topo, &bins, &cfg, &modes)?;
    let v = json!({
        "modes": modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "rounds": cfg.rounds,
        "secs": cfg.secs,
        "hot": hot.rows.iter().map(|r| json!({
            "workload": r.workload.name(),
            "observer": r.observer.name(),
            "values": r.values,
        })).collect::<Vec<_>>(),
        "invalid_seen": hot.invalid_seen,
        "costs": costs.to_json(),
        "elapsed": started.elapsed().as_secs_f64(),
    });
    println!("{MARKER}{v}");
    Ok(())
}

/// The VM's sections: per kernel, its hot-path ratios and its per-program cost; a kernel that
/// failed gets a section saying why.
pub(super) fn vm_sections(vms: &[VmBench]) -> Vec<Section> {
    let mut out = Vec::new();
    for vm in vms {
        let name = format!(
            "VM {} ({})",
            vm.series.name(),
            vm::version_cell(&vm.version)
        );
        let g = match &vm.result {
            Ok(g) => g,
            Err(why) => {
                out.push(Section {
                    title: format!("{name}: not measured"),
                    about: "The VM part of the bench did not produce results.".into(),
                    header: vec!["why"],
                    rows: vec![vec![why.clone()]],
                    notes: Vec::new(),
                });
                continue;
            }
        };
        let (header, rows) = hot_rows(&g.hot);
        let modes: Vec<&str> = g.modes.iter().map(|m| m.name()).collect();
        let mut notes = vec![format!(
            "{} interleaved round(s) of {} s; each observer started once a round and run through the three workloads, round r in an order rotated by r; the guest's measuring took {:.0} s",
            g.rounds, g.secs, g.elapsed
        )];
        if g.hot.invalid_seen > 0 {
            notes.push(format!(
                "ct-trace counted {} INVALID verdicts during the hot-path runs",
                g.hot.invalid_seen
            ));
        }
        out.push(Section {
            title: format!("{name}: hot path, each attach mode"),
            about: format!("The hot path inside Debian's {} kernel under qemu (one vCPU; TCG here: the CPU is emulated, so the absolute rates mean nothing; only the ratios to no observer in the same run count): no observer, ct-trace with `--attach` {} (the modes this kernel offers) and tcpdump on the node; median of the rounds, min-max, the medians' ratio to no observer's and the min-max of the rounds' own ratios (each run against no observer's run of the same round).", vm.series.name(), modes.join(", ")),
            header,
            rows,
            notes,
        });
        out.push(cost_section(
            format!("{name}: per-program cost (the kernel's own figures)"),
            &format!("inside Debian's {} kernel (TCG: the nanoseconds are the emulated CPU's, far from a real CPU's, but the same emulation for every mode, so modes compare; they depend on the emulation much less than the rates)", vm.series.name()),
            &g.costs,
        ));
    }
    out
}
