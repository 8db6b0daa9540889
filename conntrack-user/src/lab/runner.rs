//! The one runner of a ct-trace child, shared by the lab ([`super::tracer`]) and the
//! integration tests (`tests/src/ct_trace.rs`): started with a ready file in a private
//! directory, its stdout and stderr read as it writes them by two threads (a flood of events
//! must never fill a pipe and block it; what it wrote on stderr stays readable while it runs),
//! waited for until the ready file appears (bounded; if it exits first, the error carries its
//! stderr), stopped with SIGINT as a user would with a bounded wait, and killed on drop.
//!
//! The ready file lives in a [`PrivateDir`] (0700, made without following links): no other
//! user can say the child is ready before it is, or make it write elsewhere.

use std::{
    io::{self, Read},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::private::PrivateDir;

/// How often the runner looks at the ready file and the child while it waits.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// It ended before it wrote its ready file; `stderr` is what it said.
    #[error("it exited before it was ready ({status}): {stderr}")]
    ExitedEarly { status: ExitStatus, stderr: String },
    #[error("not ready after {within:?}: {stderr}")]
    NotReady { within: Duration, stderr: String },
    /// The caller's own reason to stop waiting (a signal reached the lab).
    #[error("no longer waited for")]
    Abandoned,
    #[error("still running after {0:?}")]
    StillRunning(Duration),
    #[error("it did not stop within {within:?} of SIGINT and was killed: {stderr}")]
    NoStop { within: Duration, stderr: String },
    #[error("waiting for it")]
    Wait(#[source] io::Error),
}

/// Where the child is told to write its ready file: `name` in `dir`.
pub struct ReadyAt {
    dir: PrivateDir,
    name: String,
}

impl ReadyAt {
    /// `name` in `dir`; one left there by an earlier child with the same name is removed.
    pub fn new(dir: PrivateDir, name: String) -> Self {
        let _ = dir.remove(&name);
        Self { dir, name }
    }

    /// The path to hand to the child (`--ready-file PATH`).
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }
}

impl Drop for ReadyAt {
    fn drop(&mut self) {
        let _ = self.dir.remove(&self.name);
    }
}

/// What a finished child printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

type Shared = Arc<Mutex<Vec<u8>>>;

/// A running child, killed (and waited for) on drop.
pub struct Runner {
    child: Option<Child>,
    ready: ReadyAt,
    readers: Option<(JoinHandle<()>, JoinHandle<()>)>,
    stdout: Shared,
    stderr: Shared,
}

/// Reads `r` to its end into `into`, as it comes.
fn reader(mut r: impl Read + Send + 'static, into: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            into.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

fn text(b: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

impl Runner {
    /// Starts `cmd` (which names `ready.path()` among its arguments) with stdin closed and
    /// stdout and stderr read by the runner.
    pub fn spawn(cmd: &mut Command, ready: ReadyAt) -> Result<Self, RunError> {
        // The child is stopped with SIGINT, so it must not inherit SIGINT ignored: a process
        // started in the background by a non-interactive shell (`cmd &`, nohup, a CI job) has
        // it ignored, and a shell child cannot even trap a signal ignored on entry (POSIX).
        // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: cmd.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let (stdout, stderr) = (Shared::default(), Shared::default());
        let readers = match (child.stdout.take(), child.stderr.take()) {
            (Some(o), Some(e)) => Some((
                reader(o, Arc::clone(&stdout)),
                reader(e, Arc::clone(&stderr)),
            )),
            _ => None,
        };
        Ok(Self {
            child: Some(child),
            ready,
            readers,
            stdout,
            stderr,
        })
    }

    /// Waits (at most `within`) for the ready file. `abandon` is asked on every look whether
    /// to stop waiting ([`RunError::Abandoned`]). On any error the child is ended.
    pub fn wait_ready(
        &mut self,
        within: Duration,
        mut abandon: impl FnMut() -> bool,
    ) -> Result<(), RunError> {
        let t0 = Instant::now();
        while !self.ready.dir.holds(&self.ready.name) {
            if let Some(f) = self.try_finish()? {
                return Err(RunError::ExitedEarly {
                    status: f.status,
                    stderr: f.stderr,
                });
            }
            if abandon() {
                self.kill();
                return Err(RunError::Abandoned);
            }
            if t0.elapsed() > within {
                self.kill();
                return Err(RunError::NotReady {
                    within,
                    stderr: self.stderr_text(),
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Its process id (`ip netns exec` execs its command, so this is that command's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it wrote on stdout so far.
    pub fn stdout_text(&self) -> String {
        text(&self.stdout)
    }

    /// What it wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        text(&self.stderr)
    }

    /// Once it has ended: how, and all it printed (read to the end of both pipes).
    pub fn try_finish(&mut self) -> Result<Option<Finished>, RunError> {
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        match c.try_wait().map_err(RunError::Wait)? {
            None => Ok(None),
            Some(status) => {
                self.child = None;
                Ok(Some(self.collect(status)))
            }
        }
    }

    fn collect(&mut self, status: ExitStatus) -> Finished {
        if let Some((o, e)) = self.readers.take() {
            let _ = o.join();
            let _ = e.join();
        }
        let _ = self.ready.dir.remove(&self.ready.name);
        Finished {
            status,
            stdout: self.stdout_text(),
            stderr: self.stderr_text(),
        }
    }

    /// Waits (at most `max`) for it to end by itself.
    pub fn wait_exit(&mut self, max: Duration) -> Result<Finished, RunError> {
        let t0 = Instant::now();
        loop {
            if let Some(f) = self.try_finish()? {
                return Ok(f);
            }
            if self.child.is_none() {
                return Err(RunError::Wait(io::ErrorKind::NotFound.into()));
            }
            if t0.elapsed() > max {
                return Err(RunError::StillRunning(max));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops it as a user would (SIGINT) and waits at most `within` for it to end; after that
    /// it is killed ([`RunError::NoStop`]).
    pub fn stop(&mut self, within: Duration) -> Result<Finished, RunError> {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child, not yet waited for (its pid is still ours).
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        match self.wait_exit(within) {
            Err(RunError::StillRunning(_)) => {
                self.kill();
                Err(RunError::NoStop {
                    within,
                    stderr: self.stderr_text(),
                })
            }
            r => r,
        }
    }

    /// Kills it and waits for it (and for its pipes' readers).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                self.collect(st);
            }
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new private directory in the temporary directory (unit tests also run unprivileged).
    fn dir(tag: &str) -> PrivateDir {
        PrivateDir::fresh(&std::env::temp_dir(), &format!("ctt-runner-{tag}-"))
            .expect("a private directory")
    }

    fn sh(script: &str, ready: &ReadyAt) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script, "sh"]).arg(ready.path());
        c
    }

    fn cleanup(d: &std::path::Path) {
        let _ = std::fs::remove_dir(d);
    }

    #[test]
    fn ready_file_then_sigint() {
        let d = dir("ready");
        let path = d.path().to_path_buf();
        let ready = ReadyAt::new(d, "child.ready".into());
        // Ready, then prints on both pipes and ends on SIGINT only.
        let mut cmd = sh(
            r#"trap 'echo bye; exit 3' INT; echo starting >&2; touch "$1"; while :; do sleep 0.01; done"#,
            &ready,
        );
        let mut r = Runner::spawn(&mut cmd, ready).unwrap();
        r.wait_ready(Duration::from_secs(10), || false).unwrap();
        let f = r.stop(Duration::from_secs(10)).unwrap();
        assert_eq!(f.status.code(), Some(3), "{f:?}");
        assert_eq!(f.stdout, "bye\n");
        assert_eq!(f.stderr, "starting\n");
        assert!(
            !path.join("child.ready").exists(),
            "the ready file is removed"
        );
        drop(r);
        cleanup(&path);
    }

    #[test]
    fn exit_before_ready_carries_stderr() {
        let d = dir("early");
        let path = d.path().to_path_buf();
        let ready = ReadyAt::new(d, "child.ready".into());
        let mut cmd = sh("echo 'no BTF here' >&2; exit 1", &ready);
        let mut r = Runner::spawn(&mut cmd, ready).unwrap();
        match r.wait_ready(Duration::from_secs(10), || false) {
            Err(e @ RunError::ExitedEarly { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("no BTF here"), "{msg}");
                assert!(msg.contains("exit status: 1"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        drop(r);
        cleanup(&path);
    }

    #[test]
    fn ignoring_sigint_is_killed_after_the_bound() {
        let d = dir("stubborn");
        let path = d.path().to_path_buf();
        let ready = ReadyAt::new(d, "child.ready".into());
        let mut cmd = sh(
            r#"trap '' INT; touch "$1"; while :; do sleep 0.01; done"#,
            &ready,
        );
        let mut r = Runner::spawn(&mut cmd, ready).unwrap();
        r.wait_ready(Duration::from_secs(10), || false).unwrap();
        let t0 = Instant::now();
        let e = r.stop(Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, RunError::NoStop { .. }), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(r.pid(), None, "killed and waited for");
        drop(r);
        cleanup(&path);
    }
}
