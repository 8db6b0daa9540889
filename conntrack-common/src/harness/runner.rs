//! The one runner of a child, ct-trace above all, shared by the lab, the integration tests
//! (`tests/src/ct_trace.rs`), `ct-trace top`'s tracer and the bench: started with stdin closed
//! and SIGINT at its default, its stdout and stderr read as it writes them by a thread each (a
//! flood of events must never fill a pipe and block it; what it wrote on stderr stays readable
//! while it runs), each kept whole, handed line by line to a callback (a child that streams for
//! hours), or sent straight to a file (the bench, whose reader must stay out of what it
//! measures); waited for until its ready file appears (bounded; if it exits first, the error
//! carries its stderr), stopped with SIGINT as a user would with a bounded wait, and killed on
//! drop.
//!
//! Where the ready file is, and who else may write there, is the caller's ([`Ready`]): the lab
//! and the tests keep theirs in a private directory, the bench under `/dev/shm`
//! ([`ReadyPath`]).

use std::{
    boxed::Box,
    io::{self, BufRead as _, BufReader, Read},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    string::String,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
    vec::Vec,
};

/// How often the runner looks at the ready file and the child while it waits, unless told
/// otherwise ([`Runner::set_poll`]).
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

/// Where the child is told to write its ready file, and how the runner looks for it.
pub trait Ready: Send {
    /// The path to hand to the child (`--ready-file PATH`).
    fn path(&self) -> PathBuf;
    /// Whether the child has written it.
    fn exists(&self) -> bool;
    /// Removes it (once the child has ended; dropping it removes it too).
    fn remove(&self);
}

/// A ready file at a plain path, for a caller whose directory is its own already (the bench's
/// `/dev/shm/ctt-bench-PID-*`); one left there before is removed, and so is this one on drop.
pub struct ReadyPath(PathBuf);

impl ReadyPath {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let r = Self(path.into());
        r.remove();
        r
    }
}

impl Ready for ReadyPath {
    fn path(&self) -> PathBuf {
        self.0.clone()
    }

    fn exists(&self) -> bool {
        self.0.exists()
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for ReadyPath {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What takes a streamed child's lines, as it writes them.
pub trait Lines: Send {
    /// One line, without its newline (invalid UTF-8 replaced).
    fn line(&mut self, line: &str);
    /// The child closed the stream (it ended).
    fn end(&mut self) {}
}

impl<F: FnMut(&str) + Send> Lines for F {
    fn line(&mut self, line: &str) {
        self(line)
    }
}

/// Where one of the child's output streams goes.
pub enum Out {
    /// Kept whole: readable while it runs ([`Runner::stdout_text`]) and in [`Finished`].
    Keep,
    /// Each line to a callback as it comes, nothing kept (a child that streams for hours).
    Lines(Box<dyn Lines>),
    /// Straight to a file or `/dev/null`: no reader of the runner's in between.
    To(Stdio),
}

/// What a finished child printed (what was kept of it), and how it ended.
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
    ready: Option<Box<dyn Ready>>,
    readers: Vec<JoinHandle<()>>,
    stdout: Shared,
    stderr: Shared,
    poll: Duration,
}

/// Reads `r` to its end into `into`, as it comes.
fn keep(mut r: impl Read + Send + 'static, into: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            into.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

/// Hands `r`'s lines to `to` as they come, then says it ended.
fn stream(r: impl Read + Send + 'static, mut to: Box<dyn Lines>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        while let Ok(1..) = r.read_until(b'\n', &mut buf) {
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            to.line(&String::from_utf8_lossy(&buf));
            buf.clear();
        }
        to.end();
    })
}

fn text(b: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&b.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// The child's end of a stream, and how the runner reads its own end (nothing to read for
/// [`Out::To`]).
fn split(o: Out) -> (Stdio, Option<Out>) {
    match o {
        Out::To(s) => (s, None),
        o => (Stdio::piped(), Some(o)),
    }
}

/// The thread that reads `pipe` as `how` says (`into` when it is kept).
fn reader(pipe: impl Read + Send + 'static, how: Out, into: &Shared) -> Option<JoinHandle<()>> {
    match how {
        Out::Keep => Some(keep(pipe, Arc::clone(into))),
        Out::Lines(to) => Some(stream(pipe, to)),
        Out::To(_) => None,
    }
}

impl Runner {
    /// Starts `cmd` (which names `ready.path()` among its arguments) with stdout and stderr
    /// both kept ([`Out::Keep`]).
    pub fn spawn(cmd: &mut Command, ready: impl Ready + 'static) -> Result<Self, RunError> {
        Self::start(cmd, Some(Box::new(ready)), Out::Keep, Out::Keep)
    }

    /// Starts `cmd` with stdin closed and its output where `stdout` and `stderr` say. Without
    /// a ready file, it is ready at once.
    pub fn start(
        cmd: &mut Command,
        ready: Option<Box<dyn Ready>>,
        stdout: Out,
        stderr: Out,
    ) -> Result<Self, RunError> {
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
        let (out_io, out_how) = split(stdout);
        let (err_io, err_how) = split(stderr);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out_io)
            .stderr(err_io)
            .spawn()
            .map_err(|source| RunError::Spawn {
                program: cmd.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        let (out, err) = (Shared::default(), Shared::default());
        let readers = [
            child
                .stdout
                .take()
                .zip(out_how)
                .and_then(|(p, how)| reader(p, how, &out)),
            child
                .stderr
                .take()
                .zip(err_how)
                .and_then(|(p, how)| reader(p, how, &err)),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(Self {
            child: Some(child),
            ready,
            readers,
            stdout: out,
            stderr: err,
            poll: POLL,
        })
    }

    /// How often [`Self::wait_ready`] and the waits for its end look (the bench times its
    /// start-up to the millisecond).
    pub fn set_poll(&mut self, every: Duration) {
        self.poll = every;
    }

    /// Where its ready file is, if it has one.
    pub fn ready_path(&self) -> Option<PathBuf> {
        self.ready.as_ref().map(|r| r.path())
    }

    /// Waits (at most `within`) for the ready file. `abandon` is asked on every look whether
    /// to stop waiting ([`RunError::Abandoned`]). On any error the child is ended.
    pub fn wait_ready(
        &mut self,
        within: Duration,
        mut abandon: impl FnMut() -> bool,
    ) -> Result<(), RunError> {
        let t0 = Instant::now();
        while !self.ready.as_ref().is_none_or(|r| r.exists()) {
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
            std::thread::sleep(self.poll);
        }
        Ok(())
    }

    /// Its process id (`ip netns exec` execs its command, so this is that command's); `None`
    /// once it has been waited for.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it wrote on stdout so far (kept only with [`Out::Keep`]).
    pub fn stdout_text(&self) -> String {
        text(&self.stdout)
    }

    /// What it wrote on stderr so far (kept only with [`Out::Keep`]).
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
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if let Some(r) = &self.ready {
            r.remove();
        }
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
            std::thread::sleep(self.poll);
        }
    }

    /// Stops it as a user would (SIGINT) and waits at most `within` for it to end; after that
    /// it is killed ([`RunError::NoStop`]).
    pub fn stop(&mut self, within: Duration) -> Result<Finished, RunError> {
        self.stop_with(libc::SIGINT, within)
    }

    /// [`Self::stop`] with another signal (`ct-trace top` ends its tracer with SIGTERM, as
    /// a node's shutdown would).
    pub fn stop_with(&mut self, signal: i32, within: Duration) -> Result<Finished, RunError> {
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child, not yet waited for (its pid is still ours).
            unsafe { libc::kill(pid as i32, signal) };
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

    /// Kills it now and waits for it (and for its pipes' readers).
    pub fn kill(&mut self) {
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
mod tests;
