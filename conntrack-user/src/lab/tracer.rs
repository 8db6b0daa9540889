//! ct-trace itself watching the lab: this very binary started in the node namespace
//! (`ip netns exec NODE <exe> -o json --ready-file ...`), so the lab uses ct-trace's own
//! programs and event path, exactly what a user runs on a node. The lab starts the workload
//! only once ct-trace has attached, stops it with SIGINT, and reads its JSON events. Its ready
//! file is in the lab's root-only directory (`/run/ct-trace/lab/ctt-lab-PID-node.ready`): no
//! other user can say it is ready before it is, or make it write elsewhere.

use std::{
    io::Read,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    interrupted,
    topology::{owner_pid, LAB_PREFIX},
    LabError,
};
use crate::{kernel::load::AttachMode, private::PrivateDir};

/// A bound in case the lab never stops it (the lab itself was killed: the child also gets
/// SIGTERM as its parent-death signal).
const MAX_RUN: &str = "120";
const READY_WITHIN: Duration = Duration::from_secs(60);

/// What the lab's user asked of the ct-trace it runs.
pub struct Opts<'a> {
    /// `--pcap FILE`.
    pub pcap: Option<&'a std::path::Path>,
    /// `--attach MODE`; without it, `CT_TRACE_MODE` (the VM matrix's mode), else auto.
    pub attach: Option<AttachMode>,
}

pub struct Tracer {
    child: Option<Child>,
    /// The lab's directory and the ready file's name in it.
    dir: PrivateDir,
    ready: String,
    readers: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

/// What ct-trace printed.
pub struct Traced {
    pub events: Vec<Value>,
    pub stderr: String,
}

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Tracer {
    /// Starts ct-trace in `node` and waits until it has attached every program.
    pub fn start(node: &str, opts: &Opts) -> Result<Self, LabError> {
        let exe = std::env::current_exe()
            .map_err(|e| LabError::Tracer(format!("finding this executable: {e}")))?;
        let dir = super::lab_dir()?;
        let ready = format!("{node}.ready");
        // One left by a lab that had this PID and was killed together with its ct-trace.
        let _ = dir.remove(&ready);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node])
            .arg(&exe)
            .args(["-o", "json", "--resets", "all", "--host", LAB_PREFIX])
            .args(["--duration", MAX_RUN, "--ready-file"])
            .arg(dir.join(&ready))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let mut child = cmd
            .spawn()
            .map_err(|e| LabError::Tracer(format!("starting {}: {e}", exe.display())))?;
        let readers = Some((
            reader(child.stdout.take().expect("piped")),
            reader(child.stderr.take().expect("piped")),
        ));
        let mut me = Self {
            child: Some(child),
            dir,
            ready,
            readers,
        };
        let t0 = Instant::now();
        while !me.dir.holds(&me.ready) {
            if let Some(st) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let out = me.collect();
                return Err(LabError::Tracer(format!(
                    "ct-trace exited before it attached ({st}): {}",
                    last_lines(&out.stderr)
                )));
            }
            interrupted()?;
            if t0.elapsed() > READY_WITHIN {
                return Err(LabError::Tracer(format!(
                    "ct-trace not attached after {READY_WITHIN:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    fn collect(&mut self) -> Traced {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let (o, e) = self.readers.take().expect("collected once");
        let out = o.join().unwrap_or_default();
        let stderr = e.join().unwrap_or_default();
        let events = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let _ = self.dir.remove(&self.ready);
        Traced { events, stderr }
    }

    /// Stops ct-trace as a user would (SIGINT) and returns what it printed.
    pub fn stop(mut self) -> Result<Traced, LabError> {
        let child = self.child.as_mut().expect("running");
        // `ip netns exec` execs ct-trace: the pid is ct-trace's.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let t0 = Instant::now();
        while child
            .try_wait()
            .map_err(|e| LabError::Tracer(e.to_string()))?
            .is_none()
        {
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(LabError::Tracer("ct-trace did not stop on SIGINT".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.collect();
        if !out.events.last().is_some_and(|e| e["kind"] == "summary") {
            return Err(LabError::Tracer(format!(
                "ct-trace printed no summary: {}",
                last_lines(&out.stderr)
            )));
        }
        Ok(out)
    }
}

fn last_lines(s: &str) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(5)..].join(" | ")
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.dir.remove(&self.ready);
    }
}

/// Removes the ready files of labs that are `gone` (killed together with their ct-trace).
pub fn remove_stale(dir: &PrivateDir, gone: impl Fn(u32) -> bool) {
    for name in dir.names().unwrap_or_default() {
        if name.ends_with(".ready") && owner_pid(&name).is_some_and(&gone) {
            let _ = dir.remove(&name);
        }
    }
}
