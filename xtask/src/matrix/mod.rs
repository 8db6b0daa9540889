//! The VM test matrix of `cargo xtask test`: the root integration tests (by default the targets
//! of `VM_TESTS` of the `integration-tests` package, and those of `VM_EXTRA_TESTS` on their
//! kernels) inside Debian's 5.10, 6.1, 6.12 and 7.2 kernels (see `vm/`), once per attach mode the
//! kernel supports, one boot per (kernel, mode), several boots side by side (`--vm-jobs`).
//!
//! The guest runs each test binary with `--test-threads 1 --nocapture` (the tests share fixed
//! namespace names and addresses; uncaptured output shows the `SKIPPED:` lines of passing tests
//! and where a hung test stopped), with `CT_TRACE_BIN`, `CT_TRACE_MODE` and `CT_TRACE_VM` set.
//! The host reads libtest's output back from the console (`report.rs`).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::ValueEnum;
use conntrack_common::plan;
use serde_json::Value;

pub use self::report::Report;
use self::report::{common_tests, extra_cell, summarize};
use crate::{
    host::{cargo, phase, CARGO_TEST},
    vm::{self, Job, Series},
};

mod report;

/// The integration test binaries the VMs run by default on every kernel: those that attach to
/// the kernel.
pub const VM_TESTS: &[&str] = &["resets", "invalid", "exact", "lost", "table"];

/// Integration test binaries the VMs run by default on some kernels only, in a job of their own
/// after the others (in the kernel's first mode): each costs minutes of TCG, and a job of their
/// own keeps the longest job short, so that two side by side end together. `lab` (`ct-trace lab run`'s scenarios): on 5.10, where the
/// boom-server packet is INVALID and costs a reset, and on 6.1, which IGNOREs it (conntrack
/// commit 6e250dcbff1d) - both branches of its kernel-dependent test. `no_procfs` (the kernel's
/// counters through ctnetlink): on 5.10, whose ctnetlink still sends the counters 5.14 dropped
/// (`searched`, `ignore`), and on 6.1.
pub const VM_EXTRA_TESTS: &[(&str, &[Series])] = &[
    ("lab", &[Series::V5_10, Series::V6_1]),
    ("no_procfs", &[Series::V5_10, Series::V6_1]),
];

/// How ct-trace attaches its INVALID probe (`CT_TRACE_MODE`, ct-trace's `--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Kprobes on conntrack's functions: every kernel of the matrix.
    Kprobe,
    /// The BPF netfilter link: kernels that have it (6.4+).
    Netfilter,
    /// One fexit program on nf_conntrack_in: kernels with module BTF (5.11+); by default only
    /// on [`FEXIT_SERIES`], with [`FEXIT_TESTS`].
    Fexit,
}

/// The kernels the matrix runs the fexit mode on by default: Debian 12's 6.1, the kernel `auto`
/// gives it (no netfilter link), and Debian 13's 6.12, the newest kernel a node may run with
/// the netfilter link unusable (another program at its priorities, a policy refusing it), whose
/// nf_conntrack_in and trampolines differ from 6.1's. 7.2 takes the netfilter link in `auto`;
/// `--vm-mode fexit` runs it too.
pub const FEXIT_SERIES: &[Series] = &[Series::V6_1, Series::V6_12];

/// The kernels the matrix runs the kprobe mode on by default: the oldest (5.10: no module BTF,
/// kprobes are its only way in), 6.1 (kprobes beside fexit) and the newest (7.2). 6.12 runs its
/// fexit and netfilter jobs instead: its kprobe job would prove the same kprobe code between
/// 6.1's and 7.2's (the same prototypes of nf_conntrack_in and the log helpers), at the cost of
/// a full job of TCG, and CI must end within its hour. `--vm-mode kprobe` runs it too.
pub const KPROBE_SERIES: &[Series] = &[Series::V5_10, Series::V6_1, Series::V7_2];

/// What a default fexit job runs: the fexit program only replaces the verdict's source, so the
/// targets that count verdicts against the kernel (`exact`, `lost`: entries lost, seen by the
/// same program; `invalid`: each crafted INVALID packet found and attributed). `resets` and
/// `table` do not depend on the verdict's source and run in the kprobe job of the same kernel;
/// leaving them out keeps CI under its hour (two jobs at a time). All three targets took 712 s
/// alone on 6.1 under TCG (exact 319 s of it): hence [`FEXIT_FILTERS`].
pub const FEXIT_TESTS: &[&str] = &["exact", "lost", "invalid"];

/// The tests of a [`FEXIT_TESTS`] target a default fexit job runs (libtest name filters; a
/// target not listed runs whole): of `exact`, ten resets in a row are ten attributions, a flood
/// is counted as the kernel counts it, and a SIGKILLed ct-trace leaves nothing attached (the
/// trampoline's link); the others do not depend on the verdict's source.
pub const FEXIT_FILTERS: &[(&str, &[&str])] = &[(
    "exact",
    &[
        "ten_out_of_window_replies_in_a_row_are_ten_attributions",
        "a_flood_is_counted_exactly",
        "two_instances_both_work_and_sigkill_leaves_nothing_attached",
    ],
)];

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Kprobe, Mode::Netfilter, Mode::Fexit];

    pub fn name(self) -> &'static str {
        self.plan().name()
    }

    /// The plan's mode (conntrack-common's table decides which kernels run it).
    fn plan(self) -> plan::Mode {
        match self {
            Mode::Kprobe => plan::Mode::Kprobe,
            Mode::Netfilter => plan::Mode::Netfilter,
            Mode::Fexit => plan::Mode::Fexit,
        }
    }

    /// Whether the series' kernel runs the mode: Debian builds its kernels with kprobes, BPF
    /// trampolines, module BTF and the BPF netfilter link, so the version decides, by the plan's
    /// verdict rows.
    pub fn supported_on(self, s: Series) -> bool {
        self.plan().runs_on(&plan::Capabilities::full(s.version()))
    }
}

/// The (kernel, mode) jobs: every kernel of `kernels` (all when empty) in every mode of `modes`
/// (all when empty: fexit only on [`FEXIT_SERIES`], kprobe only on [`KPROBE_SERIES`]) it
/// supports, kernel by kernel, without duplicates.
pub fn jobs(kernels: &[Series], modes: &[Mode]) -> Vec<(Series, Mode)> {
    let kernels = if kernels.is_empty() {
        &Series::ALL[..]
    } else {
        kernels
    };
    let explicit = !modes.is_empty();
    let modes = if modes.is_empty() {
        &Mode::ALL[..]
    } else {
        modes
    };
    let mut jobs = Vec::new();
    for &s in kernels {
        for &m in &Mode::ALL {
            let by_default = match m {
                Mode::Fexit => FEXIT_SERIES.contains(&s),
                Mode::Kprobe => KPROBE_SERIES.contains(&s),
                Mode::Netfilter => true,
            };
            let wanted = modes.contains(&m) && (by_default || explicit);
            if wanted && m.supported_on(s) && !jobs.contains(&(s, m)) {
                jobs.push((s, m));
            }
        }
    }
    jobs
}

/// The test targets a job on `s` runs: `asked` when not empty (`--vm-test`), else `VM_TESTS`
/// and the `VM_EXTRA_TESTS` of `s`.
pub fn job_tests(s: Series, asked: &[String]) -> Vec<String> {
    if !asked.is_empty() {
        return asked.to_vec();
    }
    let extra = VM_EXTRA_TESTS
        .iter()
        .filter(|(_, on)| on.contains(&s))
        .map(|(t, _)| *t);
    VM_TESTS
        .iter()
        .copied()
        .chain(extra)
        .map(String::from)
        .collect()
}

/// The boots of the matrix: (kernel, mode, test targets, extra). Every pair runs `asked`, or
/// `VM_TESTS`; with nothing asked, each kernel's `VM_EXTRA_TESTS` run in one more job of its
/// first mode, after all the others (the pool takes jobs in order: the long ones first), and a
/// fexit pair runs [`FEXIT_TESTS`] in a job labelled like those, last.
pub fn matrix_jobs(
    pairs: &[(Series, Mode)],
    asked: &[String],
) -> Vec<(Series, Mode, Vec<String>, bool)> {
    let base: Vec<String> = if asked.is_empty() {
        VM_TESTS.iter().map(|t| t.to_string()).collect()
    } else {
        asked.to_vec()
    };
    // With nothing asked, a fexit pair runs FEXIT_TESTS in a job labelled as an extra one, last.
    let subset = |m: Mode| asked.is_empty() && m == Mode::Fexit;
    let mut out: Vec<_> = pairs
        .iter()
        .filter(|&&(_, m)| !subset(m))
        .map(|&(s, m)| (s, m, base.clone(), false))
        .collect();
    let fexit: Vec<_> = pairs
        .iter()
        .filter(|&&(_, m)| subset(m))
        .map(|&(s, m)| {
            (
                s,
                m,
                FEXIT_TESTS.iter().map(|t| t.to_string()).collect(),
                true,
            )
        })
        .collect();
    if asked.is_empty() {
        for (i, &(s, m)) in pairs.iter().enumerate() {
            // Not in a fexit job's mode: `--vm-mode fexit` runs only the fexit job.
            let first_of_kernel =
                !subset(m) && pairs[..i].iter().all(|&(p, pm)| p != s || subset(pm));
            let extra: Vec<String> = VM_EXTRA_TESTS
                .iter()
                .filter(|(_, on)| on.contains(&s))
                .map(|(t, _)| t.to_string())
                .collect();
            if first_of_kernel && !extra.is_empty() {
                out.push((s, m, extra, true));
            }
        }
    }
    out.extend(fexit);
    out
}

/// Every test target some of `jobs` runs, each once: what to build.
pub fn all_tests(jobs: &[(Series, Mode)], asked: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for &(s, _) in jobs {
        for t in job_tests(s, asked) {
            if !all.contains(&t) {
                all.push(t);
            }
        }
    }
    all
}

/// The executables of the wanted integration test targets, in `wanted` order, from the output of
/// `cargo test --no-run --message-format=json`: `compiler-artifact` messages of test-profile
/// targets of kind `test` (integration tests) whose name is wanted.
pub fn test_executables(messages: &str, wanted: &[String]) -> Result<Vec<(String, PathBuf)>> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let target = &msg["target"];
        if !target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"))
        {
            continue;
        }
        let (Some(name), Some(exe)) = (target["name"].as_str(), msg["executable"].as_str()) else {
            continue;
        };
        names.push(name.to_string());
        if wanted.iter().any(|w| w == name) && !found.iter().any(|(n, _)| n == name) {
            found.push((name.to_string(), PathBuf::from(exe)));
        }
    }
    let mut out = Vec::new();
    for w in wanted {
        match found.iter().find(|(n, _)| n == w) {
            Some(f) => out.push(f.clone()),
            None => {
                names.sort();
                names.dedup();
                bail!(
                    "no integration test target `{w}` among the built tests ({})",
                    names.join(", ")
                );
            }
        }
    }
    Ok(out)
}

/// `cargo xtask test`'s flags for the VM matrix.
#[derive(clap::Args)]
pub struct Args {
    /// Restrict the VM matrix to this kernel series (repeatable) [default: 5.10, 6.1, 6.12 and
    /// 7.2].
    #[arg(long = "vm-kernel", value_name = "SERIES")]
    pub vm_kernels: Vec<Series>,
    /// Restrict the VM matrix to this attach mode (repeatable) [default: kprobe on every kernel,
    /// netfilter on 6.4+].
    #[arg(long = "vm-mode", value_enum, value_name = "MODE")]
    pub vm_modes: Vec<Mode>,
    /// Integration test target to run in the VMs (repeatable), on every kernel [default:
    /// `matrix::VM_TESTS` everywhere and `matrix::VM_EXTRA_TESTS` on their kernels].
    #[arg(long = "vm-test", value_name = "NAME")]
    pub vm_tests: Vec<String>,
    /// Prebuilt integration test binary for the VMs, NAME=PATH (repeatable; for work on xtask
    /// itself): replaces `--vm-test` and the build of the test binaries; with `--vm-only`
    /// nothing is built, ct-trace is taken as it is in target/release.
    #[arg(long = "vm-binary", value_name = "NAME=PATH", hide = true, value_parser = parse_binary)]
    pub vm_binaries: Vec<(String, PathBuf)>,
    /// Seconds one VM job (boot, tests, power-off) may take (under TCG on a 2-CPU machine, two
    /// side by side, beside other work: 580-730 s; 5.10's, the longest, about 1250 s: its
    /// namespaces take 3.7 times 6.1's to make, and each ct-trace start 1.2 times; with the lab
    /// in the same job it took 1667 s, hence the lab's jobs of their own).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub vm_timeout: u64,
    /// VM jobs side by side, each guest with one vCPU [default: the number of host CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub vm_jobs: Option<u32>,
    /// Seconds the whole VM matrix may take (keeps CI within its limit when jobs hang): later
    /// jobs get the time left as their timeout, or fail without booting. The six jobs took
    /// 1495 s two at a time on a quiet 2-CPU machine (before 5.10), 2953 s with 5.10 and the lab
    /// beside other work.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub vm_budget: u64,
}

fn parse_binary(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    let path = Path::new(path)
        .canonicalize()
        .map_err(|e| format!("{path}: {e}"))?;
    Ok((name.to_string(), path))
}

/// The root integration tests inside VMs: finds the test binaries (built by the host run, or now
/// with `--vm-only`), then runs the (kernel, mode) jobs.
pub fn from_args(a: &Args, bin: &Path, phases: &mut Vec<(String, f64)>) -> Result<Report> {
    let pairs = jobs(&a.vm_kernels, &a.vm_modes);
    ensure!(
        !pairs.is_empty(),
        "no VM job: none of the kernels asked for supports the modes asked for"
    );
    let (asked, built) = if a.vm_binaries.is_empty() {
        let wanted = all_tests(&pairs, &a.vm_tests);
        let built = phase(phases, "vm test build", || -> Result<_> {
            let out = cargo()
                .args(CARGO_TEST)
                .args(["--no-run", "--message-format=json-render-diagnostics"])
                .env("CT_TRACE_BIN", bin)
                .stderr(Stdio::inherit())
                .output()
                .context("running cargo test --no-run")?;
            ensure!(
                out.status.success(),
                "cargo test --no-run failed ({})",
                out.status
            );
            test_executables(&String::from_utf8_lossy(&out.stdout), &wanted)
        })?;
        (a.vm_tests.clone(), built)
    } else {
        // Prebuilt binaries: exactly these, on every kernel.
        let names = a.vm_binaries.iter().map(|(n, _)| n.clone()).collect();
        (names, a.vm_binaries.clone())
    };
    let jobs = matrix_jobs(&pairs, &asked)
        .into_iter()
        .map(|(s, m, tests, extra)| MatrixJob::new(s, m, &tests, &built, extra))
        .collect::<Result<Vec<_>>>()?;
    let width = a.vm_jobs.map_or_else(vm::host_cpus, |n| n as usize);
    let mut report = run(&jobs, bin, a.vm_timeout, a.vm_budget, width)?;
    phases.append(&mut report.phases);
    Ok(report)
}

/// One job of the matrix: a kernel, an attach mode, and the test binaries it runs.
pub struct MatrixJob {
    pub series: Series,
    pub mode: Mode,
    pub binaries: Vec<(String, PathBuf)>,
    /// Runs only a kernel's `VM_EXTRA_TESTS` (labelled `MODE+TESTS`).
    pub extra: bool,
}

impl MatrixJob {
    /// The job of (`series`, `mode`) running `tests`, from `built` (name, executable).
    pub fn new(
        series: Series,
        mode: Mode,
        tests: &[String],
        built: &[(String, PathBuf)],
        extra: bool,
    ) -> Result<Self> {
        let binaries = tests
            .iter()
            .map(|t| match built.iter().find(|(n, _)| n == t) {
                Some(b) => Ok(b.clone()),
                None => bail!("no test binary `{t}` for {}", series.name()),
            })
            .collect::<Result<_>>()?;
        Ok(MatrixJob {
            series,
            mode,
            binaries,
            extra,
        })
    }

    /// The job's label: its mode, and for an extra job its tests (`kprobe+lab`).
    pub fn label(&self) -> String {
        if self.extra {
            format!("{}+{}", self.mode.name(), self.names().join("+"))
        } else {
            self.mode.name().to_string()
        }
    }

    fn names(&self) -> Vec<&str> {
        self.binaries.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The guest's script of one job.
fn guest_script(ct_trace: &Path, job: &MatrixJob) -> Result<String> {
    let env = [
        ("CT_TRACE_BIN", ct_trace.to_string_lossy().into_owned()),
        ("CT_TRACE_MODE", job.mode.name().to_string()),
        ("CT_TRACE_VM", job.series.name().to_string()),
    ];
    let commands: Vec<Vec<String>> = job
        .binaries
        .iter()
        .map(|(name, exe)| {
            let filters = FEXIT_FILTERS
                .iter()
                .filter(|(t, _)| job.mode == Mode::Fexit && job.extra && t == name)
                .flat_map(|(_, f)| f.iter().map(|f| f.to_string()));
            [
                exe.to_string_lossy().into_owned(),
                "--test-threads".into(),
                "1".into(),
                "--nocapture".into(),
            ]
            .into_iter()
            .chain(filters)
            .collect()
        })
        .collect();
    vm::script(&env, &commands)
}

/// Runs the jobs, `width` boots at a time, prints their table, and sums their tests.
/// `timeout`: seconds one job may take; `budget`: seconds all of them may take (a job starting
/// later gets what is left as its timeout, or fails unbooted).
pub fn run(
    jobs: &[MatrixJob],
    ct_trace: &Path,
    timeout: u64,
    budget: u64,
    width: usize,
) -> Result<Report> {
    let vm_jobs = jobs
        .iter()
        .map(|j| {
            Ok(Job {
                series: j.series,
                label: j.label(),
                script: guest_script(ct_trace, j)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let common = common_tests(jobs);
    eprintln!(
        "xtask: vm matrix: {} in {} jobs, {} at a time: {}",
        common.join(", "),
        vm_jobs.len(),
        width.clamp(1, vm_jobs.len().max(1)),
        jobs.iter()
            .zip(&vm_jobs)
            .map(|(j, v)| match extra_cell(j, &common).as_str() {
                "-" => v.name(),
                extra => format!("{} (+{extra})", v.name()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let runs = vm::run_jobs(
        &vm_jobs,
        &vm::Opts {
            timeout,
            jobs: width,
            deadline: Some(Instant::now() + Duration::from_secs(budget)),
            ..vm::Opts::default()
        },
    )?;

    Ok(summarize(&runs, jobs))
}

#[cfg(test)]
mod tests;
