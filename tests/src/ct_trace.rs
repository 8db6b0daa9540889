//! The real `ct-trace` binary under test: started with `--ready-file` (in `/run/ct-trace/tests`)
//! inside a namespace by the shared runner (`conntrack_common::harness::runner`, the lab's,
//! top's and the bench's too: its stdout and stderr read as it writes them, stderr also
//! readable while it runs, stopped with SIGINT, killed on drop); and what it printed, with the
//! checks every test makes of its summary.

use std::{
    net::SocketAddr,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use conntrack_common::harness::runner::{Finished, Ready as _, RunError, Runner};
use conntrack_user::private::{PrivateDir, ReadyAt};
use serde_json::Value;

use crate::{bin, in_vm, poll, Netns, SEQ};

/// The attach mode under test: `CT_TRACE_MODE` (`netfilter`, `fexit` or `kprobe`, set per run by the VM
/// matrix of `cargo xtask test`), else `auto`. Printed once, so every log says which mode ran.
pub fn mode() -> String {
    static SHOWN: std::sync::Once = std::sync::Once::new();
    let m = std::env::var("CT_TRACE_MODE").unwrap_or_else(|_| "auto".into());
    SHOWN.call_once(|| {
        let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        eprintln!("ct-trace attach mode: {m} (kernel {})", rel.trim());
    });
    m
}

/// A running `ct-trace -o json`, stopped (SIGINT) and killed on drop: the runner the lab
/// uses too (`conntrack_common::harness::runner`), which reads its stdout and stderr as ct-trace
/// writes them (a flood of events must never fill a pipe and block it).
pub struct CtTrace {
    run: Runner,
}

/// The tests' private directory for ready files, `/run/ct-trace/tests` (root's, 0700, made
/// without following links): nothing another user plants can say ct-trace is ready.
fn ready_dir() -> PrivateDir {
    PrivateDir::in_run("tests").unwrap_or_else(|e| panic!("{}", e.one_line()))
}

/// What a finished ct-trace printed.
pub struct Output {
    pub events: Vec<Value>,
    pub stderr: String,
    pub status: std::process::ExitStatus,
}

impl Output {
    /// Whether ct-trace read INVALID reasons with its kprobes in this run (it says so on stderr).
    pub fn reasons_known(&self) -> bool {
        self.stderr.contains("reasons: conntrack's log helpers")
    }

    /// Which attach point gave the INVALID verdicts in this run.
    pub fn verdict_source(&self) -> Option<&str> {
        let l = self
            .stderr
            .lines()
            .find(|l| l.contains("INVALID verdicts: "))?;
        Some(if l.contains("--attach kprobe") {
            "kprobe"
        } else if l.contains("--attach fexit") {
            "fexit"
        } else if l.contains("--attach netfilter") {
            "netfilter"
        } else {
            "none"
        })
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["kind"] == kind).collect()
    }

    /// The machine-readable summary: the last line ct-trace printed.
    pub fn summary(&self) -> &Value {
        let last = self.events.last().expect("ct-trace printed nothing");
        assert_eq!(last["kind"], "summary", "the last line is the summary");
        last
    }

    /// The INVALID tally of the summary, checked to reconcile: counted == shown + suppressed +
    /// filtered + lost + unprinted, and == the kernel's delta. Returns it.
    pub fn reconciled_invalid(&self) -> &Value {
        let i = &self.summary()["invalid"];
        let n = |k: &str| i[k].as_u64().unwrap_or_else(|| panic!("invalid.{k}: {i}"));
        assert_eq!(
            n("counted"),
            n("shown") + n("suppressed") + n("filtered") + n("lost") + n("unprinted"),
            "counted == shown + suppressed + filtered + lost + unprinted: {i}"
        );
        // With kprobes, the kernel may skip a run of the verdict kretprobe (BPF recursion
        // protection) and says how often: the only difference allowed, and only that large.
        // `kernel` spans from before attaching to after detaching, `kernel_while_attached` from
        // after attaching to before detaching: the count lies between the two.
        // Whether the kernel counts the runs it skips is a property of the kernel (5.12+), and
        // the summary says which: before it, nothing bounds a difference, and there is none.
        assert_eq!(
            i["missed_runs_known"],
            crate::kernel_at_least(5, 12),
            "missed_runs_known: {i}"
        );
        let missed = n("missed_runs");
        assert!(
            n("kernel") >= n("counted") && n("kernel") - n("counted") <= missed,
            "ct-trace's count == the kernel's, up to {missed} skipped runs: {i}"
        );
        assert!(
            n("kernel_while_attached") <= n("counted") + missed,
            "ct-trace counted at least what the kernel counted while it was attached: {i}"
        );
        if missed > 0 {
            eprintln!("the kernel skipped {missed} runs of the verdict kretprobe: {i}");
        }
        i
    }

    /// Events of a kind that satisfy `f`.
    pub fn events_of(&self, kind: &str, f: impl Fn(&Value) -> bool) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["kind"] == kind && f(e))
            .collect()
    }
}

impl CtTrace {
    /// Starts ct-trace inside `ns` (or the test's own namespace) and waits until it is attached.
    pub fn start(ns: Option<&Netns>, extra: &[&str]) -> Self {
        Self::spawn(ns, extra, false)
    }

    /// Starts ct-trace inside `ns` as on a kernel built without `CONFIG_NF_CONNTRACK_PROCFS`
    /// (Ubuntu's): in a mount namespace of its own where `/proc/net` (its process's
    /// `/proc/PID/net`) is an empty tmpfs with an empty `stat/`, so `/proc/net/stat/nf_conntrack`
    /// does not exist. Mounting inside `/proc/PID/net` itself does not hold: its entries are
    /// looked up again on every access (`proc_net_d_revalidate()` returns 0), which drops a
    /// mount on them. The shell `exec`s ct-trace, so the PID the mount names is ct-trace's.
    pub fn start_without_procfs(ns: &Netns, extra: &[&str]) -> Self {
        Self::spawn(Some(ns), extra, true)
    }

    fn spawn(ns: Option<&Netns>, extra: &[&str], hide_procfs: bool) -> Self {
        let ready = ReadyAt::new(
            ready_dir(),
            format!(
                "ct-trace-ready-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
        );
        let mut cmd = match ns {
            Some(ns) if hide_procfs => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name])
                    .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount -t tmpfs ct-trace-no-procfs /proc/$$/net && mkdir /proc/$$/net/stat && exec "$0" "$@""#)
                    .arg(bin());
                c
            }
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        // A bound in case a test never stops it; tests stop it with SIGINT. Under TCG a flood
        // test runs for minutes.
        cmd.args(["-o", "json", "--duration", "600", "--ready-file"])
            .arg(ready.path())
            .args(["--attach", &mode()])
            .args(extra);
        let mut run = Runner::spawn(&mut cmd, ready).unwrap_or_else(|e| panic!("ct-trace: {e:#?}"));
        // Under TCG, with bulk traffic on the one vCPU, attaching takes longer.
        let limit = Duration::from_secs(if in_vm() { 120 } else { 30 });
        match run.wait_ready(limit, || false) {
            Ok(()) => Self { run },
            Err(RunError::ExitedEarly { status, stderr }) => {
                // A rejected program's verifier log, where ct-trace said it wrote it.
                let log = stderr
                    .split("verifier log in ")
                    .nth(1)
                    .and_then(|r| r.split(':').next())
                    .and_then(|p| std::fs::read_to_string(p.trim()).ok())
                    .map(|l| {
                        let lines: Vec<&str> = l.lines().collect();
                        lines[lines.len().saturating_sub(30)..].join("\n")
                    })
                    .unwrap_or_default();
                panic!("ct-trace exited before it was ready ({status:?}): {stderr}{log}");
            }
            Err(e) => panic!("ct-trace {e}"),
        }
    }

    /// What it printed, once it has ended.
    fn output(f: Finished) -> Output {
        let events = f
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        Output {
            events,
            stderr: f.stderr,
            status: f.status,
        }
    }

    /// The address `--metrics` serves, as ct-trace announces it on stderr once it listens
    /// (`metrics at http://ADDR:PORT/metrics`: the port the kernel gave for port 0). Waits
    /// (bounded) for the line.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        let mut announced = None;
        poll::until(Duration::from_secs(10), poll::EVERY, || {
            announced = self
                .run
                .stderr_text()
                .lines()
                .find_map(|l| l.split("metrics at http://").nth(1))
                .and_then(|r| r.strip_suffix("/metrics"))
                .map(|a| a.parse().unwrap_or_else(|e| panic!("`{a}`: {e}")));
            announced.is_some()
        });
        announced.unwrap_or_else(|| {
            panic!(
                "ct-trace did not say where it serves metrics: {}",
                self.run.stderr_text()
            )
        })
    }

    /// ct-trace's process id (`ip netns exec` execs it, so this is ct-trace itself).
    pub fn pid(&self) -> u32 {
        self.run.pid().expect("running")
    }

    /// ct-trace's peak resident memory so far (`VmHWM`, KiB). Panics with what ct-trace printed
    /// when it is no longer running.
    pub fn peak_rss_kib(&mut self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        if let Some(kib) = hwm {
            return kib;
        }
        // A process that exited has no memory to report: say why it exited.
        let out = Self::output(
            self.run
                .wait_exit(Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("ct-trace {e}")),
        );
        panic!(
            "ct-trace is no longer running ({:?}): {}",
            out.status, out.stderr
        );
    }

    /// Waits (at most `max`) for ct-trace to end by itself, and returns what it printed.
    pub fn wait_exit(mut self, max: Duration) -> Output {
        match self.run.wait_exit(max) {
            Ok(f) => Self::output(f),
            Err(e) => panic!("ct-trace {e} (waited {max:?})"),
        }
    }

    /// Waits (at most `max`) until what ct-trace wrote on stderr so far satisfies `cond`, and
    /// returns how long that took; panics with its stderr when it never does.
    pub fn wait_stderr(&self, max: Duration, cond: impl Fn(&str) -> bool) -> Duration {
        let t0 = Instant::now();
        let seen = poll::until(max, poll::EVERY, || cond(&self.run.stderr_text()));
        let took = t0.elapsed();
        assert!(
            seen,
            "not on ct-trace's stderr after {max:?}: {}",
            self.run.stderr_text()
        );
        took
    }

    /// Waits (bounded) until what the test sent has gone through: no packet left in a CPU's
    /// backlog, the INVALID count no longer moving, and ct-trace's output no longer growing.
    /// For a test that reads ct-trace while it runs or ends it by another signal than `stop`'s.
    pub fn settle(&self) {
        wait_for_backlogs();
        wait_for_quiet_conntrack(self.pid());
        let max = Duration::from_secs(if in_vm() { 10 } else { 2 });
        let (_, quiet) = poll::settled(max, Duration::from_millis(100), || {
            self.run.stdout_text().len()
        });
        if !quiet {
            eprintln!("ct-trace's output still grows after {max:?}");
        }
    }

    /// Stops ct-trace like a user would (Ctrl-C) and returns what it printed.
    ///
    /// At SIGINT ct-trace detaches, reads what is left in the ring buffer, waits for its last
    /// lookups and reports every record: nothing it was given is lost by stopping it at once.
    /// What may still be in flight is the kernel's: packets the test sent that wait in a CPU's
    /// backlog for a softirq (deferred to ksoftirqd on a busy machine). Those are waited for.
    pub fn stop(mut self) -> Output {
        wait_for_backlogs();
        wait_for_quiet_conntrack(self.pid());
        // `ip netns exec` execs ct-trace, so the SIGINT is ct-trace's.
        match self.run.stop(Duration::from_secs(10)) {
            Ok(f) => Self::output(f),
            Err(e) => panic!("ct-trace {e}"),
        }
    }
}

/// Waits, at most a few seconds, until no CPU has a packet waiting in its backlog
/// (`/proc/net/softnet_stat`, the 12th column: `softnet_backlog_len()` as `softnet_seq_show()`
/// in net/core/net-procfs.c prints it). The machine is shared: another's traffic may keep a
/// backlog busy, so the bound ends the wait without failing. A kernel that prints fewer
/// columns is not waited for.
fn wait_for_backlogs() {
    let max = Duration::from_secs(if in_vm() { 10 } else { 2 });
    let queued = || -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
        stat.lines()
            .map(|l| {
                l.split_whitespace()
                    .nth(11)
                    .and_then(|v| u64::from_str_radix(v, 16).ok())
            })
            .sum()
    };
    let mut last = None;
    let empty = poll::until(max, Duration::from_millis(5), || {
        last = queued();
        matches!(last, Some(0) | None)
    });
    if !empty {
        eprintln!(
            "stopping ct-trace with {} packets still in the CPUs' backlogs after {max:?}",
            last.unwrap_or_default()
        );
    }
}

/// Waits, at most a few seconds, until the watched namespace's INVALID count stops moving (two
/// reads 100 ms apart agree): a flood the test stopped can still have segments in flight (a
/// sender's queue, a veth, a softirq deferred to ksoftirqd under TCG) that the backlogs do not
/// show, and a segment conntrack refuses while ct-trace detaches is counted by the kernel only.
/// Read through ct-trace's own `/proc/PID/net`, which is its namespace's.
fn wait_for_quiet_conntrack(pid: u32) {
    let path = format!("/proc/{pid}/net/stat/nf_conntrack");
    let invalid = || -> Option<u64> {
        let text = std::fs::read_to_string(&path).ok()?;
        conntrack_common::kstat::parse(&text)
            .ok()?
            .get("invalid")
            .copied()
    };
    let max = Duration::from_secs(if in_vm() { 10 } else { 2 });
    if invalid().is_none() {
        return;
    }
    let (last, quiet) = poll::settled(max, Duration::from_millis(100), invalid);
    if !quiet && last.is_some() {
        eprintln!("stopping ct-trace while INVALID packets still arrive after {max:?}");
    }
}
