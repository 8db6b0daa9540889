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
mod host;
mod libtest;
mod lint;
mod matrix;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Lint, then run every test: unit and root integration tests on the host, then the root
    /// integration tests in VMs (Debian 5.10, 6.1, 6.12, 7.2; each attach mode a kernel
    /// supports).
    Test(test::TestArgs),
    /// Boot Debian kernels under qemu and run a command in each (host `/` shared read-only).
    Vm(vm::Args),
    /// Measure what ct-trace costs (hot path beside tcpdump, an INVALID storm beside the
    /// kernel's own log, start-up) in namespaces of its own; writes BENCHMARKS.md.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::setup(),
        Cmd::Lint => lint::lint(),
        Cmd::Test(args) => test::test(&args),
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
