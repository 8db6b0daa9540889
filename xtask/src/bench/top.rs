//! `ct-trace top` on a filled table: the node namespace's table filled with UDP flows from the
//! client to the server (4 sockets x every destination port: up to 262,140 entries, unreplied,
//! kept 600 s), then one snapshot from exec to exit (`--once`: one dump, then the snapshot of the table the
//! events keep) and a steady run (`--interval 1`): its CPU per second and its memory.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use super::{
    numbers::group,
    process::{cpu_seconds, sh_in, vm_kib, Out, Proc},
    report::{median, spread, Section},
    topology::Topo,
    Bins, Config, SERVER,
};

pub(super) struct TopBench {
    pub(super) entries: u64,
    pub(super) fill_s: f64,
    pub(super) once_ms: Vec<f64>,
    pub(super) steady_s: f64,
    pub(super) snapshots: usize,
    pub(super) cpu_per_s: f64,
    pub(super) peak_kib: f64,
    pub(super) rss_kib: f64,
}

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// `nf_conntrack_max` (global: only the init namespace may set it) raised for the part and
/// restored on drop, also on error.
struct RaisedMax(String);

impl RaisedMax {
    fn to_at_least(n: u64) -> Result<Self> {
        let saved = std::fs::read_to_string(MAX).context(MAX)?;
        if saved.trim().parse::<u64>().unwrap_or(0) < n {
            std::fs::write(MAX, n.to_string()).context(MAX)?;
        }
        Ok(Self(saved))
    }
}

impl Drop for RaisedMax {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX, self.0.trim());
    }
}

fn entries(ns: &str) -> Result<u64> {
    Ok(sh_in(ns, "cat /proc/sys/net/netfilter/nf_conntrack_count")?
        .trim()
        .parse()?)
}

pub(super) fn top(topo: &Topo, bins: &Bins, cfg: &Config) -> Result<TopBench> {
    let sockets = if cfg.smoke { 1 } else { 4 };
    let ports = if cfg.smoke { 20_000 } else { 65_535 };
    let want = sockets * ports;
    let _max = RaisedMax::to_at_least(want + 65_536)?;
    sh_in(
        &topo.node,
        "sysctl -qw net.netfilter.nf_conntrack_udp_timeout=600 net.netfilter.nf_conntrack_udp_timeout_stream=600",
    )?;
    let before = entries(&topo.node)?;
    let t0 = Instant::now();
    sh_in(
        &topo.cli,
        &format!(
            "python3 -c \"
import socket
for _ in range({sockets}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for p in range(1, {ports} + 1):
        s.sendto(b'x', ('{SERVER}', p))
\""
        ),
    )?;
    let fill_s = t0.elapsed().as_secs_f64();
    let filled = entries(&topo.node)?;
    ensure!(
        filled >= before + want * 99 / 100,
        "the table holds {filled} entries after sending {want} new flows (before: {before})"
    );
    eprintln!("bench: top: {filled} entries in the node's table ({fill_s:.1} s to fill)");

    let mut once_ms = Vec::new();
    for _ in 0..if cfg.smoke { 1 } else { 3 } {
        let t = Instant::now();
        let mut p = Proc::start(
            &topo.node,
            &[
                &bins.ct_trace,
                "top",
                "-o",
                "json",
                "--once",
                "--interval",
                "1ms",
                // The table alone: the tracer top starts is ct-trace itself, whose cost the
                // rest of the bench measures (and whose CPU is not in top's pid).
                "--no-resets",
            ],
            Out::Keep,
            Out::Keep,
        )?;
        let f = p.finish(Duration::from_secs(120))?;
        ensure!(f.status.success(), "ct-trace top: {}", f.stderr.trim());
        once_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let snap: serde_json::Value =
            serde_json::from_str(f.stdout.trim()).context("ct-trace top's JSON")?;
        let n = snap["entries"].as_u64().unwrap_or(0);
        // The table moves while top reads it: the hot path's TIME_WAIT entries (thousands, 120
        // s timeout) expire under it. Top's count must lie between the kernel's before and
        // after it, give or take what one dump can miss.
        let now = entries(&topo.node)?;
        let (lo, hi) = (filled.min(now), filled.max(now));
        ensure!(
            n + 1000 >= lo && n <= hi + 1000,
            "top saw {n} entries, the kernel counts {filled} before it and {now} after"
        );
    }

    // The table was filled before top started: its entries send no events, and top checks
    // them with dumps paced by its default budget (2% of a core).
    let steady = Duration::from_secs(if cfg.smoke { 3 } else { 30 });
    let t = Instant::now();
    let mut p = Proc::start(
        &topo.node,
        &[
            &bins.ct_trace,
            "top",
            "-o",
            "json",
            "--interval",
            "1",
            "--no-resets",
        ],
        Out::Keep,
        Out::Keep,
    )?;
    thread::sleep(steady);
    let cpu = cpu_seconds(p.pid())?;
    let steady_s = t.elapsed().as_secs_f64();
    let peak_kib = vm_kib(p.pid(), "VmHWM:")? as f64;
    let rss_kib = vm_kib(p.pid(), "VmRSS:")? as f64;
    let f = p.interrupt(Duration::from_secs(15))?;
    let snapshots = f.stdout.lines().count();
    ensure!(
        snapshots > 0,
        "ct-trace top printed nothing: {}",
        f.stderr.trim()
    );
    // Later parts must not find a full table.
    sh_in(&topo.node, "conntrack -F 2>/dev/null || true")?;
    Ok(TopBench {
        entries: filled,
        fill_s,
        once_ms,
        steady_s,
        snapshots,
        cpu_per_s: cpu / steady_s,
        peak_kib,
        rss_kib,
    })
}

pub(super) fn top_section(t: &TopBench) -> Section {
    let f0 = |v: f64| format!("{v:.0}");
    Section {
        title: "top on a filled table".into(),
        about: format!(
            "`ct-trace top` in the node namespace with {} conntrack entries (UDP flows from the client to the server, unreplied, filled in {:.1} s): one snapshot from exec to exit (`--once`: the Service names, one dump, the snapshot), then `--interval 1` for {:.0} s ({} snapshots): CPU per second of wall time and memory.",
            group(t.entries), t.fill_s, t.steady_s, t.snapshots
        ),
        header: vec!["measure", "median", "min-max"],
        rows: vec![
            vec![
                "--once, exec -> exit (ms)".into(),
                f0(median(&t.once_ms)),
                spread(&t.once_ms, f0),
            ],
            vec![
                "--interval 1: CPU (share of one core)".into(),
                format!("{:.3}", t.cpu_per_s),
                "-".into(),
            ],
            vec![
                "peak RSS (VmHWM, MiB)".into(),
                format!("{:.1}", t.peak_kib / 1024.0),
                "-".into(),
            ],
            vec![
                "RSS at the end (VmRSS, MiB)".into(),
                format!("{:.1}", t.rss_kib / 1024.0),
                "-".into(),
            ],
        ],
        notes: vec![
            "one dump at the start, then the table is kept by ctnetlink's events and a snapshot every `--interval`; the entries filled before top started send no events (`nf_conntrack_events=2`), so dumps check them, paced to 2% of a core (`--cpu-budget`): a 30 s run sees at most one".into(),
        ],
    }
}
