//! `cargo xtask`: set up a machine, lint, and run every test.
//!
//! - `setup`: Debian packages the tests use (apt-get update first, only when something is
//!   missing), nightly's rust-src, and bpf-linker built against rustc's own libLLVM into the
//!   ct-trace tool cache (`$CT_TRACE_CACHE`, default `~/.cache/ct-trace`). Idempotent.
//! - `lint`: rustfmt check, clippy with `-D warnings` on the host crates (ct-trace with and
//!   without the lab) and on the eBPF crate (see `lint.rs`).
//! - `test`: lint, then unit tests and the root integration tests (namespaces, real packets) on
//!   the host, then the root integration tests again inside Debian's 5.10, 6.1, 6.12 and 7.2
//!   kernels, once per attach mode each supports, several VMs side by side (see `matrix/`).
//!   Its last line is
//!   `tests: N passed, N failed, N skipped`, skipped being ignored tests plus the tests'
//!   `SKIPPED: ` marker lines, all read from libtest's output by `libtest.rs`.
//! - `vm`: boot Debian's 5.10, 6.1, 6.12 and 7.2 kernels under qemu and run a command in each,
//!   with the host's userland shared read-only (see `vm/mod.rs`).
//! - `bench`: hot-path, per-program cost, storm and start-up measurements in namespaces of its
//!   own, and the attach modes the host lacks inside VM kernels, written to BENCHMARKS.md (see
//!   `bench/`); `test` runs its `--smoke` form (no VM).

mod bench;
mod libtest;
mod lint;
mod matrix;
mod vm;

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{libtest::Counts, matrix::Mode, vm::Series};

/// bpf-linker version and the toolchain whose LLVM it links (the one that compiles the eBPF crate).
const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TOOLCHAIN: &str = "nightly";

/// Debian packages: what the integration tests call (iproute2, iptables, nft, conntrack,
/// scapy for crafted segments, util-linux's setpriv), what building needs, and what `vm` and
/// the VM matrix of `test` need (qemu, busybox-static for the initramfs, cpio, kmod's
/// depmod/modprobe, xz and zstd for kernels and modules, the archive keyring the private apt
/// list is signed with, CA certificates for https mirrors).
const PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "python3",
    "python3-scapy",
    "util-linux",
    "procps",
    // Bulk traffic beside the exactness tests, and `cargo xtask bench`'s hot-path runs.
    "iperf3",
    // The exactness tests check that no program stays loaded (SIGKILL, errors).
    "bpftool",
    // The bench compares ct-trace with a capture on the node.
    "tcpdump",
    // tests/tests/top.rs drives `ct-trace top`'s terminal view as a person would.
    "tmux",
    // The README runs `sudo ct-trace`; minimal images (and CI machines) may lack sudo.
    "sudo",
    "gcc",
    "libc6-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
    "ca-certificates",
    // tests/tests/deploy.rs: promtool (check and unit-test the alerts), buildah (the image,
    // built from scratch with no daemon), and a venv for kubernetes-validate (below).
    "prometheus",
    "buildah",
    "python3-venv",
    // tests/tests/pcap.rs reads `--pcap` files with tshark. Under DEBIAN_FRONTEND=noninteractive
    // its debconf question (setuid dumpcap for non-root capture) takes its default, no.
    "tshark",
];

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct TestArgs {
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
    /// Restrict the VM matrix to this kernel series (repeatable) [default: 5.10, 6.1, 6.12 and
    /// 7.2].
    #[arg(long = "vm-kernel", value_name = "SERIES")]
    vm_kernels: Vec<Series>,
    /// Restrict the VM matrix to this attach mode (repeatable) [default: kprobe on every kernel,
    /// netfilter on 6.4+].
    #[arg(long = "vm-mode", value_enum, value_name = "MODE")]
    vm_modes: Vec<Mode>,
    /// Integration test target to run in the VMs (repeatable), on every kernel [default:
    /// `matrix::VM_TESTS` everywhere and `matrix::VM_EXTRA_TESTS` on their kernels].
    #[arg(long = "vm-test", value_name = "NAME")]
    vm_tests: Vec<String>,
    /// Prebuilt integration test binary for the VMs, NAME=PATH (repeatable; for work on xtask
    /// itself): replaces `--vm-test` and the build of the test binaries; with `--vm-only`
    /// nothing is built, ct-trace is taken as it is in target/release.
    #[arg(long = "vm-binary", value_name = "NAME=PATH", hide = true, value_parser = parse_binary)]
    vm_binaries: Vec<(String, PathBuf)>,
    /// Seconds one VM job (boot, tests, power-off) may take (under TCG on a 2-CPU machine, two
    /// side by side, beside other work: 580-730 s; 5.10's, the longest, about 1250 s: its
    /// namespaces take 3.7 times 6.1's to make, and each ct-trace start 1.2 times; with the lab
    /// in the same job it took 1667 s, hence the lab's jobs of their own).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    vm_timeout: u64,
    /// VM jobs side by side, each guest with one vCPU [default: the number of host CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    vm_jobs: Option<u32>,
    /// Seconds the whole VM matrix may take (keeps CI within its limit when jobs hang): later
    /// jobs get the time left as their timeout, or fail without booting. The six jobs took
    /// 1495 s two at a time on a quiet 2-CPU machine (before 5.10), 2953 s with 5.10 and the lab
    /// beside other work.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    vm_budget: u64,
    /// Extra arguments for the host's `cargo test` test binaries (after `--`; not for the VMs).
    #[arg(last = true)]
    args: Vec<String>,
}

fn parse_binary(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s.split_once('=').ok_or("expected NAME=PATH")?;
    let path = Path::new(path)
        .canonicalize()
        .map_err(|e| format!("{path}: {e}"))?;
    Ok((name.to_string(), path))
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and the tests need (idempotent).
    Setup,
    /// Check formatting and run clippy on host and eBPF crates.
    Lint,
    /// Lint, then run every test: unit and root integration tests on the host, then the root
    /// integration tests in VMs (Debian 5.10, 6.1, 6.12, 7.2; each attach mode a kernel
    /// supports).
    Test(TestArgs),
    /// Boot Debian kernels under qemu and run a command in each (host `/` shared read-only).
    Vm(vm::Args),
    /// Measure what ct-trace costs (hot path beside tcpdump, an INVALID storm beside the
    /// kernel's own log, start-up) in namespaces of its own; writes BENCHMARKS.md.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Lint => lint::lint(),
        Cmd::Test(args) => test(&args),
        Cmd::Vm(args) => vm::vm(args),
        Cmd::Bench(args) => bench::bench(&args),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache() -> PathBuf {
    env::var_os("CT_TRACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/ct-trace")
        })
}

fn tools_bin() -> PathBuf {
    cache().join("tools/bin")
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Prints an aligned table (two spaces between columns): every table xtask prints.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    for line in table_lines(header, rows) {
        println!("{line}");
    }
}

fn table_lines(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|line| {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(c, &w)| format!("{c:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    // Debian packages.
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    // rust-src for -Z build-std=core.
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )
    .context("the eBPF crate needs the nightly toolchain (rustup toolchain install nightly)")?;
    if !Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        eprintln!("xtask: adding rust-src to {EBPF_TOOLCHAIN}");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }

    // bpf-linker against the libLLVM inside the nightly sysroot (Debian's LLVM is too old, and
    // its major must equal the one rustc emits bitcode for).
    let linker = tools_bin().join("bpf-linker");
    let ok = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        });
    if !ok {
        install_bpf_linker(sysroot.trim())?;
    }

    // kubernetes-validate (PyPI; Kubernetes' schemas bundled, offline) for the deploy tests, in
    // a venv of its own under the tool cache (its PyYAML and jsonschema also check the
    // prometheus-operator resources), linked into tools_bin().
    const KUBERNETES_VALIDATE: &str = "1.37.0";
    let venv = cache().join("tools/kubernetes-validate");
    let script = venv.join("bin/kubernetes-validate");
    let ok = Command::new(&script)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == KUBERNETES_VALIDATE
        });
    if !ok {
        eprintln!("xtask: installing kubernetes-validate {KUBERNETES_VALIDATE}");
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE}"),
        ]))?;
    }
    let link = tools_bin().join("kubernetes-validate");
    if std::fs::read_link(&link).ok() != Some(script.clone()) {
        std::fs::create_dir_all(tools_bin())?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&script, &link)?;
    }

    eprintln!(
        "xtask: setup complete (bpf-linker and kubernetes-validate in {})",
        tools_bin().display()
    );
    Ok(())
}

fn install_bpf_linker(sysroot: &str) -> Result<()> {
    let vv = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .arg("-vV"),
    )?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV shows no LLVM version")?
        .to_string();
    let lib = std::fs::read_dir(Path::new(sysroot).join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so"))
        })
        .context("no libLLVM.so in the nightly sysroot")?;
    let prefix = cache().join("tools/llvm");
    let libdir = prefix.join("lib");
    std::fs::create_dir_all(&libdir)?;
    let name = lib.file_name().unwrap();
    // A copy survives `rustup update` replacing the sysroot; bpf-linker's RUNPATH points here.
    std::fs::copy(&lib, libdir.join(name)).context("copying libLLVM")?;
    let link = libdir.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(name, &link)?;
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (about 2-4 minutes)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .arg("--root")
        .arg(cache().join("tools"))
        .env("LLVM_PREFIX", &prefix))?;
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root());
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![tools_bin()];
    paths.extend(env::split_paths(&path));
    c.env("PATH", env::join_paths(paths).expect("PATH"));
    c
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

/// The host's `cargo test` selection. The VM matrix builds its binaries with the same arguments
/// (and `--no-run`): the same features and profile, so nothing is rebuilt.
const CARGO_TEST: &[&str] = &[
    "test",
    "--workspace",
    "--exclude",
    "conntrack-ebpf",
    "--release",
    // No doc-tests: there are none, and their empty result lines would close the run.
    "--lib",
    "--bins",
    "--tests",
];

/// Runs `f`, recording how long it took under `name`.
fn phase<T>(phases: &mut Vec<(String, f64)>, name: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    phases.push((name.to_string(), t.elapsed().as_secs_f64()));
    r
}

fn test(a: &TestArgs) -> Result<()> {
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
    if !a.vm_only || a.vm_binaries.is_empty() {
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
        match matrix::from_args(a, &bin, &mut phases) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_table_columns() {
        let rows = [
            vec!["6.12".to_string(), "passed".into(), "0".into()],
            vec!["7.2".to_string(), "failed".into(), "-".into()],
        ];
        assert_eq!(
            table_lines(&["kernel", "result", "exit"], &rows),
            [
                "kernel  result  exit",
                "6.12    passed  0",
                "7.2     failed  -"
            ]
        );
    }
}
