//! `cargo xtask`: set up a machine, lint, and run every test.
//!
//! - `setup`: Debian packages the tests use (apt-get update first, only when something is
//!   missing), nightly's rust-src, and bpf-linker built against rustc's own libLLVM into the
//!   ct-trace tool cache (`$CT_TRACE_CACHE`, default `~/.cache/ct-trace`). Idempotent.
//! - `lint`: rustfmt check, clippy with `-D warnings` on the host crates and on the eBPF crate.
//! - `test`: lint, then unit tests and the root integration tests (namespaces, real packets).
//! - `vm`: boot Debian's 6.1, 6.12 and 7.2 kernels under qemu and run a command in each, with the
//!   host's userland shared read-only (see `vm.rs`).

mod vm;

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// bpf-linker version and the toolchain whose LLVM it links (the one that compiles the eBPF crate).
const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TOOLCHAIN: &str = "nightly";

/// Debian packages: what the integration tests call (iproute2, iptables, nft, conntrack,
/// scapy for crafted segments, util-linux's setpriv), what building needs, and what `vm` needs
/// (qemu, busybox-static for the initramfs, cpio, kmod's depmod/modprobe, xz and zstd for
/// kernels and modules).
const PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "conntrack",
    "python3",
    "python3-scapy",
    "util-linux",
    "procps",
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
];

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build and the tests need (idempotent).
    Setup,
    /// Check formatting and run clippy on host and eBPF crates.
    Lint,
    /// Lint, then run every test (root integration tests included).
    Test {
        /// Skip the lint step.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian kernels under qemu and run a command in each (host `/` shared read-only).
    Vm(vm::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Lint => lint(),
        Cmd::Test { no_lint, args } => test(no_lint, &args),
        Cmd::Vm(args) => vm::vm(args),
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
    eprintln!(
        "xtask: setup complete (bpf-linker in {})",
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

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "conntrack-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .arg(format!("+{EBPF_TOOLCHAIN}"))
        .args([
            "clippy",
            "-p",
            "conntrack-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--target-dir", "target/bpf-clippy", "--", "-D", "warnings"])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        ))?;
    Ok(())
}

fn test(no_lint: bool, args: &[String]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // The integration tests would return early and count as passed: refuse instead.
        bail!("the integration tests create network namespaces and load eBPF: run `sudo cargo xtask test` (CI runs as root)");
    }
    if !no_lint {
        lint()?;
    }
    // The integration tests drive the real binary.
    run(cargo().args(["build", "--release", "-p", "conntrack-user"]))?;
    let bin = root().join("target/release/ct-trace");
    let mut child = cargo()
        // No doc-tests: there are none, and their empty result lines would close the run.
        .args([
            "test",
            "--workspace",
            "--exclude",
            "conntrack-ebpf",
            "--release",
            "--lib",
            "--bins",
            "--tests",
        ])
        .arg("--")
        .args(args)
        .env("CT_TRACE_BIN", bin)
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut it = part.split_whitespace();
                if let (Some(n), Some(what)) =
                    (it.next().and_then(|n| n.parse::<u64>().ok()), it.next())
                {
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}
