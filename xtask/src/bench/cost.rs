//! Per-program cost: what each of ct-trace's BPF programs costs a run, as the kernel itself
//! measures it (`run_cnt` / `run_time_ns` of BPF_OBJ_GET_INFO_BY_FD, which ct-trace prints in
//! its exit summary's `programs`), on the hot-path workloads, in each attach mode the kernel
//! offers.
//!
//! The kernel counts only while `kernel.bpf_stats_enabled` is 1: the bench switches it on for
//! the duration of this part and puts the previous value back after, also on error or panic.
//! Counting adds two clock reads to every run of every BPF program, so the hot-path ratios are
//! measured with the switch as it was, not here.

use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use conntrack_common::plan::{Mode, MODES};
use serde_json::{json, Value};

use crate::host::{output, root};

use super::{
    hotpath::{Servers, Workload, WORKLOADS},
    numbers::group,
    observer::start_ct_trace,
    process::{Out, Proc, ReadyPath},
    report::{median, spread, Section},
    topology::Topo,
    Bins, Config,
};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` until dropped, then the value it had.
struct StatsOn {
    previous: String,
}

impl StatsOn {
    fn enable() -> Result<StatsOn> {
        let previous = std::fs::read_to_string(STATS)
            .with_context(|| format!("reading {STATS}"))?
            .trim()
            .to_string();
        std::fs::write(STATS, "1").with_context(|| format!("writing 1 to {STATS}"))?;
        Ok(StatsOn { previous })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(STATS, &self.previous) {
            eprintln!("bench: could not restore {STATS} to {}: {e}", self.previous);
        }
    }
}

/// One program's counters over one run.
pub(super) struct ProgCost {
    pub(super) program: String,
    pub(super) attach: String,
    pub(super) runs: u64,
    pub(super) run_ns: u64,
    pub(super) missed: Option<u64>,
}

impl ProgCost {
    pub(super) fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_ns as f64 / self.runs as f64)
    }
}

/// ct-trace in one mode during one workload.
pub(super) struct ModeCost {
    pub(super) mode: Mode,
    pub(super) workload: Workload,
    /// Summed over the rounds.
    pub(super) programs: Vec<ProgCost>,
    /// Each round's ns a packet.
    pub(super) per_round: Vec<f64>,
}

impl ModeCost {
    /// Adds another round's counters.
    fn add(&mut self, round: ModeCost) {
        self.per_round
            .push(round.per_packet_ns().unwrap_or(f64::NAN));
        for p in round.programs {
            match self.programs.iter_mut().find(|q| q.program == p.program) {
                Some(q) => {
                    q.runs += p.runs;
                    q.run_ns += p.run_ns;
                    q.missed = q.missed.zip(p.missed).map(|(a, b)| a + b);
                }
                None => self.programs.push(p),
            }
        }
    }

    /// What the mode's verdict programs cost a packet: the sum of their ns a run (the kprobe
    /// mode runs two, the kprobe and the kretprobe, for each packet); `None` when one did not run.
    pub(super) fn per_packet_ns(&self) -> Option<f64> {
        self.mode
            .rows()
            .map(|row| {
                self.programs
                    .iter()
                    .find(|p| p.program == row.program)
                    .and_then(ProgCost::ns_per_run)
            })
            .sum()
    }

    /// Which programs `per_packet_ns` sums.
    pub(super) fn verdict_programs(&self) -> String {
        self.mode
            .rows()
            .map(|r| r.program)
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

#[derive(Default)]
pub(super) struct Costs {
    pub(super) runs: Vec<ModeCost>,
    /// Where the netfilter mode ran: each workload's ns a run of an empty netfilter program at
    /// the same hooks, one value a round (`floor_run`): what any program costs a run here,
    /// the statistics' own clock reads included.
    pub(super) floor: Vec<(Workload, Vec<f64>)>,
    /// Modes ct-trace would not start in, with its one line saying why.
    pub(super) not_offered: Vec<(Mode, String)>,
    /// Where the netfilter mode ran: ns a run of the empty netfilter program in a
    /// BPF_PROG_TEST_RUN loop with the statistics on and off, one pair a sample (`stats_cost`).
    pub(super) test_run: Vec<(f64, f64)>,
}

/// Each mode of `modes` (all of ct-trace's when empty) on each workload, in `cfg.rounds`
/// rounds (round r takes the modes in an order rotated by r, as the hot path does its
/// observers): ct-trace started with `--attach MODE`, one run of the workload, ct-trace stopped
/// and its summary's `programs` read and added up over the rounds. A mode ct-trace refuses to
/// start in is not offered by the kernel.
pub(super) fn costs(topo: &Topo, bins: &Bins, cfg: &Config, modes: &[Mode]) -> Result<Costs> {
    let mut modes: Vec<Mode> = if modes.is_empty() {
        MODES.to_vec()
    } else {
        modes.to_vec()
    };
    let mut servers = Servers::start(topo, bins)?;
    let _stats = StatsOn::enable()?;
    let mut out = Costs::default();
    let base = format!("{}-cost", cfg.shm);
    // Which modes start at all, from a first start each.
    modes.retain(|&mode| {
        match start_ct_trace(topo, bins, &base, &["--attach", mode.name()]) {
            Ok(ct) => ct.stop().is_ok(),
            Err(e) => {
                let why = format!("{e:#}");
                // ct-trace's own line, without "exited before it was ready (exit status: 2)".
                let last = why.lines().last().unwrap_or_default();
                let line = last.split_once("): ").map_or(last, |(_, l)| l).to_string();
                eprintln!("bench: cost: ct-trace --attach {}: {line}", mode.name());
                out.not_offered.push((mode, line));
                false
            }
        }
    });
    // `None`: the floor, an empty netfilter program, in the rotation beside the modes.
    let mut entries: Vec<Option<Mode>> = modes.iter().copied().map(Some).collect();
    if modes.contains(&Mode::Netfilter) {
        entries.push(None);
        out.test_run = stats_cost(cfg.rounds)?;
    }
    for r in 0..cfg.rounds as usize {
        for i in 0..entries.len() {
            let Some(mode) = entries[(r + i) % entries.len()] else {
                for w in WORKLOADS {
                    let ns = floor_run(topo, bins, cfg, &mut servers, w, &base)?;
                    eprintln!(
                        "bench: cost round {}: empty netfilter program {}: {ns:.0} ns a run",
                        r + 1,
                        w.name()
                    );
                    match out.floor.iter_mut().find(|(fw, _)| *fw == w) {
                        Some((_, v)) => v.push(ns),
                        None => out.floor.push((w, vec![ns])),
                    }
                }
                continue;
            };
            for w in WORKLOADS {
                let ct = start_ct_trace(topo, bins, &base, &["--attach", mode.name()])?;
                servers
                    .run(w, topo, bins, cfg.secs)
                    .with_context(|| format!("{} with ct-trace {}", w.name(), mode.name()))?;
                let (summary, _) = ct.stop()?;
                let round = ModeCost {
                    mode,
                    workload: w,
                    programs: programs(&summary)?,
                    per_round: Vec::new(),
                };
                let ns = round.per_packet_ns().unwrap_or(f64::NAN);
                eprintln!(
                    "bench: cost round {}: {} {}: {ns:.0} ns a packet ({})",
                    r + 1,
                    mode.name(),
                    w.name(),
                    round.verdict_programs()
                );
                match out
                    .runs
                    .iter_mut()
                    .find(|m| m.mode == mode && m.workload == w)
                {
                    Some(m) => m.add(round),
                    None => {
                        let mut m = round;
                        m.per_round.push(ns);
                        out.runs.push(m);
                    }
                }
            }
        }
    }
    // In the modes' order, as the tables read best.
    out.runs
        .sort_by_key(|m| (modes.iter().position(|&x| x == m.mode), m.workload as u8));
    Ok(out)
}

/// One run of workload `w` with an empty netfilter program (`r0 = NF_ACCEPT`,
/// tests/scripts/nf_floor.py) attached where ct-trace's verdict program goes (IPv4 PRE_ROUTING
/// and LOCAL_OUT, behind conntrack): its ns a run, the kernel's own figure.
fn floor_run(
    topo: &Topo,
    bins: &Bins,
    cfg: &Config,
    servers: &mut Servers,
    w: Workload,
    base: &str,
) -> Result<f64> {
    let ready = format!("{base}-floor.ready");
    let script = root().join("tests/scripts/nf_floor.py");
    let script = script.to_string_lossy();
    let env = format!("CTT_READY_FILE={ready}");
    let argv = ["env", env.as_str(), "python3", &script, "empty"];
    let mut p = Proc::start_ready(
        &topo.node,
        &argv,
        Some(ReadyPath::new(&ready)),
        Out::Keep,
        Out::Keep,
    )?;
    p.wait_ready(
        "the empty netfilter program",
        Duration::from_secs(30),
        Duration::from_millis(10),
    )
    .context("the empty netfilter program did not attach")?;
    let run = servers
        .run(w, topo, bins, cfg.secs)
        .with_context(|| format!("{} with an empty netfilter program", w.name()));
    let f = p.interrupt(Duration::from_secs(10))?;
    run?;
    // `RUNS NS`, the last line.
    let last = f.stdout.lines().last().unwrap_or_default().to_string();
    let (runs, ns) = last
        .split_once(' ')
        .and_then(|(r, n)| Some((r.parse::<f64>().ok()?, n.parse::<f64>().ok()?)))
        .with_context(|| format!("nf_floor.py printed `{last}`: {}", f.stderr.trim()))?;
    ensure!(runs > 0.0, "the empty netfilter program never ran");
    Ok(ns / runs)
}

/// Samples of what the statistics themselves cost a run, and an upper bound on what an empty
/// program costs without them: the empty netfilter program run 1,000,000 times by
/// BPF_PROG_TEST_RUN (6.4+, commit 2b99ef22e0d2), which times the whole loop, not each run, so
/// its ns a run carry no clock reads of their own; once with `kernel.bpf_stats_enabled=1`
/// (each run then timed by `__bpf_prog_run()`) and once with 0, alternating. The loop's own
/// per-run bookkeeping is in both, so the "off" figure bounds an empty run from above.
fn stats_cost(samples: u32) -> Result<Vec<(f64, f64)>> {
    let script = root().join("tests/scripts/nf_floor.py");
    let one = || -> Result<f64> {
        let text = output(
            std::process::Command::new("python3")
                .arg(&script)
                .args(["testrun", "empty"]),
        )?;
        // `N ns a run (BPF_PROG_TEST_RUN loop)`
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("nf_floor.py testrun printed `{}`", text.trim()))
    };
    let mut pairs = Vec::new();
    for _ in 0..samples {
        let on = one()?;
        std::fs::write(STATS, "0").with_context(|| format!("writing 0 to {STATS}"))?;
        let off = one();
        // Back on for the rest of this part whatever the "off" run did.
        std::fs::write(STATS, "1").with_context(|| format!("writing 1 to {STATS}"))?;
        let off = off?;
        eprintln!("bench: cost: empty program, test-run loop: {on:.0} ns a run with the statistics, {off:.0} without");
        pairs.push((on, off));
    }
    Ok(pairs)
}

impl Costs {
    /// What the statistics cost a run (median of the samples' on - off), and an empty run's
    /// cost without them, at most (median of the "off" samples).
    pub(super) fn stats_and_empty(&self) -> Option<(f64, f64)> {
        if self.test_run.is_empty() {
            return None;
        }
        let diff: Vec<f64> = self.test_run.iter().map(|(on, off)| on - off).collect();
        let off: Vec<f64> = self.test_run.iter().map(|&(_, off)| off).collect();
        Some((median(&diff), median(&off)))
    }

    /// Each workload's floor (ns a run of an empty netfilter program), median of the rounds.
    pub(super) fn floor_of(&self, w: Workload) -> Option<f64> {
        self.floor
            .iter()
            .find(|(fw, _)| *fw == w)
            .map(|(_, v)| median(v))
    }
}

/// The summary's `programs`, those the kernel counted runs of.
fn programs(summary: &Value) -> Result<Vec<ProgCost>> {
    let list = summary["programs"]
        .as_array()
        .with_context(|| format!("no programs in ct-trace's summary: {summary}"))?;
    Ok(list
        .iter()
        .filter_map(|p| {
            Some(ProgCost {
                program: p["program"].as_str()?.to_string(),
                attach: p["attach"].as_str().unwrap_or_default().to_string(),
                runs: p["runs"].as_u64()?,
                run_ns: p["run_ns"].as_u64()?,
                missed: p["missed_runs"].as_u64(),
            })
        })
        .collect())
}

impl Costs {
    /// The guest's form (the host reads it back with `from_json`).
    pub(super) fn to_json(&self) -> Value {
        json!({
            "runs": self.runs.iter().map(|m| json!({
                "mode": m.mode.name(),
                "workload": m.workload.name(),
                "per_round": m.per_round,
                "programs": m.programs.iter().map(|p| json!({
                    "program": p.program,
                    "attach": p.attach,
                    "runs": p.runs,
                    "run_ns": p.run_ns,
                    "missed_runs": p.missed,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "floor": self.floor.iter()
                .map(|(w, v)| json!({"workload": w.name(), "per_round": v}))
                .collect::<Vec<_>>(),
            "not_offered": self.not_offered.iter()
                .map(|(m, why)| json!({"mode": m.name(), "why": why}))
                .collect::<Vec<_>>(),
            "test_run": self.test_run.iter().map(|(on, off)| json!([on, off])).collect::<Vec<_>>(),
        })
    }

    pub(super) fn from_json(v: &Value) -> Result<Costs> {
        let mode = |v: &Value| {
            let name = v.as_str().unwrap_or_default();
            MODES
                .into_iter()
                .find(|m| m.name() == name)
                .with_context(|| format!("no attach mode `{name}`"))
        };
        let mut out = Costs::default();
        for r in v["runs"].as_array().context("no runs in the costs")? {
            let name = r["workload"].as_str().unwrap_or_default();
            out.runs.push(ModeCost {
                mode: mode(&r["mode"])?,
                workload: Workload::from_name(name)
                    .with_context(|| format!("no workload `{name}`"))?,
                programs: programs(r)?,
                per_round: r["per_round"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .collect(),
            });
        }
        for f in v["floor"].as_array().into_iter().flatten() {
            let name = f["workload"].as_str().unwrap_or_default();
            let w = Workload::from_name(name).with_context(|| format!("no workload `{name}`"))?;
            let v = f["per_round"].as_array().into_iter().flatten();
            out.floor.push((w, v.filter_map(Value::as_f64).collect()));
        }
        for p in v["test_run"].as_array().into_iter().flatten() {
            if let (Some(on), Some(off)) = (p[0].as_f64(), p[1].as_f64()) {
                out.test_run.push((on, off));
            }
        }
        for n in v["not_offered"].as_array().into_iter().flatten() {
            let why = n["why"].as_str().unwrap_or_default().to_string();
            out.not_offered.push((mode(&n["mode"])?, why));
        }
        Ok(out)
    }

    /// The per-packet cost of `mode` on `w`, when it was measured.
    pub(super) fn per_packet(&self, mode: Mode, w: Workload) -> Option<f64> {
        self.runs
            .iter()
            .find(|m| m.mode == mode && m.workload == w)
            .and_then(ModeCost::per_packet_ns)
    }
}

/// The table: one row per program that ran, per mode and workload; the notes give each
/// mode's cost a packet (its verdict programs summed).
pub(super) fn cost_section(title: String, where_: &str, costs: &Costs) -> Section {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for m in &costs.runs {
        for p in m.programs.iter().filter(|p| p.runs > 0) {
            rows.push(vec![
                m.mode.name().to_string(),
                m.workload.name().to_string(),
                p.program.clone(),
                p.attach.clone(),
                group(p.runs),
                group(p.run_ns),
                p.ns_per_run().map_or("-".into(), |v| format!("{v:.0}")),
                p.missed.map_or("-".into(), group),
            ]);
        }
        notes.push(format!(
            "{}, {}: {} ns a packet ({}; the rounds' own: {})",
            m.mode.name(),
            m.workload.name(),
            m.per_packet_ns().map_or("-".into(), |v| format!("{v:.0}")),
            m.verdict_programs(),
            spread(&m.per_round, |v| format!("{v:.0}"))
        ));
    }
    if !costs.floor.is_empty() {
        let each: Vec<String> = costs
            .floor
            .iter()
            .map(|(w, v)| {
                let of = |x: f64| format!("{x:.0}");
                format!("{} {} ns ({})", w.name(), of(median(v)), spread(v, of))
            })
            .collect();
        notes.push(format!(
            "floor: an empty netfilter program (`r0 = NF_ACCEPT`, tests/scripts/nf_floor.py) at \
             the same hooks, in the same rounds, costs a run: {}. Every program's figure includes \
             what the statistics themselves cost (two clock reads a run, commit 492ecee892c2), \
             and an empty program's figure is that alone: the difference is the program's own work",
            each.join("; ")
        ));
    }
    if let Some((stats, empty)) = costs.stats_and_empty() {
        let on: Vec<f64> = costs.test_run.iter().map(|&(on, _)| on).collect();
        let off: Vec<f64> = costs.test_run.iter().map(|&(_, off)| off).collect();
        let of = |x: f64| format!("{x:.0}");
        notes.push(format!(
            "the statistics' own cost: the same empty program run 1,000,000 times by \
             BPF_PROG_TEST_RUN (which times the loop, not each run) takes {} ns a run ({}) with \
             kernel.bpf_stats_enabled=1 and {} ns ({}) with 0, {} samples alternating: {stats:.0} \
             ns a run are the statistics', and an empty program costs at most {empty:.0} ns a \
             run without them (the loop's own bookkeeping included)",
            of(median(&on)),
            spread(&on, of),
            of(median(&off)),
            spread(&off, of),
            costs.test_run.len()
        ));
    }
    for (m, why) in &costs.not_offered {
        notes.push(format!(
            "{} mode: not offered by this kernel (ct-trace --attach {}: {why})",
            m.name(),
            m.name()
        ));
    }
    Section {
        title,
        about: format!("What each of ct-trace's BPF programs cost {where_}, as the kernel itself counts it (`kernel.bpf_stats_enabled=1` for this part only, restored after; runs and run_time_ns from BPF_OBJ_GET_INFO_BY_FD, which ct-trace prints in its exit summary's `programs`): in interleaved rounds, ct-trace started with `--attach MODE` in each mode the kernel offers for one run of each hot-path workload, then stopped; runs and ns summed over the rounds, and the rounds' own ns a packet as min-max. A packet through the node runs the mode's verdict programs once at each conntrack hook it passes; ns a packet = the sum of their ns a run. The kernel times the programs alone: the way in (a kprobe's breakpoint, a kretprobe's return trampoline, a BPF trampoline, the netfilter hook's indirect call) is not in these figures; the hot-path ratios include it."),
        header: vec![
            "mode",
            "workload",
            "program",
            "attach",
            "runs",
            "total ns",
            "ns/run",
            "missed runs",
        ],
        rows,
        notes,
    }
}
