//! The VM test matrix of `cargo xtask test`: the root integration tests (by default the `resets`
//! and `invalid` binaries of the `integration-tests` package) inside Debian's 6.1, 6.12 and 7.2
//! kernels (see `vm/`), once per attach mode the kernel supports, one boot per (kernel, mode).
//!
//! The guest runs each test binary with `--test-threads 1 --nocapture` (the tests share fixed
//! namespace names and addresses; uncaptured output shows the `SKIPPED:` lines of passing tests
//! and where a hung test stopped), with `CT_TRACE_BIN`, `CT_TRACE_MODE` and `CT_TRACE_VM` set.
//! The host reads libtest's output back from the console.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::ValueEnum;
use conntrack_common::plan;
use serde_json::Value;

use crate::{
    libtest::Counts,
    print_table,
    vm::{self, Job, JobResult, Outcome, Series},
};

/// The integration test binaries the VMs run by default: those that attach to the kernel.
pub const VM_TESTS: &[&str] = &["resets", "invalid", "exact", "lost", "table"];

/// How ct-trace attaches its INVALID probe (`CT_TRACE_MODE`, ct-trace's `--attach`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Kprobes on conntrack's functions: every kernel of the matrix.
    Kprobe,
    /// The BPF netfilter link: kernels that have it (6.4+).
    Netfilter,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Kprobe, Mode::Netfilter];

    pub fn name(self) -> &'static str {
        self.plan().name()
    }

    /// The plan's mode (conntrack-common's table decides which kernels run it).
    fn plan(self) -> plan::Mode {
        match self {
            Mode::Kprobe => plan::Mode::Kprobe,
            Mode::Netfilter => plan::Mode::Netfilter,
        }
    }

    /// Whether the series' kernel runs the mode: Debian builds its kernels with kprobes and the
    /// BPF netfilter link, so the version decides, by the plan's verdict rows.
    pub fn supported_on(self, s: Series) -> bool {
        self.plan().runs_on(&plan::Capabilities::full(s.version()))
    }
}

/// The (kernel, mode) jobs: every kernel of `kernels` (all when empty) in every mode of `modes`
/// (all when empty) it supports, kernel by kernel, without duplicates.
pub fn jobs(kernels: &[Series], modes: &[Mode]) -> Vec<(Series, Mode)> {
    let kernels = if kernels.is_empty() {
        &Series::ALL[..]
    } else {
        kernels
    };
    let modes = if modes.is_empty() {
        &Mode::ALL[..]
    } else {
        modes
    };
    let mut jobs = Vec::new();
    for &s in kernels {
        for &m in &Mode::ALL {
            if modes.contains(&m) && m.supported_on(s) && !jobs.contains(&(s, m)) {
                jobs.push((s, m));
            }
        }
    }
    jobs
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

/// Why a job failed, in one line; None when it passed: the guest must have exited 0 after every
/// test binary printed its result, with no failed test and at least one test run.
pub fn verdict(r: &JobResult, c: &Counts, binaries: usize) -> Option<String> {
    let failed = || {
        let mut names = c.failures.iter().take(3).cloned().collect::<Vec<_>>();
        if c.failures.len() > 3 {
            names.push("...".into());
        }
        if names.is_empty() {
            format!("{} failed", c.failed)
        } else {
            format!("{} failed: {}", c.failed, names.join(", "))
        }
    };
    match &r.outcome {
        Outcome::Failed(why) if c.failed > 0 => Some(format!("{why}; {}", failed())),
        Outcome::Failed(why) => match &c.last_started {
            Some(t) if c.results < binaries as u64 => {
                Some(format!("{why} (last test started: {t})"))
            }
            _ => Some(why.clone()),
        },
        Outcome::Prepared => Some("not booted".into()),
        Outcome::Passed if c.failed > 0 => Some(failed()),
        Outcome::Passed if c.results < binaries as u64 => Some(format!(
            "only {} of {binaries} test binaries printed a result",
            c.results
        )),
        Outcome::Passed if c.passed == 0 => Some("no test ran".into()),
        Outcome::Passed => None,
    }
}

/// The guest's script of one job.
fn guest_script(
    ct_trace: &Path,
    s: Series,
    mode: Mode,
    binaries: &[(String, PathBuf)],
) -> Result<String> {
    let env = [
        ("CT_TRACE_BIN", ct_trace.to_string_lossy().into_owned()),
        ("CT_TRACE_MODE", mode.name().to_string()),
        ("CT_TRACE_VM", s.name().to_string()),
    ];
    let commands: Vec<Vec<String>> = binaries
        .iter()
        .map(|(_, exe)| {
            vec![
                exe.to_string_lossy().into_owned(),
                "--test-threads".into(),
                "1".into(),
                "--nocapture".into(),
            ]
        })
        .collect();
    vm::script(&env, &commands)
}

/// The outcome of the matrix.
pub struct Report {
    pub jobs: usize,
    pub counts: Counts,
    /// One line per failed job: `6.12/netfilter: why`.
    pub failures: Vec<String>,
    /// (phase, seconds): kernel preparation, then each job's boot.
    pub phases: Vec<(String, f64)>,
}

/// Runs the (kernel, mode) jobs, prints their table, and sums their tests.
/// `timeout`: seconds one job may take; `budget`: seconds all of them may take (later jobs get
/// what is left, or fail unbooted).
pub fn run(
    jobs: &[(Series, Mode)],
    ct_trace: &Path,
    binaries: &[(String, PathBuf)],
    timeout: u64,
    budget: u64,
) -> Result<Report> {
    let vm_jobs = jobs
        .iter()
        .map(|&(series, mode)| {
            Ok(Job {
                series,
                label: mode.name().to_string(),
                script: guest_script(ct_trace, series, mode, binaries)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<&str> = binaries.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!(
        "xtask: vm matrix: {} in {} jobs: {}",
        names.join(", "),
        vm_jobs.len(),
        vm_jobs.iter().map(Job::name).collect::<Vec<_>>().join(", ")
    );
    let runs = vm::run_jobs(
        &vm_jobs,
        &vm::Opts {
            timeout,
            deadline: Some(Instant::now() + Duration::from_secs(budget)),
            ..vm::Opts::default()
        },
    )?;

    Ok(summarize(&runs, binaries.len(), &names))
}

/// Sums each job's tests, prints the matrix's table, then each job's `SKIPPED:` markers and
/// failures.
fn summarize(runs: &vm::Runs, binaries: usize, names: &[&str]) -> Report {
    let mut report = Report {
        jobs: runs.results.len(),
        counts: Counts::default(),
        failures: Vec::new(),
        phases: vec![("vm fetch/initramfs".into(), runs.prepare_secs)],
    };
    let mut table = Vec::new();
    let mut skips = Vec::new();
    let mut panics = Vec::new();
    for r in &runs.results {
        let c = Counts::parse(r.console.iter().map(String::as_str));
        let why = verdict(r, &c, binaries);
        table.push(vec![
            r.series.name().to_string(),
            vm::version_cell(&r.version),
            r.label.clone(),
            if why.is_none() { "passed" } else { "failed" }.into(),
            c.passed.to_string(),
            c.failed.to_string(),
            c.ignored.to_string(),
            c.skipped().to_string(),
            r.exit.map_or("-".into(), |c| c.to_string()),
            r.boot.map_or("-".into(), |s| format!("{s:.1}")),
        ]);
        if let Some(why) = why {
            report.failures.push(format!("{}: {why}", r.name()));
            for p in &c.panics {
                panics.push(format!("{}: {p}", r.name()));
            }
        }
        for l in &c.skip_lines {
            skips.push(format!("{}: {l}", r.name()));
        }
        report
            .phases
            .push((format!("vm {}", r.name()), r.boot.unwrap_or(0.0)));
        report.counts.add(&c);
    }
    println!();
    println!("VM matrix ({}):", names.join(", "));
    print_table(
        &[
            "kernel", "version", "mode", "result", "passed", "failed", "ignored", "skipped",
            "exit", "boot s",
        ],
        &table,
    );
    for l in skips.iter().chain(&panics).chain(&report.failures) {
        println!("{l}");
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libtest::tests::{INVALID, RESETS};

    #[test]
    fn kprobe_everywhere_netfilter_from_6_4() {
        use Mode::*;
        use Series::*;
        assert_eq!(
            jobs(&[], &[]),
            [
                (V6_1, Kprobe),
                (V6_12, Kprobe),
                (V6_12, Netfilter),
                (V7_2, Kprobe),
                (V7_2, Netfilter)
            ]
        );
        assert_eq!(
            jobs(&[V7_2, V6_1, V7_2], &[]),
            [(V7_2, Kprobe), (V7_2, Netfilter), (V6_1, Kprobe)]
        );
        assert_eq!(
            jobs(&[], &[Netfilter]),
            [(V6_12, Netfilter), (V7_2, Netfilter)]
        );
        assert_eq!(jobs(&[V6_1], &[Netfilter]), []);
    }

    fn result(outcome: Outcome, exit: Option<i32>) -> JobResult {
        JobResult {
            series: Series::V6_12,
            label: "netfilter".into(),
            version: String::new(),
            fetch: None,
            initrd: None,
            boot: Some(8.0),
            exit,
            outcome,
            console: Vec::new(),
        }
    }

    #[test]
    fn a_job_passes_only_when_every_binary_passed_something() {
        let ok = Counts::parse(RESETS.lines());
        let bad = Counts::parse(INVALID.lines());
        let pass = result(Outcome::Passed, Some(0));
        assert_eq!(pass.name(), "6.12/netfilter");
        assert_eq!(verdict(&pass, &ok, 1), None);
        assert_eq!(
            verdict(&pass, &ok, 2).as_deref(),
            Some("only 1 of 2 test binaries printed a result")
        );
        assert_eq!(
            verdict(
                &pass,
                &Counts::parse(["test result: ok. 0 passed; 0 failed"]),
                1
            )
            .as_deref(),
            Some("no test ran")
        );
        let exited = result(
            Outcome::Failed("the command exited with 101".into()),
            Some(101),
        );
        assert_eq!(
            verdict(&exited, &bad, 1).as_deref(),
            Some("the command exited with 101; 1 failed: b")
        );
        let hung = result(Outcome::Failed("timed out after 900 s".into()), None);
        assert_eq!(
            verdict(&hung, &Counts::default(), 2).as_deref(),
            Some("timed out after 900 s")
        );
        let stuck = Counts::parse(
            RESETS
                .lines()
                .chain(["", "running 1 test", "test slow ... "]),
        );
        assert_eq!(stuck.last_started.as_deref(), Some("slow"));
        assert_eq!(
            verdict(&hung, &stuck, 2).as_deref(),
            Some("timed out after 900 s (last test started: slow)")
        );
    }

    #[test]
    fn finds_the_wanted_test_executables() {
        let msg = |kind: &str, name: &str, test: bool, exe: &str| {
            format!(
                r#"{{"reason":"compiler-artifact","target":{{"kind":["{kind}"],"name":"{name}"}},"profile":{{"test":{test}}},"executable":{exe}}}"#
            )
        };
        let out = [
            msg("test", "resets", true, r#""/t/deps/resets-1""#),
            msg("bin", "ct-trace", false, r#""/t/ct-trace""#),
            msg(
                "lib",
                "integration_tests",
                true,
                r#""/t/deps/integration_tests-2""#,
            ),
            msg("test", "invalid", true, r#""/t/deps/invalid-3""#),
            msg("test", "cli", true, "null"),
            r#"{"reason":"build-finished","success":true}"#.to_string(),
        ]
        .join("\n");
        let wanted = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let found = test_executables(&out, &wanted(&["invalid", "resets"])).unwrap();
        assert_eq!(
            found,
            [
                ("invalid".to_string(), PathBuf::from("/t/deps/invalid-3")),
                ("resets".to_string(), PathBuf::from("/t/deps/resets-1"))
            ]
        );
        let err = test_executables(&out, &wanted(&["doctor"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no integration test target `doctor` among the built tests (invalid, resets)"
        );
    }

    #[test]
    fn the_guest_gets_mode_binary_and_series() {
        let s = guest_script(
            Path::new("/w/target/release/ct-trace"),
            Series::V6_1,
            Mode::Kprobe,
            &[
                ("resets".into(), "/w/deps/resets-1".into()),
                ("invalid".into(), "/w/deps/invalid-2".into()),
            ],
        )
        .unwrap();
        let lines: Vec<&str> = s.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "export CT_TRACE_BIN=/w/target/release/ct-trace",
                "export CT_TRACE_MODE=kprobe",
                "export CT_TRACE_VM=6.1",
                "rc=0",
                "echo 'ct-trace-vm: $ /w/deps/resets-1 --test-threads 1 --nocapture'",
                "/w/deps/resets-1 --test-threads 1 --nocapture || rc=$?",
                "echo 'ct-trace-vm: $ /w/deps/invalid-2 --test-threads 1 --nocapture'",
                "/w/deps/invalid-2 --test-threads 1 --nocapture || rc=$?",
                "exit $rc",
            ]
        );
    }
}
