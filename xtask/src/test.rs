//! `cargo xtask test`: lint, the unit and root integration tests on the host, the bench's
//! smoke, then the VM matrix (`matrix/`); the phases timed and every count read from libtest's
//! output (`libtest.rs`).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    bench,
    host::{cargo, phase, print_table, root, run, CARGO_TEST},
    libtest::Counts,
    lint, matrix,
};

#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip the lint step.
    #[arg(long)]
    no_lint: bool,
    /// Host tests only: skip the VM matrix (quick iteration).
    #[arg(long, conflicts_with = "vm_only")]
    no_vm: bool,
    /// The VM matrix only: no lint, no host tests (ct-trace and the test binaries are still
    /// built).
    #[arg(long)]
    vm_only: bool,
    #[command(flatten)]
    pub vm: matrix::Args,
    /// Extra arguments for the host's `cargo test` test binaries (after `--`; not for the VMs).
    #[arg(last = true)]
    args: Vec<String>,
}

/// The ct-trace the DaemonSet's image carries (deploy/image/build.sh's default binary): without
/// the lab, into target/image.
const IMAGE_BUILD: &[&str] = &[
    "build",
    "--release",
    "-p",
    "conntrack-user",
    "--no-default-features",
    "--target-dir",
    "target/image",
];

pub fn test(a: &TestArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // The integration tests would return early and count as passed: refuse instead.
        bail!("the integration tests create network namespaces and load eBPF: run `sudo cargo xtask test` (CI runs as root)");
    }
    let start = Instant::now();
    let mut phases = Vec::new();
    if !a.no_lint && !a.vm_only {
        phase(&mut phases, "host lint", lint::lint)?;
    }
    // The integration tests drive the real binary; `cli` and `deploy` also the image's (no lab),
    // in a target directory of its own so that neither build replaces the other's ct-trace.
    if !a.vm_only || a.vm.vm_binaries.is_empty() {
        phase(&mut phases, "host build", || {
            run(cargo().args(["build", "--release", "-p", "conntrack-user"]))
        })?;
    }
    if !a.vm_only {
        phase(
            &mut phases,
            "image build",
            || run(cargo().args(IMAGE_BUILD)),
        )?;
    }
    let root_dir = root()
        .canonicalize()
        .context("resolving the workspace root")?;
    let bin = root_dir.join("target/release/ct-trace");
    let image_bin = root_dir.join("target/image/release/ct-trace");

    let mut failures = Vec::new();
    let mut host = None;
    if !a.vm_only {
        let (counts, status) = phase(&mut phases, "host tests", || {
            host_tests(&bin, &image_bin, &a.args)
        })?;
        if !status.success() {
            failures.push(format!("host: cargo test failed ({status})"));
            failures.extend(counts.panics.iter().map(|p| format!("host: {p}")));
        }
        host = Some(counts);
        // Every part of `cargo xtask bench`, briefly; its storm must reconcile.
        if let Err(e) = phase(&mut phases, "bench smoke", || {
            bench::bench(&bench::Args::smoke())
        }) {
            println!("bench smoke: FAILED: {e:#}");
            failures.push(format!("bench smoke: {e:#}"));
        }
    }
    let mut vm = None;
    if !a.no_vm {
        match matrix::from_args(&a.vm, &bin, &mut phases) {
            Ok(report) => {
                failures.extend(report.failures.iter().map(|f| format!("vm {f}")));
                vm = Some((report.jobs, report.counts));
            }
            Err(e) => failures.push(format!("vm: {e:#}")),
        }
    }
    phases.push(("total".into(), start.elapsed().as_secs_f64()));

    println!();
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|(name, s)| vec![name.clone(), format!("{s:.1}")])
        .collect();
    print_table(&["phase", "seconds"], &rows);
    println!();
    let mut total = Counts::default();
    if let Some(c) = &host {
        println!("host: {}", c.summary());
        total.add(c);
    }
    if let Some((jobs, c)) = &vm {
        println!("vm ({jobs} jobs): {}", c.summary());
        total.add(c);
    }
    // "skipped": ignored tests and `SKIPPED:` lines (tests that skipped part of their work).
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed,
        total.failed,
        total.ignored + total.skipped()
    );
    if !failures.is_empty() {
        bail!("test failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// Unit and integration tests on the host; their libtest output passes through and is counted.
/// `--show-output`: libtest prints the captured output of passing tests after them, so the
/// `SKIPPED: ` markers of tests that passed reach the count (see `libtest.rs`).
fn host_tests(
    bin: &Path,
    image_bin: &Path,
    args: &[String],
) -> Result<(Counts, std::process::ExitStatus)> {
    let mut child = cargo()
        .args(CARGO_TEST)
        .args(["--", "--show-output"])
        .args(args)
        .env("CT_TRACE_BIN", bin)
        .env("CT_TRACE_IMAGE_BIN", image_bin)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let mut counts = Counts::default();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        counts.line(&line);
    }
    Ok((counts, child.wait()?))
}
