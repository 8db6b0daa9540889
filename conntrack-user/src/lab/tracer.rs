//! ct-trace itself watching the lab: this very binary started in the node namespace
//! (`ip netns exec NODE <exe> -o json --ready-file ...`), so the lab uses ct-trace's own
//! programs and event path, exactly what a user runs on a node. The lab starts the workload
//! only once ct-trace has attached, stops it with SIGINT, and reads its JSON events. Its ready
//! file is in the lab's root-only directory (`/run/ct-trace/lab/ctt-lab-PID-node.ready`): no
//! other user can say it is ready before it is, or make it write elsewhere. Starting, reading
//! and stopping it is the shared runner's (`conntrack_common::harness::runner`), the one the
//! integration tests, top's tracer and the bench use.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use serde_json::Value;

use conntrack_common::harness::runner::{Ready as _, RunError, Runner};

use super::{
    interrupted,
    topology::{owner_pid, LAB_PREFIX},
    LabError,
};
use crate::{
    kernel::load::AttachMode,
    private::{PrivateDir, ReadyAt},
};

/// A bound in case the lab never stops it (the lab itself was killed: the child also gets
/// SIGTERM as its parent-death signal).
const MAX_RUN: &str = "120";
const READY_WITHIN: Duration = Duration::from_secs(60);
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// What the lab's user asked of the ct-trace it runs.
pub struct Opts<'a> {
    /// `--pcap FILE`.
    pub pcap: Option<&'a std::path::Path>,
    /// `--attach MODE`; without it, `CT_TRACE_MODE` (the VM matrix's mode), else auto.
    pub attach: Option<AttachMode>,
}

pub struct Tracer {
    run: Runner,
}

/// What ct-trace printed.
pub struct Traced {
    pub events: Vec<Value>,
    pub stderr: String,
}

impl Tracer {
    /// Starts ct-trace in `node` and waits until it has attached every program.
    pub fn start(node: &str, opts: &Opts) -> Result<Self, LabError> {
        let exe = std::env::current_exe()
            .map_err(|e| LabError::Tracer(format!("finding this executable: {e}")))?;
        // One left by a lab that had this PID and was killed together with its ct-trace is
        // removed first.
        let ready = ReadyAt::new(super::lab_dir()?, format!("{node}.ready"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node])
            .arg(&exe)
            .args(["-o", "json", "--resets", "all", "--host", LAB_PREFIX])
            .args(["--duration", MAX_RUN, "--ready-file"])
            .arg(ready.path())
            // Its own process group: a Ctrl-C at the terminal reaches the lab, which stops it.
            .process_group(0);
        if let Some(p) = opts.pcap {
            cmd.arg("--pcap").arg(p);
        }
        if let Some(m) = opts.attach {
            cmd.args(["--attach", m.name()]);
        } else if let Ok(m) = std::env::var("CT_TRACE_MODE") {
            cmd.args(["--attach", &m]);
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut run = Runner::spawn(&mut cmd, ready).map_err(|e| match e {
            RunError::Spawn { source, .. } => {
                LabError::Tracer(format!("starting {}: {source}", exe.display()))
            }
            e => LabError::Tracer(e.to_string()),
        })?;
        match run.wait_ready(READY_WITHIN, || interrupted().is_err()) {
            Ok(()) => Ok(Self { run }),
            Err(RunError::ExitedEarly { status, stderr }) => Err(LabError::Tracer(format!(
                "ct-trace exited before it attached ({status}): {}",
                last_lines(&stderr)
            ))),
            Err(RunError::NotReady { .. }) => Err(LabError::Tracer(format!(
                "ct-trace not attached after {READY_WITHIN:?}"
            ))),
            Err(RunError::Abandoned) => {
                interrupted()?;
                Err(LabError::Tracer("no longer waited for".into()))
            }
            Err(e) => Err(LabError::Tracer(e.to_string())),
        }
    }

    /// Stops ct-trace as a user would (SIGINT) and returns what it printed.
    pub fn stop(mut self) -> Result<Traced, LabError> {
        // `ip netns exec` execs ct-trace: the pid is ct-trace's.
        let out = self.run.stop(STOP_WITHIN).map_err(|e| match e {
            RunError::NoStop { .. } => LabError::Tracer("ct-trace did not stop on SIGINT".into()),
            e => LabError::Tracer(e.to_string()),
        })?;
        let events: Vec<Value> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !events.last().is_some_and(|e| e["kind"] == "summary") {
            return Err(LabError::Tracer(format!(
                "ct-trace printed no summary: {}",
                last_lines(&out.stderr)
            )));
        }
        Ok(Traced {
            events,
            stderr: out.stderr,
        })
    }
}

fn last_lines(s: &str) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(5)..].join(" | ")
}

/// Removes the ready files of labs that are `gone` (killed together with their ct-trace).
pub fn remove_stale(dir: &PrivateDir, gone: impl Fn(u32) -> bool) {
    for name in dir.names().unwrap_or_default() {
        if name.ends_with(".ready") && owner_pid(&name).is_some_and(&gone) {
            let _ = dir.remove(&name);
        }
    }
}
