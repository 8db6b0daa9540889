//! The matrix's outcome: each job's verdict from its console (libtest's output), the table of
//! jobs in job order whatever order they ended in, the `SKIPPED:` markers, the failed tests'
//! panic messages and one line per failed job.

use crate::{
    host::print_table,
    libtest::Counts,
    vm::{self, JobResult, Outcome},
};

use super::MatrixJob;

/// The outcome of the matrix.
pub struct Report {
    pub jobs: usize,
    pub counts: Counts,
    /// One line per failed job: `6.12/netfilter: why`.
    pub failures: Vec<String>,
    /// (phase, seconds): kernel preparation, then the boots (side by side).
    pub phases: Vec<(String, f64)>,
}

/// Why a job failed, in one line; None when it passed: the guest must have exited 0 after every
/// test binary printed its result, with no failed test and at least one test run.
fn verdict(r: &JobResult, c: &Counts, binaries: usize) -> Option<String> {
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

/// The test targets every job but the extra ones runs, in the first job's order.
pub(super) fn common_tests(jobs: &[MatrixJob]) -> Vec<&str> {
    let mut base = jobs.iter().filter(|j| !j.extra).peekable();
    let Some(first) = base.peek() else {
        return Vec::new();
    };
    let names = first.names();
    names
        .into_iter()
        .filter(|t| {
            jobs.iter()
                .filter(|j| !j.extra)
                .all(|j| j.names().contains(t))
        })
        .collect()
}

/// The job's targets beyond the `common` ones, or `-`.
pub(super) fn extra_cell(job: &MatrixJob, common: &[&str]) -> String {
    let extra: Vec<&str> = job
        .names()
        .into_iter()
        .filter(|t| !common.contains(t))
        .collect();
    if extra.is_empty() {
        "-".into()
    } else {
        extra.join(",")
    }
}

/// Sums each job's tests, prints the matrix's table (in job order, whatever order the jobs ended
/// in), then each job's `SKIPPED:` markers and failures.
pub(super) fn summarize(runs: &vm::Runs, jobs: &[MatrixJob]) -> Report {
    let mut report = Report {
        jobs: runs.results.len(),
        counts: Counts::default(),
        failures: Vec::new(),
        phases: vec![
            ("vm fetch/initramfs".into(), runs.prepare_secs),
            (
                format!(
                    "vm boots ({} jobs, {} at a time)",
                    runs.results.len(),
                    runs.width
                ),
                runs.boots_secs,
            ),
        ],
    };
    let common = common_tests(jobs);
    let mut table = Vec::new();
    let mut skips = Vec::new();
    let mut panics = Vec::new();
    for (r, job) in runs.results.iter().zip(jobs) {
        let c = Counts::parse(r.console.iter().map(String::as_str));
        let why = verdict(r, &c, job.binaries.len());
        table.push(vec![
            r.series.name().to_string(),
            vm::version_cell(&r.version),
            r.label.clone(),
            extra_cell(job, &common),
            if why.is_none() { "passed" } else { "failed" }.into(),
            c.passed.to_string(),
            c.failed.to_string(),
            c.ignored.to_string(),
            c.skipped().to_string(),
            r.exit.map_or("-".into(), |c| c.to_string()),
            vm::secs_cell(r.start),
            vm::secs_cell(r.boot),
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
        report.counts.add(&c);
    }
    println!();
    println!(
        "VM matrix ({}; start s: after the first boot):",
        common.join(", ")
    );
    print_table(
        &[
            "kernel", "version", "mode", "extra", "result", "passed", "failed", "ignored",
            "skipped", "exit", "start s", "wall s",
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
    use crate::{
        libtest::tests::{INVALID, RESETS},
        vm::Series,
    };

    fn result(outcome: Outcome, exit: Option<i32>) -> JobResult {
        JobResult {
            series: Series::V6_12,
            label: "netfilter".into(),
            version: String::new(),
            fetch: None,
            initrd: None,
            start: Some(0.0),
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
}
