//! `cargo xtask bench`: what ct-trace costs, measured on this machine in namespaces of its own
//! (client -- node -- server, the tests' topology in miniature; deleted at the end, also on
//! error or panic, and nothing is sent outside them).
//!
//! - Hot path: bulk (iperf3), request/response and connect/request/response (`ctt-load`)
//!   through the node's Service DNAT, with no observer, with ct-trace and with tcpdump on the
//!   node, in interleaved rounds (round r runs the observers in an order rotated by r), so the
//!   ratios to "none" come from runs side by side.
//! - Storm: `ctt-flood` at full speed (every segment INVALID at the node) with ct-trace at its
//!   default event budget and with no budget: flood rate, the reconciliation of ct-trace's
//!   counts with the kernel's, events written per second, CPU and memory.
//! - Kernel log: the same flood with conntrack's own logging of INVALID TCP
//!   (`nf_conntrack_log_invalid=6`) instead of ct-trace, its lines counted from `/dev/kmsg`.
//! - Per-program cost: the hot-path workloads with ct-trace in each attach mode the kernel
//!   offers (the host's: netfilter only, it has no kprobes and no BPF trampolines), each
//!   program's runs and nanoseconds as the kernel counts them (`kernel.bpf_stats_enabled=1` for
//!   this part only, restored after).
//! - Start-up: exec to ready, peak and idle memory.
//! - `ct-trace top` on a table of 262,140 entries: one snapshot, CPU and memory at 1 s.
//! - VM: inside Debian kernels under qemu (`--vm-kernel`, default 6.1; `--no-vm` skips it), in
//!   one guest invocation, the hot path with no observer, ct-trace in each mode the kernel
//!   offers (6.1: fexit and kprobe) and tcpdump in interleaved rounds, and the per-program cost
//!   in each mode: the attach modes the host cannot run, side by side.
//!
//! `--smoke` runs every host part briefly (about 40 s) and no VM; a reconciliation FAIL is then
//! an error. Without it, `BENCHMARKS.md` at the workspace root is written.
//!
//! One file per part: `process` (processes in namespaces, /proc readings), `topology` (the three
//! namespaces), `observer` (ct-trace and tcpdump on the node), `hotpath`, `cost` (the kernel's
//! per-program figures), `storm`, `klog` (the kernel's own logging), `startup`, `top` (`ct-trace
//! top` on a filled table), `pipeline` (the userspace event path alone), `vmbench` (the guest's
//! side and the host's), `report` (the tables and BENCHMARKS.md) and `targets` (the issues'
//! targets against this run).

mod cost;
mod flood;
mod hotpath;
mod klog;
mod numbers;
mod observer;
mod pipeline;
mod process;
mod report;
mod startup;
mod storm;
mod targets;
mod top;
mod topology;
mod vmbench;

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{ensure, Context as _, Result};

use crate::{
    host::{cargo, print_table, root, run},
    vm::Series,
};

use self::{
    cost::{cost_section, costs},
    hotpath::hot_path,
    pipeline::{pipeline, pipeline_section},
    process::{loadavg, ShmFiles},
    report::{markdown, sections, Section},
    startup::startup,
    storm::storm,
    targets::{issue21_targets, targets},
    topology::Topo,
    vmbench::{in_guest, vm_bench, vm_sections},
};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
    /// Every part briefly (1 round of 1 s, a 50,000-segment storm, one start-up); a
    /// reconciliation FAIL is an error; BENCHMARKS.md is not written.
    #[arg(long)]
    pub smoke: bool,
    /// Interleaved rounds of each hot-path workload [default: 5; smoke: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: Option<u32>,
    /// Seconds of each hot-path run [default: 3; smoke: 1].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=60))]
    pub secs: Option<u64>,
    /// Kernel series of the VM part (repeatable) [default: 6.1].
    #[arg(long = "vm-kernel", value_name = "SERIES")]
    pub vm_kernels: Vec<Series>,
    /// No VM part (the smoke has none).
    #[arg(long, conflicts_with = "vm_only")]
    pub no_vm: bool,
    /// Only the VM part: its tables are printed, BENCHMARKS.md is not written.
    #[arg(long)]
    pub vm_only: bool,
    /// Interleaved rounds in the VM [default: 5].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub vm_rounds: Option<u32>,
    /// Seconds of each hot-path run in the VM [default: 2].
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=60))]
    pub vm_secs: Option<u64>,
    /// Seconds one VM boot may take, from qemu's start to its exit [default: 1800].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(60..))]
    pub vm_timeout: Option<u64>,
    /// Inside a VM guest (what the VM part runs): the guest's measurements only, no build,
    /// results on one console line.
    #[arg(long, hide = true)]
    pub in_guest: bool,
    /// With --in-guest: an attach mode to measure (repeatable).
    #[arg(long = "guest-mode", hide = true, value_name = "MODE")]
    pub guest_modes: Vec<String>,
}

impl Args {
    /// What `cargo xtask test` runs.
    pub fn smoke() -> Self {
        Self {
            smoke: true,
            ..Self::default()
        }
    }
}

const SERVICE: &str = "10.96.0.10";
const SERVER: &str = "10.77.2.2";
const FLOOD_DST: &str = "10.77.9.9";
const LOAD_PORT: &str = "7000";
const IPERF_PORT: &str = "5201";

/// The binaries under test.
struct Bins {
    ct_trace: String,
    flood: String,
    load: String,
    pipeline: String,
}

struct Config {
    smoke: bool,
    rounds: u32,
    secs: u64,
    storm_count: u64,
    startups: usize,
    /// Files in /dev/shm start with this (removed at the end).
    shm: String,
}

pub fn bench(a: &Args) -> Result<()> {
    if a.in_guest {
        return in_guest(a);
    }
    if a.vm_only {
        build()?;
        let vms = vm_bench(a)?;
        print(&vm_sections(&vms));
        let failed: Vec<&str> = vms
            .iter()
            .filter(|v| v.result.is_err())
            .map(|v| v.series.name())
            .collect();
        ensure!(
            failed.is_empty(),
            "bench: no VM results from {}",
            failed.join(", ")
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the bench creates network namespaces and loads eBPF: run it as root"
    );
    let started = Instant::now();
    let cfg = Config {
        smoke: a.smoke,
        rounds: a.rounds.unwrap_or(if a.smoke { 1 } else { 5 }),
        secs: a.secs.unwrap_or(if a.smoke { 1 } else { 3 }),
        storm_count: if a.smoke { 50_000 } else { 1_000_000 },
        startups: if a.smoke { 1 } else { 5 },
        shm: format!("/dev/shm/ctb-{}", std::process::id()),
    };
    let bins = build()?;
    let load_before = loadavg();

    let topo = Topo::build()?;
    let _shm = ShmFiles(cfg.shm.clone());
    eprintln!(
        "bench: topology {} / {} / {}; hot path: {} round(s) of {} s",
        topo.cli, topo.node, topo.srv, cfg.rounds, cfg.secs
    );
    let hot = hot_path(&topo, &bins, &cfg)?;
    let host_costs = costs(&topo, &bins, &cfg, &[])?;
    let storm = storm(&topo, &bins, &cfg)?;
    let startup = startup(&topo, &bins, &cfg)?;
    // Last in the topology: it fills the node's table (and empties it after).
    let top = top::top(&topo, &bins, &cfg)?;
    drop(topo);
    let pipeline = pipeline(&bins, &cfg)?;
    let load_after = loadavg();
    let vms = if cfg.smoke || a.no_vm {
        Vec::new()
    } else {
        vm_bench(a)?
    };
    let elapsed = started.elapsed().as_secs_f64();

    let mut sections = sections(&hot, &storm, &startup);
    sections.insert(
        1,
        cost_section(
            "per-program cost (the kernel's own figures)".into(),
            "on this machine's kernel",
            &host_costs,
        ),
    );
    sections.push(top::top_section(&top));
    sections.push(pipeline_section(&pipeline));
    sections.extend(vm_sections(&vms));
    sections.insert(0, issue21_targets(&hot, &host_costs, &vms));
    sections.insert(0, targets(&hot, &storm, &startup, &pipeline));
    print(&sections);
    println!();
    println!("load average before / after: {load_before} / {load_after}");
    let fails: Vec<&str> = storm
        .runs
        .iter()
        .filter_map(|r| r.ct.as_ref())
        .flat_map(|c| [&c.check_kernel, &c.check_sum])
        .filter(|c| !c.ok)
        .map(|c| c.what.as_str())
        .collect();
    if !cfg.smoke {
        let md = markdown(&sections, &storm, &load_before, &load_after, elapsed)?;
        let path = root().join("BENCHMARKS.md");
        std::fs::write(&path, md).with_context(|| format!("writing {}", path.display()))?;
        println!("bench: wrote BENCHMARKS.md ({elapsed:.0} s)");
        if !fails.is_empty() {
            println!("bench: reconciliation FAIL: {}", fails.join("; "));
        }
        return Ok(());
    }
    ensure!(
        fails.is_empty(),
        "reconciliation FAIL: {}",
        fails.join("; ")
    );
    println!("bench smoke: every part ran and the storm reconciled ({elapsed:.0} s)");
    Ok(())
}

/// Checks the tools the bench runs are installed, builds ct-trace and the test binaries it
/// drives, and returns their paths.
fn build() -> Result<Bins> {
    for tool in ["iperf3", "tcpdump", "ss"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "`{tool}` not found: run `cargo xtask setup`"
        );
    }
    run(cargo().args(["build", "--release", "-p", "conntrack-user"]))?;
    run(cargo().args(["build", "--release", "-p", "integration-tests", "--bins"]))?;
    let rel = root()
        .canonicalize()
        .context("resolving the workspace root")?
        .join("target/release");
    Ok(Bins {
        ct_trace: rel.join("ct-trace").display().to_string(),
        flood: rel.join("ctt-flood").display().to_string(),
        load: rel.join("ctt-load").display().to_string(),
        pipeline: rel.join("ctt-pipeline").display().to_string(),
    })
}

/// Prints every section's table to stdout.
fn print(sections: &[Section]) {
    for s in sections {
        println!();
        println!("{}", s.title);
        print_table(&s.header, &s.rows);
        for n in &s.notes {
            println!("  {n}");
        }
    }
}
