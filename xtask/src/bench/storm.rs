//! Storm: `ctt-flood` at full speed (every segment INVALID at the node) with no observer, with
//! ct-trace at its default event budget and without one, and with the kernel's own log
//! (`klog`); ct-trace's counts reconciled with the kernel's.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    flood::{flood, Flood},
    klog::{kernel_log, KlogRun, KlogStorm},
    observer::start_ct_trace,
    process::{cpu_seconds, vm_kib},
    topology::Topo,
    Bins, Config,
};

pub(super) struct Check {
    pub(super) what: String,
    pub(super) ok: bool,
}

pub(super) struct CtStorm {
    pub(super) kernel: u64,
    pub(super) counted: u64,
    pub(super) shown: u64,
    pub(super) suppressed: u64,
    pub(super) lost: u64,
    /// shown / (flood start -> the last INVALID event reached the output file).
    pub(super) events_per_s: f64,
    pub(super) lines: u64,
    pub(super) cpu_total: f64,
    pub(super) cpu_after_ready: f64,
    pub(super) peak_rss_kib: u64,
    pub(super) check_kernel: Check,
    pub(super) check_sum: Check,
    pub(super) attach: String,
}

pub(super) struct StormRun {
    pub(super) label: String,
    pub(super) flood: Flood,
    pub(super) kernel: u64,
    pub(super) ct: Option<CtStorm>,
    pub(super) klog: Option<Result<KlogStorm, String>>,
}

impl From<KlogRun> for StormRun {
    fn from(k: KlogRun) -> Self {
        StormRun {
            label: k.label,
            flood: k.flood,
            kernel: k.kernel,
            ct: None,
            klog: Some(k.klog),
        }
    }
}

pub(super) struct Storm {
    pub(super) count: u64,
    pub(super) runs: Vec<StormRun>,
}

pub(super) fn storm(topo: &Topo, bins: &Bins, cfg: &Config) -> Result<Storm> {
    let mut runs = Vec::new();
    let before = topo.kernel_invalid()?;
    let (f, _) = flood(topo, bins, cfg.storm_count)?;
    let kernel = topo.kernel_invalid()? - before;
    eprintln!("bench: storm, no observer: {:.0}/s", f.rate);
    runs.push(StormRun {
        label: "none".into(),
        flood: f,
        kernel,
        ct: None,
        klog: None,
    });
    for (label, extra) in [
        ("ct-trace (budget 20000/s)", &[][..]),
        ("ct-trace (--event-budget 0)", &["--event-budget", "0"][..]),
    ] {
        let base = format!("{}-storm{}", cfg.shm, runs.len());
        let run = ct_storm(topo, bins, cfg, &base, extra)
            .with_context(|| format!("storm with {label}"))?;
        let _ = std::fs::remove_file(format!("{base}.json"));
        eprintln!(
            "bench: storm, {label}: {:.0}/s, {} shown",
            run.0.rate, run.1.shown
        );
        runs.push(StormRun {
            label: label.into(),
            kernel: run.1.kernel,
            flood: run.0,
            ct: Some(run.1),
            klog: None,
        });
    }
    runs.push(kernel_log(topo, bins, cfg)?.into());
    Ok(Storm {
        count: cfg.storm_count,
        runs,
    })
}

fn ct_storm(
    topo: &Topo,
    bins: &Bins,
    cfg: &Config,
    base: &str,
    extra: &[&str],
) -> Result<(Flood, CtStorm)> {
    let ct = start_ct_trace(topo, bins, base, extra)?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_len(ct.out.clone(), stop.clone());
    let (f, t0) = flood(topo, bins, cfg.storm_count)?;
    wait_written(&ct.out)?;
    let pid = ct.proc.pid();
    let cpu_total = cpu_seconds(pid)?;
    let cpu_after_ready = cpu_total - ct.cpu_at_ready;
    let peak_rss_kib = vm_kib(pid, "VmHWM:")?;
    let out = ct.out.clone();
    let (summary, stderr) = ct.stop()?;
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.join().unwrap_or_default();

    // Where the last INVALID event ends in the file, and when the file got that long.
    let (last_invalid_end, lines) = last_invalid_end(&out)?;
    let written_at = samples
        .iter()
        .find(|&&(_, len)| len >= last_invalid_end)
        .map(|&(t, _)| t)
        .unwrap_or(t0);
    let i = &summary["invalid"];
    let n = |k: &str| -> Result<u64> {
        i[k].as_u64()
            .with_context(|| format!("summary invalid.{k}: {summary}"))
    };
    let (kernel, counted, shown, suppressed, filtered, lost_i, unprinted) = (
        n("kernel")?,
        n("counted")?,
        n("shown")?,
        n("suppressed")?,
        n("filtered")?,
        n("lost")?,
        n("unprinted")?,
    );
    let lost: u64 = summary["lost"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let sum = shown + suppressed + filtered + lost_i + unprinted;
    let span = written_at.saturating_duration_since(t0).as_secs_f64();
    Ok((
        f,
        CtStorm {
            kernel,
            counted,
            shown,
            suppressed,
            lost,
            events_per_s: if span > 0.0 { shown as f64 / span } else { 0.0 },
            lines: lines.saturating_sub(1),
            cpu_total,
            cpu_after_ready,
            peak_rss_kib,
            check_kernel: Check {
                what: format!("counted {counted} == kernel {kernel}"),
                ok: counted == kernel,
            },
            check_sum: Check {
                what: format!(
                    "counted {counted} == shown {shown} + suppressed {suppressed} + filtered {filtered} + lost {lost_i} + unprinted {unprinted} ({sum})"
                ),
                ok: counted == sum,
            },
            attach: verdict_source(&stderr),
        },
    ))
}

/// The output file's size over time, sampled until `stop`: when the last event was written.
fn watch_len(path: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(Instant, u64)>> {
    thread::spawn(move || {
        let mut samples: Vec<(Instant, u64)> = Vec::new();
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(1200) {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if samples.last().is_none_or(|&(_, l)| l != len) {
                samples.push((Instant::now(), len));
            }
            thread::sleep(Duration::from_millis(2));
        }
        samples
    })
}

/// Until ct-trace has written everything: the file unchanged for 1 s (at most 120 s).
fn wait_written(path: &Path) -> Result<()> {
    let mut last = (Instant::now(), u64::MAX);
    let t_wait = Instant::now();
    while t_wait.elapsed() < Duration::from_secs(120) {
        let len = std::fs::metadata(path)?.len();
        if len != last.1 {
            last = (Instant::now(), len);
        } else if last.0.elapsed() > Duration::from_secs(1) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The offset where the last INVALID event of ct-trace's output ends, and its number of lines.
fn last_invalid_end(path: &Path) -> Result<(u64, u64)> {
    let (mut offset, mut last_invalid_end, mut lines) = (0u64, 0u64, 0u64);
    for line in BufReader::new(File::open(path)?).split(b'\n') {
        let line = line?;
        offset += line.len() as u64 + 1;
        lines += 1;
        if line.starts_with(br#"{"kind":"invalid""#) {
            last_invalid_end = offset;
        }
    }
    Ok((last_invalid_end, lines))
}

/// Where ct-trace's INVALID verdicts come from, as its start-up line on stderr says.
fn verdict_source(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.split("INVALID verdicts: ").nth(1))
        .map(|l| l.split(';').next().unwrap_or(l).trim().to_string())
        .unwrap_or_else(|| "?".into())
}
