//! Processes in the bench's namespaces (killed when dropped), the run's files under /dev/shm,
//! and what /proc says of a process and of the machine.

use std::{
    io::{self, Read},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::host::output;

fn reader(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// A process in a namespace (`ip netns exec` execs it: the pid is the program's own), killed
/// when dropped and, through PR_SET_PDEATHSIG, when xtask dies.
pub(super) struct Proc {
    child: Child,
    what: String,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

pub(super) struct Finished {
    pub(super) status: ExitStatus,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

impl Proc {
    /// Only from the main thread: the death signal follows the thread that forked.
    pub(super) fn start(ns: &str, argv: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Proc> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
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
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{what}` in {ns}"))?;
        let out = child.stdout.take().map(reader);
        let err = child.stderr.take().map(reader);
        Ok(Proc {
            child,
            what,
            out,
            err,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `max` for it to end; kills it after that (an error).
    pub(super) fn finish(&mut self, max: Duration) -> Result<Finished> {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if t0.elapsed() > max {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("`{}` still running after {max:?}: killed", self.what);
            }
            thread::sleep(Duration::from_millis(5));
        };
        let join = |h: Option<JoinHandle<String>>| h.map(|h| h.join().unwrap_or_default());
        Ok(Finished {
            status,
            stdout: join(self.out.take()).unwrap_or_default(),
            stderr: join(self.err.take()).unwrap_or_default(),
        })
    }

    /// SIGINT (Ctrl-C), then waits at most `max`.
    pub(super) fn interrupt(&mut self, max: Duration) -> Result<Finished> {
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(self.pid() as i32, libc::SIGINT) };
        self.finish(max)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a program in a namespace to its end (at most `max`) and returns its stdout.
pub(super) fn run_in(ns: &str, argv: &[&str], max: Duration) -> Result<String> {
    let mut p = Proc::start(ns, argv, Stdio::piped(), Stdio::piped())?;
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
