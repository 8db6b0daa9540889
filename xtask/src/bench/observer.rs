//! The observers on the node during a run: none, ct-trace (`-o json` into /dev/shm; in its
//! default attach mode, or in one asked for) or tcpdump.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use conntrack_common::plan::Mode;
use serde_json::Value;

use super::{
    process::{cpu_seconds, Out, Proc, Ready as _, ReadyPath},
    topology::Topo,
    Bins, Config,
};

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Observer {
    None,
    /// ct-trace in its default attach mode (`auto`).
    CtTrace,
    /// ct-trace with `--attach MODE`.
    CtMode(Mode),
    Tcpdump,
}

pub(super) const OBSERVERS: [Observer; 3] = [Observer::None, Observer::CtTrace, Observer::Tcpdump];

impl Observer {
    pub(super) fn name(self) -> &'static str {
        match self {
            Observer::None => "none",
            Observer::CtTrace => "ct-trace",
            Observer::CtMode(Mode::Netfilter) => "ct-trace netfilter",
            Observer::CtMode(Mode::Fexit) => "ct-trace fexit",
            Observer::CtMode(Mode::Kprobe) => "ct-trace kprobe",
            Observer::Tcpdump => "tcpdump",
        }
    }

    /// The observer `name` gives (what the guest's JSON names it by).
    pub(super) fn from_name(name: &str) -> Option<Observer> {
        [Observer::None, Observer::CtTrace, Observer::Tcpdump]
            .into_iter()
            .chain(conntrack_common::plan::MODES.map(Observer::CtMode))
            .find(|o| o.name() == name)
    }
}

/// ct-trace running in the node namespace, `-o json` into a /dev/shm file (read while it runs
/// by the storm); its stderr kept by the runner.
pub(super) struct CtRun {
    pub(super) proc: Proc,
    pub(super) out: PathBuf,
    pub(super) cpu_at_ready: f64,
}

pub(super) fn start_ct_trace(
    topo: &Topo,
    bins: &Bins,
    base: &str,
    extra: &[&str],
) -> Result<CtRun> {
    let out = PathBuf::from(format!("{base}.json"));
    let ready = ReadyPath::new(format!("{base}.ready"));
    let ready_path = ready.path();
    let mut argv = vec![
        bins.ct_trace.as_str(),
        "-o",
        "json",
        "-d",
        "900",
        "--ready-file",
        ready_path.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let mut proc = Proc::start_ready(
        &topo.node,
        &argv,
        Some(ready),
        Out::To(File::create(&out)?.into()),
        Out::Keep,
    )?;
    // Minutes under TCG: a guest loads and verifies the programs in emulation.
    proc.wait_ready(
        "ct-trace",
        Duration::from_secs(180),
        Duration::from_millis(2),
    )?;
    let cpu_at_ready = cpu_seconds(proc.pid())?;
    Ok(CtRun {
        proc,
        out,
        cpu_at_ready,
    })
}

impl CtRun {
    /// Ctrl-C; checks it exits 0 and ends its output with the summary, which it returns.
    pub(super) fn stop(mut self) -> Result<(Value, String)> {
        let f = self.proc.interrupt(Duration::from_secs(30))?;
        let stderr = f.stderr;
        ensure!(
            f.status.success(),
            "ct-trace exited with {}: {}",
            f.status,
            stderr.trim()
        );
        let summary = last_line(&self.out)?;
        let v: Value = serde_json::from_str(&summary)
            .with_context(|| format!("ct-trace's last line is not JSON: {summary}"))?;
        ensure!(
            v["kind"] == "summary",
            "ct-trace's last line is not its summary: {summary}"
        );
        Ok((v, stderr))
    }
}

fn last_line(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let from = len.saturating_sub(64 * 1024);
    io::Seek::seek(&mut f, io::SeekFrom::Start(from))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    Ok(tail
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string())
}

/// tcpdump on every interface of the node, to /dev/null; returns once it says it listens.
fn start_tcpdump(topo: &Topo) -> Result<Proc> {
    let mut p = Proc::start(
        &topo.node,
        &["tcpdump", "-i", "any", "-w", "/dev/null"],
        Out::To(Stdio::null()),
        Out::Keep,
    )?;
    let t0 = Instant::now();
    loop {
        let text = p.stderr_text();
        if text.contains("listening on") {
            return Ok(p);
        }
        if let Some(f) = p.exited()? {
            bail!("tcpdump exited ({}): {}", f.status, f.stderr.trim());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "tcpdump did not say `listening on` within 60 s: {}",
            text.trim()
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// An observer running on the node during one workload run.
pub(super) enum Running {
    None,
    CtTrace(Box<CtRun>),
    Tcpdump(Proc),
}

pub(super) fn start_observer(
    o: Observer,
    topo: &Topo,
    bins: &Bins,
    cfg: &Config,
) -> Result<Running> {
    Ok(match o {
        Observer::None => Running::None,
        Observer::CtTrace => Running::CtTrace(Box::new(start_ct_trace(
            topo,
            bins,
            &format!("{}-hot", cfg.shm),
            &[],
        )?)),
        Observer::CtMode(m) => Running::CtTrace(Box::new(start_ct_trace(
            topo,
            bins,
            &format!("{}-hot", cfg.shm),
            &["--attach", m.name()],
        )?)),
        Observer::Tcpdump => Running::Tcpdump(start_tcpdump(topo)?),
    })
}

impl Running {
    /// Stops it; returns the INVALID verdicts ct-trace counted (0 for the others).
    pub(super) fn stop(self) -> Result<u64> {
        match self {
            Running::None => Ok(0),
            Running::CtTrace(ct) => {
                let (summary, _) = ct.stop()?;
                Ok(summary["invalid"]["counted"].as_u64().unwrap_or(0))
            }
            Running::Tcpdump(mut p) => {
                let f = p.interrupt(Duration::from_secs(10))?;
                ensure!(
                    f.status.success() || f.status.signal() == Some(libc::SIGINT),
                    "tcpdump exited with {}: {}",
                    f.status,
                    f.stderr.trim()
                );
                Ok(0)
            }
        }
    }
}
