//! The resets `ct-trace top` shows beside the table: a ct-trace tracer run as top's child, in
//! top's namespace, whose attributions (each reset an INVALID packet or a lost entry caused,
//! with its flow) are counted here by Service, backend and client, the keys top's table uses.
//!
//! A child rather than programs of top's own: the tracer is the one path that attributes a
//! reset (attach plan, correlator, kernel counters), and top must show exactly what `sudo
//! ct-trace` would print, not a second implementation of it. The child dies with top
//! (`PR_SET_PDEATHSIG`, and SIGTERM when the tracer is dropped: its programs detach). It runs
//! through the shared runner (`conntrack_common::harness::runner`) in its streaming mode: its
//! JSON lines are counted as they come, for hours, and never kept.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use conntrack_common::harness::runner::{Lines, Out, Ready as _, RunError, Runner};
use serde::Serialize;

use crate::private::ReadyAt;

/// How long the tracer may take to attach before top goes on without it.
pub const ATTACH_WAIT: Duration = Duration::from_secs(30);

/// Groups kept per grouping; the rest are counted under `other`.
const CAP: usize = 4096;

/// Where the tracer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Started, not attached yet.
    Starting,
    /// Attached: every reset it attributes is counted.
    Tracing,
    /// Could not attach, or ended: `error` says why.
    Failed,
}

/// One group of caused resets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub resets: u64,
}

/// Caused resets since top started, as one snapshot shows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resets {
    pub state: State,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attributions: resets a broken conntrack flow caused (since top started).
    pub caused: u64,
    /// Of them, by cause: an INVALID packet, a lost entry.
    pub invalid_packet: u64,
    pub entry_lost: u64,
    /// Caused resets per second over the snapshot's interval.
    pub per_s: f64,
    /// Events the tracer's ring buffer lost (`lost` counters): attributions that may be
    /// missing from `caused`. 0 means none can be.
    pub unseen: u64,
    /// Heaviest first, at most `limit`, then `other`.
    pub by_service: Vec<Group>,
    pub by_backend: Vec<Group>,
    pub by_client: Vec<Group>,
}

#[derive(Default)]
struct Tally {
    map: HashMap<String, (Option<String>, u64)>,
    other: u64,
}

impl Tally {
    fn add(&mut self, key: String, name: Option<&str>) {
        let len = self.map.len();
        match self.map.get_mut(&key) {
            Some(g) => g.1 += 1,
            None if len < CAP => {
                self.map.insert(key, (name.map(str::to_string), 1));
            }
            None => self.other += 1,
        }
    }

    fn rows(&self, limit: usize) -> Vec<Group> {
        let mut rows: Vec<Group> = self
            .map
            .iter()
            .map(|(k, (name, n))| Group {
                key: k.clone(),
                name: name.clone(),
                resets: *n,
            })
            .collect();
        rows.sort_by(|a, b| b.resets.cmp(&a.resets).then_with(|| a.key.cmp(&b.key)));
        let rest: u64 = rows
            .drain(limit.min(rows.len())..)
            .map(|g| g.resets)
            .sum::<u64>()
            + self.other;
        if rest > 0 {
            rows.push(Group {
                key: "other".into(),
                name: None,
                resets: rest,
            });
        }
        rows
    }
}

#[derive(Default)]
struct Counts {
    /// The tracer's ready file: it exists once every program is attached.
    ready_file: PathBuf,
    ready: bool,
    ended: bool,
    error: Option<String>,
    caused: u64,
    invalid_packet: u64,
    entry_lost: u64,
    unseen: u64,
    service: Tally,
    backend: Tally,
    client: Tally,
}

impl Counts {
    fn state(&mut self) -> State {
        if !self.ready && !self.ended && !self.ready_file.as_os_str().is_empty() {
            self.ready = self.ready_file.exists();
        }
        match (self.ready, self.ended) {
            (_, true) => State::Failed,
            (true, false) => State::Tracing,
            (false, false) => State::Starting,
        }
    }

    /// Counts one line of the tracer's JSON stream; other kinds (its exit summary) are skipped.
    fn line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        match v["kind"].as_str() {
            Some("attribution") => {
                self.caused += 1;
                match v["cause"].as_str() {
                    Some("entry_lost") => self.entry_lost += 1,
                    _ => self.invalid_packet += 1,
                }
                let name = v["service_name"].as_str();
                // Attributions are TCP's: keyed as top's table keys its groups.
                let key = |f: &str| v[f].as_str().map(|a| format!("{a}/tcp"));
                if let Some(k) = key("service") {
                    self.service.add(k, name);
                }
                if let Some(k) = key("backend") {
                    self.backend.add(k, None);
                }
                if let Some(c) = v["client"]
                    .as_str()
                    .and_then(|c| c.parse::<SocketAddr>().ok())
                {
                    self.client.add(c.ip().to_string(), None);
                }
            }
            Some("lost") => self.unseen += v["count"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
}

/// The tracer: owns the child (stopped on drop).
pub struct Tracer {
    run: Option<Runner>,
    counts: Arc<Mutex<Counts>>,
}

/// What a snapshot reads the counts through (sent to the thread that takes the snapshots).
pub struct Reader {
    counts: Arc<Mutex<Counts>>,
    prev: u64,
    prev_at: Instant,
}

fn lock(c: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// The tracer's stdout, counted line by line as it streams; its end means the tracer ended.
struct Stdout(Arc<Mutex<Counts>>);

impl Lines for Stdout {
    fn line(&mut self, line: &str) {
        lock(&self.0).line(line);
    }

    fn end(&mut self) {
        lock(&self.0).ended = true;
    }
}

impl Tracer {
    /// Starts `ct-trace -o json --kind attribution,lost` (this executable) in this namespace;
    /// `attach` is passed on as `--attach`. A failure to start is the tracer's state, not
    /// top's: the table is still worth showing.
    pub fn start(attach: &str) -> Self {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let mut me = Self {
            run: None,
            counts: counts.clone(),
        };
        let fail = |me: Self, why: String| {
            let mut c = lock(&me.counts);
            c.ended = true;
            c.error = Some(why);
            drop(c);
            me
        };
        // In a directory of its own, removed with it when the tracer is dropped.
        let ready = match ReadyAt::fresh(&std::env::temp_dir(), "ct-trace-top-", "ready") {
            Ok(r) => r,
            Err(e) => return fail(me, format!("no place for its ready file: {e}")),
        };
        lock(&me.counts).ready_file = ready.path();
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => return fail(me, format!("cannot find ct-trace's executable: {e}")),
        };
        let mut cmd = Command::new(exe);
        cmd.args([
            "-o",
            "json",
            "--kind",
            "attribution,lost",
            "--attach",
            attach,
        ])
        .arg("--ready-file")
        .arg(ready.path());
        // SAFETY: prctl is async-signal-safe. The child gets SIGTERM (a clean detach) when the
        // thread that started it ends: top's main thread, which lives as long as top.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // It streams for as long as top runs: each line is counted as it comes, nothing kept;
        // of stderr only the last line (why it failed, when it does).
        let c = counts;
        let last_line = move |line: &str| {
            let line = line.trim();
            if !line.is_empty() {
                lock(&c).error = Some(line.to_string());
            }
        };
        let stdout = Out::Lines(Box::new(Stdout(me.counts.clone())));
        match Runner::start(
            &mut cmd,
            Some(Box::new(ready)),
            stdout,
            Out::Lines(Box::new(last_line)),
        ) {
            Ok(run) => me.run = Some(run),
            Err(RunError::Spawn { source, .. }) => {
                return fail(me, format!("cannot start ct-trace: {source}"))
            }
            Err(e) => return fail(me, format!("cannot start ct-trace: {e}")),
        }
        me
    }

    /// Waits until the tracer is attached, has failed, `max` has passed or `stopped()`; returns
    /// where it is.
    pub fn wait_ready(&self, max: Duration, stopped: impl Fn() -> bool) -> State {
        let t0 = Instant::now();
        while t0.elapsed() < max && !stopped() {
            let s = self.state();
            if s != State::Starting {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.state()
    }

    /// Why the tracer failed (its last line on stderr) and its exit code, once it has ended;
    /// `None` while it runs or if it failed before it started (no exit code to give).
    pub fn failure(&mut self) -> Option<(String, i32)> {
        // Its stdout closed (`ended`) a moment before the process is reaped.
        let status = self
            .run
            .as_mut()?
            .wait_exit(Duration::from_secs(2))
            .ok()?
            .status;
        let c = lock(&self.counts);
        let why = c.error.clone().unwrap_or_else(|| "the tracer ended".into());
        Some((why, status.code().unwrap_or(1)))
    }

    fn state(&self) -> State {
        lock(&self.counts).state()
    }

    /// A reader of the counts for the snapshots.
    pub fn reader(&self) -> Reader {
        Reader {
            counts: self.counts.clone(),
            prev: 0,
            prev_at: Instant::now(),
        }
    }
}

impl Reader {
    /// The counts now, `limit` groups per grouping, the rate since the last call.
    pub fn snapshot(&mut self, limit: usize) -> Resets {
        let mut c = lock(&self.counts);
        let state = c.state();
        let now = Instant::now();
        let secs = now.duration_since(self.prev_at).as_secs_f64().max(0.001);
        let per_s = ((c.caused - self.prev) as f64 / secs * 10.0).round() / 10.0;
        self.prev = c.caused;
        self.prev_at = now;
        Resets {
            state,
            // While tracing, stderr carries the tracer's notices, not an error.
            error: (state == State::Failed).then(|| {
                c.error
                    .clone()
                    .unwrap_or_else(|| "the tracer ended".to_string())
            }),
            caused: c.caused,
            invalid_packet: c.invalid_packet,
            entry_lost: c.entry_lost,
            per_s,
            unseen: c.unseen,
            by_service: c.service.rows(limit),
            by_backend: c.backend.rows(limit),
            by_client: c.client.rows(limit),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut run) = self.run.take() {
            // SIGTERM: the tracer detaches its programs and removes its ready file; one that
            // has not ended 5 s later is killed. Dropping the runner removes the ready file's
            // directory.
            let _ = run.stop_with(libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributions_are_counted_by_service_backend_and_client() {
        let mut c = Counts::default();
        let a = |client: &str, service: &str, cause: &str| {
            format!(
                r#"{{"kind":"attribution","client":"{client}","service":"{service}","backend":"10.0.2.2:8080","cause":"{cause}","service_name":"shop/web:http"}}"#
            )
        };
        c.line(&a("10.0.1.2:40000", "10.96.0.10:80", "invalid_packet"));
        c.line(&a("10.0.1.2:40001", "10.96.0.10:80", "entry_lost"));
        c.line(&a("[fd00::2]:40002", "[fd96::10]:80", "invalid_packet"));
        c.line(r#"{"kind":"lost","counter":"lost_reset","count":3}"#);
        c.line(r#"{"kind":"summary"}"#);
        c.line("not json");
        assert_eq!(
            (c.caused, c.invalid_packet, c.entry_lost, c.unseen),
            (3, 2, 1, 3)
        );
        let s = c.service.rows(1);
        assert_eq!(
            s,
            [
                Group {
                    key: "10.96.0.10:80/tcp".into(),
                    name: Some("shop/web:http".into()),
                    resets: 2
                },
                Group {
                    key: "other".into(),
                    name: None,
                    resets: 1
                }
            ]
        );
        let clients: Vec<(String, u64)> = c
            .client
            .rows(10)
            .into_iter()
            .map(|g| (g.key, g.resets))
            .collect();
        assert_eq!(clients, [("10.0.1.2".into(), 2), ("fd00::2".into(), 1)]);
    }
}
