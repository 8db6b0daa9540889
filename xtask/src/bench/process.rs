//! Processes in the bench's namespaces (through the shared runner, killed when dropped), the
//! run's files under /dev/shm, and what /proc says of a process and of the machine.

use std::{
    io,
    os::unix::process::CommandExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
pub(super) use conntrack_common::harness::runner::{Finished, Out, Ready, ReadyPath};
use conntrack_common::harness::runner::{RunError, Runner};

use crate::host::output;

/// A process in a namespace (`ip netns exec` execs it: the pid is the program's own), killed
/// when dropped and, through PR_SET_PDEATHSIG, when xtask dies. Started, read and stopped by
/// the runner the lab, the tests and `ct-trace top` share (`conntrack_common::harness`).
pub(super) struct Proc {
    run: Runner,
    what: String,
}

impl Proc {
    /// Only from the main thread: the death signal follows the thread that forked.
    pub(super) fn start(ns: &str, argv: &[&str], stdout: Out, stderr: Out) -> Result<Proc> {
        Self::start_ready(ns, argv, None, stdout, stderr)
    }

    /// [`Self::start`] for a program told (in `argv`) to write `ready` once it is ready
    /// ([`Self::wait_ready`]).
    pub(super) fn start_ready(
        ns: &str,
        argv: &[&str],
        ready: Option<ReadyPath>,
        stdout: Out,
        stderr: Out,
    ) -> Result<Proc> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(argv);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let what = argv.join(" ");
        let ready = ready.map(|r| Box::new(r) as _);
        let mut run = Runner::start(&mut cmd, ready, stdout, stderr)
            .with_context(|| format!("starting `{what}` in {ns}"))?;
        run.set_poll(Duration::from_millis(5));
        Ok(Proc { run, what })
    }

    /// Waits (at most `within`, looking every `every`) for its ready file; `name` is what the
    /// errors call it. One that ends first, or is not ready in time, is an error with its
    /// stderr.
    pub(super) fn wait_ready(
        &mut self,
        name: &str,
        within: Duration,
        every: Duration,
    ) -> Result<()> {
        self.run.set_poll(every);
        let r = self.run.wait_ready(within, || false);
        self.run.set_poll(Duration::from_millis(5));
        match r {
            Ok(()) => Ok(()),
            Err(RunError::ExitedEarly { status, stderr }) => bail!(
                "{name} exited before it was ready ({status}): {}",
                stderr.trim()
            ),
            Err(RunError::NotReady { within, stderr }) => bail!(
                "{name} not ready after {} s: {}",
                within.as_secs(),
                stderr.trim()
            ),
            Err(e) => Err(e).with_context(|| format!("waiting for {name}")),
        }
    }

    /// Its pid, while it has not been waited for.
    pub(super) fn pid(&self) -> u32 {
        self.run.pid().unwrap_or_default()
    }

    /// What it wrote on stderr so far ([`Out::Keep`] only).
    pub(super) fn stderr_text(&self) -> String {
        self.run.stderr_text()
    }

    /// Once it has ended: how, and what it printed.
    pub(super) fn exited(&mut self) -> Result<Option<Finished>> {
        self.run.try_finish().context("waiting for it")
    }

    /// Waits at most `max` for it to end; kills it after that (an error).
    pub(super) fn finish(&mut self, max: Duration) -> Result<Finished> {
        match self.run.wait_exit(max) {
            Err(RunError::StillRunning(_)) => {
                self.run.kill();
                bail!("`{}` still running after {max:?}: killed", self.what)
            }
            r => r.with_context(|| format!("waiting for `{}`", self.what)),
        }
    }

    /// SIGINT (Ctrl-C), then waits at most `max`; kills it after that (an error).
    pub(super) fn interrupt(&mut self, max: Duration) -> Result<Finished> {
        match self.run.stop(max) {
            Err(RunError::NoStop { .. }) => {
                bail!("`{}` still running after {max:?}: killed", self.what)
            }
            r => r.with_context(|| format!("waiting for `{}`", self.what)),
        }
    }
}

/// Runs a program in a namespace to its end (at most `max`) and returns its stdout.
pub(super) fn run_in(ns: &str, argv: &[&str], max: Duration) -> Result<String> {
    let mut p = Proc::start(ns, argv, Out::Keep, Out::Keep)?;
    let f = p.finish(max)?;
    ensure!(
        f.status.success(),
        "`{}` failed ({}): {}",
        argv.join(" "),
        f.status,
        f.stderr.trim()
    );
    Ok(f.stdout)
}

pub(super) fn sh_in(ns: &str, cmd: &str) -> Result<String> {
    output(Command::new("ip").args(["netns", "exec", ns, "sh", "-c", cmd]))
}

/// Files under /dev/shm of this run, removed on drop.
pub(super) struct ShmFiles(pub(super) String);

impl Drop for ShmFiles {
    fn drop(&mut self) {
        let (dir, prefix) = self.0.rsplit_once('/').unwrap_or(("/dev/shm", &self.0));
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Waits (at most `max`) until a server listens on `port` in `ns`.
pub(super) fn wait_listening(ns: &str, port: &str, max: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let out = output(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "ss",
            "-Hltn",
            &format!("sport = :{port}"),
        ]))?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        ensure!(t0.elapsed() < max, "nothing listens on {port} in {ns}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// `(utime + stime)` of a process, in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/PID/stat")?;
    // After the command name: state is field 3, utime 14 and stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// A `Vm*:` line of /proc/PID/status, in KiB.
pub(super) fn vm_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}
