//! `ct-trace lab`: the failure ct-trace exists for, reproduced on any Linux box in one command,
//! and each mitigation proved or disproved against it.
//!
//! A run builds three namespaces of its own (`topology`), starts this very binary in the node
//! namespace to trace (`tracer`, through `conntrack_common::harness::runner`, the one ct-trace
//! runner the integration tests, top and the bench share), runs a TCP workload through the
//! Service (`workload`), does the scenario's fault (`scenario`, with packets forged by
//! `craft`), checks what the applications saw, stops ct-trace and compares the two (`report`). The namespaces are
//! deleted at the end, on error, and on SIGINT/SIGTERM; those of a lab killed outright are
//! removed by the next run or `ct-trace lab cleanup`.
//!
//! The lab's files (ct-trace's ready file, the saved sysctls) live in `/run/ct-trace/lab`
//! (`lab_dir`), a directory only root can use (`private`): no other user can plant,
//! redirect or forge them.

mod craft;
mod report;
mod scenario;
mod sysctl;
mod topology;
mod tracer;
mod workload;

use std::{
    io::Write as _,
    process::ExitCode,
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use conntrack_common::harness::netns::CommandError;
use serde_json::Value;

use self::{
    report::Verdict,
    topology::{Lab, SERVICE},
};
use crate::{
    cli::{Fix, Format, LabAction, Scenario},
    private::{FileError, PrivateDir},
};

/// Opens (or makes) the lab's own directory, `/run/ct-trace/lab` (root's, 0700, checked at
/// every open).
pub(crate) fn lab_dir() -> Result<PrivateDir, LabError> {
    Ok(PrivateDir::in_run("lab")?)
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("ct-trace lab needs root: it creates network namespaces and loads eBPF (sudo ct-trace lab ...)")]
    NotRoot,
    #[error("ct-trace lab needs `{0}` on PATH (iproute2 / iptables)")]
    MissingTool(&'static str),
    #[error("network namespace {0} already exists: is another lab running? (`ct-trace lab cleanup` removes those of labs that are gone)")]
    Exists(String),
    #[error("scenario {0} changes global sysctls (nf_conntrack_max bounds every namespace's table, the host's too): run it in a throwaway VM, or pass --allow-host-sysctl")]
    NeedsHostSysctl(&'static str),
    #[error("{0}")]
    Busy(String),
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("workload: {0}")]
    Workload(String),
    #[error("tracing the lab: {0}")]
    Tracer(String),
    #[error("interrupted by {}: the lab's namespaces were removed", signal_name(*.0))]
    Interrupted(i32),
    /// The lab's directory or a file in it (with its cause: lab errors print on one line).
    #[error("{0}")]
    Files(String),
}

impl From<FileError> for LabError {
    fn from(e: FileError) -> Self {
        Self::Files(e.one_line())
    }
}

impl From<CommandError> for LabError {
    fn from(e: CommandError) -> Self {
        Self::Command {
            cmd: e.cmd,
            detail: e.detail,
        }
    }
}

impl LabError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::NotRoot
            | Self::MissingTool(_)
            | Self::Exists(_)
            | Self::NeedsHostSysctl(_)
            | Self::Busy(_) => ExitCode::from(2),
            Self::Interrupted(sig) => ExitCode::from(128 + *sig as u8),
            _ => ExitCode::FAILURE,
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: i32) {
    SIGNALLED.store(sig, Ordering::Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP only set a flag: the lab notices it at its next step (every
/// wait is short and bounded) and unwinds, and the guards delete the namespaces.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Err when a signal asked the lab to stop.
pub(crate) fn interrupted() -> Result<(), LabError> {
    match SIGNALLED.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => Err(LabError::Interrupted(sig)),
    }
}

/// Sleeps `d`, in steps, returning early on a signal.
fn pause(d: Duration) -> Result<(), LabError> {
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end {
        interrupted()?;
        std::thread::sleep(Duration::from_millis(10).min(end - std::time::Instant::now()));
    }
    interrupted()
}

fn preflight() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in ["ip", "iptables", "iptables-restore"] {
        if !std::env::split_paths(&path).any(|d| d.join(tool).is_file()) {
            return Err(LabError::MissingTool(tool));
        }
    }
    Ok(())
}

/// `ct-trace lab ...`
pub fn run(action: LabAction) -> anyhow::Result<ExitCode> {
    catch_signals();
    match lab(action) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("ct-trace: lab: {e}");
            Ok(e.exit_code())
        }
    }
}

fn lab(action: LabAction) -> Result<ExitCode, LabError> {
    let (scenario, allowed) = match &action {
        LabAction::Run(a) => (Some(a.scenario), a.allow_host_sysctl),
        LabAction::Compare(a) => (Some(a.scenario), a.allow_host_sysctl),
        LabAction::Cleanup => (None, false),
    };
    if let Some(s) = scenario.filter(|s| s.global() && !allowed) {
        return Err(LabError::NeedsHostSysctl(s.name()));
    }
    preflight()?;
    let me = std::process::id();
    let dir = lab_dir()?;
    let gone = |pid: u32| pid == me || !topology::lab_alive(pid);
    for r in sysctl::restore_stale(&dir, gone) {
        log::info!("lab: restored {r} left by a lab that is gone");
    }
    tracer::remove_stale(&dir, gone);
    // Labs run side by side in their own namespaces, except beside one that shrank the global
    // table limit (it bounds every namespace's table).
    if scenario.is_some() {
        if let Some(pid) = sysctl::owners(&dir).into_iter().find(|&p| p != me) {
            return Err(LabError::Busy(format!(
                "a table-full lab (PID {pid}) has shrunk the global conntrack table: wait for it to end"
            )));
        }
    }
    if scenario.is_some_and(Scenario::global) {
        if let Some(pid) = topology::other_labs().first() {
            return Err(LabError::Busy(format!(
                "another lab (PID {pid}) is running: table-full shrinks every namespace's table, its too; wait for it to end"
            )));
        }
    }
    let stale = topology::remove_stale()?;
    if !stale.is_empty() {
        log::info!(
            "lab: removed {} namespaces of labs that are gone: {}",
            stale.len(),
            stale.join(" ")
        );
    }
    match action {
        LabAction::Cleanup => {
            if stale.is_empty() {
                log::info!("lab: no stale lab namespace");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Run(a) => {
            let opts = tracer::Opts {
                pcap: a.pcap.as_deref(),
                attach: a.attach,
            };
            let (v, events) = run_once(a.scenario, a.fix, &opts)?;
            let mut out = std::io::stdout().lock();
            match a.output {
                Format::Json => {
                    for e in &events {
                        let _ = writeln!(out, "{e}");
                    }
                    let _ = writeln!(out, "{}", serde_json::to_string(&v).unwrap_or_default());
                }
                Format::Text => {
                    for line in events.iter().filter_map(report::digest) {
                        let _ = writeln!(out, "{line}");
                    }
                    let _ = write!(out, "{}", v.text());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Compare(a) => {
            let mut rows = Vec::new();
            let opts = tracer::Opts {
                pcap: None,
                attach: a.attach,
            };
            for fix in Fix::ALL {
                log::info!("lab: {} with fix {}", a.scenario.name(), fix.name());
                rows.push(run_once(a.scenario, fix, &opts)?.0);
            }
            let mut out = std::io::stdout().lock();
            let _ = match a.output {
                Format::Json => writeln!(out, "{}", report::table_json(a.scenario, &rows)),
                Format::Text => write!(out, "{}", report::table(a.scenario, &rows)),
            };
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One lab: build, trace, workload, fault, check, stop, tear down.
fn run_once(
    scenario: Scenario,
    fix: Fix,
    opts: &tracer::Opts,
) -> Result<(Verdict, Vec<Value>), LabError> {
    interrupted()?;
    let mut lab = Lab::build()?;
    let netns: Vec<u64> = [&lab.client, &lab.node, &lab.server]
        .iter()
        .filter_map(|n| Lab::inode(n).ok())
        .collect();
    scenario::apply_fix(&lab, fix)?;
    log::info!(
        "lab: namespaces {} / {} / {}, Service {SERVICE}, fix {}",
        lab.client,
        lab.node,
        lab.server,
        fix.name()
    );
    let tracer = tracer::Tracer::start(&lab.node, opts)?;
    let listener = workload::listen(&lab)?;
    let long = workload::open_long(&lab, &listener)?;
    let shorts = workload::Shorts::start(&lab, listener)?;
    pause(Duration::from_millis(100))?;
    // Held to the end of the run: the global sysctls are restored when it drops.
    let (trigger, _table_limit) = scenario::trigger(&lab, scenario, fix, &long)?;
    pause(scenario::SETTLE)?;
    let checks: Vec<_> = long.iter().map(workload::check_long).collect();
    let mut apps = workload::tally_long(&checks);
    let short = shorts.finish();
    apps.connections += short.connections;
    apps.reset += short.reset;
    apps.failed += short.failed;
    // No wait for the last events: the workload saw every reset it counts, so their records are
    // in the ring buffer already (a program commits its record before it returns), and ct-trace
    // drains the ring buffer and the destroy watcher after it detaches, on SIGINT.
    interrupted()?;
    let traced = tracer.stop()?;
    log::debug!("lab: ct-trace's stderr:\n{}", traced.stderr);
    drop(long);
    lab.teardown()?;
    let (maj, min) = crate::kernel::preflight::kernel_version();
    let v = Verdict::new(
        scenario,
        fix,
        crate::kernel::preflight::kernel_release(),
        apps,
        &traced.events,
        &netns,
        trigger,
        scenario::expectation(scenario, fix, (maj, min) < (6, 1)),
    );
    Ok((v, traced.events))
}
